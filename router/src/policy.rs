//! Routing: the [`RoutingPolicy`] trait every policy implements (the baseline here, the learned
//! LightGBM policy later), and [`plan`], which narrows the registry to the candidates a request
//! may use (healthy, matching a forced model, matching `prefer_backend` with GPU→CPU fallback),
//! asks the policy, and turns its decision into the ordered cascade the proxy walks.
use crate::backends::{Backend, Registry};
use crate::config::PolicyKind;
use crate::error::ApiError;
use polyllm_common::route::Preference;
use polyllm_common::wire::BatchLoad;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Cheap facts about the prompt, for policies that want them without re-scanning the text.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptFeatures {
    pub chars: usize,
    pub words: usize,
    pub lines: usize,
    /// A rough token count (chars / 4), good enough to rank by length.
    pub approx_tokens: usize,
    /// The prompt looks like it contains code (fences, braces, `def`/`fn`/`class` …).
    pub has_code: bool,
}

impl PromptFeatures {
    pub fn of(prompt: &str) -> Self {
        let chars = prompt.chars().count();
        let has_code = prompt.contains("```")
            || prompt.contains("def ")
            || prompt.contains("fn ")
            || prompt.contains("class ")
            || prompt.contains("import ")
            || prompt.contains("#include")
            || (prompt.contains('{') && prompt.contains('}'))
            || prompt.contains("();");
        PromptFeatures {
            chars,
            words: prompt.split_whitespace().count(),
            lines: prompt.lines().count().max(1),
            approx_tokens: chars.div_ceil(4),
            has_code,
        }
    }
}

/// What a policy may look at about the request.
#[derive(Debug, Clone)]
pub struct RoutingContext<'a> {
    /// The (normalized) prompt; for chat requests the messages' text, one per line.
    pub prompt: &'a str,
    pub features: PromptFeatures,
    /// The request needs a chat template (OpenAI chat, or `chat: true`).
    pub chat: bool,
    pub max_tokens: Option<u32>,
    pub temp: Option<f64>,
    /// The request's `cost_weight`, if it set one.
    pub cost_weight: Option<f64>,
}

/// A healthy backend a request may go to, as a snapshot taken for this request.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub backend: Arc<Backend>,
    pub id: Arc<str>,
    pub model: Arc<str>,
    /// `cpu` or `cuda` as reported by the backend.
    pub device: Arc<str>,
    pub in_flight: i64,
    /// The service's batch at its last health check, if it reports one.
    pub batch: Option<BatchLoad>,
    /// Requests running or waiting there at the last health check that were not the router's.
    pub others: u32,
    pub ttft_ms: Option<f64>,
    pub latency_ms: Option<f64>,
}

impl Candidate {
    pub fn of(backend: &Arc<Backend>) -> Self {
        let live = backend.live();
        Candidate {
            backend: backend.clone(),
            id: backend.id.clone(),
            model: live.model,
            device: live.device,
            in_flight: backend.in_flight(),
            batch: live.batch,
            others: live
                .batch
                .map_or(0, |b| (b.size.saturating_sub(b.free) + b.queued).saturating_sub(live.ours_at_health)),
            ttft_ms: backend.ttft_ms(),
            latency_ms: backend.latency_ms(),
        }
    }

    /// Requests running or waiting on the backend: the router's own now, plus other clients' at
    /// the last health check (the service's count then, less the router's own then), so a stale
    /// health figure never counts the router's finished requests.
    pub fn busy(&self) -> u32 {
        self.in_flight.max(0) as u32 + self.others
    }

    /// Sequences the backend decodes together (1 when it does not say).
    pub fn batch_size(&self) -> u32 {
        self.batch.map_or(1, |b| b.size.max(1))
    }

    pub fn is_gpu(&self) -> bool {
        matches!(&*self.device, "cuda" | "gpu" | "metal")
    }
}

/// A policy's answer.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The chosen backend id (one of the candidates).
    pub backend: Arc<str>,
    pub model: Arc<str>,
    /// The policy's confidence in its choice, 0..=1.
    pub confidence: f64,
    /// model -> the policy's score of it for this prompt, 0..=1 (the learned policy: its predicted
    /// answer quality; the baseline: 1 for the chosen model).
    pub probabilities: BTreeMap<String, f64>,
    /// One human-readable sentence on why.
    pub reason: String,
    /// Further backend ids to try, best first, if the chosen one fails. Candidates left out are
    /// tried after these, ordered by their model's probability.
    pub fallbacks: Vec<Arc<str>>,
    /// Optional: the features the policy computed.
    pub features: Option<BTreeMap<String, f64>>,
    /// Optional: each feature's contribution to the decision.
    pub contributions: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no candidate")]
    NoCandidate,
    #[error("policy failed: {0}")]
    Failed(String),
}

