//! The router model directory that `trainer train` writes and the router loads: `model.txt` (a
//! LightGBM `cross_entropy` model of answer quality) and `meta.json` ([`RouterModelMeta`]), and the
//! routing rule both sides share ([`choose`]).
//!
//! The model predicts, for a prompt and a model, the quality in [0, 1] that model's answer will get:
//! one feature row per (prompt, model), the prompt's features followed by the model's class index
//! ([`CLASS_FEATURE`]). The rule then weighs each model's predicted quality against its expected
//! latency now: `quality − cost_weight · latency / reference latency`. The cost weight is the knob:
//! 0 always takes the best predicted answer, larger values buy speed with quality. The trainer
//! calibrates its default on held-out predictions for a quality target; a request may bring its own.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::{feature_names, Pca};

/// File names inside a router model directory.
pub const MODEL_FILE: &str = "model.txt";
pub const META_FILE: &str = "meta.json";

/// The last feature column: the class index of the model the row asks about.
pub const CLASS_FEATURE: &str = "model_class";

/// The model's columns: the prompt's features, then [`CLASS_FEATURE`].
pub fn model_feature_names(pca_dims: usize) -> Vec<String> {
    let mut names = feature_names(pca_dims);
    names.push(CLASS_FEATURE.to_string());
    names
}

/// One row per class: the prompt's feature row with the class index appended.
pub fn class_rows(prompt_row: &[f32], classes: usize) -> Vec<Vec<f32>> {
    (0..classes)
        .map(|c| {
            let mut r = Vec::with_capacity(prompt_row.len() + 1);
            r.extend_from_slice(prompt_row);
            r.push(c as f32);
            r
        })
        .collect()
}

/// Everything besides the trees that routing needs, written by the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterModelMeta {
    /// Format version of this file.
    pub version: u32,
    /// Feature names in the order of the model's columns (= [`model_feature_names`]).
    pub feature_names: Vec<String>,
    /// PCA of the sentence embedding.
    pub pca: Pca,
    /// Class index → model name (as in models.toml's `model`), smallest model first.
    pub classes: Vec<String>,
    /// Per class: the median latency of its answers in the training data, ms. The expected latency
    /// of an idle backend; the router scales it by the backend's load.
    pub latency_ms: Vec<f64>,
    /// The default cost weight ([`choose`]), calibrated by the trainer for `quality_target`.
    pub cost_weight: f64,
    /// The share of always-largest quality the default cost weight was calibrated to keep.
    pub quality_target: f64,
    /// Calibration curve, cost weight → (quality, latency) over always-largest's, on out-of-fold
    /// predictions: where each knob setting lands.
    #[serde(default)]
    pub cost_curve: Vec<CostPoint>,
    /// SHA-256 of the training data (responses and scores), hex.
    pub training_data_sha256: String,
    /// When the model was trained (RFC 3339), for humans.
    #[serde(default)]
    pub trained_at: String,
}

/// One setting of the cost weight and where it lands, relative to always-largest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostPoint {
    pub cost_weight: f64,
    pub quality_vs_largest: f64,
    pub latency_vs_largest: f64,
    pub largest_share: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is inconsistent: {message}")]
    Invalid { path: String, message: String },
}

pub use crate::validation::MAX_COST_WEIGHT;

/// The routing rule, shared by the router and the trainer: the class with the highest
/// `quality[c] − cost_weight · latency_ms[c] / reference_ms`; of equal utilities the faster wins.
/// `quality` and `latency_ms` have one entry per class (not empty); a NaN quality never wins.
pub fn choose(quality: &[f64], latency_ms: &[f64], reference_ms: f64, cost_weight: f64) -> usize {
    let reference = if reference_ms > 0.0 { reference_ms } else { 1.0 };
    let utility = |c: usize| {
        let u = quality[c] - cost_weight * latency_ms[c] / reference;
        if u.is_nan() {
            f64::NEG_INFINITY
        } else {
            u
        }
    };
    let mut best = 0;
    for c in 1..quality.len() {
        let (u, b) = (utility(c), utility(best));
        if u > b + 1e-12 || ((u - b).abs() <= 1e-12 && latency_ms[c] < latency_ms[best]) {
            best = c;
        }
    }
    best
}

