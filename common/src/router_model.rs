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

/// A routing decision over the classes: the class that answers, and the top class with its
/// probability (they differ when the router was unsure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassChoice {
    pub class: usize,
    pub top: usize,
    pub top_p: f64,
    /// The top class was below the confidence threshold, so the fallback class answers.
    pub low_confidence: bool,
}

/// The routing rule, shared by the router and the trainer that tunes its threshold: the most
/// probable class, or `fallback` when that class's probability is below `threshold`.
/// `probs` must not be empty.
pub fn route(probs: &[f64], threshold: f64, fallback: usize) -> ClassChoice {
    let (top, top_p) =
        probs.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).expect("at least one class");
    let low_confidence = top_p < threshold;
    ClassChoice { class: if low_confidence { fallback } else { top }, top, top_p, low_confidence }
}

impl RouterModelMeta {
    pub const VERSION: u32 = 1;

    /// Index of [`Self::fallback_model`] in [`Self::classes`] (checked by [`Self::check`]).
    pub fn fallback_class(&self) -> usize {
        self.classes.iter().position(|c| *c == self.fallback_model).unwrap_or(self.classes.len() - 1)
    }

    /// [`route`] with this model's threshold and fallback.
    pub fn route(&self, probs: &[f64]) -> ClassChoice {
        route(probs, self.confidence_threshold, self.fallback_class())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_class_answers_unless_it_is_below_the_threshold() {
        let c = route(&[0.2, 0.5, 0.3], 0.4, 2);
        assert_eq!((c.class, c.top, c.low_confidence), (1, 1, false));
        let c = route(&[0.2, 0.5, 0.3], 0.6, 2);
        assert_eq!((c.class, c.top, c.top_p, c.low_confidence), (2, 1, 0.5, true));
        // At the threshold exactly the top class still answers.
        assert_eq!(route(&[0.5, 0.3, 0.2], 0.5, 2).class, 0);
        // Of equal probabilities the last wins, as in the trainer's argmax and the router before.
        assert_eq!(route(&[0.4, 0.4, 0.2], 0.1, 2).top, 1);
    }
}
