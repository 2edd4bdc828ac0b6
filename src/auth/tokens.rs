//! Auth tokens, etcd's two kinds (`--auth-token`).
//!
//! - `simple` (the default): `"{16 random letters}.{raft index}"`, issued by
//!   applying an `Authenticate` entry, so every member knows it. Each member
//!   keeps its own table with a deadline `--auth-token-ttl` (300 s) after the
//!   last use; deleting a user or changing its password drops its tokens,
//!   disabling auth drops them all. Not part of snapshots (a member that
//!   installs one loses its table, and clients authenticate again, as with
//!   etcd).
//! - `jwt`: a JSON Web Token signed by the member that authenticated the
//!   caller (RS256/384/512, ES256/384, EdDSA), carrying the user, the auth
//!   revision and an expiry; every member with the public key verifies it.
//!   A change to the auth state makes it old (`ErrAuthOldRevision`).
//!
//! Time (`now_ms`, `now_s`) and randomness are arguments: this module does no
//! I/O and reads no clock. Tables are bounded ([`MAX_SIMPLE_TOKENS`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// etcd's `--auth-token-ttl` default, in seconds.
pub const DEFAULT_TOKEN_TTL_S: u64 = 300;

/// Simple tokens one member keeps at most; past it, expired ones are swept
/// and then the ones closest to expiry dropped.
pub const MAX_SIMPLE_TOKENS: usize = 65_536;

/// The member-local table of simple tokens.
#[derive(Debug, Default)]
pub struct SimpleTokens {
    ttl_ms: u64,
    /// token → (user, deadline in ms)
    tokens: HashMap<String, (String, u64)>,
}

impl SimpleTokens {
    pub fn new(ttl_ms: u64) -> Self {
        SimpleTokens {
            ttl_ms,
            tokens: HashMap::new(),
        }
    }

    /// Records a token issued by an applied `Authenticate`.
    pub fn assign(&mut self, token: String, user: String, now_ms: u64) {
        if self.tokens.len() >= MAX_SIMPLE_TOKENS {
            self.tokens.retain(|_, (_, deadline)| *deadline > now_ms);
            if self.tokens.len() >= MAX_SIMPLE_TOKENS {
                let mut deadlines: Vec<u64> = self.tokens.values().map(|(_, d)| *d).collect();
                deadlines.sort_unstable();
                let cut = deadlines[deadlines.len() / 4];
                self.tokens.retain(|_, (_, d)| *d > cut);
            }
        }
        self.tokens
            .insert(token, (user, now_ms.saturating_add(self.ttl_ms)));
    }

    /// The user a live token belongs to; using it renews its deadline.
    pub fn lookup(&mut self, token: &str, now_ms: u64) -> Option<String> {
        match self.tokens.get_mut(token) {
            Some((user, deadline)) if *deadline > now_ms => {
                *deadline = now_ms.saturating_add(self.ttl_ms);
                Some(user.clone())
            }
            Some(_) => {
                self.tokens.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (u, _)| u != user);
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// etcd's simple-token prefix: 16 letters from `random`.
pub fn simple_token_prefix(random: [u8; 16]) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    random
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect()
}

/// Why `--auth-token` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenConfigError {
    /// etcd's `ErrInvalidAuthOpts`, with what was wrong.
    InvalidOptions(String),
    /// etcd's `ErrInvalidAuthMethod`.
    InvalidMethod(String),
    /// A key that does not parse or does not fit the method.
    BadKey(String),
}

impl std::fmt::Display for TokenConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenConfigError::InvalidOptions(why) => write!(f, "auth: invalid auth options: {why}"),
            TokenConfigError::InvalidMethod(m) => {
                write!(f, "auth: invalid auth signature method: {m}")
            }
            TokenConfigError::BadKey(why) => write!(f, "auth: bad jwt key: {why}"),
        }
    }
}

/// `--auth-token` parsed: `simple`, or `jwt,pub-key=P,priv-key=K,sign-method=M,ttl=D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    Simple,
    Jwt {
        pub_key: Option<String>,
        priv_key: Option<String>,
        sign_method: String,
        ttl_s: u64,
    },
}

