//! API keys: clients send `Authorization: Bearer <key>`; the server keeps only
//! SHA-256 hashes of the keys and compares them in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.hashes.len())
    }
}

impl ApiKeys {
    /// Parses comma-separated hex SHA-256 hashes, as `TALLY_API_KEY_HASHES` holds them.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut hashes = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bytes = hex::decode(item)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    "each entry must be a 64-character hex SHA-256 hash (see `tally key new`)"
                        .to_string()
                })?;
            hashes.push(bytes);
        }
        Ok(Self { hashes })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `key` is one of the configured keys. Every stored hash is compared,
    /// each in constant time, so timing says nothing about which or how close.
    pub fn verify(&self, key: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for hash in &self.hashes {
            found |= hash.ct_eq(&presented);
        }
        found.into()
    }
}

/// A fresh random key and its hash: give the key to the client, configure the hash.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let key = format!("tly_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_verify_against_their_hash_only() {
        let (key, hash) = new_key();
        let (other, _) = new_key();
        let keys = ApiKeys::parse(&format!(" {hash} ,")).unwrap();
        assert!(keys.verify(&key));
        assert!(!keys.verify(&other));
        assert!(!keys.verify(""));
        assert!(!ApiKeys::default().verify(&key));
    }

    #[test]
    fn malformed_hashes_are_rejected() {
        assert!(ApiKeys::parse("abc").is_err());
        assert!(ApiKeys::parse(&"zz".repeat(32)).is_err());
        assert!(ApiKeys::parse("").unwrap().is_empty());
    }
}
