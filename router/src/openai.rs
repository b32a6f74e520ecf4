//! The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions` (model `auto`
//! or absent is routed; a model name or backend id is honoured) and `GET /v1/models`, streaming
//! (`data:` chunks ending in `[DONE]`) and not. Chat requests go to the chosen backend's own
//! `/v1/chat/completions` (its chat template applies); completions go to its `/generate`. The
//! routing decision rides along as an extra `route` field and the `X-Routed-*` headers, which
//! OpenAI clients ignore. The request bodies are the contract's ([`polyllm_common::openai`]) plus
//! the routing fields ([`Routed`]).
use crate::cache::normalize_prompt;
use crate::error::ApiError;
use crate::generate::body_error;
use crate::pipeline::{self, decorate, fail, prompt_hash, sse_headers, Started};
use crate::proxy::Out;
use crate::state::AppState;
use crate::validation::{Limits, Protocol, RouterRequest};
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use polyllm_common::openai::{chat_messages, completion_prompt, ChatCompletionRequest, CompletionRequest, Message};
use polyllm_common::route::{RouteEvent, Routed, RouterDone};
use polyllm_common::validation::{check_prompt, parse_json};
use polyllm_common::wire::{ErrorBody, GenerateRequest, StopSpec};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The body sent to a backend's `/v1/chat/completions`.
#[derive(Serialize)]
struct UpChat<'a> {
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a StopSpec>,
    stream: bool,
    stream_options: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// A `/v1/chat/completions` body as the router's request, and whether the usage goes into the stream.
pub fn chat_request(body: &[u8], limits: Limits) -> Result<(RouterRequest, bool), ApiError> {
    let Routed { request, routing }: Routed<ChatCompletionRequest> = parse_json(body)?;
    let c = &request.common;
    let sampling = c.sampling()?;
    sampling.check(None)?;
    let messages: Vec<Message> = chat_messages(request.messages)?
        .into_iter()
        .map(|m| Message { content: normalize_prompt(&m.content, true), ..m })
        .collect();
    let prompt = messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
    check_prompt(&prompt, "messages", Some(limits.max_prompt_chars))?;
    let up = UpChat {
        messages: &messages,
        max_tokens: sampling.max_tokens,
        temperature: c.temperature,
        top_p: c.top_p,
        top_k: c.top_k,
        seed: c.seed,
        stop: c.stop.as_ref(),
        stream: true,
        stream_options: json!({"include_usage": true}),
    };
    let upstream_body = Bytes::from(serde_json::to_vec(&up).map_err(|e| ApiError::Internal(e.to_string()))?);
    Ok((
        RouterRequest {
            prompt,
            chat: true,
            max_tokens: sampling.max_tokens,
            temp: c.temperature,
            seed: c.seed,
            preference: routing.prefer_backend.unwrap_or_default(),
            model: routing.forced_model(),
            semantic_cache: routing.semantic_cache,
            cost_weight: routing.cost_weight()?,
            stream: c.stream.unwrap_or(false),
            protocol: Protocol::OpenAiChat,
            upstream_body,
        },
        c.include_usage(),
    ))
}