/// How much longer than on an idle backend a request is expected to take when `busy` requests are
/// already running or waiting there, on a service that batches up to `batch_size` sequences.
///
/// Inside the batch each running sequence slows every step: the engine's time per output token at
/// 4 streams was 1.66-2.17x one stream (benchmarks/RESULTS.md, "Continuous batching"), about
/// [`STREAM_COST`] per extra stream. Past the batch, a request waits for a place: about one batch's
/// latency per `batch_size` requests ahead of it.
pub fn load_factor(busy: u32, batch_size: u32) -> f64 {
    let size = batch_size.max(1);
    if busy < size {
        1.0 + STREAM_COST * busy as f64
    } else {
        let full = 1.0 + STREAM_COST * (size - 1) as f64;
        full * (1.0 + (busy - size + 1) as f64 / size as f64)
    }
}

/// The slowdown each extra running stream adds to a batched step (see [`load_factor`]).
pub const STREAM_COST: f64 = 0.3;

impl RouterModelMeta {
    pub const VERSION: u32 = 2;

    /// The largest class (the last): the reference of latency and quality.
    pub fn largest(&self) -> usize {
        self.classes.len() - 1
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
        if self.latency_ms.len() != self.classes.len() {
            return Err(format!("{} latencies for {} classes", self.latency_ms.len(), self.classes.len()));
        }
        if self.latency_ms.iter().any(|l| !l.is_finite() || *l <= 0.0) {
            return Err("latency_ms must be positive".into());
        }
        if self.feature_names != model_feature_names(self.pca.dims()) {
            return Err("feature_names differ from this build's featurizer".into());
        }
        if !(0.0..=MAX_COST_WEIGHT).contains(&self.cost_weight) {
            return Err(format!("cost_weight must be in [0, {MAX_COST_WEIGHT}]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_weight_trades_quality_for_latency() {
        let q = [0.1, 0.5, 0.7];
        let l = [500.0, 2000.0, 5000.0];
        // No weight: the best predicted quality.
        assert_eq!(choose(&q, &l, 5000.0, 0.0), 2);
        // 0.7 − w vs 0.5 − 0.4 w: the 0.5B wins once w > 1/3.
        assert_eq!(choose(&q, &l, 5000.0, 0.3), 2);
        assert_eq!(choose(&q, &l, 5000.0, 0.4), 1);
        // Heavy weight: the fastest.
        assert_eq!(choose(&q, &l, 5000.0, 10.0), 0);
        // Equal utility: the faster.
        assert_eq!(choose(&[0.5, 0.5], &[2.0, 1.0], 1.0, 0.0), 1);
        // A NaN quality never wins.
        assert_eq!(choose(&[f64::NAN, 0.1], &[1.0, 1.0], 1.0, 0.0), 1);
    }

    #[test]
    fn a_loaded_backend_is_expected_to_be_slower() {
        assert_eq!(load_factor(0, 4), 1.0);
        let f: Vec<f64> = (0..12).map(|b| load_factor(b, 4)).collect();
        assert!(f.windows(2).all(|w| w[1] > w[0]), "{f:?}");
        // A full batch: a request waits for a place, about one batch latency per 4 ahead.
        assert!((load_factor(4, 4) - 1.9 * 1.25).abs() < 1e-9);
        assert!((load_factor(7, 4) - 1.9 * 2.0).abs() < 1e-9);
        // Load moves the choice off a busy largest model.
        let q = [0.0, 0.6, 0.7];
        let idle = [500.0, 2000.0, 5000.0];
        assert_eq!(choose(&q, &idle, 5000.0, 0.1), 2);
        let busy = [500.0, 2000.0, 5000.0 * load_factor(6, 4)];
        assert_eq!(choose(&q, &busy, 5000.0, 0.1), 1);
    }

    #[test]
    fn rows_carry_the_class_last() {
        let rows = class_rows(&[1.0, 2.0], 3);
        assert_eq!(rows, vec![vec![1.0, 2.0, 0.0], vec![1.0, 2.0, 1.0], vec![1.0, 2.0, 2.0]]);
        assert_eq!(model_feature_names(2).last().map(String::as_str), Some(CLASS_FEATURE));
    }
}
