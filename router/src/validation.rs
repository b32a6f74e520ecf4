//! Request checks shared by the native and OpenAI endpoints, with the model service's rules and
//! messages: invalid JSON is 400, missing fields and wrong types 422, semantic errors (empty
//! prompt, `max_tokens` 0, negative temperature, bad `top_p`, unknown `prefer_backend`, prompt
//! over the length limit) 400. A valid request becomes a [`RouterRequest`]: the routing inputs
//! plus the exact body the router will send to a backend.
use crate::cache::normalize_prompt;
use crate::error::ApiError;
use crate::policy::Preference;
use bytes::Bytes;
use polyllm_common::route::RouterGenerateRequest;
use polyllm_common::wire::{GenerateRequest, StopSpec};
use serde::de::DeserializeOwned;

pub const MAX_STOP_SEQUENCES: usize = 16;
pub const MAX_STOP_LEN: usize = 256;

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

pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Parses JSON with the service's split: syntax errors 400, shape errors 422.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(format!("invalid request: {e}")),
        _ => ApiError::BadRequest(format!("invalid JSON: {e}")),
    })
}

/// The checks on sampling fields the model service would make, done before a backend is tied up.
pub fn check_sampling(
    max_tokens: Option<u32>,
    temp: Option<f64>,
    top_p: Option<f64>,
    stop: Option<&StopSpec>,
) -> Result<(), ApiError> {
    if max_tokens == Some(0) {
        return Err(bad("max_tokens must be at least 1"));
    }
    if let Some(t) = temp {
        if !t.is_finite() || t < 0.0 {
            return Err(bad(format!("temperature must be a number >= 0, got {t}")));
        }
        if t > 100.0 {
            return Err(bad("temperature must be at most 100"));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad(format!("top_p must be in (0, 1], got {p}")));
        }
    }
    if let Some(stop) = stop {
        let stops: &[String] = match stop {
            StopSpec::One(s) => std::slice::from_ref(s),
            StopSpec::Many(v) => v,
        };
        if stops.len() > MAX_STOP_SEQUENCES {
            return Err(bad(format!("at most {MAX_STOP_SEQUENCES} stop sequences")));
        }
        if stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(bad(format!("stop sequences must be 1 to {MAX_STOP_LEN} bytes")));
        }
    }
    Ok(())
}

pub fn check_prompt(prompt: &str, what: &str, limits: Limits) -> Result<(), ApiError> {
    if prompt.is_empty() {
        return Err(bad(format!("{what} must not be empty")));
    }
    // Cheap bound first: a string of n bytes has at most n chars.
    if prompt.len() > limits.max_prompt_chars {
        let n = prompt.chars().count();
        if n > limits.max_prompt_chars {
            return Err(bad(format!("{what} is {n} characters, more than the limit of {}", limits.max_prompt_chars)));
        }
    }
    Ok(())
}

pub fn parse_preference(p: Option<&str>) -> Result<Preference, ApiError> {
    match p {
        None => Ok(Preference::Auto),
        Some(s) => s.parse().map_err(bad),
    }
}

/// The router's `POST /generate` body.
pub fn generate(body: &[u8], limits: Limits) -> Result<RouterRequest, ApiError> {
    let r: RouterGenerateRequest = parse_json(body)?;
    check_prompt(&r.prompt, "prompt", limits)?;
    check_sampling(r.max_tokens, r.temp, r.top_p, r.stop.as_ref())?;
    let preference = parse_preference(r.prefer_backend.as_deref())?;
    let chat_flag = r.chat;
    // What goes upstream is the normalized prompt (a chat prompt is trimmed): check that too, or a
    // blank chat prompt would pass here and be refused by the backend (found by fuzzing).
    let prompt = normalize_prompt(&r.prompt, chat_flag == Some(true));
    check_prompt(&prompt, "prompt", limits)?;
    let upstream = GenerateRequest {
        prompt,
        max_tokens: r.max_tokens,
        temp: r.temp,
        top_p: r.top_p,
        top_k: r.top_k,
        seed: r.seed,
        stop: r.stop,
        stream: Some(true),
        chat: chat_flag,
    };
    let upstream_body = Bytes::from(serde_json::to_vec(&upstream).map_err(|e| ApiError::Internal(e.to_string()))?);
    Ok(RouterRequest {
        prompt: upstream.prompt,
        chat: chat_flag == Some(true),
        max_tokens: r.max_tokens,
        temp: r.temp,
        seed: r.seed,
        preference,
        model: r.model.filter(|m| !m.is_empty() && m != "auto"),
        stream: r.stream.unwrap_or(true),
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
