//! Request checks: every way a request can be wrong becomes a 400/422 [`ApiError`] here, before
//! the request takes a slot. Also the JSON body extractor that turns serde's rejections into the
//! service's error shape.
use crate::chat::Message;
use crate::engine::{Engine, Job};
use crate::error::ApiError;
use crate::sampling::SamplingParams;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use polyllm_common::wire::GenerateRequest;
use serde::de::DeserializeOwned;
use std::time::Instant;

pub const DEFAULT_MAX_TOKENS: u32 = 128;
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
pub const MAX_STOP_SEQUENCES: usize = 16;
pub const MAX_STOP_LEN: usize = 256;

/// `Json<T>` whose failures are [`ApiError`]s: syntax errors and a wrong content type are 400,
/// missing fields and wrong types 422.
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ValidJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::BadRequest("request body too large".into()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Sampling fields shared by `/generate` and the OpenAI endpoints.
#[derive(Debug, Clone, Default)]
pub struct SamplingInput {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl From<&GenerateRequest> for SamplingInput {
    fn from(req: &GenerateRequest) -> Self {
        SamplingInput {
            max_tokens: req.max_tokens,
            temperature: req.temp,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            stop: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        }
    }
}

/// What to feed the model: raw text, or chat messages for the model's template.
pub enum PromptInput {
    Text(String),
    Chat(Vec<Message>),
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Checks the sampling fields; returns them with defaults applied.
pub fn sampling(input: &SamplingInput, context: usize) -> Result<(usize, SamplingParams, Vec<String>), ApiError> {
    let max_tokens = input.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize;
    if max_tokens == 0 {
        return Err(bad("max_tokens must be at least 1"));
    }
    if max_tokens >= context {
        return Err(bad(format!("max_tokens {max_tokens} is beyond the context of {context} tokens")));
    }
    let temperature = input.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(bad(format!("temperature must be a number >= 0, got {temperature}")));
    }
    if temperature > 100.0 {
        return Err(bad("temperature must be at most 100"));
    }
    if let Some(p) = input.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad(format!("top_p must be in (0, 1], got {p}")));
        }
    }
    if input.stop.len() > MAX_STOP_SEQUENCES {
        return Err(bad(format!("at most {MAX_STOP_SEQUENCES} stop sequences")));
    }
    if input.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
        return Err(bad(format!("stop sequences must be 1 to {MAX_STOP_LEN} bytes")));
    }
    let seed = input.seed.unwrap_or_else(rand::random);
    let params = SamplingParams { temperature, top_p: input.top_p, top_k: input.top_k.map(|k| k as usize), seed };
    Ok((max_tokens, params, input.stop.clone()))
}

/// Renders and tokenizes the prompt, and checks it fits the context with room for `max_tokens`.
pub fn prompt_ids(engine: &Engine, prompt: &PromptInput, max_tokens: usize) -> Result<Vec<u32>, ApiError> {
    let tok = &engine.tokenizer;
    let ids = match prompt {
        PromptInput::Text(t) => {
            if t.is_empty() {
                return Err(bad("prompt must not be empty"));
            }
            tok.encode(t, tok.add_bos_default()).map_err(|e| bad(format!("cannot tokenize prompt: {e}")))?
        }
        PromptInput::Chat(messages) => {
            if messages.is_empty() {
                return Err(bad("messages must not be empty"));
            }
            let Some(template) = &engine.template else {
                return Err(bad(format!(
                    "{} has no chat template; send a plain prompt with chat: false",
                    engine.model_name
                )));
            };
            let text = template.render(messages, true).map_err(|e| bad(format!("{e:#}")))?;
            // A template that writes the BOS token itself must not get a second one.
            let add_bos =
                tok.add_bos_default() && (template.bos_token().is_empty() || !text.starts_with(template.bos_token()));
            tok.encode(&text, add_bos).map_err(|e| bad(format!("cannot tokenize prompt: {e}")))?
        }
    };
    if ids.is_empty() {
        return Err(bad("prompt is empty after tokenization"));
    }
    if ids.len() + max_tokens > engine.context {
        return Err(bad(format!(
            "prompt is {} tokens and max_tokens {}: together beyond the context of {} tokens",
            ids.len(),
            max_tokens,
            engine.context
        )));
    }
    Ok(ids)
}

/// `/generate`: the request as a job, and whether to stream.
pub fn generate_job(engine: &Engine, req: GenerateRequest, received: Instant) -> Result<(Job, bool), ApiError> {
    let input = SamplingInput::from(&req);
    if req.prompt.is_empty() {
        return Err(bad("prompt must not be empty"));
    }
    let (max_tokens, sampling, stop) = sampling(&input, engine.context)?;
    let chat = req.chat.unwrap_or(engine.template.is_some());
    let prompt = if chat { PromptInput::Chat(vec![Message::user(req.prompt)]) } else { PromptInput::Text(req.prompt) };
    let prompt_ids = prompt_ids(engine, &prompt, max_tokens)?;
    Ok((Job { prompt_ids, max_tokens, sampling, stop, received }, req.stream.unwrap_or(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(max_tokens: Option<u32>, temperature: Option<f64>, top_p: Option<f64>) -> SamplingInput {
        SamplingInput { max_tokens, temperature, top_p, ..Default::default() }
    }

    #[test]
    fn defaults_apply() {
        let (n, p, stop) = sampling(&SamplingInput::default(), 4096).unwrap();
        assert_eq!(n, 128);
        assert_eq!(p.temperature, 0.7);
        assert!(stop.is_empty());
    }

    #[test]
    fn bad_sampling_fields_are_rejected() {
        for (inp, needle) in [
            (input(Some(0), None, None), "at least 1"),
            (input(Some(5000), None, None), "beyond the context"),
            (input(None, Some(-0.1), None), ">= 0"),
            (input(None, Some(f64::NAN), None), ">= 0"),
            (input(None, None, Some(0.0)), "top_p"),
            (input(None, None, Some(1.5)), "top_p"),
        ] {
            let err = sampling(&inp, 4096).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
        let mut inp = SamplingInput { stop: vec![String::new()], ..Default::default() };
        assert!(sampling(&inp, 4096).is_err());
        inp.stop = vec!["x".into(); 17];
        assert!(sampling(&inp, 4096).is_err());
    }

    #[test]
    fn explicit_seed_is_kept() {
        let inp = SamplingInput { seed: Some(42), ..Default::default() };
        assert_eq!(sampling(&inp, 4096).unwrap().1.seed, 42);
    }
}
