//! The router model directory that `trainer train` writes and the router loads:
//! `model.txt` (a LightGBM multiclass model) and `meta.json` ([`RouterModelMeta`]).
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::{feature_names, Pca};

/// File names inside a router model directory.
pub const MODEL_FILE: &str = "model.txt";
pub const META_FILE: &str = "meta.json";

/// Everything besides the trees that routing needs, written by the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterModelMeta {
    /// Format version of this file.
    pub version: u32,
    /// Feature names in the order of the model's columns (= `features::feature_names(pca.dims())`).
    pub feature_names: Vec<String>,
    /// PCA of the sentence embedding.
    pub pca: Pca,
    /// Class index → model name (as in models.toml's `model`, e.g. `qwen2.5-coder-1.5b-instruct`).
    pub classes: Vec<String>,
    /// The model that answers when the router is unsure (the largest/strongest).
    pub fallback_model: String,
    /// Weight of normalized latency in the training label (quality − w · latency).
    pub latency_weight: f64,
    /// Below this top-class probability the router falls back to `fallback_model`.
    pub confidence_threshold: f64,
    /// SHA-256 of the training data (responses and scores), hex.
    pub training_data_sha256: String,
    /// When the model was trained (RFC 3339), for humans.
    #[serde(default)]
    pub trained_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is inconsistent: {message}")]
    Invalid { path: String, message: String },
}

impl RouterModelMeta {
    pub const VERSION: u32 = 1;

    /// Read and check `dir/meta.json`.
    pub fn load(dir: &Path) -> Result<Self, MetaError> {
        let path = dir.join(META_FILE);
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(&path).map_err(|e| MetaError::Read { path: p.clone(), message: e.to_string() })?;
        let meta: Self =
            serde_json::from_str(&text).map_err(|e| MetaError::Read { path: p.clone(), message: e.to_string() })?;
        meta.check().map_err(|message| MetaError::Invalid { path: p, message })?;
        Ok(meta)
    }

    /// The invariants the router relies on.
    pub fn check(&self) -> Result<(), String> {
        if self.version != Self::VERSION {
            return Err(format!("version {} (this build reads {})", self.version, Self::VERSION));
        }
        if self.classes.is_empty() {
            return Err("no classes".into());
        }
        if !self.classes.contains(&self.fallback_model) {
            return Err(format!("fallback_model {} is not a class", self.fallback_model));
        }
        let expected = feature_names(self.pca.dims());
        if self.feature_names != expected {
            return Err("feature_names differ from this build's featurizer".into());
        }
        if !(0.0..=1.0).contains(&self.confidence_threshold) {
            return Err("confidence_threshold must be in [0, 1]".into());
        }
        Ok(())
    }
}
