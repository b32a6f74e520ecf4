//! The response cache: the key (a SHA-256 over the normalized prompt, the routing inputs and every
//! parameter that changes the output), the rule for what may be cached, the [`ResponseCache`]
//! trait, and its two stores: Redis (shared by every router replica; bypassed while Redis is down)
//! and moka (in process, when no `REDIS_URL` is set).
use crate::metrics::Metrics;
use crate::redis_conn::{RedisConn, RedisError};
use futures::future::BoxFuture;
use polyllm_common::wire::DoneStats;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A complete, successful answer as it was streamed, enough to replay it event by event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The token texts in the order and chunking the backend sent them.
    pub pieces: Vec<String>,
    pub stats: DoneStats,
    /// The backend and route of the request that produced it.
    pub backend: String,
    pub device: String,
    pub confidence: f64,
    pub probabilities: BTreeMap<String, f64>,
    pub reason: String,
    /// Unix seconds when it was stored.
    pub created: u64,
}

impl CachedAnswer {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("corrupt cache entry: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Where answers are kept. Implementations must be cheap to call and never block.
pub trait ResponseCache: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>>;
    fn put<'a>(&'a self, key: &'a str, answer: Arc<CachedAnswer>) -> BoxFuture<'a, Result<(), CacheError>>;
}

/// Only deterministic answers are cached: greedy decoding (temp 0) or a fixed seed.
pub fn cacheable(temp: Option<f64>, seed: Option<u64>, default_temp: f64) -> bool {
    seed.is_some() || temp.unwrap_or(default_temp) == 0.0
}

/// Line endings become `\n`; for chat prompts surrounding whitespace is dropped too (the chat
/// template wraps the text anyway). The backend receives the normalized prompt, so the key always
/// describes what was really generated.
pub fn normalize_prompt(prompt: &str, chat: bool) -> String {
    let p = if prompt.contains('\r') { prompt.replace("\r\n", "\n").replace('\r', "\n") } else { prompt.to_string() };
    if chat {
        let t = p.trim();
        if t.len() != p.len() {
            return t.to_string();
        }
    }
    p
}

/// The cache key: SHA-256 over the backend call (path and body: prompt and every sampling field),
/// the routing inputs (`prefer_backend`, forced model) and the tenant whose entries these are
/// (`None`: shared by every caller), hex-encoded.
pub fn cache_key(
    upstream_path: &str,
    upstream_body: &[u8],
    preference: &str,
    model: Option<&str>,
    tenant: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"polyllm-cache-v1\0");
    if let Some(t) = tenant {
        h.update(b"tenant\0");
        h.update(t.as_bytes());
        h.update(b"\0");
    }
    h.update(upstream_path.as_bytes());
    h.update(b"\0");
    h.update(upstream_body);
    h.update(b"\0");
    h.update(preference.as_bytes());
    h.update(b"\0");
    h.update(model.unwrap_or("auto").as_bytes());
    hex::encode(h.finalize())
}

/// The in-process store.
pub struct MokaCache {
    inner: moka::future::Cache<String, Arc<CachedAnswer>>,
}

impl MokaCache {
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        MokaCache { inner: moka::future::Cache::builder().time_to_live(ttl).max_capacity(max_entries).build() }
    }
}

impl ResponseCache for MokaCache {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>> {
        Box::pin(async move { Ok(self.inner.get(key).await) })
    }
    fn put<'a>(&'a self, key: &'a str, answer: Arc<CachedAnswer>) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.inner.insert(key.to_string(), answer).await;
            Ok(())
        })
    }
}

/// The shared store: one Redis string per answer, JSON, with `EX ttl`.
pub struct RedisCache {
    conn: Arc<RedisConn>,
    ttl_secs: u64,
}

impl RedisCache {
    pub fn new(conn: Arc<RedisConn>, ttl: Duration) -> Self {
        RedisCache { conn, ttl_secs: ttl.as_secs().max(1) }
    }

    fn key(&self, key: &str) -> String {
        format!("{}cache:{key}", self.conn.prefix)
    }
}

impl ResponseCache for RedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>> {
        Box::pin(async move {
            let k = self.key(key);
            let raw: Option<Vec<u8>> =
                self.conn.run(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await }).await?;
            match raw {
                None => Ok(None),
                Some(bytes) => Ok(Some(Arc::new(serde_json::from_slice(&bytes)?))),
            }
        })
    }
    fn put<'a>(&'a self, key: &'a str, answer: Arc<CachedAnswer>) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let k = self.key(key);
            let v = serde_json::to_vec(&*answer)?;
            let ttl = self.ttl_secs;
            self.conn
                .run(|mut c| async move {
                    redis::cmd("SET").arg(&k).arg(v).arg("EX").arg(ttl).query_async::<()>(&mut c).await
                })
                .await?;
            Ok(())
        })
    }
}

