//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions` and `/v1/models`,
//! streaming (`data:` chunks ending in `[DONE]`) and not, so existing OpenAI clients work unchanged.
use crate::chat::Message;
use crate::engine::Event;
use crate::error::ApiError;
use crate::server::SharedState;
use crate::validation::{self, PromptInput, SamplingInput, ValidJson};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use polyllm_common::wire::{DoneStats, ErrorBody, StopSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::wrappers::ReceiverStream;

/// Message content: a string, or a list of parts of which the text parts are used.
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

/// Fields common to both endpoints. Unknown fields (penalties, `user`, ...) are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
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

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptSpec,
    #[serde(flatten)]
    pub common: Common,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage(s: &DoneStats) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

impl Common {
    /// The sampling fields, before [`validation::sampling`] checks them.
    pub fn sampling(&self) -> Result<SamplingInput, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::BadRequest("only n = 1 is supported".into()));
        }
        Ok(SamplingInput {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone().map(StopSpec::into_vec).unwrap_or_default(),
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

async fn run(
    st: SharedState,
    common: Common,
    prompt: PromptInput,
    kind: Kind,
    received: Instant,
) -> Result<Response, ApiError> {
    let engine = st.engine().inspect_err(|e| st.refused(e))?;
    let prepared = (|| {
        let input = common.sampling()?;
        let (max_tokens, sampling, stop) = validation::sampling(&input, engine.context)?;
        let prompt_ids = validation::prompt_ids(&engine, &prompt, max_tokens)?;
        Ok::<_, ApiError>(crate::engine::Job { prompt_ids, max_tokens, sampling, stop, received })
    })();
    let job = prepared.inspect_err(|e| st.refused(e))?;
    let model = engine.model_name.clone();
    let mut rx = st.start(engine, job).await?;
    let (prefix, object, chunk_object) = match kind {
        Kind::Chat => ("chatcmpl", "chat.completion", "chat.completion.chunk"),
        Kind::Completion => ("cmpl", "text_completion", "text_completion"),
    };
    let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix();

    if !common.stream.unwrap_or(false) {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token(t) => text.push_str(&t),
                Event::Error(msg) => return Err(ApiError::Internal(msg)),
                Event::Done(s) => {
                    let choice = match kind {
                        Kind::Chat => {
                            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": s.finish_reason.openai()})
                        }
                        Kind::Completion => {
                            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": s.finish_reason.openai()})
                        }
                    };
                    return Ok(Json(json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage(&s)})).into_response());
                }
            }
        }
        return Err(ApiError::Internal("generation ended without a result".into()));
    }

    let include_usage = common.stream_options.map(|o| o.include_usage).unwrap_or(false);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": chunk_object, "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    let opening = match kind {
        Kind::Chat => vec![chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        )],
        Kind::Completion => vec![],
    };
    let body = ReceiverStream::new(rx).flat_map(move |ev| {
        let events: Vec<SseEvent> = match ev {
            Event::Token(t) => vec![match kind {
                Kind::Chat => {
                    chunk(json!([{"index": 0, "delta": {"content": t}, "logprobs": null, "finish_reason": null}]), None)
                }
                Kind::Completion => {
                    chunk(json!([{"index": 0, "text": t, "logprobs": null, "finish_reason": null}]), None)
                }
            }],
            Event::Done(s) => {
                let fin = s.finish_reason.openai();
                let last = match kind {
                    Kind::Chat => json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": fin}]),
                    Kind::Completion => json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": fin}]),
                };
                let mut v = vec![chunk(last, None)];
                if include_usage {
                    v.push(chunk(json!([]), Some(usage(&s))));
                }
                v.push(SseEvent::default().data("[DONE]"));
                v
            }
            Event::Error(msg) => {
                vec![SseEvent::default().data(serde_json::to_string(&ErrorBody::new("server_error", msg)).unwrap())]
            }
        };
        futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>))
    });
    let stream = futures::stream::iter(opening.into_iter().map(Ok::<_, Infallible>)).chain(body);
    Ok(Sse::new(stream).into_response())
}

/// A chat request's messages as the template's input: text content, or its text parts joined;
/// any other part type is refused.
pub fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(ApiError::BadRequest(format!("content part type {:?} is not supported", p.kind)));
                }
                parts.into_iter().filter_map(|p| p.text).collect::<Vec<_>>().join("")
            }
        };
        out.push(Message { role: m.role, content });
    }
    Ok(out)
}

/// A completion request's prompt: one string, or a list of exactly one.
pub fn completion_prompt(prompt: PromptSpec) -> Result<String, ApiError> {
    match prompt {
        PromptSpec::One(p) => Ok(p),
        PromptSpec::Many(mut v) if v.len() == 1 => Ok(v.remove(0)),
        PromptSpec::Many(_) => Err(ApiError::BadRequest("exactly one prompt per request is supported".into())),
    }
}

pub async fn chat_completions(
    State(st): State<SharedState>,
    body: Result<ValidJson<ChatCompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let ValidJson(req) = body.inspect_err(|e| st.refused(e))?;
    let messages = chat_messages(req.messages).inspect_err(|e| st.refused(e))?;
    run(st, req.common, PromptInput::Chat(messages), Kind::Chat, received).await
}

pub async fn completions(
    State(st): State<SharedState>,
    body: Result<ValidJson<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let ValidJson(req) = body.inspect_err(|e| st.refused(e))?;
    let prompt = completion_prompt(req.prompt).inspect_err(|e| st.refused(e))?;
    run(st, req.common, PromptInput::Text(prompt), Kind::Completion, received).await
}

pub async fn models(State(st): State<SharedState>) -> Response {
    let id = &st.identity;
    Json(json!({
        "object": "list",
        "data": [{"id": id.model, "object": "model", "created": 0, "owned_by": "polyllm", "backend": id.model_id, "device": id.device}],
    }))
    .into_response()
}
