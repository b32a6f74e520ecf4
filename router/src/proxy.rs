//! The relay: sends one request to the backends of its plan in order and streams what comes back
//! as [`Out`] messages, one per event, as they arrive. A connect error, a 5xx, an error event or
//! no first token before `--first-token-timeout-ms` moves to the next candidate (counted in
//! `router_fallbacks_total{reason}`); a 4xx is the client's fault and is returned as is. Once a
//! token has reached the client there is no going back: a failure then ends the stream with an
//! `error` (never a silent truncation). For non-streaming clients nothing has been shown yet, so
//! any failure before `done` still moves on. After a complete answer it records latency, caches
//! the answer, logs the request and hands the response-log record to the writer — all after the
//! client has the last event.
use crate::backends::Backend;
use crate::cache::CachedAnswer;
use crate::policy::Plan;
use crate::ratelimit::Identity;
use crate::reqlog::ResponseRecord;
use crate::state::{AppState, Outcome};
use crate::validation::Protocol;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use polyllm_common::route::{RouteEvent, RouterDone};
use polyllm_common::sse::{SseEvent, SseParser};
use polyllm_common::wire::{DoneStats, ErrorBody, FinishReason, TokenEvent};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::time::timeout_at;

/// Longest line or event a backend may send before the router gives up on it.
const MAX_PENDING: usize = 4 << 20;

/// What the relay tells the front end (`/generate` or the OpenAI formatter).
#[derive(Debug)]
pub enum Out {
    /// The backend that is about to answer. Sent once it accepted the request; sent again if a
    /// fallback moves a streaming request elsewhere before its first token.
    Route(Arc<RouteEvent>),
    /// A piece of text (only for streaming clients).
    Token(String),
    /// The complete answer.
    Done(Arc<Completion>),
    /// The request failed. `status` is what a not-yet-started response should carry.
    Error { status: StatusCode, body: ErrorBody },
}

/// A finished answer.
#[derive(Debug)]
pub struct Completion {
    pub text: String,
    /// The token texts as the backend chunked them (what the cache replays).
    pub pieces: Vec<String>,
    pub route: Arc<RouteEvent>,
    pub done: RouterDone,
}

/// Everything the relay needs for one request.
pub struct Job {
    pub request_id: Arc<str>,
    pub identity: Identity,
    pub prompt: String,
    pub prompt_hash: String,
    pub protocol: Protocol,
    /// The request needs a chat template.
    pub chat: bool,
    pub upstream_body: Bytes,
    pub plan: Plan,
    pub stream: bool,
    pub cache_key: Option<String>,
    /// Where the answer goes in the semantic index once it is cached.
    pub semantic: Option<crate::semantic::Pending>,
    pub started: Instant,
    pub routing_ms: f64,
    pub cache_ms: f64,
}

type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What one attempt at one backend came to.
enum Attempt {
    /// The answer, and the rest of the backend's body (read to its end afterwards, so that the
    /// connection goes back to the pool).
    Done(Box<Completion>, BodyStream),
    /// Try the next candidate; nothing reached the client.
    Next { reason: &'static str, detail: String },
    /// The backend cannot do this kind of request (a chat request, no chat template): try the
    /// next; if none is left, this refusal is the answer.
    Unsupported { status: StatusCode, body: ErrorBody },
    /// Stop here with this error.
    Fail { status: StatusCode, body: ErrorBody, after_tokens: bool },
    /// The client went away.
    Gone,
}

/// One event of a backend stream, whichever protocol it speaks.
enum UpEvent {
    Token(String),
    Done(DoneStats),
    Error(ErrorBody),
    Skip,
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<polyllm_common::wire::ErrorDetail>,
}

#[derive(Deserialize)]
struct ChatChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// Decoder state for one backend stream.
struct Decoder {
    protocol: Protocol,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Decoder {
    fn new(protocol: Protocol) -> Self {
        Decoder { protocol, finish: None, usage: None }
    }

