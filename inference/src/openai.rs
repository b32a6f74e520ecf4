//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions` and `/v1/models`,
//! streaming (`data:` chunks ending in `[DONE]`) and not, so existing OpenAI clients work unchanged.
//! The request bodies and their conversion to messages or a prompt are the contract's
//! ([`polyllm_common::openai`]).
use crate::engine::Event;
use crate::error::ApiError;
use crate::state::SharedState;
use crate::validation::{self, PromptInput, ValidJson};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use polyllm_common::openai::{chat_messages, completion_prompt, ChatCompletionRequest, Common, CompletionRequest};
use polyllm_common::wire::{DoneStats, ErrorBody};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::wrappers::UnboundedReceiverStream;

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
    let mut rx = st.start(job).await?;
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

    let include_usage = common.include_usage();
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
    let body = UnboundedReceiverStream::new(rx).flat_map(move |ev| {
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

pub async fn chat_completions(
    State(st): State<SharedState>,
    body: Result<ValidJson<ChatCompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let ValidJson(req) = body.inspect_err(|e| st.refused(e))?;
    let messages = chat_messages(req.messages).map_err(ApiError::from).inspect_err(|e| st.refused(e))?;
    run(st, req.common, PromptInput::Chat(messages), Kind::Chat, received).await
}

pub async fn completions(
    State(st): State<SharedState>,
    body: Result<ValidJson<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let ValidJson(req) = body.inspect_err(|e| st.refused(e))?;
    let prompt = completion_prompt(req.prompt).map_err(ApiError::from).inspect_err(|e| st.refused(e))?;
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
