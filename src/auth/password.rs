//! Password hashing: bcrypt, as etcd stores passwords (`--bcrypt-cost`,
//! default 10). The salt is an argument, so hashing is a pure function;
//! the caller draws it from the system's random source. Hashes are written
//! in Go's `$2a$` form, which etcd's bcrypt reads (migration both ways).
//! Verification compares in constant time (the bcrypt crate's `ct_eq`).

use super::AuthError;

/// etcd's `--bcrypt-cost` default (Go's `bcrypt.DefaultCost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Go's `bcrypt.MinCost` and `MaxCost`; etcd falls back to the default
/// outside them.
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 31;

pub fn hash(password: &str, cost: u32, salt: [u8; 16]) -> Result<String, AuthError> {
    bcrypt::hash_with_salt(password, cost, salt)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches `hash`; a malformed hash matches nothing.
pub fn verify(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("secret", MIN_BCRYPT_COST, [1; 16]).unwrap();
        let b = hash("secret", MIN_BCRYPT_COST, [2; 16]).unwrap();
        assert!(a.starts_with("$2a$04$"));
        assert_ne!(a, b);
        assert!(verify("secret", &a) && verify("secret", &b));
        assert!(!verify("Secret", &a));
        assert!(!verify("secret", "not a hash"));
        assert!(!verify("secret", ""));
    }

    /// A `$2a$` hash as Go's bcrypt (etcd) writes them: the Openwall
    /// test vector for "U*U".
    #[test]
    fn reads_go_hashes() {
        let go = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        assert!(verify("U*U", go));
        assert!(!verify("U*V", go));
    }
}
