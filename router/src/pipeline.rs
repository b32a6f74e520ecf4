//! The steps every generation endpoint shares, in order: admit (identify the caller, take a
//! rate-limit token), look the answer up in the cache, route, and start the relay. The endpoint
//! modules (`generate`, `openai`) only parse their body and format what comes out.
use crate::cache::{cache_key, cacheable, lookup, CachedAnswer};
use crate::error::ApiError;
use crate::policy::{self, PromptFeatures, RoutingContext};
use crate::proxy::{self, ms, Job, Out};
use crate::ratelimit::{Identity, Verdict};
use crate::semantic::{bucket_key, Lookup, Markers, Pending};
use crate::state::{AppState, Outcome};
use crate::validation::RouterRequest;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use polyllm_common::route::{RouteEvent, RouterDone};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A request that passed the rate limit.
pub struct Admitted {
    pub request_id: Arc<str>,
    pub identity: Identity,
    pub started: Instant,
    pub verdict: Verdict,
}

/// An answer from the cache.
pub struct Hit {
    pub route: RouteEvent,
    pub answer: Arc<CachedAnswer>,
    pub done: RouterDone,
    /// The `X-Cache` header: `HIT` (the same request), `SEMANTIC` (a close paraphrase's answer).
    pub x_cache: &'static str,
}

pub enum Started {
    Hit(Box<Hit>),
    /// The relay is running; `first` is its first message (never an error).
    Live {
        first: Out,
        rx: mpsc::Receiver<Out>,
    },
}

/// A 128-bit request id as 32 hex digits: a random per-process key (one `getrandom` at start)
/// and a counter, mixed so ids look random. Unique across replicas with overwhelming
/// probability, and no system call per request.
pub fn new_request_id() -> Arc<str> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *KEY.get_or_init(|| {
        let u = uuid::Uuid::new_v4().as_u128();
        ((u >> 64) as u64, u as u64)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finalizer: a bijection, so distinct counters give distinct ids.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    Arc::from(format!("{:016x}{:016x}", a ^ mix(n.wrapping_add(b)), mix(n ^ b)))
}

/// Identifies the caller and takes a token; a refused request gets its 429 here.
pub async fn admit(st: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<Admitted, Response> {
    let started = Instant::now();
    let request_id = new_request_id();
    let identity = st.limiter.identifier.identify(headers, peer);
    let verdict = st.limiter.check(&identity).await;
    let adm = Admitted { request_id, identity, started, verdict };
    if let Verdict::Limited { .. } = verdict {
        st.metrics.rate_limited.inc();
        let secs = match verdict {
            Verdict::Limited { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            _ => 1,
        };
        return Err(fail(st, &adm, "", ApiError::RateLimited { retry_after_secs: secs }));
    }
    Ok(adm)
}

/// Records a request that ends with `err` and builds its response. Errors that come from the
/// relay ([`ApiError::Backend`]) were recorded there.
pub fn fail(st: &AppState, adm: &Admitted, prompt_hash: &str, err: ApiError) -> Response {
    let body = err.body();
    let status = err.status();
    if matches!(err, ApiError::Backend { .. }) {
        return decorate(err.into_response(), adm, "MISS");
    }
    st.record(Outcome {
        request_id: &adm.request_id,
        identity: &adm.identity,
        prompt_hash,
        status: status.as_str(),
        started: adm.started,
        route: None,
        done: None,
        error: Some(&body),
    });
    decorate(err.into_response(), adm, "MISS")
}

/// Adds X-Request-Id, X-Cache (`HIT`, `SEMANTIC` or `MISS`) and the rate-limit headers.
pub fn decorate(mut resp: Response, adm: &Admitted, x_cache: &'static str) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&adm.request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    h.insert(HeaderName::from_static("x-cache"), HeaderValue::from_static(x_cache));
    match adm.verdict {
        Verdict::Allowed { limit, remaining } => {
            h.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(limit));
            h.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(remaining));
        }
        Verdict::Limited { limit, .. } => {
            h.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(limit));
            h.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(0u32));
        }
        Verdict::Unlimited => {}
    }
    resp
}

