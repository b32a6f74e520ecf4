//! The learned routing policy: the prompt featurizer (MiniLM embedding + text features, shared
//! with the trainer) and the LightGBM router model that `trainer train` writes (`model.txt` +
//! `meta.json`). The model predicts each model's answer quality for the prompt; the shared rule
//! ([`polyllm_common::router_model::choose`]) takes the model with the highest predicted quality
//! minus the cost weight times its expected latency now: the model's idle latency from training,
//! scaled by the load on its least busy backend (requests running and queued) when `--load-aware`.
//! The cost weight comes from the request, else `--cost-weight`, else the model's calibrated default.
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
use polyllm_common::router_model::{
    choose, class_rows, load_factor, RouterModelMeta, CLASS_FEATURE, META_FILE, MODEL_FILE,
};
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

/// What the model says about one prompt.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Predicted answer quality per class, same order as `meta.classes`.
    pub quality: Vec<f64>,
    /// The class rows the predictions came from (the prompt's features plus the class index).
    pub rows: Vec<Vec<f32>>,
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
        if booster.classes() != 1 {
            return Err(invalid(format!(
                "{MODEL_FILE} has {} outputs; a quality model has one (retrain with this build's trainer)",
                booster.classes()
            )));
        }
        Ok(RouterModel { booster, meta, dir: dir.to_path_buf(), stamp: before, loaded_at: SystemTime::now() })
    }

    /// Predicted quality of every class for one prompt's feature row.
    pub fn predict(&self, prompt_row: &[f32]) -> Result<Prediction, PolicyError> {
        let rows = class_rows(prompt_row, self.meta.classes.len());
        let mut quality = Vec::with_capacity(rows.len());
        for r in &rows {
            let p = self.booster.predict(r).map_err(|e| PolicyError::Failed(e.to_string()))?;
            quality.push(p.first().copied().ok_or_else(|| PolicyError::Failed("the model gave no output".into()))?);
        }
        Ok(Prediction { quality, rows })
    }

    /// Per-feature contributions (SHAP, LightGBM's `predict_contrib`) to one class row's score.
    pub fn contributions(&self, row: &[f32]) -> Result<Vec<f64>, PolicyError> {
        let c = self.booster.contributions(row).map_err(|e| PolicyError::Failed(e.to_string()))?;
        c.into_iter().next().ok_or_else(|| PolicyError::Failed("the model gave no contributions".into()))
    }
}

/// What `/router_model` and the admin reload report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub loaded: bool,
    pub dir: String,
    pub embedder: bool,
    pub classes: Vec<String>,
    /// The cost weight a request without one gets (`--cost-weight`, else the model's default).
    pub cost_weight: Option<f64>,
    /// The model's calibrated default and the quality target it was calibrated for.
    pub calibrated_cost_weight: Option<f64>,
    pub quality_target: Option<f64>,
    /// Per class, the expected latency of an idle backend (ms).
    pub latency_ms: Vec<f64>,
    pub load_aware: bool,
    pub training_data_sha256: Option<String>,
    pub trained_at: Option<String>,
    pub error: Option<String>,
}

/// The router's settings of the learned policy.
#[derive(Debug, Clone, Copy)]
pub struct LearnedOptions {
    /// `--cost-weight`: overrides the model's calibrated default (a request overrides both).
    pub cost_weight: Option<f64>,
    /// `--load-aware`: scale expected latencies by each backend's load.
    pub load_aware: bool,
}

impl Default for LearnedOptions {
    fn default() -> Self {
        LearnedOptions { cost_weight: None, load_aware: true }
    }
}