/// A `/v1/completions` body as the router's request, and whether the usage goes into the stream.
pub fn completion_request(body: &[u8], limits: Limits) -> Result<(RouterRequest, bool), ApiError> {
    let Routed { request, routing }: Routed<CompletionRequest> = parse_json(body)?;
    let c = &request.common;
    let sampling = c.sampling()?;
    sampling.check(None)?;
    let prompt = completion_prompt(request.prompt)?;
    check_prompt(&prompt, "prompt", Some(limits.max_prompt_chars))?;
    let up = GenerateRequest {
        prompt: normalize_prompt(&prompt, false),
        max_tokens: sampling.max_tokens,
        temp: c.temperature,
        top_p: c.top_p,
        top_k: c.top_k,
        seed: c.seed,
        stop: c.stop.clone(),
        stream: Some(true),
        chat: Some(false),
    };
    let upstream_body = Bytes::from(serde_json::to_vec(&up).map_err(|e| ApiError::Internal(e.to_string()))?);
    Ok((
        RouterRequest {
            prompt: up.prompt,
            chat: false,
            max_tokens: sampling.max_tokens,
            temp: c.temperature,
            seed: c.seed,
            preference: routing.prefer_backend.unwrap_or_default(),
            model: routing.forced_model(),
            semantic_cache: routing.semantic_cache,
            cost_weight: routing.cost_weight()?,
            stream: c.stream.unwrap_or(false),
            protocol: Protocol::Generate,
            upstream_body,
        },
        c.include_usage(),
    ))
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Formats OpenAI objects for one response.
struct Fmt {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

fn data(v: &Value) -> Bytes {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    s.push_str(&v.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

fn usage(d: &RouterDone) -> Value {
    let s = &d.stats;
    json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens})
}

impl Fmt {
    fn new(kind: Kind, request_id: &str, include_usage: bool) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Fmt { kind, id: format!("{prefix}-{request_id}"), created: now_unix(), model: String::new(), include_usage }
    }

    fn chunk(&self, choices: Value) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices})
    }

    /// The opening chunk (chat only: the assistant role), carrying the route.
    fn open(&mut self, route: &RouteEvent) -> Bytes {
        self.model = route.model.clone();
        if self.kind == Kind::Completion {
            return Bytes::new();
        }
        let mut v = self.chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]));
        v["route"] = serde_json::to_value(route).unwrap_or(Value::Null);
        data(&v)
    }

    fn token(&self, t: &str) -> Bytes {
        data(&self.chunk(match self.kind {
            Kind::Chat => json!([{"index": 0, "delta": {"content": t}, "logprobs": null, "finish_reason": null}]),
            Kind::Completion => json!([{"index": 0, "text": t, "logprobs": null, "finish_reason": null}]),
        }))
    }

    fn done(&self, d: &RouterDone) -> Bytes {
        let fin = d.stats.finish_reason.openai();
        let last = match self.kind {
            Kind::Chat => json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": fin}]),
            Kind::Completion => json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": fin}]),
        };
        let mut out = Vec::with_capacity(512);
        let mut v = self.chunk(last);
        v["x_stats"] = serde_json::to_value(d).unwrap_or(Value::Null);
        out.extend_from_slice(&data(&v));
        if self.include_usage {
            let mut u = self.chunk(json!([]));
            u["usage"] = usage(d);
            out.extend_from_slice(&data(&u));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }

    fn error(&self, e: &ErrorBody) -> Bytes {
        data(&serde_json::to_value(e).unwrap_or(Value::Null))
    }

    /// Appends one relay message; true when it ends the stream.
    fn encode(&self, msg: Option<Out>, buf: &mut Vec<u8>) -> bool {
        match msg {
            // A fallback before the first token: same response, another backend.
            Some(Out::Route(_)) => false,
            Some(Out::Token(t)) => {
                buf.extend_from_slice(&self.token(&t));
                false
            }
            Some(Out::Done(c)) => {
                buf.extend_from_slice(&self.done(&c.done));
                true
            }
            Some(Out::Error { body, .. }) => {
                buf.extend_from_slice(&self.error(&body));
                true
            }
            None => {
                buf.extend_from_slice(
                    &self.error(&ErrorBody::new("internal_error", "the relay ended without an answer")),
                );
                true
            }
        }
    }

    fn whole(&self, text: &str, done: &RouterDone, route: &RouteEvent) -> Value {
        let fin = done.stats.finish_reason.openai();
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": fin}),
            ),
            Kind::Completion => {
                ("text_completion", json!({"index": 0, "text": text, "logprobs": null, "finish_reason": fin}))
            }
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": route.model,
            "choices": [choice], "usage": usage(done), "route": route, "x_stats": done,
        })
    }
}

