//! The learned routing policy: the prompt featurizer (MiniLM embedding + text features, shared
//! with the trainer) and the LightGBM router model that `trainer train` writes (`model.txt` +
//! `meta.json`). It predicts, per model, the probability that it is the best answer for its
//! latency, picks the most probable model that has a healthy candidate, and below the model's
//! confidence threshold sends the prompt to the largest model (reason `low_confidence`).
//!
//! The model directory is watched (polled) and can be reloaded on demand; a new model is loaded
//! and checked completely before it replaces the old one in one atomic swap, and a broken one
//! leaves the old one serving. Without a model (or without the embedder) the baseline decides.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use polyllm_common::features::{assemble, Embedder, Embedding, Featurizer};
use polyllm_common::router_model::{RouterModelMeta, META_FILE, MODEL_FILE};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::policy::{BaselinePolicy, Candidate, Decision, PolicyError, RoutingContext, RoutingPolicy};
use polyllm_common::gbdt::Predictor;
use polyllm_common::route::Preference;

/// How many of the largest feature contributions the route event carries.
pub const TOP_CONTRIBUTIONS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum LearnedError {
    #[error("no router model in {0} (no {MODEL_FILE} / {META_FILE})")]
    Missing(String),
    #[error("router model in {dir}: {message}")]
    Invalid { dir: String, message: String },
}

/// One loaded, checked router model.
pub struct RouterModel {
    booster: Predictor,
    pub meta: RouterModelMeta,
    pub dir: PathBuf,
    /// Modification times of model.txt and meta.json when loaded: the watcher's change signal.
    stamp: (Option<SystemTime>, Option<SystemTime>),
    pub loaded_at: SystemTime,
}

/// What the model says about one row.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Per class, same order as `meta.classes`.
    pub probabilities: Vec<f64>,
    /// Per class, per feature (+ bias last): LightGBM's SHAP-style contributions to the raw score.
    pub contributions: Vec<Vec<f64>>,
}

fn stamp(dir: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |f: &str| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok();
    (m(MODEL_FILE), m(META_FILE))
}

impl RouterModel {
    /// Load and cross-check `dir/model.txt` and `dir/meta.json`.
    pub fn load(dir: &Path) -> Result<Self, LearnedError> {
        let d = dir.display().to_string();
        if !dir.join(MODEL_FILE).is_file() || !dir.join(META_FILE).is_file() {
            return Err(LearnedError::Missing(d));
        }
        let invalid = |message: String| LearnedError::Invalid { dir: d.clone(), message };
        let before = stamp(dir);
        let meta = RouterModelMeta::load(dir).map_err(|e| invalid(e.to_string()))?;
        let path = dir.join(MODEL_FILE);
        let booster = Predictor::load(&path).map_err(|e| invalid(format!("{MODEL_FILE}: {e}")))?;
        if booster.features() != meta.feature_names.len() {
            return Err(invalid(format!(
                "{MODEL_FILE} has {} features, meta.json names {}",
                booster.features(),
                meta.feature_names.len()
            )));
        }
        if booster.classes() != meta.classes.len() {
            return Err(invalid(format!(
                "{MODEL_FILE} has {} classes, meta.json names {}",
                booster.classes(),
                meta.classes.len()
            )));
        }
        Ok(RouterModel { booster, meta, dir: dir.to_path_buf(), stamp: before, loaded_at: SystemTime::now() })
    }

    /// Class probabilities and per-class contributions of one feature row.
    pub fn predict(&self, row: &[f32]) -> Result<Prediction, PolicyError> {
        let probabilities = self.booster.predict(row).map_err(|e| PolicyError::Failed(e.to_string()))?;
        let contributions = self.booster.contributions(row).map_err(|e| PolicyError::Failed(e.to_string()))?;
        Ok(Prediction { probabilities, contributions })
    }
}

/// What `/router_model` and the admin reload report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub loaded: bool,
    pub dir: String,
    pub embedder: bool,
    pub classes: Vec<String>,
    pub fallback_model: Option<String>,
    pub confidence_threshold: Option<f64>,
    pub latency_weight: Option<f64>,
    pub training_data_sha256: Option<String>,
    pub trained_at: Option<String>,
    pub error: Option<String>,
}

