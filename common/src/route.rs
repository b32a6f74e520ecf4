//! The router's own wire types, for its clients (UI, load tests, benchmarks): the body of the
//! router's `POST /generate`, and the payloads of the SSE `route` and `done` events it sends
//! around the relayed `token` events.
use crate::wire::{DoneStats, StopSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Body of the router's `POST /generate`: the model service's fields plus the routing inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterGenerateRequest {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, alias = "temperature", skip_serializing_if = "Option::is_none")]
    pub temp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<bool>,
    /// `cpu`, `gpu` or `auto` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_backend: Option<String>,
    /// Force a model name or a backend id; `auto` or absent lets the policy choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

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
    /// model -> the policy's probability for it.
    pub probabilities: BTreeMap<String, f64>,
    pub reason: String,
    /// `hit` or `miss`.
    pub cache: String,
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
        assert_eq!(r.temp, Some(0.0));
        assert_eq!(r.prefer_backend.as_deref(), Some("gpu"));
        assert_eq!(r.model.as_deref(), Some("m2"));
    }
}