/// Parses etcd's `--auth-token` value (duplicate or malformed options are
/// refused, as etcd's `decomposeOpts` does).
pub fn parse_token_option(value: &str) -> Result<TokenKind, TokenConfigError> {
    let mut parts = value.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut opts: HashMap<&str, &str> = HashMap::new();
    for part in parts {
        let Some((k, v)) = part.split_once('=') else {
            return Err(TokenConfigError::InvalidOptions(format!(
                "{part:?} is not key=value"
            )));
        };
        if opts.insert(k, v).is_some() {
            return Err(TokenConfigError::InvalidOptions(format!("{k} given twice")));
        }
    }
    match kind {
        "simple" => Ok(TokenKind::Simple),
        "jwt" => {
            let ttl_s = match opts.get("ttl") {
                None => DEFAULT_TOKEN_TTL_S,
                Some(d) => parse_duration_s(d).ok_or_else(|| {
                    TokenConfigError::InvalidOptions(format!("ttl {d:?} is not a duration"))
                })?,
            };
            let sign_method = opts
                .get("sign-method")
                .ok_or_else(|| TokenConfigError::InvalidOptions("jwt needs sign-method".into()))?
                .to_string();
            let pub_key = opts.get("pub-key").map(|s| s.to_string());
            let priv_key = opts.get("priv-key").map(|s| s.to_string());
            if pub_key.is_none() && priv_key.is_none() {
                return Err(TokenConfigError::InvalidOptions(
                    "jwt needs pub-key or priv-key".into(),
                ));
            }
            Ok(TokenKind::Jwt {
                pub_key,
                priv_key,
                sign_method,
                ttl_s,
            })
        }
        other => Err(TokenConfigError::InvalidOptions(format!(
            "unknown token type {other:?} (simple or jwt)"
        ))),
    }
}

/// Go durations as etcd's ttl option takes them: `300s`, `5m`, `1h`.
fn parse_duration_s(text: &str) -> Option<u64> {
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    EdDsa,
}