    fn decode(
        &mut self,
        ev: SseEvent,
        backend: &Backend,
        first: Option<Instant>,
        start: Instant,
        pieces: usize,
    ) -> UpEvent {
        let malformed = |what: &str, e: serde_json::Error| {
            UpEvent::Error(ErrorBody::new("backend_error", format!("malformed {what} event from backend: {e}")))
        };
        match self.protocol {
            Protocol::Generate => match ev.event.as_str() {
                "token" => match serde_json::from_str::<TokenEvent>(&ev.data) {
                    Ok(t) => UpEvent::Token(t.text),
                    Err(e) => malformed("token", e),
                },
                "done" => match serde_json::from_str::<DoneStats>(&ev.data) {
                    Ok(d) => UpEvent::Done(d),
                    Err(e) => malformed("done", e),
                },
                "error" => UpEvent::Error(
                    serde_json::from_str(&ev.data).unwrap_or_else(|_| ErrorBody::new("backend_error", ev.data.clone())),
                ),
                _ => UpEvent::Skip,
            },
            Protocol::OpenAiChat => {
                if ev.data.trim() == "[DONE]" {
                    let now = Instant::now();
                    let live = backend.live();
                    let latency_ms = ms(now - start);
                    let ttft_ms = first.map(|f| ms(f - start)).unwrap_or(latency_ms);
                    let u = self.usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens: pieces as u32 });
                    let decode_s = (latency_ms - ttft_ms) / 1000.0;
                    return UpEvent::Done(DoneStats {
                        model_id: backend.id.to_string(),
                        model: live.model.to_string(),
                        device: live.device.to_string(),
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        finish_reason: self.finish.unwrap_or(FinishReason::Stop),
                        ttft_ms,
                        latency_ms,
                        tokens_per_second: if decode_s > 0.0 && u.completion_tokens > 1 {
                            (u.completion_tokens - 1) as f64 / decode_s
                        } else {
                            0.0
                        },
                    });
                }
                let chunk: ChatChunk = match serde_json::from_str(&ev.data) {
                    Ok(c) => c,
                    Err(e) => return malformed("chat", e),
                };
                if let Some(err) = chunk.error {
                    return UpEvent::Error(ErrorBody { error: err });
                }
                if let Some(u) = chunk.usage {
                    self.usage = Some(u);
                }
                let mut text = String::new();
                for c in chunk.choices {
                    if let Some(f) = c.finish_reason {
                        self.finish = Some(if f == "length" { FinishReason::Length } else { FinishReason::Stop });
                    }
                    if let Some(t) = c.delta.and_then(|d| d.content) {
                        text.push_str(&t);
                    }
                }
                if text.is_empty() {
                    UpEvent::Skip
                } else {
                    UpEvent::Token(text)
                }
            }
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn route_for(job: &Job, backend: &Backend, index: usize, failures: &[String]) -> Arc<RouteEvent> {
    let d = &job.plan.decision;
    let live = backend.live();
    let reason = if index == 0 {
        d.reason.clone()
    } else {
        let kind = if job.plan.fallback_from.is_some_and(|f| index >= f) { "fallback model" } else { "next candidate" };
        format!("{}; {} {} after: {}", d.reason, kind, backend.id, failures.join("; "))
    };
    Arc::new(RouteEvent {
        request_id: job.request_id.to_string(),
        model: live.model.to_string(),
        backend: backend.id.to_string(),
        device: live.device.to_string(),
        confidence: d.confidence,
        probabilities: d.probabilities.clone(),
        reason,
        cache: "miss".to_string(),
        similarity: None,
        features: d.features.clone(),
        contributions: d.contributions.clone(),
    })
}

/// Runs the cascade for `job`, sending [`Out`] messages to `tx` until done, failed or the client
/// is gone; then records the outcome.
pub async fn relay(st: Arc<AppState>, job: Job, tx: mpsc::Sender<Out>) {
    let mut failures: Vec<String> = Vec::new();
    let n = job.plan.cascade.len();
    let mut last = None;
    let mut refusal: Option<(StatusCode, ErrorBody)> = None;
    for (i, backend) in job.plan.cascade.iter().enumerate() {
        let route = route_for(&job, backend, i, &failures);
        let attempt = attempt(&st, &job, backend, route.clone(), &tx).await;
        match attempt {
            Attempt::Done(c, mut rest) => {
                finish(&st, &job, backend, c, &tx).await;
                drop(tx);
                let drain = async { while let Some(Ok(_)) = rest.next().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                return;
            }
            Attempt::Next { reason, detail } => {
                st.metrics.backend_errors.with_label_values(&[&backend.id]).inc();
                tracing::warn!(request_id = %job.request_id, backend = %backend.id, reason, error = %detail, "backend attempt failed");
                if i + 1 < n {
                    st.metrics.fallbacks.with_label_values(&[reason]).inc();
                }
                failures.push(format!("{}: {detail}", backend.id));
                last = Some(route);
            }
            Attempt::Unsupported { status, body } => {
                if i + 1 < n {
                    st.metrics.fallbacks.with_label_values(&["unsupported"]).inc();
                }
                failures.push(format!("{}: {}", backend.id, body.error.message));
                refusal = Some((status, body));
                last = Some(route);
            }
            Attempt::Fail { status, body, after_tokens } => {
                if after_tokens || status.is_server_error() {
                    st.metrics.backend_errors.with_label_values(&[&backend.id]).inc();
                }
                let label = if after_tokens { "stream_error".to_string() } else { status.as_u16().to_string() };
                st.record(Outcome {
                    request_id: &job.request_id,
                    identity: &job.identity,
                    prompt_hash: &job.prompt_hash,
                    status: &label,
                    started: job.started,
                    route: Some(&route),
                    done: None,
                    error: Some(&body),
                });
                let _ = tx.send(Out::Error { status, body }).await;
                return;
            }
            Attempt::Gone => {
                st.record(Outcome {
                    request_id: &job.request_id,
                    identity: &job.identity,
                    prompt_hash: &job.prompt_hash,
                    status: "499",
                    started: job.started,
                    route: Some(&route),
                    done: None,
                    error: None,
                });
                return;
            }
        }
    }
    let (status, body) = refusal.unwrap_or_else(|| {
        let msg = format!("every backend failed: {}", failures.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, ErrorBody::new("backend_unavailable", msg))
    });
    st.record(Outcome {
        request_id: &job.request_id,
        identity: &job.identity,
        prompt_hash: &job.prompt_hash,
        status: status.as_str(),
        started: job.started,
        route: last.as_deref(),
        done: None,
        error: Some(&body),
    });
    let _ = tx.send(Out::Error { status, body }).await;
}

async fn attempt(
    st: &AppState,
    job: &Job,
    backend: &Arc<Backend>,
    route: Arc<RouteEvent>,
    tx: &mpsc::Sender<Out>,
) -> Attempt {
    let _in_flight = backend.begin(&st.metrics);
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + st.config.first_token_timeout());
    let url = match job.protocol {
        Protocol::Generate => &backend.generate_url,
        Protocol::OpenAiChat => &backend.chat_url,
    };
    let send = st
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", &*job.request_id)
        .body(job.upstream_body.clone())
        .send();
    // A client that leaves while the backend is still queueing or prefilling must free the backend
    // at once: dropping the request (or, below, the body stream) closes the upstream connection,
    // which the model service takes as a cancellation.
    let sent = tokio::select! {
        biased;
        _ = tx.closed() => return Attempt::Gone,
        r = timeout_at(deadline, send) => r,
    };
    let resp = match sent {
        Err(_) => {
            return Attempt::Next {
                reason: "first_token_timeout",
                detail: "no response before the first-token timeout".into(),
            }
        }
        Ok(Err(e)) => {
            let detail = format!("cannot reach {}: {}", backend.url, error_chain(&e));
            if e.is_connect() {
                backend.mark_down(detail.clone(), &st.metrics);
            }
            return Attempt::Next { reason: "connect", detail };
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        let text = match tokio::time::timeout(Duration::from_secs(2), resp.bytes()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned(),
            _ => String::new(),
        };
        let body = serde_json::from_str::<ErrorBody>(&text)
            .unwrap_or_else(|_| ErrorBody::new("backend_error", format!("backend answered {status}: {text}")));
        if status.is_server_error() {
            return Attempt::Next { reason: "http_5xx", detail: format!("{status}: {}", body.error.message) };
        }
        let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        if job.chat && status == StatusCode::BAD_REQUEST && body.error.message.contains("chat template") {
            backend.set_supports_chat(false);
            return Attempt::Unsupported { status, body };
        }
        return Attempt::Fail { status, body, after_tokens: false };
    }

    if job.stream && tx.send(Out::Route(route.clone())).await.is_err() {
        return Attempt::Gone;
    }

    let mut body: BodyStream = Box::pin(resp.bytes_stream());
    let mut parser = SseParser::new();
    let mut decoder = Decoder::new(job.protocol);
    let mut pieces: Vec<String> = Vec::new();
    let mut first: Option<Instant> = None;
    let token_timeout = st.config.token_timeout();
    loop {
        if tx.is_closed() {
            // The client went away (a non-streaming client notices nothing else).
            return Attempt::Gone;
        }
        let wait_until = match first {
            None => deadline,
            Some(_) => tokio::time::Instant::now() + token_timeout,
        };
        let sent = job.stream && first.is_some();
        let next = tokio::select! {
            biased;
            _ = tx.closed() => return Attempt::Gone,
            r = timeout_at(wait_until, body.next()) => r,
        };
        let chunk = match next {
            Err(_) if !sent => {
                return Attempt::Next {
                    reason: "first_token_timeout",
                    detail: format!("no first token within {} ms", st.config.backends.first_token_timeout_ms),
                }
            }
            Err(_) => {
                return fail_after(format!(
                    "backend {} sent nothing for {} ms",
                    backend.id, st.config.backends.token_timeout_ms
                ))
            }
            Ok(None) | Ok(Some(Err(_))) if !sent => {
                return Attempt::Next {
                    reason: "stream_ended",
                    detail: "the stream ended before the answer was complete".into(),
                }
            }
            Ok(None) => {
                return fail_after(format!("backend {} ended the stream before the answer was complete", backend.id))
            }
            Ok(Some(Err(e))) => return fail_after(format!("backend {} stream broke: {}", backend.id, error_chain(&e))),
            Ok(Some(Ok(c))) => c,
        };
        for ev in parser.push(&chunk) {
            match decoder.decode(ev, backend, first, start, pieces.len()) {
                UpEvent::Skip => {}
                UpEvent::Token(text) => {
                    if first.is_none() {
                        first = Some(Instant::now());
                    }
                    if job.stream && tx.send(Out::Token(text.clone())).await.is_err() {
                        return Attempt::Gone;
                    }
                    pieces.push(text);
                }
                UpEvent::Done(stats) => {
                    if job.chat {
                        backend.set_supports_chat(true);
                    }
                    let ttft = first.map(|f| f - start).unwrap_or_else(|| start.elapsed());
                    backend.record_success(ttft, start.elapsed());
                    st.metrics.ttft.with_label_values(&[&backend.id]).observe(ttft.as_secs_f64());
                    let text = pieces.concat();
                    let done = RouterDone {
                        stats,
                        request_id: job.request_id.to_string(),
                        cache: "miss".to_string(),
                        routing_ms: job.routing_ms,
                        cache_ms: job.cache_ms,
                        total_ms: ms(job.started.elapsed()),
                    };
                    return Attempt::Done(Box::new(Completion { text, pieces, route, done }), body);
                }
                UpEvent::Error(body) => {
                    if sent {
                        return Attempt::Fail { status: StatusCode::BAD_GATEWAY, body, after_tokens: true };
                    }
                    return Attempt::Next { reason: "backend_error", detail: body.error.message };
                }
            }
        }
        if parser.pending_len() > MAX_PENDING {
            let msg = format!("backend {} sent an event larger than {MAX_PENDING} bytes", backend.id);
            if job.stream && first.is_some() {
                return fail_after(msg);
            }
            return Attempt::Next { reason: "backend_error", detail: msg };
        }
    }
}

fn fail_after(message: String) -> Attempt {
    Attempt::Fail {
        status: StatusCode::BAD_GATEWAY,
        body: ErrorBody::new("backend_error", message),
        after_tokens: true,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn finish(st: &Arc<AppState>, job: &Job, backend: &Arc<Backend>, c: Box<Completion>, tx: &mpsc::Sender<Out>) {
    let c: Arc<Completion> = Arc::from(c);
    let client_there = tx.send(Out::Done(c.clone())).await.is_ok();
    let s = &c.done.stats;
    st.metrics.model_selected.with_label_values(&[&c.route.model, &c.route.backend, &c.route.device]).inc();
    st.record(Outcome {
        request_id: &job.request_id,
        identity: &job.identity,
        prompt_hash: &job.prompt_hash,
        status: if client_there { "200" } else { "499" },
        started: job.started,
        route: Some(&c.route),
        done: Some(&c.done),
        error: None,
    });
    if let (Some(key), Some(cache)) = (&job.cache_key, &st.cache) {
        let answer = Arc::new(CachedAnswer {
            pieces: c.pieces.clone(),
            stats: s.clone(),
            backend: c.route.backend.clone(),
            device: c.route.device.clone(),
            confidence: c.route.confidence,
            probabilities: c.route.probabilities.clone(),
            reason: job.plan.decision.reason.clone(),
            created: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        let cache = cache.clone();
        let key = key.clone();
        let semantic = job.semantic.clone().zip(st.semantic.clone());
        tokio::spawn(async move {
            match cache.put(&key, answer).await {
                Ok(()) => {
                    if let Some((p, index)) = semantic {
                        index.insert(&p.bucket, p.vector, p.markers, key);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cache store skipped"),
            }
        });
    }
    if let Some(log) = &st.reqlog {
        log.send(ResponseRecord {
            request_id: job.request_id.to_string(),
            time: SystemTime::now(),
            prompt: job.prompt.clone(),
            upstream_body: job.upstream_body.clone(),
            model: c.route.model.clone(),
            backend: backend.id.to_string(),
            device: c.route.device.clone(),
            text: c.text.clone(),
            ttft_ms: s.ttft_ms,
            latency_ms: c.done.total_ms,
            backend_latency_ms: s.latency_ms,
            tokens: s.completion_tokens,
            prompt_tokens: s.prompt_tokens,
            finish_reason: s.finish_reason,
            policy: st.policy.name().to_string(),
            confidence: c.route.confidence,
        });
    }
}