/// SSE response headers.
pub fn sse_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
}

pub fn prompt_hash(prompt: &str) -> String {
    let d = Sha256::digest(prompt.as_bytes());
    hex::encode(&d[..8])
}

/// A cached answer as this request's answer: its route and done events, and the record.
#[allow(clippy::too_many_arguments)]
fn hit(
    st: &Arc<AppState>,
    adm: &Admitted,
    answer: Arc<CachedAnswer>,
    x_cache: &'static str,
    reason: String,
    similarity: Option<f64>,
    cache_ms: f64,
    prompt_hash: &str,
) -> Started {
    let kind = if similarity.is_some() { "semantic" } else { "hit" };
    let route = RouteEvent {
        request_id: adm.request_id.to_string(),
        model: answer.stats.model.clone(),
        backend: answer.backend.clone(),
        device: answer.device.clone(),
        confidence: answer.confidence,
        probabilities: answer.probabilities.clone(),
        reason,
        cache: kind.to_string(),
        similarity,
        features: None,
        contributions: None,
    };
    let done = RouterDone {
        stats: answer.stats.clone(),
        request_id: adm.request_id.to_string(),
        cache: kind.to_string(),
        routing_ms: 0.0,
        cache_ms,
        total_ms: ms(adm.started.elapsed()),
    };
    st.record(Outcome {
        request_id: &adm.request_id,
        identity: &adm.identity,
        prompt_hash,
        status: "200",
        started: adm.started,
        route: Some(&route),
        done: Some(&done),
        error: None,
    });
    Started::Hit(Box::new(Hit { route, answer, done, x_cache }))
}