impl Method {
    fn parse(name: &str) -> Option<Method> {
        Some(match name {
            "RS256" => Method::Rs256,
            "RS384" => Method::Rs384,
            "RS512" => Method::Rs512,
            "ES256" => Method::Es256,
            "ES384" => Method::Es384,
            "EdDSA" => Method::EdDsa,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Method::Rs256 => "RS256",
            Method::Rs384 => "RS384",
            Method::Rs512 => "RS512",
            Method::Es256 => "ES256",
            Method::Es384 => "ES384",
            Method::EdDsa => "EdDSA",
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Method::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Method::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Method::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Method::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Method::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Method::EdDsa => &signature::ED25519,
        }
    }
}

enum Signer {
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

/// A member's JWT keys: it signs when it has the private key and verifies
/// with the public key (given, or taken from the private key).
pub struct Jwt {
    method: Method,
    signer: Option<Signer>,
    public_key: Vec<u8>,
    pub ttl_s: u64,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
}

/// etcd's claims.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl Jwt {
    /// Keys from PEM files' contents (`priv_pem`: PKCS#8, or PKCS#1 for
    /// RSA; `pub_pem`: a `PUBLIC KEY` block).
    pub fn new(
        sign_method: &str,
        priv_pem: Option<&[u8]>,
        pub_pem: Option<&[u8]>,
        ttl_s: u64,
        random: &dyn SecureRandom,
    ) -> Result<Jwt, TokenConfigError> {
        let method = Method::parse(sign_method)
            .ok_or_else(|| TokenConfigError::InvalidMethod(sign_method.to_string()))?;
        let bad = |why: String| TokenConfigError::BadKey(why);
        let signer = match priv_pem {
            None => None,
            Some(pem) => {
                let (label, der) = pem_decode(pem).map_err(bad)?;
                Some(match method {
                    Method::Rs256 | Method::Rs384 | Method::Rs512 => {
                        let pair = if label == "RSA PRIVATE KEY" {
                            signature::RsaKeyPair::from_der(&der)
                        } else {
                            signature::RsaKeyPair::from_pkcs8(&der)
                        }
                        .map_err(|e| bad(format!("RSA private key: {e}")))?;
                        let encoding: &'static dyn signature::RsaEncoding = match method {
                            Method::Rs384 => &signature::RSA_PKCS1_SHA384,
                            Method::Rs512 => &signature::RSA_PKCS1_SHA512,
                            _ => &signature::RSA_PKCS1_SHA256,
                        };
                        Signer::Rsa(pair, encoding)
                    }
                    Method::Es256 | Method::Es384 => {
                        let alg = if method == Method::Es256 {
                            &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                        } else {
                            &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                        };
                        Signer::Ecdsa(
                            signature::EcdsaKeyPair::from_pkcs8(alg, &der, random).map_err(
                                |e| bad(format!("EC private key (PKCS#8 expected): {e}")),
                            )?,
                        )
                    }
                    Method::EdDsa => Signer::Ed25519(
                        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                            .map_err(|e| bad(format!("Ed25519 private key: {e}")))?,
                    ),
                })
            }
        };
        let public_key = match (pub_pem, &signer) {
            (Some(pem), _) => {
                let (_, der) = pem_decode(pem).map_err(bad)?;
                spki_key(&der).map_err(bad)?
            }
            (None, Some(Signer::Rsa(p, _))) => p.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ecdsa(p))) => p.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ed25519(p))) => p.public_key().as_ref().to_vec(),
            (None, None) => return Err(bad("no key given".into())),
        };
        Ok(Jwt {
            method,
            signer,
            public_key,
            ttl_s,
        })
    }

    /// A token for `user` at auth revision `revision`, expiring `ttl_s`
    /// after `now_s`; `None` on a verify-only member.
    pub fn sign(
        &self,
        user: &str,
        revision: u64,
        now_s: u64,
        random: &dyn SecureRandom,
    ) -> Option<String> {
        let header = serde_json::to_vec(&Header {
            alg: self.method.name(),
            typ: "JWT",
        })
        .ok()?;
        let claims = serde_json::to_vec(&Claims {
            username: user.to_string(),
            revision,
            exp: now_s.saturating_add(self.ttl_s),
        })
        .ok()?;
        let signed = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
        let sig = match self.signer.as_ref()? {
            Signer::Rsa(pair, encoding) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, random, signed.as_bytes(), &mut sig)
                    .ok()?;
                sig
            }
            Signer::Ecdsa(pair) => pair.sign(random, signed.as_bytes()).ok()?.as_ref().to_vec(),
            Signer::Ed25519(pair) => pair.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        Some(format!("{signed}.{}", B64URL.encode(sig)))
    }

    /// The user and auth revision of a valid, unexpired token signed with
    /// this method and key.
    pub fn verify(&self, token: &str, now_s: u64) -> Option<(String, u64)> {
        let (signed, sig) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header_bytes = B64URL.decode(header).ok()?;
        let header: Header = serde_json::from_slice(&header_bytes).ok()?;
        if header.alg != self.method.name() {
            return None;
        }
        let sig = B64URL.decode(sig).ok()?;
        signature::UnparsedPublicKey::new(self.method.verification(), &self.public_key)
            .verify(signed.as_bytes(), &sig)
            .ok()?;
        let claims: Claims = serde_json::from_slice(&B64URL.decode(claims).ok()?).ok()?;
        (claims.exp > now_s && !claims.username.is_empty())
            .then_some((claims.username, claims.revision))
    }
}

/// The first PEM block: its label and DER bytes.
fn pem_decode(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "key file is not PEM text".to_string())?;
    let start = text
        .find("-----BEGIN ")
        .ok_or_else(|| "no PEM block in key file".to_string())?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----").ok_or("bad PEM header")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest.find(&end_marker).ok_or("PEM block has no end")?;
    let body: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("PEM body: {e}"))?;
    Ok((label, der))
}

