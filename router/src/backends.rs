//! The backend registry: which model services exist (from `--backends`), what each really serves
//! (model and device as reported by its `/health`), whether it is healthy, how many requests it has
//! in flight and how fast it has been lately. A background task polls every `/health`, drops
//! failing backends and re-admits them when they answer again; the proxy also drops a backend at
//! once when it cannot connect to it.
use crate::metrics::Metrics;
use polyllm_common::catalog::{Catalog, Slot};
use polyllm_common::wire::{BatchLoad, HealthBody};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BackendsError {
    #[error(transparent)]
    Catalog(#[from] polyllm_common::catalog::CatalogError),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid backends JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no backends configured")]
    Empty,
}

/// What the backend's last good `/health` said (or the catalog's guess before that).
#[derive(Debug, Clone)]
pub struct LiveInfo {
    pub model: Arc<str>,
    /// `cpu` or `cuda` once known; the catalog slot (`cpu`/`gpu`) before the first health check.
    pub device: Arc<str>,
    pub arch: Arc<str>,
    /// Whether model and device come from `/health` (true) or from the catalog (false).
    pub reported: bool,
    /// How full the service's batch was at the last `/health` (services that report it).
    pub batch: Option<BatchLoad>,
    /// The router's own requests in flight there when that `/health` answered: the part of the
    /// service's count that was ours (the rest is other clients').
    pub ours_at_health: u32,
}

/// One model service.
#[derive(Debug)]
pub struct Backend {
    pub id: Arc<str>,
    pub url: String,
    pub generate_url: String,
    pub chat_url: String,
    pub slot: Option<Slot>,
    live: RwLock<LiveInfo>,
    healthy: AtomicBool,
    in_flight: AtomicI64,
    /// Exponentially weighted time to first token, in microseconds (0: no sample yet).
    ewma_ttft_us: AtomicU64,
    /// Exponentially weighted total latency, in microseconds (0: no sample yet).
    ewma_latency_us: AtomicU64,
    last_error: RwLock<Option<String>>,
    /// Whether the backend can take chat requests: 0 unknown, 1 yes, 2 no (it has no chat
    /// template). Learned from its answers.
    chat: AtomicU8,
}

/// Decrements the backend's in-flight count when the attempt ends, however it ends.
pub struct InFlightGuard {
    backend: Arc<Backend>,
    metrics: Arc<Metrics>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = self.backend.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.backend_in_flight.with_label_values(&[&self.backend.id]).set(n);
    }
}

fn ewma(cell: &AtomicU64, sample_us: u64) {
    // Lost updates under a race only drop one sample of a moving average.
    let old = cell.load(Ordering::Relaxed);
    let new = if old == 0 { sample_us.max(1) } else { (old * 4 + sample_us) / 5 };
    cell.store(new.max(1), Ordering::Relaxed);
}

impl Backend {
    pub fn new(id: &str, url: &str, model: Option<&str>, slot: Option<Slot>) -> Self {
        let url = url.trim_end_matches('/').to_string();
        let device = match slot {
            Some(Slot::Gpu) => "gpu",
            Some(Slot::Cpu) => "cpu",
            None => "unknown",
        };
        Backend {
            id: Arc::from(id),
            generate_url: format!("{url}/generate"),
            chat_url: format!("{url}/v1/chat/completions"),
            url,
            slot,
            live: RwLock::new(LiveInfo {
                model: Arc::from(model.unwrap_or("unknown")),
                device: Arc::from(device),
                arch: Arc::from(""),
                reported: false,
                batch: None,
                ours_at_health: 0,
            }),
            healthy: AtomicBool::new(false),
            in_flight: AtomicI64::new(0),
            ewma_ttft_us: AtomicU64::new(0),
            ewma_latency_us: AtomicU64::new(0),
            last_error: RwLock::new(None),
            chat: AtomicU8::new(0),
        }
    }

