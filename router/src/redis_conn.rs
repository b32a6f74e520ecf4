//! The one Redis connection the cache and the rate limiter share, and what happens when Redis is
//! down. The connection is a lazy, self-reconnecting `ConnectionManager`; every command has a
//! deadline; any error opens a breaker for `--redis-retry-ms`, during which callers skip Redis and
//! use their in-process fallback. After that one caller probes Redis again; success closes the
//! breaker. Errors are counted in `router_redis_errors_total` and logged once per outage.
use crate::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unavailable (retrying shortly)")]
    Open,
    #[error("redis command timed out")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

pub struct RedisConn {
    conn: ConnectionManager,
    timeout: Duration,
    retry: Duration,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until_ms: AtomicU64,
    down: AtomicBool,
    epoch: Instant,
    metrics: Arc<Metrics>,
    pub prefix: String,
}

impl RedisConn {
    /// Sets up the connection without connecting: a router starts even when Redis is down.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        retry: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = client.get_connection_manager_lazy(cfg)?;
        Ok(RedisConn {
            conn,
            timeout,
            retry,
            open_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            epoch: Instant::now(),
            metrics,
            prefix: prefix.to_string(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether Redis is believed reachable (the breaker is closed).
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Runs one Redis operation with the deadline and the breaker. While the breaker is open it
    /// returns [`RedisError::Open`] at once; when it has expired exactly one caller gets through.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until != 0 {
            let now = self.now_ms();
            if now < until {
                return Err(RedisError::Open);
            }
            // Half-open: claim the probe by pushing the deadline forward; losers stay on the fallback.
            let next = now + self.retry.as_millis() as u64;
            if self.open_until_ms.compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                return Err(RedisError::Open);
            }
        }
        let res = match tokio::time::timeout(self.timeout, op(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisError::Redis(e)),
            Err(_) => Err(RedisError::Timeout),
        };
        match &res {
            Ok(_) => {
                if until != 0 || self.down.load(Ordering::Relaxed) {
                    self.open_until_ms.store(0, Ordering::Relaxed);
                    if self.down.swap(false, Ordering::Relaxed) {
                        tracing::info!("redis is back; shared cache and limits resumed");
                    }
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                self.open_until_ms.store(self.now_ms() + self.retry.as_millis() as u64, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "redis failed; bypassing the cache and limiting in process until it returns");
                } else {
                    tracing::debug!(error = %e, "redis still failing");
                }
            }
        }
        res
    }
}
