//! The request rules every service applies, once: the sampling limits and defaults, the prompt
//! checks, and [`ValidationError`], one variant per rule, which each service renders as its
//! `{"error": {"message", "type": "invalid_request_error"}}` body with [`ValidationError::status`].
//!
//! The router checks what it can without the model (sampling fields, prompt length) so that a bad
//! request never ties up a backend; the model service checks the same fields again with its
//! context length, then the rules that need the tokenizer and the chat template.
use crate::wire::{GenerateRequest, StopSpec};

/// `max_tokens` when the request leaves it out.
pub const DEFAULT_MAX_TOKENS: u32 = 128;
/// Temperature when the request leaves it out.
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// The highest temperature accepted.
pub const MAX_TEMPERATURE: f64 = 100.0;
/// At most this many stop strings per request …
pub const MAX_STOP_SEQUENCES: usize = 16;
/// … each of 1 to this many bytes.
pub const MAX_STOP_LEN: usize = 256;

/// The highest `cost_weight` a request or the router's config may set: past it every choice is the
/// fastest model.
pub const MAX_COST_WEIGHT: f64 = 100.0;

/// Why a request was refused before it ran. Syntax and shape errors of the JSON body are
/// [`ValidationError::Syntax`] (400) and [`ValidationError::Shape`] (422); every other rule is
/// its own variant (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// The body is not JSON (or not readable, or of the wrong content type).
    #[error("{0}")]
    Syntax(String),
    /// Well-formed JSON with a missing field or a field of the wrong type.
    #[error("{0}")]
    Shape(String),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("max_tokens must be at least 1")]
    MaxTokensZero,
    #[error("max_tokens {max_tokens} is beyond the context of {context} tokens")]
    MaxTokensBeyondContext { max_tokens: usize, context: usize },
    #[error("temperature must be a number >= 0, got {0}")]
    Temperature(f64),
    #[error("temperature must be at most {}", MAX_TEMPERATURE)]
    TemperatureTooHigh,
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f64),
    #[error("at most {} stop sequences", MAX_STOP_SEQUENCES)]
    TooManyStops,
    #[error("stop sequences must be 1 to {} bytes", MAX_STOP_LEN)]
    StopLength,
    /// `n` other than 1 (OpenAI endpoints).
    #[error("only n = 1 is supported")]
    ManyChoices,
    /// A completion request with a list of prompts other than one.
    #[error("exactly one prompt per request is supported")]
    ManyPrompts,
    /// A chat content part other than text.
    #[error("content part type {0:?} is not supported")]
    ContentPart(String),
    /// The prompt (or the messages) is empty; the field's name.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{field} is {chars} characters, more than the limit of {limit}")]
    PromptTooLong { field: &'static str, chars: usize, limit: usize },
    /// A `cost_weight` that is not a number in [0, MAX_COST_WEIGHT].
    #[error("cost_weight must be a number from 0 to {max}, got {0}", max = MAX_COST_WEIGHT)]
    CostWeight(f64),
    /// An unknown `prefer_backend`; the value as the client wrote it, quoted.
    #[error("prefer_backend must be \"cpu\", \"gpu\" or \"auto\", not {0}")]
    UnknownPreference(String),
    #[error("{model} has no chat template; send a plain prompt with chat: false")]
    NoChatTemplate { model: String },
    /// The chat template refused the messages (for example roles that do not alternate).
    #[error("{0}")]
    Template(String),
    #[error("cannot tokenize prompt: {0}")]
    Tokenize(String),
    #[error("prompt is empty after tokenization")]
    EmptyAfterTokenization,
    #[error(
        "prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: together beyond the context of {context} tokens"
    )]
    PromptBeyondContext { prompt_tokens: usize, max_tokens: usize, context: usize },
}

impl ValidationError {
    /// The HTTP status: 422 for a body of the wrong shape, 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            ValidationError::Shape(_) => 422,
            _ => 400,
        }
    }

    /// The `type` of the error body.
    pub fn kind(&self) -> &'static str {
        "invalid_request_error"
    }

    /// A serde_json error: syntax errors are 400, shape errors (missing field, wrong type) 422.
    /// An unknown `prefer_backend` keeps its own variant (400), as the rule it breaks is ours.
    pub fn from_json(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => {
                let msg = e.to_string();
                if let Some(value) = Self::rejected_preference(&msg) {
                    return ValidationError::UnknownPreference(value);
                }
                ValidationError::Shape(format!("invalid request: {msg}"))
            }
            _ => ValidationError::Syntax(format!("invalid JSON: {e}")),
        }
    }
}

impl ValidationError {
    /// The rejected value (quoted) when `message` is the deserialization error of an unknown
    /// `prefer_backend` (the typed [`crate::route::Preference`] fails with this variant's text;
    /// serde_json appends the position, cut off here).
    fn rejected_preference(message: &str) -> Option<String> {
        let prefix = ValidationError::UnknownPreference(String::new()).to_string();
        let rest = message.strip_prefix(&prefix)?;
        let end = rest.rfind(" at line ").unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }
}

impl From<&GenerateRequest> for SamplingInput {
    fn from(req: &GenerateRequest) -> Self {
        SamplingInput {
            max_tokens: req.max_tokens,
            temperature: req.temp,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            stop: SamplingInput::stops(req.stop.as_ref()),
        }
    }
}

/// Parses a JSON body with [`ValidationError::from_json`]'s split.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ValidationError> {
    serde_json::from_slice(body).map_err(|e| ValidationError::from_json(&e))
}