    /// `Some(false)` once the backend refused a chat request for lack of a chat template.
    pub fn supports_chat(&self) -> Option<bool> {
        match self.chat.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub fn set_supports_chat(&self, yes: bool) {
        let v = if yes { 1 } else { 2 };
        if self.chat.swap(v, Ordering::Relaxed) != v && !yes {
            tracing::info!(backend = %self.id, "backend has no chat template; chat requests go elsewhere");
        }
    }

    pub fn live(&self) -> LiveInfo {
        self.live.read().expect("live lock").clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Recent time to first token in ms, if any request has completed.
    pub fn ttft_ms(&self) -> Option<f64> {
        match self.ewma_ttft_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        }
    }

    pub fn latency_ms(&self) -> Option<f64> {
        match self.ewma_latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        }
    }

    pub fn begin(self: &Arc<Self>, metrics: &Arc<Metrics>) -> InFlightGuard {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.backend_in_flight.with_label_values(&[&self.id]).set(n);
        InFlightGuard { backend: self.clone(), metrics: metrics.clone() }
    }

    pub fn record_success(&self, ttft: Duration, latency: Duration) {
        ewma(&self.ewma_ttft_us, ttft.as_micros() as u64);
        ewma(&self.ewma_latency_us, latency.as_micros() as u64);
    }

    /// Takes the backend out of rotation until the next good health check.
    pub fn mark_down(&self, why: String, metrics: &Metrics) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(backend = %self.id, error = %why, "backend dropped");
        }
        metrics.backend_healthy.with_label_values(&[&self.id]).set(0);
        *self.last_error.write().expect("error lock") = Some(why);
    }

    fn mark_up(&self, h: HealthBody, metrics: &Metrics) {
        {
            let mut live = self.live.write().expect("live lock");
            if *live.model != *h.model {
                live.model = Arc::from(h.model.as_str());
            }
            if *live.device != *h.device {
                live.device = Arc::from(h.device.as_str());
            }
            if *live.arch != *h.arch {
                live.arch = Arc::from(h.arch.as_str());
            }
            live.reported = true;
            live.batch = h.batch;
            live.ours_at_health = self.in_flight().max(0) as u32;
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(backend = %self.id, model = %h.model, device = %h.device, "backend admitted");
        }
        metrics.backend_healthy.with_label_values(&[&self.id]).set(1);
        *self.last_error.write().expect("error lock") = None;
    }

    /// For tests and the benchmark: set the health state by hand.
    pub fn force_health(&self, healthy: bool, model: &str, device: &str) {
        let mut live = self.live.write().expect("live lock");
        live.model = Arc::from(model);
        live.device = Arc::from(device);
        live.reported = true;
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn view(&self) -> BackendView {
        let live = self.live();
        BackendView {
            id: self.id.to_string(),
            url: self.url.clone(),
            model: live.model.to_string(),
            device: live.device.to_string(),
            slot: self.slot.map(|s| match s {
                Slot::Cpu => "cpu",
                Slot::Gpu => "gpu",
            }),
            healthy: self.is_healthy(),
            chat: self.supports_chat(),
            in_flight: self.in_flight().max(0),
            batch: live.batch,
            ttft_ms: self.ttft_ms(),
            latency_ms: self.latency_ms(),
            last_error: self.last_error.read().expect("error lock").clone(),
        }
    }
}

/// One row of `GET /backends`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: String,
    pub url: String,
    pub model: String,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<&'static str>,
    pub healthy: bool,
    /// Whether it takes chat requests (null: not known yet).
    pub chat: Option<bool>,
    pub in_flight: i64,
    /// The service's batch at the last health check: size, free places, queued requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchLoad>,
    /// Recent (exponentially weighted) time to first token.
    pub ttft_ms: Option<f64>,
    /// Recent (exponentially weighted) total request latency.
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// All backends, in configuration order.
#[derive(Debug)]
pub struct Registry {
    backends: Vec<Arc<Backend>>,
}

impl Registry {
    pub fn new(backends: Vec<Backend>) -> Self {
        Registry { backends: backends.into_iter().map(Arc::new).collect() }
    }