/// Cache lookup, routing and the start of the relay.
pub async fn start(
    st: &Arc<AppState>,
    adm: &Admitted,
    req: RouterRequest,
    prompt_hash: String,
) -> Result<Started, ApiError> {
    let path = req.protocol.path();
    // With API keys on, each key has its own entries unless the operator shares them: one
    // tenant's answer (and a HIT that says what others asked) never reaches another.
    let tenant = (st.api_keys.is_some() && !st.config.cache.shared_cache).then_some(&*adm.identity.key);
    let key = match &st.cache {
        Some(_) if cacheable(req.temp, req.seed, st.config.cache.default_temp) => {
            Some(cache_key(path, &req.upstream_body, req.preference.as_str(), req.model.as_deref(), tenant))
        }
        _ => None,
    };
    let c0 = Instant::now();
    if let (Some(k), Some(cache)) = (&key, &st.cache) {
        if let Some(answer) = lookup(cache.as_ref(), k, &st.metrics).await {
            let reason = format!("cache hit: answer generated earlier by {} ({})", answer.backend, answer.stats.model);
            return Ok(hit(st, adm, answer, "HIT", reason, None, ms(c0.elapsed()), &prompt_hash));
        }
    }
    // A close paraphrase answered before, when the semantic cache is on for this request.
    let mut semantic = None;
    let wants_semantic = req.semantic_cache.unwrap_or(st.config.cache.semantic_cache);
    if let (true, Some(_), Some(index), Some(learned), Some(cache)) =
        (wants_semantic, &key, &st.semantic, &st.learned, &st.cache)
    {
        let bucket = bucket_key(path, &req.upstream_body, req.preference.as_str(), req.model.as_deref(), tenant);
        let (l2, prompt) = (learned.clone(), req.prompt.clone());
        // The embedding is tens of ms of CPU, and cached for the routing decision that follows.
        if let Ok(Some(Ok(e))) = tokio::task::spawn_blocking(move || l2.embedding(&prompt)).await {
            let vector = Arc::new(e.vector.clone());
            let markers = Markers::of(&req.prompt);
            let m = &st.metrics;
            match index.lookup(&bucket, &vector, &markers) {
                Lookup::Hit(found) => {
                    m.semantic_similarity.observe(f64::from(found.similarity));
                    if let Ok(Some(answer)) = cache.get(&found.key).await {
                        m.semantic_lookups.with_label_values(&["hit"]).inc();
                        m.cache_hits.inc();
                        let similarity = f64::from(found.similarity);
                        let reason = format!(
                            "semantic cache hit: a prompt {similarity:.3} similar, with the same numbers, names and negations, was answered by {} ({})",
                            answer.backend, answer.stats.model
                        );
                        let started =
                            hit(st, adm, answer, "SEMANTIC", reason, Some(similarity), ms(c0.elapsed()), &prompt_hash);
                        return Ok(started);
                    }
                    // The answer expired from the cache before its index entry: a miss.
                    m.semantic_lookups.with_label_values(&["miss"]).inc();
                }
                Lookup::Guarded { similarity } => {
                    m.semantic_similarity.observe(f64::from(similarity));
                    m.semantic_lookups.with_label_values(&["guarded"]).inc();
                }
                Lookup::Miss { best } => {
                    if let Some(s) = best {
                        m.semantic_similarity.observe(f64::from(s));
                    }
                    m.semantic_lookups.with_label_values(&["miss"]).inc();
                }
            }
            semantic = Some(Pending { bucket, vector, markers });
        }
    }
    let cache_ms = if key.is_some() { ms(c0.elapsed()) } else { 0.0 };

    let r0 = Instant::now();
    let plan = if st.policy.blocking() {
        // The learned policy embeds the prompt: keep that off the async workers.
        let (st2, prompt, chat, max_tokens, temp, preference, model, cost_weight) = (
            st.clone(),
            req.prompt.clone(),
            req.chat,
            req.max_tokens,
            req.temp,
            req.preference,
            req.model.clone(),
            req.cost_weight,
        );
        tokio::task::spawn_blocking(move || {
            let ctx = RoutingContext {
                prompt: &prompt,
                features: PromptFeatures::of(&prompt),
                chat,
                max_tokens,
                temp,
                cost_weight,
            };
            policy::plan(
                st2.policy.as_ref(),
                &st2.registry,
                &ctx,
                preference,
                model.as_deref(),
                st2.config.routing.fallback_model.as_deref(),
            )
        })
        .await
        .map_err(|e| ApiError::Internal(format!("routing task failed: {e}")))??
    } else {
        let ctx = RoutingContext {
            prompt: &req.prompt,
            features: PromptFeatures::of(&req.prompt),
            chat: req.chat,
            max_tokens: req.max_tokens,
            temp: req.temp,
            cost_weight: req.cost_weight,
        };
        policy::plan(
            st.policy.as_ref(),
            &st.registry,
            &ctx,
            req.preference,
            req.model.as_deref(),
            st.config.routing.fallback_model.as_deref(),
        )?
    };
    let routing = r0.elapsed();
    st.metrics.routing_latency.observe(routing.as_secs_f64());

    let (tx, mut rx) = mpsc::channel(64);
    let job = Job {
        request_id: adm.request_id.clone(),
        identity: adm.identity.clone(),
        prompt: req.prompt,
        prompt_hash,
        protocol: req.protocol,
        chat: req.chat,
        upstream_body: req.upstream_body,
        plan,
        stream: req.stream,
        cache_key: key,
        semantic,
        started: adm.started,
        routing_ms: ms(routing),
        cache_ms,
    };
    tokio::spawn(proxy::relay(st.clone(), job, tx));
    match rx.recv().await {
        Some(Out::Error { status, body }) => Err(ApiError::Backend { status, body }),
        Some(first) => Ok(Started::Live { first, rx }),
        None => Err(ApiError::Internal("the relay ended without an answer".into())),
    }
}