/// The sampling fields of any endpoint, before their checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingInput {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// Sampling fields that passed their checks, with the defaults applied (the seed stays optional:
/// the service draws one).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl SamplingInput {
    /// The `stop` field as a list.
    pub fn stops(stop: Option<&StopSpec>) -> Vec<String> {
        stop.cloned().map(StopSpec::into_vec).unwrap_or_default()
    }

    /// Checks every field; with a `context` (the model service knows it), `max_tokens` must also
    /// leave room for a prompt. Returns the fields with the defaults applied.
    pub fn check(&self, context: Option<usize>) -> Result<Sampling, ValidationError> {
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize;
        if max_tokens == 0 {
            return Err(ValidationError::MaxTokensZero);
        }
        if let Some(context) = context {
            if max_tokens >= context {
                return Err(ValidationError::MaxTokensBeyondContext { max_tokens, context });
            }
        }
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(ValidationError::Temperature(temperature));
        }
        if temperature > MAX_TEMPERATURE {
            return Err(ValidationError::TemperatureTooHigh);
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ValidationError::TopP(p));
            }
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err(ValidationError::TooManyStops);
        }
        if self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(ValidationError::StopLength);
        }
        Ok(Sampling {
            max_tokens,
            temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
        })
    }
}

/// A prompt must not be empty, and (where the operator set a limit) not longer than `max_chars`
/// characters. `field` names it in the message (`prompt` or `messages`).
pub fn check_prompt(prompt: &str, field: &'static str, max_chars: Option<usize>) -> Result<(), ValidationError> {
    if prompt.is_empty() {
        return Err(ValidationError::Empty(field));
    }
    if let Some(limit) = max_chars {
        // Cheap bound first: a string of n bytes has at most n chars.
        if prompt.len() > limit {
            let chars = prompt.chars().count();
            if chars > limit {
                return Err(ValidationError::PromptTooLong { field, chars, limit });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(max_tokens: Option<u32>, temperature: Option<f64>, top_p: Option<f64>) -> SamplingInput {
        SamplingInput { max_tokens, temperature, top_p, ..Default::default() }
    }

    #[test]
    fn defaults_apply() {
        let s = SamplingInput::default().check(Some(4096)).unwrap();
        assert_eq!(s.max_tokens, 128);
        assert_eq!(s.temperature, 0.7);
        assert!(s.stop.is_empty() && s.seed.is_none());
    }

    #[test]
    fn each_rule_has_its_variant_and_message() {
        for (inp, want, needle) in [
            (input(Some(0), None, None), ValidationError::MaxTokensZero, "at least 1"),
            (
                input(Some(5000), None, None),
                ValidationError::MaxTokensBeyondContext { max_tokens: 5000, context: 4096 },
                "beyond the context",
            ),
            (input(None, Some(-0.1), None), ValidationError::Temperature(-0.1), ">= 0"),
            (input(None, Some(101.0), None), ValidationError::TemperatureTooHigh, "at most 100"),
            (input(None, None, Some(0.0)), ValidationError::TopP(0.0), "top_p"),
            (input(None, None, Some(1.5)), ValidationError::TopP(1.5), "top_p"),
        ] {
            let err = inp.check(Some(4096)).unwrap_err();
            assert_eq!(err, want);
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
        assert!(matches!(input(None, Some(f64::NAN), None).check(None), Err(ValidationError::Temperature(_))));
        // Without a context only the request's own fields are checked.
        assert!(input(Some(5000), None, None).check(None).is_ok());
        let mut inp = SamplingInput { stop: vec![String::new()], ..Default::default() };
        assert_eq!(inp.check(None).unwrap_err(), ValidationError::StopLength);
        inp.stop = vec!["x".into(); 17];
        assert_eq!(inp.check(None).unwrap_err(), ValidationError::TooManyStops);
        inp.stop = vec!["x".repeat(257)];
        assert_eq!(inp.check(None).unwrap_err(), ValidationError::StopLength);
    }

    #[test]
    fn explicit_seed_is_kept() {
        let inp = SamplingInput { seed: Some(42), ..Default::default() };
        assert_eq!(inp.check(None).unwrap().seed, Some(42));
    }

    #[test]
    fn json_errors_split_into_syntax_and_shape() {
        let e = parse_json::<crate::wire::GenerateRequest>(b"{").unwrap_err();
        assert!(matches!(e, ValidationError::Syntax(_)) && e.status() == 400, "{e:?}");
        let e = parse_json::<crate::wire::GenerateRequest>(b"{}").unwrap_err();
        assert!(matches!(e, ValidationError::Shape(_)) && e.status() == 422, "{e:?}");
        assert!(e.to_string().contains("missing field `prompt`"), "{e}");
    }

    #[test]
    fn prompt_checks() {
        assert_eq!(check_prompt("", "prompt", None), Err(ValidationError::Empty("prompt")));
        assert_eq!(check_prompt("", "messages", None).unwrap_err().to_string(), "messages must not be empty");
        assert!(check_prompt("héllo", "prompt", Some(5)).is_ok(), "the limit counts characters, not bytes");
        let e = check_prompt("héllo!", "prompt", Some(5)).unwrap_err();
        assert_eq!(e, ValidationError::PromptTooLong { field: "prompt", chars: 6, limit: 5 });
        assert_eq!(e.to_string(), "prompt is 6 characters, more than the limit of 5");
    }
}