/// The policy object the router holds for its whole life; the model inside it is swappable.
pub struct LearnedPolicy {
    dir: PathBuf,
    featurizer: Option<Featurizer>,
    model: ArcSwapOption<RouterModel>,
    last_error: Mutex<Option<String>>,
    baseline: BaselinePolicy,
    /// Embeddings of recent prompts: the embedding is most of a decision's cost.
    /// Keyed by the prompt's SHA-256, not the prompt (prompts run to 32k characters): the cache's
    /// memory is bounded by its entry count times one embedding.
    embeddings: moka::sync::Cache<[u8; 32], Arc<Embedding>>,
}

impl LearnedPolicy {
    /// Load the embedder and, if present, the model. Neither failing is fatal: the router then
    /// routes with `baseline` and says why in its log.
    pub fn new(dir: &Path, embedder_dir: &Path, baseline: BaselinePolicy) -> Self {
        let featurizer = match Embedder::load(embedder_dir) {
            Ok(e) => Some(Featurizer::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "no sentence embedder: learned routing is off (run `fetch-models --only minilm`)");
                None
            }
        };
        let p = LearnedPolicy {
            dir: dir.to_path_buf(),
            featurizer,
            model: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            baseline,
            embeddings: moka::sync::Cache::builder().max_capacity(10_000).build(),
        };
        match p.reload() {
            Ok(_) => {}
            Err(LearnedError::Missing(d)) => {
                tracing::warn!(dir = %d, "no router model: routing with the baseline policy until one appears there")
            }
            Err(e) => tracing::error!(error = %e, "router model not loaded: routing with the baseline policy"),
        }
        p
    }

    /// The model serving now, if any.
    pub fn current(&self) -> Option<Arc<RouterModel>> {
        self.model.load_full()
    }

    /// Load the directory's model and swap it in. On error the serving model stays.
    pub fn reload(&self) -> Result<ModelStatus, LearnedError> {
        match RouterModel::load(&self.dir) {
            Ok(m) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    classes = ?m.meta.classes,
                    threshold = m.meta.confidence_threshold,
                    data = %m.meta.training_data_sha256,
                    "router model loaded"
                );
                self.model.store(Some(Arc::new(m)));
                *self.last_error.lock().expect("lock") = None;
                Ok(self.status())
            }
            Err(e) => {
                *self.last_error.lock().expect("lock") = Some(e.to_string());
                Err(e)
            }
        }
    }

    pub fn status(&self) -> ModelStatus {
        let m = self.current();
        ModelStatus {
            loaded: m.is_some(),
            dir: self.dir.display().to_string(),
            embedder: self.featurizer.is_some(),
            classes: m.as_ref().map(|m| m.meta.classes.clone()).unwrap_or_default(),
            fallback_model: m.as_ref().map(|m| m.meta.fallback_model.clone()),
            confidence_threshold: m.as_ref().map(|m| m.meta.confidence_threshold),
            latency_weight: m.as_ref().map(|m| m.meta.latency_weight),
            training_data_sha256: m.as_ref().map(|m| m.meta.training_data_sha256.clone()),
            trained_at: m.as_ref().map(|m| m.meta.trained_at.clone()),
            error: self.last_error.lock().expect("lock").clone(),
        }
    }

    /// Poll the directory every `every`; a changed model.txt or meta.json is reloaded. A half-written
    /// model fails its checks and is retried at the next change (the trainer writes both files and
    /// then renames them into place).
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_seen = me.upgrade().map(|p| stamp(&p.dir));
            loop {
                tick.tick().await;
                let Some(p) = me.upgrade() else { return };
                let now = stamp(&p.dir);
                if Some(now) == last_seen {
                    continue;
                }
                last_seen = Some(now);
                if p.current().is_some_and(|m| m.stamp == now) {
                    continue;
                }
                let p2 = p.clone();
                match tokio::task::spawn_blocking(move || p2.reload()).await {
                    Ok(Ok(_)) => tracing::info!("router model changed on disk: reloaded"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "router model changed on disk but did not load; keeping the old one")
                    }
                    Err(e) => tracing::error!(error = %e, "router model reload panicked"),
                }
            }
        });
    }

    /// Whether the sentence embedder loaded (the semantic cache needs it).
    pub fn can_embed(&self) -> bool {
        self.featurizer.is_some()
    }

    /// The prompt's embedding (cached, and shared with the routing decision), if the embedder
    /// loaded. CPU work of tens of ms: call it off the async workers.
    pub fn embedding(&self, prompt: &str) -> Option<Result<Arc<Embedding>, PolicyError>> {
        Some(self.embed(self.featurizer.as_ref()?, prompt))
    }

    fn embed(&self, f: &Featurizer, prompt: &str) -> Result<Arc<Embedding>, PolicyError> {
        let key: [u8; 32] = Sha256::digest(prompt.as_bytes()).into();
        if let Some(e) = self.embeddings.get(&key) {
            return Ok(e);
        }
        let e = Arc::new(f.embedder().embed(prompt).map_err(|e| PolicyError::Failed(e.to_string()))?);
        self.embeddings.insert(key, e.clone());
        Ok(e)
    }
}

