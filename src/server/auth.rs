//! Auth on a member: the I/O and clock side of `crate::auth`.
//!
//! - Resolves a caller's credentials into an [`AuthInfo`] (etcd's
//!   `AuthInfoFromCtx`): a `simple` token from this member's table, a `jwt`
//!   token by its signature, or, without a token, the common name of a
//!   verified client certificate (`--client-cert-auth`).
//! - Hashes passwords (bcrypt, `--bcrypt-cost`) and checks them on the
//!   blocking pool, before anything is proposed: no plaintext password
//!   reaches the log, a snapshot, a log line or a peer.
//! - Slows down guessing: a failed `Authenticate` for a user is answered
//!   only after a delay that doubles with each failure in a row for that
//!   user (100 ms, capped at [`MAX_FAILURE_DELAY`], well inside a client's
//!   request timeout); a success is never delayed and clears the count.
//!   Failures are logged with the user, never the password. The table of
//!   users with failures is bounded.
//!
//! [`LocalAuth`] is what the state machine and the node share: the simple
//! token table (filled as `Authenticate` entries apply) and whether auth is
//! on (so calls skip every auth lookup while it is off).

use crate::auth::tokens::{self, Jwt, SimpleTokens, TokenKind};
use crate::auth::{password, AuthInfo};
use crate::runtime;
use qed_wire::Error;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a guesser waits between two attempts for one user.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Users whose failures are remembered at most (the oldest are forgotten).
const MAX_TRACKED_USERS: usize = 4096;

/// Auth flags of a member (etcd's names and defaults).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `--auth-token`: `simple` or `jwt,pub-key=...,priv-key=...,sign-method=...`.
    pub token: String,
    /// `--auth-token-ttl`: how long an unused simple token lives.
    pub token_ttl: Duration,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: "simple".into(),
            token_ttl: Duration::from_secs(tokens::DEFAULT_TOKEN_TTL_S),
            bcrypt_cost: password::DEFAULT_BCRYPT_COST,
        }
    }
}

/// What the state machine and the node share of auth on this member.
#[derive(Debug, Default)]
pub struct LocalAuth {
    pub tokens: Mutex<SimpleTokens>,
    /// Mirrors the replicated enabled flag, for a lock-free fast path.
    pub enabled: AtomicBool,
    /// Mirrors the replicated auth revision: what a simple token or a
    /// certificate is checked at, read without the state lock.
    pub revision: AtomicU64,
}

impl LocalAuth {
    pub fn new(token_ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(token_ttl.as_millis()).unwrap_or(u64::MAX);
        LocalAuth {
            tokens: Mutex::new(SimpleTokens::new(ttl_ms)),
            enabled: AtomicBool::new(false),
            revision: AtomicU64::new(0),
        }
    }

    /// Follows the replicated state after an apply or a snapshot install.
    pub fn mirror(&self, store: &crate::auth::AuthStore) {
        self.revision.store(store.revision(), Ordering::Relaxed);
        self.enabled.store(store.is_enabled(), Ordering::Relaxed);
    }

    pub fn tokens(&self) -> std::sync::MutexGuard<'_, SimpleTokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

/// How a caller presented itself on its connection and stream.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    /// The common name of a verified client certificate.
    pub cert_user: Option<String>,
}

struct Failures {
    count: u32,
    last: Instant,
}

