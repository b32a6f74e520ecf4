//! The router's own wire types, for its clients (UI, load tests, benchmarks): the body of the
//! router's `POST /generate` (the service's request plus [`Routing`]), the typed [`Preference`],
//! and the payloads of the SSE `route` and `done` events it sends around the relayed `token`
//! events.
use crate::validation::ValidationError;
use crate::wire::{DoneStats, GenerateRequest};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// `prefer_backend` of a router request: which device class the client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    /// The policy chooses (the default).
    #[default]
    Auto,
    Cpu,
    /// A GPU backend, falling back to CPU when none is healthy.
    Gpu,
}

impl Preference {
    pub fn as_str(self) -> &'static str {
        match self {
            Preference::Auto => "auto",
            Preference::Cpu => "cpu",
            Preference::Gpu => "gpu",
        }
    }
}

impl FromStr for Preference {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        match s {
            "auto" => Ok(Preference::Auto),
            "cpu" => Ok(Preference::Cpu),
            "gpu" => Ok(Preference::Gpu),
            other => Err(ValidationError::UnknownPreference(format!("{other:?}"))),
        }
    }
}

impl<'de> Deserialize<'de> for Preference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The fields a router request adds to a model service's request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// `cpu`, `gpu` or `auto` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_backend: Option<Preference>,
    /// Force a model name or a backend id; `auto` or absent lets the policy choose. (On the
    /// OpenAI endpoints this is OpenAI's own `model` field.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether a close paraphrase may be answered from the cache; absent: the router's
    /// `--semantic-cache` setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_cache: Option<bool>,
    /// The learned router's quality/latency knob for this request: how much predicted quality one
    /// largest-model latency is worth (0: the best predicted answer whatever it costs; higher:
    /// faster models). Absent: the router's `--cost-weight`, else the model's calibrated default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_weight: Option<f64>,
}

impl Routing {
    /// The request's cost weight, checked: a number in [0, MAX_COST_WEIGHT].
    pub fn cost_weight(&self) -> Result<Option<f64>, crate::validation::ValidationError> {
        match self.cost_weight {
            Some(w) if !(0.0..=crate::validation::MAX_COST_WEIGHT).contains(&w) => {
                Err(crate::validation::ValidationError::CostWeight(w))
            }
            w => Ok(w),
        }
    }

    /// The forced model, if any (`auto` and the empty string force nothing).
    pub fn forced_model(&self) -> Option<String> {
        self.model.clone().filter(|m| !m.is_empty() && m != "auto")
    }
}

/// A router request: a model service's request (`T`) plus the [`Routing`] fields, in one JSON
/// object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Routed<T> {
    #[serde(flatten)]
    pub request: T,
    #[serde(flatten)]
    pub routing: Routing,
}

/// Body of the router's `POST /generate`.
pub type RouterGenerateRequest = Routed<GenerateRequest>;

/// Payload of the SSE `event: route`, sent before any token (and again if a fallback moves the
/// request to another backend before its first token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteEvent {
    pub request_id: String,
    pub model: String,
    /// The backend id (m1 … m5).
    pub backend: String,
    pub device: String,
    pub confidence: f64,
    /// model -> the policy's score of it, 0..=1 (the learned policy: predicted answer quality).
    pub probabilities: BTreeMap<String, f64>,
    pub reason: String,
    /// `hit`, `semantic` (a close paraphrase's answer) or `miss`.
    pub cache: String,
    /// With a semantic hit: the cosine similarity of the prompt to the one that was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// The features the policy computed, when it reports them (the learned policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<BTreeMap<String, f64>>,
    /// Each feature's contribution to the decision, when the policy reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributions: Option<BTreeMap<String, f64>>,
}

/// Payload of the router's SSE `event: done`: the backend's stats plus the router's timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterDone {
    #[serde(flatten)]
    pub stats: DoneStats,
    pub request_id: String,
    pub cache: String,
    pub routing_ms: f64,
    pub cache_ms: f64,
    pub total_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FinishReason;

    #[test]
    fn done_flattens_the_backend_stats() {
        let d = RouterDone {
            stats: DoneStats {
                model_id: "m1".into(),
                model: "x".into(),
                device: "cpu".into(),
                prompt_tokens: 1,
                completion_tokens: 2,
                finish_reason: FinishReason::Stop,
                ttft_ms: 1.0,
                latency_ms: 2.0,
                tokens_per_second: 3.0,
            },
            request_id: "r".into(),
            cache: "miss".into(),
            routing_ms: 0.1,
            cache_ms: 0.2,
            total_ms: 3.0,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["completion_tokens"], 2);
        assert_eq!(v["total_ms"], 3.0);
        let back: RouterDone = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn request_accepts_temperature_alias_and_routing_fields() {
        let r: RouterGenerateRequest =
            serde_json::from_str(r#"{"prompt":"x","temperature":0,"prefer_backend":"gpu","model":"m2"}"#).unwrap();
        assert_eq!(r.request.temp, Some(0.0));
        assert_eq!(r.routing.prefer_backend, Some(Preference::Gpu));
        assert_eq!(r.routing.forced_model().as_deref(), Some("m2"));
        // What the router sends on is the service's request alone, which the service reads back.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["prefer_backend"], "gpu");
        let inner: GenerateRequest = serde_json::from_value(serde_json::to_value(&r.request).unwrap()).unwrap();
        assert_eq!(inner, r.request);
        let auto: RouterGenerateRequest = serde_json::from_str(r#"{"prompt":"x","model":"auto"}"#).unwrap();
        assert_eq!(auto.routing.forced_model(), None);
    }

    #[test]
    fn an_unknown_preference_is_its_own_error() {
        let r: RouterGenerateRequest = serde_json::from_str(r#"{"prompt":"x","cost_weight":0.25}"#).unwrap();
        assert_eq!(r.routing.cost_weight(), Ok(Some(0.25)));
        for bad in [r#"{"prompt":"x","cost_weight":-1}"#, r#"{"prompt":"x","cost_weight":1e9}"#] {
            let r: RouterGenerateRequest = serde_json::from_str(bad).unwrap();
            let e = r.routing.cost_weight().unwrap_err();
            assert!(e.to_string().starts_with("cost_weight must be a number from 0 to 100"), "{e}");
        }
        let e = crate::validation::parse_json::<RouterGenerateRequest>(br#"{"prompt":"x","prefer_backend":"tpu"}"#)
            .unwrap_err();
        assert_eq!(e, ValidationError::UnknownPreference("\"tpu\"".into()));
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_string(), r#"prefer_backend must be "cpu", "gpu" or "auto", not "tpu""#);
        let e = crate::validation::parse_json::<RouterGenerateRequest>(br#"{"prompt":"x","prefer_backend":3}"#)
            .unwrap_err();
        assert_eq!(e.status(), 422, "a number is a wrong type: {e}");
    }
}
