//! The router's request checks: the contract's rules ([`polyllm_common::validation`]) that need
//! no model (JSON shape, sampling fields, prompt length, `prefer_backend`), made before a backend
//! is tied up, with the same errors the model service gives. A valid request becomes a
//! [`RouterRequest`]: the routing inputs plus the exact body the router will send to a backend.
use crate::cache::normalize_prompt;
use crate::error::ApiError;
use bytes::Bytes;
use polyllm_common::route::{Preference, RouterGenerateRequest};
use polyllm_common::validation::{check_prompt, parse_json, SamplingInput};
use polyllm_common::wire::GenerateRequest;

/// How the router talks to the backend for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /generate`: SSE `token`/`done`/`error` events.
    Generate,
    /// `POST /v1/chat/completions` with `stream: true`: OpenAI chunks ending in `[DONE]`.
    OpenAiChat,
}

impl Protocol {
    pub fn path(self) -> &'static str {
        match self {
            Protocol::Generate => "/generate",
            Protocol::OpenAiChat => "/v1/chat/completions",
        }
    }
}

/// A validated request, ready to be cached, routed and proxied.
#[derive(Debug, Clone)]
pub struct RouterRequest {
    /// The normalized prompt (for chat requests: the messages' contents, one per line), for the
    /// policy, the prompt hash and the response log.
    pub prompt: String,
    /// The request needs a chat template.
    pub chat: bool,
    pub max_tokens: Option<u32>,
    pub temp: Option<f64>,
    pub seed: Option<u64>,
    pub preference: Preference,
    pub model: Option<String>,
    /// `semantic_cache` of the request, when it set one.
    pub semantic_cache: Option<bool>,
    /// `cost_weight` of the request, checked, when it set one.
    pub cost_weight: Option<f64>,
    pub stream: bool,
    pub protocol: Protocol,
    /// The JSON body sent to every backend tried (always streaming).
    pub upstream_body: Bytes,
}

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_prompt_chars: usize,
}

/// The router's `POST /generate` body.
pub fn generate(body: &[u8], limits: Limits) -> Result<RouterRequest, ApiError> {
    let RouterGenerateRequest { request, routing } = parse_json(body)?;
    let limit = Some(limits.max_prompt_chars);
    check_prompt(&request.prompt, "prompt", limit)?;
    SamplingInput::from(&request).check(None)?;
    let chat = request.chat == Some(true);
    let stream = request.stream.unwrap_or(true);
    // What goes upstream is the normalized prompt (a chat prompt is trimmed): check that too, or a
    // blank chat prompt would pass here and be refused by the backend (found by fuzzing).
    let prompt = normalize_prompt(&request.prompt, chat);
    check_prompt(&prompt, "prompt", limit)?;
    let upstream = GenerateRequest { prompt, stream: Some(true), ..request };
    let upstream_body = Bytes::from(serde_json::to_vec(&upstream).map_err(|e| ApiError::Internal(e.to_string()))?);
    Ok(RouterRequest {
        prompt: upstream.prompt,
        chat,
        max_tokens: upstream.max_tokens,
        temp: upstream.temp,
        seed: upstream.seed,
        preference: routing.prefer_backend.unwrap_or_default(),
        model: routing.forced_model(),
        semantic_cache: routing.semantic_cache,
        cost_weight: routing.cost_weight()?,
        stream,
        protocol: Protocol::Generate,
        upstream_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const L: Limits = Limits { max_prompt_chars: 10 };

    fn status(body: &str) -> StatusCode {
        generate(body.as_bytes(), L).unwrap_err().status()
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(status("{"), StatusCode::BAD_REQUEST);
        assert_eq!(status("not json"), StatusCode::BAD_REQUEST);
        assert_eq!(status("{}"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"prompt": 3}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"prompt": "x", "max_tokens": "3"}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"prompt": "x", "max_tokens": -1}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"prompt": ""}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "max_tokens": 0}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "temp": -1}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "top_p": 0}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "prefer_backend": "tpu"}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "cost_weight": -0.5}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "cost_weight": "high"}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"prompt": "x", "temp": 101}"#), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(
                r#"{"prompt": "x", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"]}"#
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(r#"{"prompt": "01234567890"}"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"prompt": "x", "stop": [""]}"#), StatusCode::BAD_REQUEST);
        // A chat prompt is trimmed before it goes upstream: a blank one is empty.
        assert_eq!(status(r#"{"prompt": " \n ", "chat": true}"#), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn upstream_body_is_the_service_request() {
        let r = generate(br#"{"prompt":"a\r\nb","temperature":0,"max_tokens":4,"prefer_backend":"cpu","model":"auto","stream":false}"#, L).unwrap();
        assert_eq!(r.preference, Preference::Cpu);
        assert_eq!(r.model, None);
        assert!(!r.stream);
        let up: GenerateRequest = serde_json::from_slice(&r.upstream_body).unwrap();
        assert_eq!(up.prompt, "a\nb");
        assert_eq!(up.temp, Some(0.0));
        assert_eq!(up.stream, Some(true), "the router always streams from the backend");
        assert_eq!(r.protocol.path(), "/generate");
    }
}