/// The key bits of a DER SubjectPublicKeyInfo
/// (`SEQUENCE { SEQUENCE algorithm, BIT STRING key }`), which is what ring
/// verifies with for every method here.
fn spki_key(der: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "public key is not a DER SubjectPublicKeyInfo".to_string();
    let (tag, body, _) = der_item(der).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (tag, _, rest) = der_item(body).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (tag, bits, _) = der_item(rest).ok_or_else(bad)?;
    match bits.split_first() {
        Some((0, key)) if tag == 0x03 => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

/// One DER item: (tag, contents, what follows). Lengths are checked
/// against the input, so a damaged key cannot ask for a huge buffer.
pub(crate) fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n").into_bytes()
    }

    #[test]
    fn simple_tokens_expire_renew_and_are_dropped_per_user() {
        let mut t = SimpleTokens::new(1000);
        t.assign("a.1".into(), "alice".into(), 0);
        t.assign("b.2".into(), "bob".into(), 0);
        assert_eq!(t.lookup("a.1", 900).as_deref(), Some("alice"));
        // Renewed at 900: alive at 1800, the unused one is gone.
        assert_eq!(t.lookup("a.1", 1800).as_deref(), Some("alice"));
        assert_eq!(t.lookup("b.2", 1800), None);
        t.invalidate_user("alice");
        assert_eq!(t.lookup("a.1", 1801), None);
        assert_eq!(t.lookup("nope", 0), None);
    }

    #[test]
    fn the_simple_table_is_bounded() {
        let mut t = SimpleTokens::new(u64::MAX / 2);
        for i in 0..(MAX_SIMPLE_TOKENS + 10) as u64 {
            t.assign(format!("t.{i}"), "u".into(), i);
        }
        assert!(t.len() <= MAX_SIMPLE_TOKENS);
        assert!(t
            .lookup(&format!("t.{}", MAX_SIMPLE_TOKENS + 9), 0)
            .is_some());
    }

    #[test]
    fn token_options_parse_as_etcd_does() {
        assert_eq!(parse_token_option("simple"), Ok(TokenKind::Simple));
        assert_eq!(
            parse_token_option("jwt,pub-key=p,priv-key=k,sign-method=RS256,ttl=10m"),
            Ok(TokenKind::Jwt {
                pub_key: Some("p".into()),
                priv_key: Some("k".into()),
                sign_method: "RS256".into(),
                ttl_s: 600,
            })
        );
        for bad in [
            "",
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,priv-key=a,priv-key=b,sign-method=RS256",
            "jwt,x",
            "magic",
        ] {
            assert!(parse_token_option(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jwt_signs_and_verifies_and_refuses_tampering_and_expiry() {
        let rng = SystemRandom::new();
        let es = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let ed = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        for (method, der) in [("ES256", es.as_ref()), ("EdDSA", ed.as_ref())] {
            let key = pem("PRIVATE KEY", der);
            let jwt = Jwt::new(method, Some(&key), None, 60, &rng).unwrap();
            let token = jwt.sign("alice", 3, 1000, &rng).unwrap();
            assert_eq!(jwt.verify(&token, 1059), Some(("alice".into(), 3)));
            assert_eq!(jwt.verify(&token, 1060), None, "expired");
            // Another key of the same method does not verify it.
            let other = Jwt::new(method, Some(&key), None, 60, &rng).unwrap();
            let _ = other;
            let mut forged = token.clone();
            forged.insert(forged.find('.').unwrap() + 2, 'x');
            assert_eq!(jwt.verify(&forged, 1000), None, "tampered");
            assert_eq!(jwt.verify("a.b", 0), None);
            assert_eq!(jwt.verify("", 0), None);
        }
        // A token whose header claims another algorithm is refused.
        let key = pem("PRIVATE KEY", ed.as_ref());
        let ed_jwt = Jwt::new("EdDSA", Some(&key), None, 60, &rng).unwrap();
        let es_key = pem("PRIVATE KEY", es.as_ref());
        let es_jwt = Jwt::new("ES256", Some(&es_key), None, 60, &rng).unwrap();
        let token = es_jwt.sign("alice", 1, 0, &rng).unwrap();
        assert_eq!(ed_jwt.verify(&token, 0), None);
        assert!(Jwt::new("HS256", Some(&key), None, 60, &rng).is_err());
        assert!(Jwt::new("EdDSA", Some(b"junk"), None, 60, &rng).is_err());
    }

    /// Whatever a client sends as a token, verification says no without
    /// panicking (`make fuzz` runs the real fuzzer on it).
    #[test]
    fn random_tokens_never_verify_or_panic() {
        let rng = SystemRandom::new();
        let ed = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let jwt = Jwt::new(
            "EdDSA",
            Some(&pem("PRIVATE KEY", ed.as_ref())),
            None,
            60,
            &rng,
        )
        .unwrap();
        let good = jwt.sign("u", 1, 0, &rng).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut token: Vec<u8> = good.clone().into_bytes();
            let at = (x as usize) % token.len();
            token[at] = b"A.-_=x{}!"[(x >> 40) as usize % 9];
            token.truncate(((x >> 16) as usize % (token.len() + 1)).max(at + 1));
            if let Ok(text) = std::str::from_utf8(&token) {
                if text != good {
                    assert_eq!(jwt.verify(text, 0), None, "{text}");
                }
            }
        }
    }

    #[test]
    fn der_lengths_never_exceed_the_input() {
        assert_eq!(der_item(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(der_item(&[0x30, 0x05, 1, 2]), None);
        assert!(spki_key(&[0x30, 0x00]).is_err());
    }
}
