//! What auth decodes from outside: a log entry's command with its auth
//! header (from a peer or the WAL), a token (from any client), and a
//! client certificate's subject. None may panic; a command that decodes
//! re-encodes to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qed::auth::tokens::Jwt;
use qed_wire::command::Command;
use std::sync::OnceLock;

fn jwt() -> &'static Jwt {
    static JWT: OnceLock<Jwt> = OnceLock::new();
    JWT.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        Jwt::new("EdDSA", Some(pem.as_bytes()), None, 300, &rng).expect("jwt")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = Command::decode(data) {
        let again = cmd.encode().expect("a decoded command re-encodes");
        assert_eq!(Command::decode(&again).ok(), Some(cmd));
    }
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(jwt().verify(token, 0).is_none(), "a forged token verified");
    }
    let _ = qed::server::auth::cert_common_name(data);
});