    /// Reads `--backends`: inline JSON (`{"m1": "http://..."}`), a `.json` file, or a TOML catalog.
    pub fn load(spec: &str) -> Result<Self, BackendsError> {
        let spec = spec.trim();
        let backends = if spec.starts_with('{') {
            from_json(spec)?
        } else {
            let path = Path::new(spec);
            if spec.ends_with(".json") {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| BackendsError::Io { path: spec.to_string(), source })?;
                from_json(&text)?
            } else {
                Catalog::load(path)?
                    .backends
                    .iter()
                    .map(|b| Backend::new(&b.id, &b.base_url(), Some(&b.model), Some(b.device)))
                    .collect()
            }
        };
        if backends.is_empty() {
            return Err(BackendsError::Empty);
        }
        Ok(Registry::new(backends))
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.id == id)
    }

    pub fn views(&self) -> Vec<BackendView> {
        self.backends.iter().map(|b| b.view()).collect()
    }

    /// Polls every backend's `/health` once, all at once (at most `timeout`).
    pub async fn check_all(&self, client: &reqwest::Client, timeout: Duration, metrics: &Metrics) {
        let checks = self.backends.iter().map(|b| check_one(client, b, timeout, metrics));
        futures::future::join_all(checks).await;
    }

    /// Polls every backend's `/health` every `interval`, starting one interval from now (the first
    /// round is [`Registry::check_all`], awaited before the router serves), until the process ends.
    pub fn spawn_health_checker(
        self: &Arc<Self>,
        client: reqwest::Client,
        interval: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        let reg = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                reg.check_all(&client, timeout, &metrics).await;
            }
        })
    }
}

async fn check_one(client: &reqwest::Client, b: &Arc<Backend>, timeout: Duration, metrics: &Metrics) {
    let url = format!("{}/health", b.url);
    let res = client.get(&url).timeout(timeout).send().await;
    let outcome = match res {
        Err(e) => Err(format!("health check failed: {e}")),
        Ok(r) if r.status().is_success() => match r.json::<HealthBody>().await {
            Ok(h) if h.status == "ok" => Ok(h),
            Ok(h) => Err(format!("health status {}", h.status)),
            Err(e) => Err(format!("bad health body: {e}")),
        },
        Ok(r) => Err(format!("health check answered {}", r.status())),
    };
    match outcome {
        Ok(h) => b.mark_up(h, metrics),
        Err(e) => b.mark_down(e, metrics),
    }
}

fn from_json(text: &str) -> Result<Vec<Backend>, BackendsError> {
    // A BTreeMap keeps a stable order (by id) for objects.
    let map: BTreeMap<String, String> = serde_json::from_str(text)?;
    Ok(map.iter().map(|(id, url)| Backend::new(id, url, None, None)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_catalog_and_json() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models.toml");
        let reg = Registry::load(path).unwrap();
        assert_eq!(reg.all().len(), 5);
        let m4 = reg.get("m4").unwrap();
        assert_eq!(m4.url, "http://127.0.0.1:8104");
        assert_eq!(m4.generate_url, "http://127.0.0.1:8104/generate");
        assert_eq!(&*m4.live().device, "gpu");
        assert!(!m4.is_healthy());

        let reg = Registry::load(r#"{"b":"http://h:2/","a":"http://h:1"}"#).unwrap();
        let ids: Vec<_> = reg.all().iter().map(|b| b.id.to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(reg.get("b").unwrap().url, "http://h:2");
        assert!(Registry::load("{}").is_err());
        assert!(Registry::load("/nonexistent.toml").is_err());
    }

    #[test]
    fn in_flight_and_latency_tracking() {
        let m = Arc::new(Metrics::new());
        let b = Arc::new(Backend::new("x", "http://h", None, None));
        let g1 = b.begin(&m);
        let g2 = b.begin(&m);
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.ttft_ms(), None);
        b.record_success(Duration::from_millis(100), Duration::from_millis(500));
        assert_eq!(b.ttft_ms(), Some(100.0));
        b.record_success(Duration::from_millis(200), Duration::from_millis(500));
        assert_eq!(b.ttft_ms(), Some(120.0));
        assert_eq!(b.view().latency_ms, Some(500.0));
    }
}
