//! Request checks: the contract's rules ([`polyllm_common::validation`]) applied with this
//! service's context length, plus the rules that need the model (tokenization, the chat template),
//! before the request takes a slot. Also the JSON body extractor that turns axum's rejections into
//! the contract's [`ValidationError`].
use crate::engine::{Engine, Job};
use crate::error::ApiError;
use crate::sampling::SamplingParams;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use polyllm_common::openai::Message;
use polyllm_common::validation::{SamplingInput, ValidationError};
use polyllm_common::wire::GenerateRequest;
use serde::de::DeserializeOwned;
use std::time::Instant;

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
            Err(JsonRejection::JsonDataError(e)) => Err(ValidationError::Shape(e.body_text()).into()),
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ValidationError::BodyTooLarge.into())
            }
            Err(e) => Err(ValidationError::Syntax(e.body_text()).into()),
        }
    }
}

/// What to feed the model: raw text, or chat messages for the model's template.
pub enum PromptInput {
    Text(String),
    Chat(Vec<Message>),
}

/// Checks the sampling fields against the contract and this model's context; returns them
/// with defaults applied (a seed is drawn when the request gave none).
pub fn sampling(input: &SamplingInput, context: usize) -> Result<(usize, SamplingParams, Vec<String>), ApiError> {
    let s = input.check(Some(context))?;
    let seed = s.seed.unwrap_or_else(rand::random);
    let params =
        SamplingParams { temperature: s.temperature, top_p: s.top_p, top_k: s.top_k.map(|k| k as usize), seed };
    Ok((s.max_tokens, params, s.stop))
}

/// Renders and tokenizes the prompt, and checks it fits the context with room for `max_tokens`.
pub fn prompt_ids(engine: &Engine, prompt: &PromptInput, max_tokens: usize) -> Result<Vec<u32>, ApiError> {
    let tok = &engine.tokenizer;
    let ids = match prompt {
        PromptInput::Text(t) => {
            if t.is_empty() {
                return Err(ValidationError::Empty("prompt").into());
            }
            tok.encode(t, tok.add_bos_default()).map_err(|e| ValidationError::Tokenize(e.to_string()))?
        }
        PromptInput::Chat(messages) => {
            if messages.is_empty() {
                return Err(ValidationError::Empty("messages").into());
            }
            let Some(template) = &engine.template else {
                return Err(ValidationError::NoChatTemplate { model: engine.model_name.clone() }.into());
            };
            let text = template.render(messages, true).map_err(|e| ValidationError::Template(format!("{e:#}")))?;
            // A template that writes the BOS token itself must not get a second one.
            let add_bos =
                tok.add_bos_default() && (template.bos_token().is_empty() || !text.starts_with(template.bos_token()));
            tok.encode(&text, add_bos).map_err(|e| ValidationError::Tokenize(e.to_string()))?
        }
    };
    if ids.is_empty() {
        return Err(ValidationError::EmptyAfterTokenization.into());
    }
    if ids.len() + max_tokens > engine.context {
        let (prompt_tokens, context) = (ids.len(), engine.context);
        return Err(ValidationError::PromptBeyondContext { prompt_tokens, max_tokens, context }.into());
    }
    Ok(ids)
}

/// `/generate`: the request as a job, and whether to stream.
pub fn generate_job(engine: &Engine, req: GenerateRequest, received: Instant) -> Result<(Job, bool), ApiError> {
    let input = SamplingInput::from(&req);
    if req.prompt.is_empty() {
        return Err(ValidationError::Empty("prompt").into());
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

    #[test]
    fn sampling_draws_a_seed_only_when_none_is_given() {
        let inp = SamplingInput { seed: Some(42), ..Default::default() };
        assert_eq!(sampling(&inp, 4096).unwrap().1.seed, 42);
        let (n, p, stop) = sampling(&SamplingInput::default(), 4096).unwrap();
        assert_eq!((n, p.temperature, stop.len()), (128, 0.7, 0));
    }

    #[test]
    fn the_context_bounds_max_tokens() {
        let inp = SamplingInput { max_tokens: Some(4096), ..Default::default() };
        let err = sampling(&inp, 4096).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(matches!(err, ApiError::Invalid(ValidationError::MaxTokensBeyondContext { .. })), "{err:?}");
    }
}