/// A routing policy. `decide` is called on the request path with at least one candidate, all
/// healthy and already filtered by forced model and preference; it must be fast (no I/O).
pub trait RoutingPolicy: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// True when `decide` does real work (the learned policy embeds the prompt, tens of ms of
    /// CPU): the pipeline then calls it on the blocking pool instead of an async worker.
    fn blocking(&self) -> bool {
        false
    }
    fn decide(
        &self,
        ctx: &RoutingContext<'_>,
        candidates: &[Candidate],
        preference: Preference,
    ) -> Result<Decision, PolicyError>;
}

pub use polyllm_common::catalog::model_params;

fn human_params(p: Option<f64>) -> String {
    match p {
        Some(p) if p >= 1e9 => format!("{:.1}B params", p / 1e9),
        Some(p) => format!("{:.0}M params", p / 1e6),
        None => "size unknown".to_string(),
    }
}

/// The baseline: a fixed, explainable rule. It does not estimate how good each model would be,
/// so its probabilities are one-hot on the chosen model and its confidence is 1.
pub struct BaselinePolicy {
    pub kind: PolicyKind,
}

impl BaselinePolicy {
    fn rank(&self, candidates: &[Candidate]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..candidates.len()).collect();
        match self.kind {
            PolicyKind::Smallest => idx.sort_by(|&a, &b| {
                let (ca, cb) = (&candidates[a], &candidates[b]);
                let pa = model_params(&ca.model).unwrap_or(f64::INFINITY);
                let pb = model_params(&cb.model).unwrap_or(f64::INFINITY);
                pa.total_cmp(&pb).then(ca.in_flight.cmp(&cb.in_flight)).then(ca.id.cmp(&cb.id))
            }),
            PolicyKind::Latency => idx.sort_by(|&a, &b| {
                let score = |c: &Candidate| c.ttft_ms.unwrap_or(0.0) * (1 + c.in_flight.max(0)) as f64;
                let (ca, cb) = (&candidates[a], &candidates[b]);
                score(ca).total_cmp(&score(cb)).then(ca.id.cmp(&cb.id))
            }),
        }
        idx
    }
}

impl RoutingPolicy for BaselinePolicy {
    fn name(&self) -> &str {
        match self.kind {
            PolicyKind::Smallest => "baseline-smallest",
            PolicyKind::Latency => "baseline-latency",
        }
    }

    fn decide(
        &self,
        _ctx: &RoutingContext<'_>,
        candidates: &[Candidate],
        _pref: Preference,
    ) -> Result<Decision, PolicyError> {
        let order = self.rank(candidates);
        let best = &candidates[*order.first().ok_or(PolicyError::NoCandidate)?];
        let reason = match self.kind {
            PolicyKind::Smallest => format!(
                "baseline: smallest healthy model ({}, {})",
                best.model,
                human_params(model_params(&best.model))
            ),
            PolicyKind::Latency => match best.ttft_ms {
                Some(t) => {
                    format!("baseline: lowest recent latency ({t:.0} ms to first token, {} in flight)", best.in_flight)
                }
                None => "baseline: lowest recent latency (no sample yet for this backend)".to_string(),
            },
        };
        let mut probabilities: BTreeMap<String, f64> = candidates.iter().map(|c| (c.model.to_string(), 0.0)).collect();
        probabilities.insert(best.model.to_string(), 1.0);
        Ok(Decision {
            backend: best.id.clone(),
            model: best.model.clone(),
            confidence: 1.0,
            probabilities,
            reason,
            fallbacks: order[1..].iter().map(|&i| candidates[i].id.clone()).collect(),
            features: None,
            contributions: None,
        })
    }
}

/// The routing outcome for one request: the decision and the backends to try, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub decision: Decision,
    pub cascade: Vec<Arc<Backend>>,
    /// The id of the first backend that belongs only to the fallback model (if any).
    pub fallback_from: Option<usize>,
}

fn matches_model(b: &Backend, name: &str) -> bool {
    &*b.id == name || b.live().model.eq_ignore_ascii_case(name)
}