pub struct Authenticator {
    jwt: Option<Jwt>,
    bcrypt_cost: u32,
    random: SystemRandom,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Authenticator {
    /// Reads the JWT keys named by `--auth-token`, if any.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let random = SystemRandom::new();
        let kind = tokens::parse_token_option(&config.token).map_err(|e| e.to_string())?;
        let jwt = match kind {
            TokenKind::Simple => None,
            TokenKind::Jwt {
                pub_key,
                priv_key,
                sign_method,
                ttl_s,
            } => {
                let read = |p: &Option<String>| -> Result<Option<Vec<u8>>, String> {
                    p.as_ref()
                        .map(|path| {
                            std::fs::read(Path::new(path))
                                .map_err(|e| format!("--auth-token: cannot read {path}: {e}"))
                        })
                        .transpose()
                };
                let (priv_pem, pub_pem) = (read(&priv_key)?, read(&pub_key)?);
                let jwt = Jwt::new(
                    &sign_method,
                    priv_pem.as_deref(),
                    pub_pem.as_deref(),
                    ttl_s,
                    &random,
                )
                .map_err(|e| format!("--auth-token: {e}"))?;
                Some(jwt)
            }
        };
        let bcrypt_cost = if (password::MIN_BCRYPT_COST..=password::MAX_BCRYPT_COST)
            .contains(&config.bcrypt_cost)
        {
            config.bcrypt_cost
        } else {
            log::warn!(
                "--bcrypt-cost {} is outside {}..={}; using the default {}",
                config.bcrypt_cost,
                password::MIN_BCRYPT_COST,
                password::MAX_BCRYPT_COST,
                password::DEFAULT_BCRYPT_COST
            );
            password::DEFAULT_BCRYPT_COST
        };
        if jwt.is_none() {
            log::info!("auth tokens: simple (not cryptographically signed, member-local TTL)");
        }
        Ok(Authenticator {
            jwt,
            bcrypt_cost,
            random,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// etcd's `AuthInfoFromCtx`: `None` for a caller without credentials;
    /// an unknown or expired token is `ErrInvalidAuthToken` (even with auth
    /// off, as etcd answers once it has dropped its tokens). A simple token
    /// or a certificate is checked at the current auth revision.
    pub fn caller(
        &self,
        local: &LocalAuth,
        creds: &Credentials,
    ) -> Result<Option<AuthInfo>, Error> {
        let current_revision = || local.revision.load(Ordering::Relaxed);
        match (&creds.token, &self.jwt) {
            (Some(token), Some(jwt)) => match jwt.verify(token, unix_seconds()) {
                Some((user, revision)) => Ok(Some(AuthInfo { user, revision })),
                None => Err(Error::InvalidAuthToken),
            },
            (Some(token), None) => match local.tokens().lookup(token, super::now_ms()) {
                Some(user) => Ok(Some(AuthInfo {
                    user,
                    revision: current_revision(),
                })),
                None => Err(Error::InvalidAuthToken),
            },
            (None, _) => Ok(creds.cert_user.as_ref().map(|user| AuthInfo {
                user: user.clone(),
                revision: current_revision(),
            })),
        }
    }

    /// Whether tokens are signed JWTs (issued without a log entry).
    pub fn issues_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    pub fn sign_jwt(&self, user: &str, revision: u64) -> Result<String, Error> {
        self.jwt
            .as_ref()
            .and_then(|jwt| jwt.sign(user, revision, unix_seconds(), &self.random))
            .ok_or_else(|| {
                Error::Internal(
                    "this member verifies JWT tokens only (no priv-key in --auth-token)".into(),
                )
            })
    }

    /// A fresh simple-token prefix.
    pub fn token_prefix(&self) -> Result<String, Error> {
        let mut bytes = [0u8; 16];
        self.random
            .fill(&mut bytes)
            .map_err(|_| Error::Internal("no randomness for a token".into()))?;
        Ok(tokens::simple_token_prefix(bytes))
    }

    /// bcrypt of `password`, computed on the blocking pool.
    pub async fn hash_password(&self, password: String) -> Result<String, Error> {
        let mut salt = [0u8; 16];
        self.random
            .fill(&mut salt)
            .map_err(|_| Error::Internal("no randomness for a salt".into()))?;
        let cost = self.bcrypt_cost;
        runtime::spawn_blocking(move || password::hash(&password, cost, salt))
            .await
            .map_err(Error::from)
    }

    /// Checks `password` against `hash` on the blocking pool; a failure is
    /// answered after this user's back-off.
    pub async fn check_password(&self, user: &str, password: String, hash: String) -> bool {
        let ok = runtime::spawn_blocking(move || password::verify(&password, &hash)).await;
        if ok {
            self.record(user, true);
        } else {
            self.refuse(user).await;
        }
        ok
    }

    /// A failed attempt (wrong password, no such user, a user without a
    /// password): counted, logged and answered after the back-off.
    pub async fn refuse(&self, user: &str) {
        let wait = self.record(user, false);
        runtime::sleep(wait).await;
    }

    /// Records an attempt; returns how long its failure answer waits.
    fn record(&self, user: &str, ok: bool) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(user);
            return Duration::ZERO;
        }
        if failures.len() >= MAX_TRACKED_USERS && !failures.contains_key(user) {
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(u, _)| u.clone())
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(user.to_string()).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = Instant::now();
        let wait = failure_delay(entry.count);
        log::warn!(
            "invalid authentication was requested: user {user:?}, {} failure(s) in a row; \
             answered after {wait:?}",
            entry.count,
        );
        wait
    }
}

/// The common name in the subject of a DER certificate (what etcd takes as
/// the user of a verified client certificate). `None` when there is none
/// or the certificate does not parse; every length is checked against the
/// input.
pub fn cert_common_name(der: &[u8]) -> Option<String> {
    use crate::auth::tokens::der_item;
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der_item(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_item(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // version [0] (optional), serial, signature, issuer, validity, subject
    let mut rest = tbs;
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der_item(rest)?.2;
    }
    let (tag, mut subject, _) = der_item(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (tag, mut set, next) = der_item(subject)?;
        subject = next;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, attr, next) = der_item(set)?;
            set = next;
            let (tag, oid, value) = der_item(attr)?;
            if tag == 0x06 && oid == CN_OID {
                let (_, name, _) = der_item(value)?;
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

/// 100 ms after the first failure, doubling, at most [`MAX_FAILURE_DELAY`].
pub fn failure_delay(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * (1u32 << shift)).min(MAX_FAILURE_DELAY)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "qed");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(cert_common_name(cert.der()).as_deref(), Some("alice"));
        assert_eq!(cert_common_name(&cert.der()[..40]), None);
        assert_eq!(cert_common_name(b""), None);
    }

    #[test]
    fn failure_delay_doubles_and_is_bounded() {
        assert_eq!(failure_delay(1), Duration::from_millis(100));
        assert_eq!(failure_delay(2), Duration::from_millis(200));
        assert_eq!(failure_delay(4), Duration::from_millis(800));
        assert_eq!(failure_delay(5), MAX_FAILURE_DELAY);
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
    }
}