/// The least busy candidate serving `model`.
fn pick<'a>(candidates: &'a [Candidate], model: &str) -> Option<&'a Candidate> {
    candidates.iter().filter(|c| &*c.model == model).min_by(|a, b| a.in_flight.cmp(&b.in_flight).then(a.id.cmp(&b.id)))
}

fn signed(v: f64) -> String {
    format!("{}{v:.2}", if v >= 0.0 { "+" } else { "" })
}

impl RoutingPolicy for LearnedPolicy {
    fn name(&self) -> &str {
        if self.featurizer.is_some() && self.model.load().is_some() {
            "learned"
        } else {
            self.baseline_name()
        }
    }

    fn blocking(&self) -> bool {
        self.featurizer.is_some() && self.model.load().is_some()
    }

    fn decide(
        &self,
        ctx: &RoutingContext<'_>,
        candidates: &[Candidate],
        pref: Preference,
    ) -> Result<Decision, PolicyError> {
        let (Some(f), Some(model)) = (&self.featurizer, self.current()) else {
            return self.baseline.decide(ctx, candidates, pref);
        };
        // One model to choose from (a forced model, or one left healthy): nothing to predict.
        let first = candidates.first().ok_or(PolicyError::NoCandidate)?;
        if candidates.iter().all(|c| c.model == first.model) {
            let c = pick(candidates, &first.model).unwrap_or(first);
            return Ok(Decision {
                backend: c.id.clone(),
                model: c.model.clone(),
                confidence: 1.0,
                probabilities: BTreeMap::from([(c.model.to_string(), 1.0)]),
                reason: format!("only {} can serve this request", c.model),
                fallbacks: candidates.iter().filter(|o| o.id != c.id).map(|o| o.id.clone()).collect(),
                features: None,
                contributions: None,
            });
        }

        let emb = self.embed(f, ctx.prompt)?;
        let row = assemble(ctx.prompt, (*emb).clone(), &model.meta.pca);
        let pred = model.predict(&row.values)?;
        let meta = &model.meta;
        let probs: BTreeMap<String, f64> =
            meta.classes.iter().cloned().zip(pred.probabilities.iter().copied()).collect();
        if pred.probabilities.len() != meta.classes.len() {
            let (got, classes) = (pred.probabilities.len(), meta.classes.len());
            return Err(PolicyError::Failed(format!("the model gave {got} probabilities for {classes} classes")));
        }
        // The routing rule, shared with the trainer: the top class, or the fallback when unsure.
        let choice = meta.route(&pred.probabilities);
        let (top_i, top_p) = (choice.top, choice.top_p);
        let top = &meta.classes[top_i];

        let mut reason;
        let chosen: Option<&Candidate>;
        if choice.low_confidence {
            reason = format!(
                "low_confidence: best guess {top} at p={top_p:.2} is below the threshold {:.2}, so the largest model answers",
                meta.confidence_threshold
            );
            chosen = pick(candidates, &meta.fallback_model);
            if chosen.is_none() {
                reason.push_str(&format!(" ({} has no healthy backend here)", meta.fallback_model));
            }
        } else {
            reason = format!("learned: {top} is the best answer for its latency with p={top_p:.2}");
            chosen = pick(candidates, top);
            if chosen.is_none() {
                reason.push_str(&format!(" ({top} has no healthy backend here)"));
            }
        }
        // Whatever is left: the most probable model that has a candidate.
        let mut ranked: Vec<&Candidate> = candidates.iter().collect();
        let p = |c: &Candidate| probs.get(&*c.model).copied().unwrap_or(-1.0);
        ranked.sort_by(|a, b| p(b).total_cmp(&p(a)).then(a.in_flight.cmp(&b.in_flight)).then(a.id.cmp(&b.id)));
        let chosen = chosen.unwrap_or(ranked[0]);
        if !reason.contains(&*chosen.model) {
            reason.push_str(&format!("; chose {} instead", chosen.model));
        }

        // Contributions towards the chosen model's class (the top class if it is not a class).
        let ci = meta.classes.iter().position(|c| **c == *chosen.model).unwrap_or(top_i);
        let mut contrib: Vec<(String, f64)> =
            row.names.iter().cloned().zip(pred.contributions[ci].iter().copied()).collect();
        contrib.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        contrib.truncate(TOP_CONTRIBUTIONS);
        let factors: Vec<String> = contrib.iter().take(3).map(|(n, v)| format!("{n} {}", signed(*v))).collect();
        if !factors.is_empty() {
            reason.push_str(&format!("; top factors: {}", factors.join(", ")));
        }
        let features: BTreeMap<String, f64> =
            row.names.iter().cloned().zip(row.values.iter().map(|v| *v as f64)).collect();

        Ok(Decision {
            backend: chosen.id.clone(),
            model: chosen.model.clone(),
            confidence: probs.get(&*chosen.model).copied().unwrap_or(0.0),
            probabilities: probs,
            reason,
            fallbacks: ranked.iter().filter(|c| c.id != chosen.id).map(|c| c.id.clone()).collect(),
            features: Some(features),
            contributions: Some(contrib.into_iter().collect()),
        })
    }
}