/// Looks up `key`, counting hits and misses; an unreachable store counts as a miss.
pub async fn lookup(cache: &dyn ResponseCache, key: &str, metrics: &Metrics) -> Option<Arc<CachedAnswer>> {
    match cache.get(key).await {
        Ok(Some(hit)) => {
            metrics.cache_hits.inc();
            Some(hit)
        }
        Ok(None) => {
            metrics.cache_misses.inc();
            None
        }
        Err(e) => {
            metrics.cache_misses.inc();
            tracing::debug!(error = %e, cache = cache.name(), "cache bypassed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyllm_common::wire::FinishReason;

    pub(crate) fn answer() -> CachedAnswer {
        CachedAnswer {
            pieces: vec!["Hel".into(), "lo".into()],
            stats: DoneStats {
                model_id: "m1".into(),
                model: "gemma-3-270m".into(),
                device: "cpu".into(),
                prompt_tokens: 3,
                completion_tokens: 2,
                finish_reason: FinishReason::Length,
                ttft_ms: 10.0,
                latency_ms: 20.0,
                tokens_per_second: 100.0,
            },
            backend: "m1".into(),
            device: "cpu".into(),
            confidence: 1.0,
            probabilities: BTreeMap::new(),
            reason: "r".into(),
            created: 0,
        }
    }

    #[test]
    fn key_covers_every_input() {
        let ck = |path: &str, body: &[u8], pref: &str, model: Option<&str>| cache_key(path, body, pref, model, None);
        let base = ck("/generate", br#"{"prompt":"a","temp":0}"#, "auto", None);
        let tenant = |t: &str| cache_key("/generate", br#"{"prompt":"a","temp":0}"#, "auto", None, Some(t));
        assert_ne!(base, tenant("key:aaaa"), "a tenant's entries are its own");
        assert_ne!(tenant("key:aaaa"), tenant("key:bbbb"));
        assert_eq!(tenant("key:aaaa"), tenant("key:aaaa"));
        assert_eq!(base.len(), 64);
        assert_eq!(base, ck("/generate", br#"{"prompt":"a","temp":0}"#, "auto", None));
        assert_ne!(base, ck("/generate", br#"{"prompt":"b","temp":0}"#, "auto", None));
        assert_ne!(base, ck("/generate", br#"{"prompt":"a","temp":0}"#, "gpu", None));
        assert_ne!(base, ck("/generate", br#"{"prompt":"a","temp":0}"#, "auto", Some("m1")));
        assert_ne!(base, ck("/v1/chat/completions", br#"{"prompt":"a","temp":0}"#, "auto", None));
        assert_eq!(base, ck("/generate", br#"{"prompt":"a","temp":0}"#, "auto", Some("auto")));
    }

    #[test]
    fn sampled_answers_need_a_seed() {
        assert!(cacheable(Some(0.0), None, 0.8));
        assert!(!cacheable(Some(0.7), None, 0.0));
        assert!(cacheable(Some(0.7), Some(1), 0.0));
        assert!(!cacheable(None, None, 0.8));
        assert!(cacheable(None, None, 0.0));
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_prompt("a\r\nb\rc", false), "a\nb\nc");
        assert_eq!(normalize_prompt("  x \n", false), "  x \n");
        assert_eq!(normalize_prompt("  x \n", true), "x");
    }

    #[tokio::test]
    async fn moka_round_trip_and_counts() {
        let m = Metrics::new();
        let c = MokaCache::new(Duration::from_secs(60), 10);
        assert!(lookup(&c, "k", &m).await.is_none());
        c.put("k", Arc::new(answer())).await.unwrap();
        let hit = lookup(&c, "k", &m).await.unwrap();
        assert_eq!(hit.text(), "Hello");
        assert_eq!(m.cache_hits.get(), 1);
        assert_eq!(m.cache_misses.get(), 1);
    }

    #[tokio::test]
    async fn moka_expires() {
        let c = MokaCache::new(Duration::from_millis(50), 10);
        c.put("k", Arc::new(answer())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(c.get("k").await.unwrap().is_none());
    }
}
