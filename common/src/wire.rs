//! The JSON bodies exchanged between clients, the router and the model services.
//!
//! The model services (`inference`) accept [`GenerateRequest`] on `POST /generate` and answer with
//! SSE `token` events carrying [`TokenEvent`] and one final `done` event carrying [`DoneStats`]
//! (or, with `stream: false`, one [`GenerateResponse`]). Every error is an [`ErrorBody`].
use serde::{Deserialize, Serialize};

/// `stop` may be given as one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// Body of `POST /generate` on a model service. Fields left out take the service's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
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
}

/// Payload of an SSE `event: token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// One of the request's stop strings appeared.
    StopSequence,
}

impl FinishReason {
    /// The OpenAI API knows only `stop` and `length`.
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Payload of the final SSE `event: done`, also embedded in [`GenerateResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneStats {
    /// The backend id from the catalog (m1 … m5).
    pub model_id: String,
    /// The model's name (for example `qwen2.5-coder-0.5b-instruct`).
    pub model: String,
    /// `cpu` or `cuda`: the device the tokens were really computed on.
    pub device: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    pub ttft_ms: f64,
    pub latency_ms: f64,
    /// Decode speed: completion tokens after the first, over the time after the first token.
    pub tokens_per_second: f64,
}

/// Body of a non-streaming `/generate` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub text: String,
    #[serde(flatten)]
    pub stats: DoneStats,
}

/// `GET /health` of a model service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthBody {
    /// `ok`, or `loading` (with HTTP 503) while the model loads and warms up.
    pub status: String,
    pub model_id: String,
    pub model: String,
    pub arch: String,
    pub device: String,
    /// The batch's load, once the model is loaded (older services leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchLoad>,
}

/// How full a model service's batch is: what a router needs to weigh sending it more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLoad {
    /// Sequences the batch holds at most (`--max-concurrent`).
    pub size: u32,
    /// Places free now: a request sent now starts at once.
    pub free: u32,
    /// Requests waiting for a place.
    pub queued: u32,
}

/// Every 4xx/5xx body: `{"error": {"message": ..., "type": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl ErrorBody {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody { error: ErrorDetail { message: message.into(), kind: kind.into() } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_is_an_alias_of_temp() {
        let r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x","temperature":0.5}"#).unwrap();
        assert_eq!(r.temp, Some(0.5));
    }

    #[test]
    fn stop_accepts_string_or_list() {
        let r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x","stop":"\n"}"#).unwrap();
        assert_eq!(r.stop.unwrap().into_vec(), vec!["\n".to_string()]);
        let r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x","stop":["a","b"]}"#).unwrap();
        assert_eq!(r.stop.unwrap().into_vec().len(), 2);
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(serde_json::from_str::<GenerateRequest>(r#"{"prompt":3}"#).is_err());
        assert!(serde_json::from_str::<GenerateRequest>(r#"{"prompt":"x","max_tokens":-1}"#).is_err());
    }

    #[test]
    fn error_body_shape() {
        let v = serde_json::to_value(ErrorBody::new("invalid_request_error", "bad")).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad");
    }
}