impl LearnedPolicy {
    fn baseline_name(&self) -> &str {
        self.baseline.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyKind;

    fn committed_model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model")
    }

    #[test]
    fn a_corrupt_or_half_written_model_never_replaces_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        for f in [MODEL_FILE, META_FILE] {
            std::fs::copy(committed_model().join(f), dir.path().join(f)).unwrap();
        }
        let policy =
            LearnedPolicy::new(dir.path(), Path::new("/nonexistent"), BaselinePolicy { kind: PolicyKind::Smallest });
        let good = policy.status();
        assert!(good.loaded && good.error.is_none(), "{good:?}");
        let text = std::fs::read_to_string(committed_model().join(MODEL_FILE)).unwrap();
        // Half written (cut mid-tree), garbage, and a tree that points past its leaves.
        for broken in [&text[..text.len() / 2], "not a model", &text.replacen("left_child=", "left_child=99 ", 1)] {
            std::fs::write(dir.path().join(MODEL_FILE), broken).unwrap();
            let e = policy.reload().unwrap_err();
            assert!(matches!(e, LearnedError::Invalid { .. }), "{e}");
            let now = policy.status();
            assert!(now.loaded, "the old model keeps serving");
            assert_eq!(now.trained_at, good.trained_at);
            assert!(now.error.as_deref().is_some_and(|m| m.contains(MODEL_FILE)), "{now:?}");
        }
        // At start, a broken model is a clear error and the baseline routes.
        let fresh =
            LearnedPolicy::new(dir.path(), Path::new("/nonexistent"), BaselinePolicy { kind: PolicyKind::Smallest });
        let st = fresh.status();
        assert!(!st.loaded && st.error.as_deref().is_some_and(|m| m.contains("model.txt")), "{st:?}");
    }
}
