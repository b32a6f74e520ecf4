//! Property tests (proptest) for the two pieces whose mistakes are silent:
//! - cache keys: two requests that must share an answer (same prompt up to line endings, same
//!   sampling fields and routing inputs, in any field order and JSON layout, streamed or not) get
//!   the same key; changing any field that changes the answer changes the key;
//! - the token bucket: under any interleaving of concurrent callers, never more than
//!   `burst + rps × elapsed` requests are admitted, in process and through Redis' Lua script.
mod common;

use proptest::prelude::*;
use router::cache::cache_key;
use router::metrics::Metrics;
use router::ratelimit::{Identity, Limit, RateLimiter, Verdict};
use router::redis_conn::RedisConn;
use router::validation::{self, Limits};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMITS: Limits = Limits { max_prompt_chars: 10_000 };

#[derive(Debug, Clone)]
struct Req {
    prompt: String,
    max_tokens: Option<u32>,
    temp: Option<f64>,
    seed: Option<u64>,
    top_p: Option<f64>,
    prefer: Option<&'static str>,
    model: Option<&'static str>,
    stream: Option<bool>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        "[a-zA-Z0-9 ,.?\n]{1,40}",
        proptest::option::of(1u32..512),
        proptest::option::of(prop_oneof![Just(0.0), Just(0.7), Just(1.2)]),
        proptest::option::of(0u64..1000),
        proptest::option::of(prop_oneof![Just(0.5), Just(0.9)]),
        proptest::option::of(prop_oneof![Just("auto"), Just("cpu"), Just("gpu")]),
        proptest::option::of(prop_oneof![Just("m1"), Just("m2")]),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(prompt, max_tokens, temp, seed, top_p, prefer, model, stream)| Req {
            prompt,
            max_tokens,
            temp,
            seed,
            top_p,
            prefer,
            model,
            stream,
        })
}

/// The request as JSON fields (the prompt's line endings as given).
fn fields(r: &Req, prompt: &str) -> Vec<(&'static str, Value)> {
    let mut f = vec![("prompt", Value::from(prompt))];
    if let Some(v) = r.max_tokens {
        f.push(("max_tokens", v.into()));
    }
    if let Some(v) = r.temp {
        f.push(("temp", v.into()));
    }
    if let Some(v) = r.seed {
        f.push(("seed", v.into()));
    }
    if let Some(v) = r.top_p {
        f.push(("top_p", v.into()));
    }
    if let Some(v) = r.prefer {
        f.push(("prefer_backend", v.into()));
    }
    if let Some(v) = r.model {
        f.push(("model", v.into()));
    }
    if let Some(v) = r.stream {
        f.push(("stream", v.into()));
    }
    f
}