/// Narrows the registry to this request's candidates and asks the policy.
pub fn plan(
    policy: &dyn RoutingPolicy,
    registry: &Registry,
    ctx: &RoutingContext<'_>,
    preference: Preference,
    forced: Option<&str>,
    fallback_model: Option<&str>,
) -> Result<Plan, ApiError> {
    let forced = forced.filter(|m| !m.is_empty() && *m != "auto");
    let mut candidates: Vec<Candidate> = Vec::with_capacity(registry.all().len());
    let mut known = forced.is_none();
    for b in registry.all() {
        if let Some(m) = forced {
            if !matches_model(b, m) {
                continue;
            }
            known = true;
        }
        if b.is_healthy() {
            candidates.push(Candidate::of(b));
        }
    }
    if !known {
        return Err(ApiError::ModelNotFound(format!("unknown model or backend {:?}", forced.unwrap_or_default())));
    }
    // Chat needs a chat template: leave out backends known to lack one, unless none is left.
    if ctx.chat && candidates.iter().any(|c| c.backend.supports_chat() != Some(false)) {
        candidates.retain(|c| c.backend.supports_chat() != Some(false));
    }
    if candidates.is_empty() {
        return Err(ApiError::NoBackend(match forced {
            Some(m) => format!("no healthy backend serves {m:?}"),
            None => "no healthy backend".to_string(),
        }));
    }

    let mut note = None;
    if preference != Preference::Auto {
        let want_gpu = preference == Preference::Gpu;
        let matching: Vec<Candidate> = candidates.iter().filter(|c| c.is_gpu() == want_gpu).cloned().collect();
        if matching.is_empty() {
            note = Some(if want_gpu {
                "no healthy GPU backend, fell back to CPU"
            } else {
                "no healthy CPU backend, fell back to GPU"
            });
        } else {
            candidates = matching;
        }
    }

    let mut decision = policy
        .decide(ctx, &candidates, preference)
        .map_err(|e| ApiError::Internal(format!("routing policy {}: {e}", policy.name())))?;
    let Some(first) = candidates.iter().find(|c| c.id == decision.backend) else {
        return Err(ApiError::Internal(format!(
            "routing policy {} chose {} which is not a candidate",
            policy.name(),
            decision.backend
        )));
    };
    if let Some(n) = note {
        decision.reason = format!("{n}; {}", decision.reason);
    }

    let mut cascade: Vec<Arc<Backend>> = Vec::with_capacity(registry.all().len());
    cascade.push(first.backend.clone());
    for id in &decision.fallbacks {
        if let Some(c) = candidates.iter().find(|c| &c.id == id) {
            if !cascade.iter().any(|b| b.id == c.id) {
                cascade.push(c.backend.clone());
            }
        }
    }
    let mut rest: Vec<&Candidate> = candidates.iter().filter(|c| !cascade.iter().any(|b| b.id == c.id)).collect();
    let p = |c: &Candidate| decision.probabilities.get(&*c.model).copied().unwrap_or(0.0);
    rest.sort_by(|a, b| p(b).total_cmp(&p(a)));
    cascade.extend(rest.into_iter().map(|c| c.backend.clone()));

    let mut fallback_from = None;
    if let (None, Some(fb)) = (forced, fallback_model) {
        for b in registry.all() {
            let capable = !ctx.chat || b.supports_chat() != Some(false);
            if b.is_healthy() && capable && matches_model(b, fb) && !cascade.iter().any(|c| c.id == b.id) {
                fallback_from.get_or_insert(cascade.len());
                cascade.push(b.clone());
            }
        }
    }
    Ok(Plan { decision, cascade, fallback_from })
}