/// The policy object the router holds for its whole life; the model inside it is swappable.
pub struct LearnedPolicy {
    options: LearnedOptions,
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
    pub fn new(dir: &Path, embedder_dir: &Path, baseline: BaselinePolicy, options: LearnedOptions) -> Self {
        let featurizer = match Embedder::load(embedder_dir) {
            Ok(e) => Some(Featurizer::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "no sentence embedder: learned routing is off (run `fetch-models --only minilm`)");
                None
            }
        };
        let p = LearnedPolicy {
            options,
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
                    cost_weight = m.meta.cost_weight,
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
            cost_weight: self.options.cost_weight.or(m.as_ref().map(|m| m.meta.cost_weight)),
            calibrated_cost_weight: m.as_ref().map(|m| m.meta.cost_weight),
            quality_target: m.as_ref().map(|m| m.meta.quality_target),
            latency_ms: m.as_ref().map(|m| m.meta.latency_ms.clone()).unwrap_or_default(),
            load_aware: self.options.load_aware,
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
        let k = meta.classes.len();
        let w = ctx.cost_weight.or(self.options.cost_weight).unwrap_or(meta.cost_weight);
        let reference = meta.latency_ms[meta.largest()];

        // Each candidate's expected latency now: its model's idle latency times its load.
        let class_of = |c: &Candidate| meta.classes.iter().position(|m| **m == *c.model);
        let expected = |c: &Candidate, class: usize| {
            let load = if self.options.load_aware { load_factor(c.busy(), c.batch_size()) } else { 1.0 };
            meta.latency_ms[class] * load
        };
        // Per class, its quickest candidate; classes without one can never win.
        let mut best: Vec<Option<(&Candidate, f64)>> = vec![None; k];
        for c in candidates {
            let Some(i) = class_of(c) else { continue };
            let l = expected(c, i);
            if best[i].is_none_or(|(b, bl)| l < bl || (l == bl && c.id < b.id)) {
                best[i] = Some((c, l));
            }
        }
        if best.iter().all(Option::is_none) {
            // No candidate serves a model the router model knows: the baseline decides.
            return self.baseline.decide(ctx, candidates, pref);
        }
        let quality: Vec<f64> = (0..k).map(|i| if best[i].is_some() { pred.quality[i] } else { f64::NAN }).collect();
        let latency: Vec<f64> = (0..k).map(|i| best[i].map_or(f64::INFINITY, |(_, l)| l)).collect();
        let ci = choose(&quality, &latency, reference, w);
        let Some((chosen, chosen_ms)) = best[ci] else {
            return self.baseline.decide(ctx, candidates, pref);
        };

        let utility = |c: &Candidate| match class_of(c) {
            Some(i) => pred.quality[i] - w * expected(c, i) / reference,
            None => f64::NEG_INFINITY,
        };
        let mut ranked: Vec<&Candidate> = candidates.iter().filter(|c| c.id != chosen.id).collect();
        ranked.sort_by(|a, b| {
            utility(b).total_cmp(&utility(a)).then(a.in_flight.cmp(&b.in_flight)).then(a.id.cmp(&b.id))
        });

        let secs = |ms: f64| format!("{:.1} s", ms / 1000.0);
        let busy = |c: &Candidate| {
            let b = c.busy();
            if self.options.load_aware && b > 0 {
                format!(", {b} busy of {}", c.batch_size())
            } else {
                String::new()
            }
        };
        let mut reason = format!(
            "learned: {} (predicted quality {:.2}, ~{}{}) has the best quality for its latency at cost weight {w:.2}",
            chosen.model,
            pred.quality[ci],
            secs(chosen_ms),
            busy(chosen)
        );
        let top = (0..k).filter(|&i| best[i].is_some()).max_by(|&a, &b| pred.quality[a].total_cmp(&pred.quality[b]));
        if let Some(t) = top.filter(|&t| t != ci) {
            if let Some((c, l)) = best[t] {
                reason.push_str(&format!(
                    "; {} would answer at {:.2} but in ~{}{}",
                    c.model,
                    pred.quality[t],
                    secs(l),
                    busy(c)
                ));
            }
        }

        // Contributions towards the chosen model's predicted quality.
        let names: Vec<String> = row.names.iter().cloned().chain(std::iter::once(CLASS_FEATURE.to_string())).collect();
        let phi = model.contributions(&pred.rows[ci])?;
        let mut contrib: Vec<(String, f64)> = names.iter().cloned().zip(phi.iter().copied()).collect();
        contrib.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        contrib.truncate(TOP_CONTRIBUTIONS);
        let factors: Vec<String> = contrib.iter().take(3).map(|(n, v)| format!("{n} {}", signed(*v))).collect();
        if !factors.is_empty() {
            reason.push_str(&format!("; top factors: {}", factors.join(", ")));
        }
        let mut features: BTreeMap<String, f64> =
            row.names.iter().cloned().zip(row.values.iter().map(|v| *v as f64)).collect();
        features.insert("cost_weight".into(), w);
        let probabilities: BTreeMap<String, f64> =
            meta.classes.iter().cloned().zip(pred.quality.iter().copied()).collect();

        Ok(Decision {
            backend: chosen.id.clone(),
            model: chosen.model.clone(),
            confidence: pred.quality[ci].clamp(0.0, 1.0),
            probabilities,
            reason,
            fallbacks: ranked.iter().map(|c| c.id.clone()).collect(),
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
        let policy = LearnedPolicy::new(
            dir.path(),
            Path::new("/nonexistent"),
            BaselinePolicy { kind: PolicyKind::Smallest },
            LearnedOptions::default(),
        );
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
        let fresh = LearnedPolicy::new(
            dir.path(),
            Path::new("/nonexistent"),
            BaselinePolicy { kind: PolicyKind::Smallest },
            LearnedOptions::default(),
        );
        let st = fresh.status();
        assert!(!st.loaded && st.error.as_deref().is_some_and(|m| m.contains("model.txt")), "{st:?}");
    }

    /// The committed model on real MiniLM features, three backends by hand: the cost weight and a
    /// busy largest model move the choice the way the rule says.
    #[test]
    fn the_knob_and_the_load_move_the_choice() {
        use crate::backends::Backend;
        use crate::policy::PromptFeatures;
        use polyllm_common::wire::BatchLoad;
        let embedder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
        let mk = |opts| {
            LearnedPolicy::new(&committed_model(), &embedder, BaselinePolicy { kind: PolicyKind::Smallest }, opts)
        };
        let policy = mk(LearnedOptions::default());
        assert_eq!(policy.name(), "learned", "the committed model and the embedder must load: {:?}", policy.status());
        let blind = mk(LearnedOptions { cost_weight: None, load_aware: false });
        let meta = policy.current().unwrap().meta.clone();
        let backends: Vec<Arc<Backend>> = meta
            .classes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let b = Backend::new(&format!("m{}", i + 1), "http://127.0.0.1:9", None, None);
                b.force_health(true, m, "cpu");
                Arc::new(b)
            })
            .collect();
        let idle: Vec<Candidate> = backends.iter().map(Candidate::of).collect();
        let mut busy = idle.clone();
        let largest = busy.last_mut().unwrap();
        largest.batch = Some(BatchLoad { size: 4, free: 0, queued: 8 });
        largest.others = 12;
        let largest_model = meta.classes.last().unwrap().clone();
        let fastest = meta.latency_ms.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;

        let prompts = [
            "Write a Python function `merge_intervals(intervals)` that merges overlapping intervals. Reply with only the code in a ```python block.",
            "Write a Python function `is_prime(n)` that returns True when n is prime. Reply with only the code in a ```python block.",
            "What is 17% of 340? Answer with just the number.",
            "Explain in one or two sentences what a hash table is.",
            "Sort these words in alphabetical order: pear, apple, fig. Give them as a comma-separated list.",
            "What day of the week was March 3, 1999?",
        ];
        let mut moved = 0;
        for prompt in prompts {
            let ctx = |w: Option<f64>| RoutingContext {
                prompt,
                features: PromptFeatures::of(prompt),
                chat: false,
                max_tokens: None,
                temp: None,
                cost_weight: w,
            };
            let d = policy.decide(&ctx(None), &idle, Preference::Auto).unwrap();
            let q = &d.probabilities;
            assert_eq!(q.len(), meta.classes.len(), "{q:?}");
            assert!(q.values().all(|v| (0.0..=1.0).contains(v)), "{q:?}");
            // Weight 0: the best predicted quality; the highest weight: the fastest model.
            let d0 = policy.decide(&ctx(Some(0.0)), &idle, Preference::Auto).unwrap();
            let top = q.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(&*d0.model, top.as_str(), "{}", d0.reason);
            let dmax = policy.decide(&ctx(Some(100.0)), &idle, Preference::Auto).unwrap();
            assert_eq!(*dmax.model, *meta.classes[fastest], "{}", dmax.reason);
            // Load: a largest model with a full batch and 8 waiting loses the prompts it won idle,
            // unless the router is told to ignore load.
            if *d.model == *largest_model {
                let db = policy.decide(&ctx(None), &busy, Preference::Auto).unwrap();
                assert_ne!(*db.model, *largest_model, "{}", db.reason);
                assert!(db.reason.contains("12 busy of 4"), "{}", db.reason);
                let dblind = blind.decide(&ctx(None), &busy, Preference::Auto).unwrap();
                assert_eq!(*dblind.model, *largest_model, "{}", dblind.reason);
                moved += 1;
            }
        }
        assert!(moved >= 1, "no prompt went to the largest model idle: the load case was not exercised");
    }
}