fn body(f: &[(&'static str, Value)], pretty: bool) -> Vec<u8> {
    let mut m = Map::new();
    for (k, v) in f {
        m.insert(k.to_string(), v.clone());
    }
    let v = Value::Object(m);
    if pretty {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    }
}

/// The key the pipeline computes for a `/generate` body.
fn key_of(body: &[u8]) -> String {
    let r = validation::generate(body, LIMITS).expect("valid request");
    cache_key(r.protocol.path(), &r.upstream_body, r.preference.as_str(), r.model.as_deref(), None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn equal_requests_share_a_key(r in req(), rotate in 0usize..8, pretty in any::<bool>(), stream in any::<bool>()) {
        let a = fields(&r, &r.prompt);
        // The same request: fields in another order, other JSON layout, CRLF line endings, and
        // streaming or not (the answer is the same either way).
        let mut b = fields(&Req { stream: Some(stream), ..r.clone() }, &r.prompt.replace('\n', "\r\n"));
        let n = b.len();
        b.rotate_left(rotate % n);
        prop_assert_eq!(key_of(&body(&a, false)), key_of(&body(&b, pretty)));
    }

    #[test]
    fn a_changed_answer_changes_the_key(r in req(), which in 0usize..6) {
        let a = key_of(&body(&fields(&r, &r.prompt), false));
        let mut c = r.clone();
        match which {
            0 => c.prompt.push('!'),
            1 => c.max_tokens = Some(c.max_tokens.map_or(64, |m| m + 1)),
            2 => c.seed = Some(c.seed.map_or(7, |s| s + 1)),
            3 => c.temp = Some(if c.temp == Some(0.3) { 0.4 } else { 0.3 }),
            4 => c.prefer = Some(if c.prefer == Some("gpu") { "cpu" } else { "gpu" }),
            _ => c.model = Some(if c.model == Some("m1") { "m2" } else { "m1" }),
        }
        prop_assert_ne!(a, key_of(&body(&fields(&c, &c.prompt), false)));
    }
}

/// Sends `waves` of concurrent checks (each wave: that many tasks at once, then a pause) and
/// returns (admitted, elapsed from just before the first check to just after the last).
async fn hammer(rl: Arc<RateLimiter>, id: Identity, waves: Vec<(usize, u64)>) -> (usize, Duration) {
    let t0 = Instant::now();
    let mut admitted = 0;
    for (n, pause_ms) in waves {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (rl, id) = (rl.clone(), id.clone());
                tokio::spawn(async move { matches!(rl.check(&id).await, Verdict::Allowed { .. }) })
            })
            .collect();
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    (admitted, t0.elapsed())
}

fn waves() -> impl Strategy<Value = (f64, u32, Vec<(usize, u64)>)> {
    (prop_oneof![Just(5.0), Just(20.0), Just(50.0)], 1u32..8, proptest::collection::vec((1usize..12, 0u64..40), 1..8))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn in_process_bucket_never_admits_more_than_burst_plus_refill((rps, burst, w) in waves()) {
        let rt = runtime();
        let rl = Arc::new(RateLimiter::new(Limit { rps, burst }, HashMap::new(), None));
        let id = Identity { key: Arc::from("ip:10.9.8.7") };
        let total: usize = w.iter().map(|(n, _)| n).sum();
        let (admitted, elapsed) = rt.block_on(hammer(rl, id, w));
        let bound = burst as f64 + rps * elapsed.as_secs_f64();
        prop_assert!(admitted as f64 <= bound, "{admitted} admitted > {bound:.2} (burst {burst}, {rps}/s over {elapsed:?})");
        // And it is a limiter, not a wall: the first `burst` (or all, if fewer) always pass.
        prop_assert!(admitted >= (burst as usize).min(total));
    }
}

#[test]
fn redis_bucket_never_admits_more_than_burst_plus_refill() {
    let redis = common::Redis::start();
    let rt = runtime();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(16));
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&waves(), |(rps, burst, w)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let conn = rt
                .block_on(async {
                    RedisConn::new(
                        &redis.url(),
                        "proptest:",
                        Duration::from_millis(500),
                        Duration::from_millis(200),
                        Arc::new(Metrics::new()),
                    )
                })
                .unwrap();
            let rl = Arc::new(RateLimiter::new(Limit { rps, burst }, HashMap::new(), Some(Arc::new(conn))));
            // A fresh bucket per case.
            let id = Identity { key: Arc::from(format!("ip:10.0.0.{n}")) };
            let total: usize = w.iter().map(|(n, _)| n).sum();
            let (admitted, elapsed) = rt.block_on(hammer(rl, id, w));
            let bound = burst as f64 + rps * elapsed.as_secs_f64();
            prop_assert!(
                admitted as f64 <= bound,
                "{admitted} admitted > {bound:.2} (burst {burst}, {rps}/s over {elapsed:?})"
            );
            prop_assert!(admitted >= (burst as usize).min(total));
            Ok(())
        })
        .unwrap();
    // The script really ran in Redis (not the in-process fallback).
    assert!(!redis.keys("proptest:rl:*").is_empty());
}
