//! The router's shared state (configuration, registry, policy, cache, limiter, metrics, HTTP
//! client, response log) and the one place a finished request is accounted for: the
//! `router_requests_total` and latency metrics, the JSON request log line, and the per-caller
//! record behind `GET /last_request_stats`.
use crate::backends::Registry;
use crate::cache::{MokaCache, RedisCache, ResponseCache};
use crate::config::Config;
use crate::learned::LearnedPolicy;
use crate::metrics::Metrics;
use crate::policy::RoutingPolicy;
use crate::ratelimit::{load_overrides, Identifier, Identity, Limit, RateLimiter};
use crate::redis_conn::RedisConn;
use crate::reqlog::{rfc3339, ReqLog};
use anyhow::Context;
use polyllm_common::route::{RouteEvent, RouterDone};
use polyllm_common::wire::ErrorBody;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How many bytes of `/last_request_stats` records the router keeps (least recently used go first).
pub const LAST_REQUEST_BYTES: u64 = 32 * 1024 * 1024;

/// The per-caller last-request records, bounded by bytes (each record weighs its JSON size), not
/// by count: a record with the learned route's features and contributions is a few KB, and every
/// caller address has one.
fn last_requests(max_bytes: u64) -> moka::sync::Cache<Arc<str>, Arc<Value>> {
    moka::sync::Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|k: &Arc<str>, v: &Arc<Value>| u32::try_from(k.len() + v.to_string().len()).unwrap_or(u32::MAX))
        .time_to_idle(Duration::from_secs(24 * 3600))
        .build()
}

pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub policy: Arc<dyn RoutingPolicy>,
    /// None when `--cache-ttl-secs 0`.
    pub cache: Option<Arc<dyn ResponseCache>>,
    pub limiter: RateLimiter,
    pub redis: Option<Arc<RedisConn>>,
    pub metrics: Arc<Metrics>,
    /// One pooled client for every backend call.
    pub client: reqwest::Client,
    pub reqlog: Option<ReqLog>,
    /// The learned policy, when the router runs one (for its admin and status endpoints, and the
    /// semantic cache's embeddings).
    pub learned: Option<Arc<LearnedPolicy>>,
    /// The semantic cache's index: with a cache, when `--semantic-cache` or a request may use it
    /// and the embedder loaded.
    pub semantic: Option<Arc<crate::semantic::SemanticIndex>>,
    /// The accepted API keys, when `--api-keys` requires them.
    pub api_keys: Option<crate::keys::ApiKeys>,
    /// identity -> its latest request's decision and stats.
    last: moka::sync::Cache<Arc<str>, Arc<Value>>,
}

/// How one request ended, for [`AppState::record`].
pub struct Outcome<'a> {
    pub request_id: &'a str,
    pub identity: &'a Identity,
    pub prompt_hash: &'a str,
    /// `200`, `400`, `429`, `503`, `499` (client went away), `stream_error` ...
    pub status: &'a str,
    pub started: Instant,
    pub route: Option<&'a RouteEvent>,
    pub done: Option<&'a RouterDone>,
    pub error: Option<&'a ErrorBody>,
}