pub fn baseline(kind: PolicyKind) -> Arc<dyn RoutingPolicy> {
    Arc::new(BaselinePolicy { kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mk = |id: &str, model: &str, device: &str, healthy: bool| {
            let b = Backend::new(id, &format!("http://{id}"), None, None);
            b.force_health(healthy, model, device);
            b
        };
        Registry::new(vec![
            mk("m1", "gemma-3-270m", "cpu", true),
            mk("m2", "qwen2.5-coder-0.5b-instruct", "cpu", true),
            mk("m3", "qwen2.5-coder-1.5b-instruct", "cpu", true),
            mk("m4", "qwen2.5-coder-1.5b-instruct", "cuda", true),
            mk("m5", "qwen2.5-coder-0.5b-instruct", "cuda", false),
        ])
    }

    fn ctx() -> RoutingContext<'static> {
        RoutingContext {
            prompt: "hi",
            features: PromptFeatures::of("hi"),
            chat: false,
            max_tokens: None,
            temp: None,
            cost_weight: None,
        }
    }

    fn ids(p: &Plan) -> Vec<String> {
        p.cascade.iter().map(|b| b.id.to_string()).collect()
    }

    #[test]
    fn parses_model_sizes() {
        assert_eq!(model_params("gemma-3-270m"), Some(270e6));
        assert_eq!(model_params("qwen2.5-coder-0.5b-instruct"), Some(0.5e9));
        assert_eq!(model_params("qwen2.5-coder-1.5b-instruct"), Some(1.5e9));
        assert_eq!(model_params("mystery"), None);
    }

    #[test]
    fn smallest_first_and_preference_filters() {
        let reg = registry();
        let pol = BaselinePolicy { kind: PolicyKind::Smallest };
        let p = plan(&pol, &reg, &ctx(), Preference::Auto, None, None).unwrap();
        assert_eq!(ids(&p), ["m1", "m2", "m3", "m4"]);
        assert_eq!(&*p.decision.model, "gemma-3-270m");
        assert_eq!(p.decision.probabilities["gemma-3-270m"], 1.0);
        assert!(p.decision.reason.contains("smallest"), "{}", p.decision.reason);

        let p = plan(&pol, &reg, &ctx(), Preference::Gpu, None, None).unwrap();
        assert_eq!(ids(&p), ["m4"], "only the healthy cuda backend");
        assert!(!p.decision.reason.contains("fell back"));

        let p = plan(&pol, &reg, &ctx(), Preference::Cpu, None, None).unwrap();
        assert_eq!(ids(&p), ["m1", "m2", "m3"]);
    }

    #[test]
    fn gpu_falls_back_to_cpu_and_says_so() {
        let reg = registry();
        reg.get("m4").unwrap().force_health(false, "qwen2.5-coder-1.5b-instruct", "cuda");
        let pol = BaselinePolicy { kind: PolicyKind::Smallest };
        let p = plan(&pol, &reg, &ctx(), Preference::Gpu, None, None).unwrap();
        assert_eq!(ids(&p)[0], "m1");
        assert!(p.decision.reason.starts_with("no healthy GPU backend, fell back to CPU"), "{}", p.decision.reason);
    }

    #[test]
    fn forced_model_and_fallback_model() {
        let reg = registry();
        let pol = BaselinePolicy { kind: PolicyKind::Smallest };
        let p = plan(&pol, &reg, &ctx(), Preference::Auto, Some("qwen2.5-coder-1.5b-instruct"), None).unwrap();
        assert_eq!(ids(&p), ["m3", "m4"]);
        let p = plan(&pol, &reg, &ctx(), Preference::Auto, Some("m4"), Some("m1")).unwrap();
        assert_eq!(ids(&p), ["m4"], "a forced model never falls back to another");
        assert!(matches!(
            plan(&pol, &reg, &ctx(), Preference::Auto, Some("nope"), None),
            Err(ApiError::ModelNotFound(_))
        ));
        assert!(matches!(plan(&pol, &reg, &ctx(), Preference::Auto, Some("m5"), None), Err(ApiError::NoBackend(_))));

        let p = plan(&pol, &reg, &ctx(), Preference::Gpu, None, Some("gemma-3-270m")).unwrap();
        assert_eq!(ids(&p), ["m4", "m1"]);
        assert_eq!(p.fallback_from, Some(1));
    }

    #[test]
    fn latency_rule_prefers_fast_and_idle() {
        let reg = registry();
        reg.get("m1").unwrap().record_success(std::time::Duration::from_millis(300), std::time::Duration::from_secs(1));
        reg.get("m2").unwrap().record_success(std::time::Duration::from_millis(100), std::time::Duration::from_secs(1));
        reg.get("m3").unwrap().record_success(std::time::Duration::from_millis(200), std::time::Duration::from_secs(1));
        reg.get("m4").unwrap().record_success(std::time::Duration::from_millis(50), std::time::Duration::from_secs(1));
        let m = Arc::new(crate::metrics::Metrics::new());
        let _busy = (reg.get("m4").unwrap().begin(&m), reg.get("m4").unwrap().begin(&m));
        let pol = BaselinePolicy { kind: PolicyKind::Latency };
        let p = plan(&pol, &reg, &ctx(), Preference::Auto, None, None).unwrap();
        assert_eq!(ids(&p), ["m2", "m4", "m3", "m1"]);
    }

    #[test]
    fn chat_skips_backends_without_a_template() {
        let reg = registry();
        reg.get("m1").unwrap().set_supports_chat(false);
        let pol = BaselinePolicy { kind: PolicyKind::Smallest };
        let mut c = ctx();
        c.chat = true;
        let p = plan(&pol, &reg, &c, Preference::Cpu, None, None).unwrap();
        assert_eq!(ids(&p), ["m2", "m3"]);
        c.chat = false;
        let p = plan(&pol, &reg, &c, Preference::Cpu, None, None).unwrap();
        assert_eq!(ids(&p)[0], "m1");
        c.chat = true;
        let p = plan(&pol, &reg, &c, Preference::Auto, Some("m1"), None).unwrap();
        assert_eq!(ids(&p), ["m1"], "when nothing else is allowed the request still goes there");
    }

    #[test]
    fn preference_parsing() {
        assert_eq!("gpu".parse::<Preference>().unwrap(), Preference::Gpu);
        assert!("tpu".parse::<Preference>().is_err());
    }
}