fn routed_headers(mut resp: Response, route: &RouteEvent) -> Response {
    let h = resp.headers_mut();
    for (name, v) in
        [("x-routed-model", &route.model), ("x-routed-backend", &route.backend), ("x-routed-device", &route.device)]
    {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    resp
}

async fn serve(
    st: Arc<AppState>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Response {
    let adm = match pipeline::admit(&st, &headers, peer).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return fail(&st, &adm, "", body_error(e, st.config.server.max_body_bytes)),
    };
    let limits = Limits { max_prompt_chars: st.config.server.max_prompt_chars };
    let parsed = match kind {
        Kind::Chat => chat_request(&body, limits),
        Kind::Completion => completion_request(&body, limits),
    };
    let (req, include_usage) = match parsed {
        Ok(r) => r,
        Err(e) => return fail(&st, &adm, "", e),
    };
    let hash = prompt_hash(&req.prompt);
    let stream = req.stream;
    let mut fmt = Fmt::new(kind, &adm.request_id, include_usage);
    match pipeline::start(&st, &adm, req, hash.clone()).await {
        Err(e) => fail(&st, &adm, &hash, e),
        Ok(Started::Hit(hit)) => {
            let resp = if stream {
                let mut buf = fmt.open(&hit.route).to_vec();
                for p in &hit.answer.pieces {
                    buf.extend_from_slice(&fmt.token(p));
                }
                buf.extend_from_slice(&fmt.done(&hit.done));
                let mut r = Body::from(buf).into_response();
                sse_headers(&mut r);
                r
            } else {
                axum::Json(fmt.whole(&hit.answer.text(), &hit.done, &hit.route)).into_response()
            };
            decorate(routed_headers(resp, &hit.route), &adm, hit.x_cache)
        }
        Ok(Started::Live { first, rx }) => {
            let resp = match first {
                Out::Route(route) if stream => {
                    let opening = fmt.open(&route);
                    let mut r = Body::from_stream(chunks(fmt, opening, rx)).into_response();
                    sse_headers(&mut r);
                    routed_headers(r, &route)
                }
                Out::Done(c) if !stream => {
                    routed_headers(axum::Json(fmt.whole(&c.text, &c.done, &c.route)).into_response(), &c.route)
                }
                _ => ApiError::Internal("unexpected relay message".into()).into_response(),
            };
            decorate(resp, &adm, "MISS")
        }
    }
}

/// The relay's messages as OpenAI chunks; messages already queued go out in one write.
fn chunks(fmt: Fmt, opening: Bytes, rx: mpsc::Receiver<Out>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold((Some(opening), fmt, rx, false), |(pending, fmt, mut rx, ended)| async move {
        if ended {
            return None;
        }
        let mut buf = pending.map(|b| b.to_vec()).unwrap_or_default();
        let mut end = false;
        if buf.is_empty() {
            end = fmt.encode(rx.recv().await, &mut buf);
        }
        while !end {
            match rx.try_recv() {
                Ok(m) => end = fmt.encode(Some(m), &mut buf),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => end = fmt.encode(None, &mut buf),
            }
        }
        Some((Ok(Bytes::from(buf)), (None, fmt, rx, end)))
    })
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(st, peer, headers, body, Kind::Chat).await
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(st, peer, headers, body, Kind::Completion).await
}

/// `GET /v1/models`: `auto`, every model name, every backend id.
pub async fn models(State(st): State<Arc<AppState>>) -> Response {
    let mut by_model: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut data = vec![
        json!({"id": "auto", "object": "model", "created": 0, "owned_by": "polyllm", "description": "routed by the router's policy"}),
    ];
    for b in st.registry.all() {
        let live = b.live();
        by_model
            .entry(live.model.to_string())
            .or_default()
            .push(json!({"id": &*b.id, "device": &*live.device, "healthy": b.is_healthy()}));
    }
    for (model, backends) in &by_model {
        data.push(json!({"id": model, "object": "model", "created": 0, "owned_by": "polyllm", "backends": backends}));
    }
    for b in st.registry.all() {
        let live = b.live();
        data.push(json!({"id": &*b.id, "object": "model", "created": 0, "owned_by": "polyllm", "model": &*live.model, "device": &*live.device, "healthy": b.is_healthy()}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const L: Limits = Limits { max_prompt_chars: 100 };

    #[test]
    fn chat_body_to_backend_body() {
        let (r, usage) = chat_request(
            br#"{"model":"auto","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"temperature":0,"max_tokens":5,"stream":true,"stream_options":{"include_usage":true},"presence_penalty":0}"#,
            L,
        )
        .unwrap();
        assert!(usage && r.stream);
        assert_eq!(r.model, None);
        assert_eq!(r.protocol, Protocol::OpenAiChat);
        let v: Value = serde_json::from_slice(&r.upstream_body).unwrap();
        assert_eq!(v["messages"][1]["content"], "Hi");
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["stream"], true);
        assert_eq!(r.prompt, "Be brief.\nHi");
    }

    #[test]
    fn openai_bad_inputs() {
        let st = |b: &str| chat_request(b.as_bytes(), L).unwrap_err().status();
        assert_eq!(st(r#"{"messages":[]}"#), StatusCode::BAD_REQUEST);
        assert_eq!(st(r#"{"messages":"x"}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(st(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#), StatusCode::BAD_REQUEST);
        assert_eq!(st(r#"{"messages":[{"role":"user","content":"x"}],"temperature":-1}"#), StatusCode::BAD_REQUEST);
        let st = |b: &str| completion_request(b.as_bytes(), L).unwrap_err().status();
        assert_eq!(st(r#"{"prompt":["a","b"]}"#), StatusCode::BAD_REQUEST);
        assert_eq!(st(r#"{"prompt":""}"#), StatusCode::BAD_REQUEST);
        assert_eq!(st(r#"{"prompt":"x","max_tokens":0}"#), StatusCode::BAD_REQUEST);
        let (r, _) = completion_request(br#"{"prompt":["a"],"model":"m1"}"#, L).unwrap();
        assert_eq!(r.model.as_deref(), Some("m1"));
        assert!(!r.stream);
    }
}
