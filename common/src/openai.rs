//! The OpenAI-compatible request bodies (`/v1/chat/completions`, `/v1/completions`) that both the
//! model services and the router accept, and their conversion to what a model reads: chat
//! [`Message`]s or one prompt string. The router's versions are these wrapped in
//! [`crate::route::Routed`].
//!
//! Unknown fields (penalties, `user`, `logit_bias` …) are accepted and ignored, as OpenAI
//! clients send them by default.
use crate::validation::{SamplingInput, ValidationError};
use crate::wire::StopSpec;
use serde::{Deserialize, Serialize};

/// One chat message as a chat template reads it: `content` is plain text (the text parts of an
/// OpenAI content list, joined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
}

/// Message content: a string, or a list of parts of which only text parts are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints take besides the messages or the prompt. (`model` is a routing
/// field: [`crate::route::Routing`].)
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
}

impl Common {
    /// The sampling fields, before [`SamplingInput::check`]; `n` other than 1 is refused here.
    pub fn sampling(&self) -> Result<SamplingInput, ValidationError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ValidationError::ManyChoices);
        }
        Ok(SamplingInput {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: SamplingInput::stops(self.stop.as_ref()),
        })
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

/// A completion's `prompt`: one string or a list (of which exactly one is supported).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptSpec,
    #[serde(flatten)]
    pub common: Common,
}

/// The messages as a template's input: text content, or its text parts joined; any other part
/// type is refused. An empty list is refused too.
pub fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ValidationError> {
    if messages.is_empty() {
        return Err(ValidationError::Empty("messages"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(ValidationError::ContentPart(p.kind.clone()));
                }
                parts.into_iter().filter_map(|p| p.text).collect()
            }
        };
        out.push(Message { role: m.role, content });
    }
    Ok(out)
}

/// A completion request's prompt: one string, or a list of exactly one.
pub fn completion_prompt(prompt: PromptSpec) -> Result<String, ValidationError> {
    match prompt {
        PromptSpec::One(p) => Ok(p),
        PromptSpec::Many(mut v) if v.len() == 1 => Ok(v.remove(0)),
        PromptSpec::Many(_) => Err(ValidationError::ManyPrompts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Preference, Routed};
    use crate::validation::parse_json;

    #[test]
    fn chat_parts_are_joined_and_other_parts_refused() {
        let r: ChatCompletionRequest = parse_json(
            br#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"H"},{"type":"text","text":"i"}]}],"presence_penalty":0}"#,
        )
        .unwrap();
        let m = chat_messages(r.messages).unwrap();
        assert_eq!(m[1], Message::user("Hi"));
        let r: ChatCompletionRequest =
            parse_json(br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#).unwrap();
        assert_eq!(chat_messages(r.messages).unwrap_err(), ValidationError::ContentPart("image_url".into()));
        assert_eq!(chat_messages(vec![]).unwrap_err(), ValidationError::Empty("messages"));
    }

    #[test]
    fn completion_prompt_takes_exactly_one() {
        assert_eq!(completion_prompt(PromptSpec::Many(vec!["a".into()])).unwrap(), "a");
        assert_eq!(completion_prompt(PromptSpec::Many(vec![])).unwrap_err(), ValidationError::ManyPrompts);
    }

    #[test]
    fn sampling_fields_and_n() {
        let r: CompletionRequest =
            parse_json(br#"{"prompt":"x","max_tokens":5,"max_completion_tokens":7,"temperature":0}"#).unwrap();
        let s = r.common.sampling().unwrap();
        assert_eq!((s.max_tokens, s.temperature), (Some(7), Some(0.0)));
        let r: CompletionRequest = parse_json(br#"{"prompt":"x","n":2}"#).unwrap();
        assert_eq!(r.common.sampling().unwrap_err(), ValidationError::ManyChoices);
    }

    #[test]
    fn the_router_body_is_the_service_body_plus_routing() {
        let r: Routed<ChatCompletionRequest> = parse_json(
            br#"{"model":"m2","prefer_backend":"cpu","semantic_cache":true,"messages":[{"role":"user","content":"x"}],"stream":true}"#,
        )
        .unwrap();
        assert_eq!(r.routing.prefer_backend, Some(Preference::Cpu));
        assert_eq!(r.routing.forced_model().as_deref(), Some("m2"));
        assert_eq!(r.routing.semantic_cache, Some(true), "an extra field of the OpenAI endpoints");
        assert_eq!(r.request.common.stream, Some(true));
        assert_eq!(r.request.messages.len(), 1);
    }
}