impl AppState {
    /// Builds the state from the configuration, with `policy` deciding routes.
    pub fn new(config: Config, policy: Arc<dyn RoutingPolicy>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::load(&config.backends.backends).context("loading --backends")?);
        metrics.init_backends(registry.all().iter().map(|b| &*b.id));
        let redis = match config.redis.redis_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(Arc::new(
                RedisConn::new(
                    url,
                    &config.redis.redis_key_prefix,
                    Duration::from_millis(config.redis.redis_timeout_ms),
                    Duration::from_millis(config.redis.redis_retry_ms),
                    metrics.clone(),
                )
                .context("REDIS_URL")?,
            )),
            None => None,
        };
        let cache: Option<Arc<dyn ResponseCache>> = match (config.cache.cache_ttl_secs, &redis) {
            (0, _) => None,
            (ttl, Some(r)) => Some(Arc::new(RedisCache::new(r.clone(), Duration::from_secs(ttl)))),
            (ttl, None) => Some(Arc::new(MokaCache::new(Duration::from_secs(ttl), config.cache.cache_max_entries))),
        };
        let mut overrides = match &config.limits.rate_limit_overrides {
            Some(p) => load_overrides(p)?,
            None => Default::default(),
        };
        let api_keys = match &config.access.api_keys {
            Some(p) => {
                let keys = crate::keys::ApiKeys::load(p)?;
                tracing::info!(keys = keys.len(), "API keys required on the model endpoints");
                overrides.extend(keys.limits());
                Some(keys)
            }
            None => None,
        };
        // A key has a bucket of its own only if the operator named it (an override or an API key).
        let mut known: Vec<String> = overrides.keys().cloned().collect();
        known.extend(api_keys.iter().flat_map(|k| k.identities()));
        let mut limiter = RateLimiter::new(
            Limit { rps: config.limits.rate_limit_rps, burst: config.limits.rate_limit_burst },
            overrides,
            redis.clone(),
        );
        limiter.identifier = Identifier::new(known, config.limits.trusted_proxies.clone());
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.backends.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_only()
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        let reqlog = match &config.logging.response_log_dir {
            Some(dir) => Some(
                ReqLog::start(
                    dir,
                    config.logging.response_log_max_bytes,
                    !config.logging.response_log_no_text,
                    metrics.clone(),
                )
                .with_context(|| format!("opening the response log in {}", dir.display()))?,
            ),
            None => None,
        };
        let last = last_requests(LAST_REQUEST_BYTES);
        Ok(AppState {
            config,
            registry,
            policy,
            cache,
            limiter,
            redis,
            metrics,
            client,
            reqlog,
            learned: None,
            semantic: None,
            api_keys,
            last,
        })
    }

    /// Builds the state with the learned policy (`--router-model`, `--embedder-dir`), which routes
    /// with the baseline `--policy` while it has no model.
    pub fn with_learned_policy(config: Config) -> anyhow::Result<Self> {
        let baseline = crate::policy::BaselinePolicy { kind: config.routing.policy };
        let options = crate::learned::LearnedOptions {
            cost_weight: config.routing.cost_weight,
            load_aware: config.routing.load_aware,
        };
        let learned =
            Arc::new(LearnedPolicy::new(&config.routing.router_model, &config.routing.embedder_dir, baseline, options));
        let mut st = AppState::new(config, learned.clone())?;
        if st.cache.is_some() && learned.can_embed() {
            let c = &st.config.cache;
            st.semantic = Some(Arc::new(crate::semantic::SemanticIndex::new(
                c.semantic_threshold,
                Duration::from_secs(c.cache_ttl_secs),
                c.semantic_max_entries,
            )));
        } else if st.config.cache.semantic_cache {
            tracing::warn!(
                "--semantic-cache is on but the cache is off or the embedder did not load: semantic cache off"
            );
        }
        st.learned = Some(learned);
        Ok(st)
    }

    /// Starts the background tasks: health checks, limiter housekeeping, the router model watcher.
    pub fn spawn_background(self: &Arc<Self>) {
        if let (Some(l), ms) = (&self.learned, self.config.routing.router_model_poll_ms) {
            if ms > 0 {
                l.spawn_watcher(Duration::from_millis(ms));
            }
        }
        self.registry.spawn_health_checker(
            self.client.clone(),
            Duration::from_millis(self.config.backends.health_interval_ms),
            Duration::from_millis(self.config.backends.health_timeout_ms),
            self.metrics.clone(),
        );
        let st = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match st.upgrade() {
                    Some(st) => st.limiter.housekeeping(),
                    None => return,
                }
            }
        });
    }

    /// Accounts for a finished request: metrics, one JSON log line, last-request stats.
    pub fn record(&self, o: Outcome<'_>) {
        let elapsed = o.started.elapsed();
        self.metrics.requests.with_label_values(&[o.status]).inc();
        self.metrics.request_latency.observe(elapsed.as_secs_f64());
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let tokens = o.done.map_or(0, |d| d.stats.completion_tokens);
        let cache_hit = o.done.is_some_and(|d| d.cache == "hit");
        tracing::info!(
            target: "router::request",
            request_id = o.request_id,
            prompt_hash = o.prompt_hash,
            model = o.route.map_or("", |r| r.model.as_str()),
            backend = o.route.map_or("", |r| r.backend.as_str()),
            latency_ms,
            tokens,
            cache_hit,
            status = o.status,
            error = o.error.map_or("", |e| e.error.kind.as_str()),
            // A message can quote what the client sent (serde names the offending value, and
            // `prefer_backend`/`model` echo theirs), which may be prompt text: logged only when
            // prompt logging is switched on.
            error_message = if self.config.logging.log_prompts { o.error.map_or("", |e| e.error.message.as_str()) } else { "" },
            "request"
        );
        let v = json!({
            "request_id": o.request_id,
            "time": rfc3339(SystemTime::now()),
            "status": o.status,
            "cache": if cache_hit { "hit" } else { "miss" },
            "latency_ms": latency_ms,
            "tokens": tokens,
            "route": o.route,
            "stats": o.done,
            "error": o.error.map(|e| &e.error),
        });
        self.last.insert(o.identity.key.clone(), Arc::new(v));
    }

    /// The latest request of `identity`, if any.
    pub fn last_request(&self, identity: &Identity) -> Option<Arc<Value>> {
        self.last.get(&identity.key)
    }

    /// Forgets every caller's last-request record; returns how many there were.
    pub fn reset_stats(&self) -> u64 {
        self.last.run_pending_tasks();
        let n = self.last.entry_count();
        self.last.invalidate_all();
        self.last.run_pending_tasks();
        n
    }

    /// Flushes the response log.
    pub fn shutdown(&self) {
        if let Some(log) = &self.reqlog {
            log.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_request_records_are_bounded_by_bytes() {
        let cache = last_requests(1024 * 1024);
        let record = Arc::new(json!({ "route": { "features": "x".repeat(10_000) } }));
        for i in 0..1_000 {
            cache.insert(Arc::from(format!("ip:10.0.{}.{}", i / 256, i % 256)), record.clone());
        }
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= 1024 * 1024, "{} bytes kept", cache.weighted_size());
        assert!(cache.entry_count() < 120, "{} of 1000 10-KB records kept in 1 MB", cache.entry_count());
    }
}
