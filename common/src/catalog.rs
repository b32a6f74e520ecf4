//! The backend catalog (`models.toml`): which model services exist, what they serve and where.
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where a backend is meant to run. `Gpu` is a slot: it may fall back to the CPU at run time, and
/// the service then reports the device it really uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// m1 … m5.
    pub id: String,
    /// The model's name, as reported by the service.
    pub model: String,
    /// The GGUF file name inside the models directory.
    pub file: String,
    pub device: Slot,
    pub port: u16,
    /// Base URL; defaults to `http://127.0.0.1:{port}`.
    #[serde(default)]
    pub url: Option<String>,
}

/// Number of parameters read from a model name (`gemma-3-270m` → 2.7e8, `…-1.5b-…` → 1.5e9):
/// how the router and the trainer rank models from smallest to largest.
pub fn model_params(name: &str) -> Option<f64> {
    name.split(['-', '_', ' ', ':'])
        .filter_map(|part| {
            let p = part.to_ascii_lowercase();
            let (num, scale) = if let Some(n) = p.strip_suffix('b') {
                (n, 1e9)
            } else if let Some(n) = p.strip_suffix('m') {
                (n, 1e6)
            } else {
                return None;
            };
            num.parse::<f64>().ok().filter(|v| *v > 0.0).map(|v| v * scale)
        })
        .next()
}

impl BackendSpec {
    pub fn base_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", self.port))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "backend")]
    pub backends: Vec<BackendSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid catalog {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Catalog {
    pub fn parse(text: &str, path: &str) -> Result<Self, CatalogError> {
        let cat: Catalog = toml::from_str(text)
            .map_err(|e| CatalogError::Invalid { path: path.to_string(), message: e.to_string() })?;
        let mut ids = std::collections::HashSet::new();
        for b in &cat.backends {
            if !ids.insert(b.id.as_str()) {
                return Err(CatalogError::Invalid {
                    path: path.to_string(),
                    message: format!("backend id {} appears twice", b.id),
                });
            }
        }
        Ok(cat)
    }

    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io { path: p.clone(), source })?;
        Self::parse(&text, &p)
    }

    pub fn get(&self, id: &str) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_catalog_defines_five_backends() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models.toml");
        let cat = Catalog::load(&path).unwrap();
        let ids: Vec<_> = cat.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(cat.get("m4").unwrap().device, Slot::Gpu);
        assert_eq!(cat.get("m1").unwrap().base_url(), "http://127.0.0.1:8101");
    }

    #[test]
    fn duplicate_ids_and_bad_devices_are_errors() {
        let dup = "[[backend]]\nid='a'\nmodel='x'\nfile='f'\ndevice='cpu'\nport=1\n[[backend]]\nid='a'\nmodel='x'\nfile='f'\ndevice='cpu'\nport=2\n";
        assert!(Catalog::parse(dup, "t").is_err());
        let bad = "[[backend]]\nid='a'\nmodel='x'\nfile='f'\ndevice='tpu'\nport=1\n";
        assert!(Catalog::parse(bad, "t").is_err());
    }
}
