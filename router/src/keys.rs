//! The API keys file of the optional mode (`--api-keys FILE`) in which every model request needs a
//! listed key ([`crate::auth`] enforces it). The file holds the SHA-256 of each key, never the key,
//! with a name and an optional per-key rate limit. A request's key is hashed and looked up; the raw
//! key is neither stored nor logged.
//!
//! Keys file (TOML; the same shape as JSON when the name ends in `.json`):
//!
//! ```toml
//! [[key]]
//! name = "alice"
//! sha256 = "…64 hex digits: printf %s "$KEY" | sha256sum…"
//! rps = 5       # optional per-key limit (else --rate-limit-rps/--rate-limit-burst)
//! burst = 10
//! ```
use crate::ratelimit::{key_identity, Limit};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read the API keys file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid API keys file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    sha256: String,
    rps: Option<f64>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<FileEntry>,
}

/// One accepted key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: String,
    /// Its own limit, when the file gives one.
    pub limit: Option<Limit>,
}

/// The accepted keys, by SHA-256.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], KeyEntry>,
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<ApiKeys, KeysFileError> {
        let p = path.display().to_string();
        let invalid = |message: String| KeysFileError::Invalid { path: p.clone(), message };
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Io { path: p.clone(), source })?;
        let file: KeysFile = if p.ends_with(".json") {
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| invalid(e.to_string()))?
        };
        let mut by_hash = HashMap::new();
        for e in file.key {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(e.sha256.trim(), &mut hash).map_err(|_| {
                invalid(format!("key {:?}: sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)", e.name))
            })?;
            let limit = match (e.rps, e.burst) {
                (None, None) => None,
                (Some(rps), burst) if rps >= 0.0 && rps.is_finite() => {
                    Some(Limit { rps, burst: burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32) })
                }
                (None, Some(_)) => return Err(invalid(format!("key {:?}: burst without rps", e.name))),
                _ => return Err(invalid(format!("key {:?}: rps must be a number >= 0", e.name))),
            };
            if by_hash.insert(hash, KeyEntry { name: e.name.clone(), limit }).is_some() {
                return Err(invalid(format!("key {:?}: the same hash is listed twice", e.name)));
            }
        }
        if by_hash.is_empty() {
            return Err(invalid("no [[key]] entries: every request would be refused".into()));
        }
        Ok(ApiKeys { by_hash })
    }

    /// The entry for a raw key, if it is accepted.
    pub fn check(&self, raw: &str) -> Option<&KeyEntry> {
        let hash: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The rate-limit identity of every accepted key.
    pub fn identities(&self) -> impl Iterator<Item = String> + '_ {
        self.by_hash.keys().map(|h| key_identity(&hex::encode(h)))
    }

    /// Per-key limits, keyed by rate-limit identity.
    pub fn limits(&self) -> HashMap<String, Limit> {
        self.by_hash.iter().filter_map(|(h, e)| Some((key_identity(&hex::encode(h)), e.limit?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(k: &str) -> String {
        hex::encode(Sha256::digest(k.as_bytes()))
    }

    #[test]
    fn keys_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.toml");
        let text = format!(
            "[[key]]\nname = \"alice\"\nsha256 = \"{}\"\nrps = 2\nburst = 3\n\n[[key]]\nname = \"bob\"\nsha256 = \"{}\"\n",
            sha("alice-secret"),
            sha("bob-secret")
        );
        std::fs::write(&p, &text).unwrap();
        let keys = ApiKeys::load(&p).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check("alice-secret").unwrap().name, "alice");
        assert_eq!(keys.check("bob-secret").unwrap().limit, None);
        assert!(keys.check("alice-secret ").is_none() && keys.check("").is_none());
        // The secret itself is not a key: only its hash is.
        assert!(keys.check(&sha("alice-secret")).is_none());
        let limits = keys.limits();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[&key_identity(&sha("alice-secret"))], Limit { rps: 2.0, burst: 3 });

        for bad in [
            "[[key]]\nname = \"x\"\nsha256 = \"abc\"\n".to_string(),
            format!("[[key]]\nname = \"x\"\nsha256 = \"{}\"\nburst = 3\n", sha("x")),
            format!("[[key]]\nname = \"x\"\nsha256 = \"{}\"\nrps = -1\n", sha("x")),
            format!("[[key]]\nname = \"x\"\nsha256 = \"{0}\"\n[[key]]\nname = \"y\"\nsha256 = \"{0}\"\n", sha("x")),
            format!("[[key]]\nname = \"x\"\nsha256 = \"{}\"\ntypo = 1\n", sha("x")),
            String::new(),
        ] {
            std::fs::write(&p, &bad).unwrap();
            let err = ApiKeys::load(&p).unwrap_err().to_string();
            assert!(err.contains("invalid API keys file"), "{bad:?}: {err}");
        }
        let j = dir.path().join("keys.json");
        std::fs::write(&j, format!(r#"{{"key": [{{"name": "c", "sha256": "{}", "rps": 1.5}}]}}"#, sha("c"))).unwrap();
        assert_eq!(ApiKeys::load(&j).unwrap().check("c").unwrap().limit, Some(Limit { rps: 1.5, burst: 2 }));
        assert!(ApiKeys::load(&dir.path().join("missing.toml")).is_err());
    }
}
