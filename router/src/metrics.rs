//! The router's Prometheus metrics: one registry, created once, shared by every module, and
//! rendered in the text format on `GET /metrics`.
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub model_selected: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Semantic-cache lookups by outcome: `hit`, `guarded` (similar enough, but the numbers, names
    /// or negations differ) or `miss`.
    pub semantic_lookups: IntCounterVec,
    /// Similarity of the nearest stored prompt at each semantic lookup that found one.
    pub semantic_similarity: Histogram,
    pub rate_limited: IntCounter,
    pub request_latency: Histogram,
    pub routing_latency: Histogram,
    pub ttft: HistogramVec,
    pub backend_errors: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub redis_errors: IntCounter,
    pub backend_healthy: IntGaugeVec,
    pub backend_in_flight: IntGaugeVec,
    pub reqlog_dropped: IntCounter,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    log_dropped: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let c = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("metric");
    r.register(Box::new(h.clone())).expect("register");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let request_buckets =
            vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
        let routing_buckets =
            vec![0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.05];
        let ttft = HistogramVec::new(
            HistogramOpts::new("router_ttft_seconds", "Time to the first token, as seen by the router, per backend")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["backend"],
        )
        .expect("metric");
        r.register(Box::new(ttft.clone())).expect("register");
        Metrics {
            requests: counter_vec(&r, "router_requests_total", "Generation requests by final status", &["status"]),
            model_selected: counter_vec(
                &r,
                "router_model_selected_total",
                "Requests answered by each model and backend",
                &["model", "backend", "device"],
            ),
            cache_hits: counter(&r, "router_cache_hits_total", "Requests answered from the cache"),
            cache_misses: counter(&r, "router_cache_misses_total", "Cache lookups that found nothing"),
            semantic_lookups: {
                let v = counter_vec(
                    &r,
                    "router_semantic_cache_total",
                    "Semantic-cache lookups by outcome (hit, guarded, miss)",
                    &["outcome"],
                );
                for o in ["hit", "guarded", "miss"] {
                    v.with_label_values(&[o]);
                }
                v
            },
            semantic_similarity: histogram(
                &r,
                "router_semantic_similarity",
                "Cosine similarity of the nearest cached prompt, per semantic lookup",
                vec![0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0],
            ),
            rate_limited: counter(&r, "router_rate_limited_total", "Requests refused with 429"),
            request_latency: histogram(
                &r,
                "router_request_latency_seconds",
                "Time from request to the last byte of the answer",
                request_buckets,
            ),
            routing_latency: histogram(
                &r,
                "router_routing_latency_seconds",
                "Time the routing policy took to decide",
                routing_buckets,
            ),
            ttft,
            backend_errors: counter_vec(&r, "router_backend_errors_total", "Failed attempts per backend", &["backend"]),
            fallbacks: counter_vec(&r, "router_fallbacks_total", "Moves to the next candidate, by cause", &["reason"]),
            redis_errors: counter(&r, "router_redis_errors_total", "Redis commands that failed or timed out"),
            backend_healthy: gauge_vec(
                &r,
                "router_backend_healthy",
                "1 when the backend passes its health check",
                &["backend"],
            ),
            backend_in_flight: gauge_vec(
                &r,
                "router_backend_in_flight",
                "Requests in flight per backend",
                &["backend"],
            ),
            reqlog_dropped: counter(
                &r,
                "router_response_log_dropped_total",
                "Response-log records dropped (writer behind)",
            ),
            connections_open: {
                let g = IntGauge::new("router_connections_open", "Client connections open now").expect("metric");
                r.register(Box::new(g.clone())).expect("register");
                g
            },
            connections_refused: counter(
                &r,
                "router_connections_refused_total",
                "Connections refused (503) because --max-connections were open",
            ),
            log_dropped: {
                let g = IntGauge::new("router_log_lines_dropped", "Log lines dropped since start (log writer behind)")
                    .expect("metric");
                r.register(Box::new(g.clone())).expect("register");
                g
            },
            registry: r,
        }
    }

    /// Creates every per-backend series at zero, so that each exists from the first scrape: a
    /// rate over a series whose first sample already holds all its observations is no rate
    /// (Prometheus returns NaN for a quantile of it), which is what a dashboard showed for a
    /// backend whose first requests all fell between two scrapes.
    pub fn init_backends<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.ttft.with_label_values(&[id]);
            self.backend_errors.with_label_values(&[id]);
            self.backend_in_flight.with_label_values(&[id]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.log_dropped.set(crate::logging::dropped_lines() as i64);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_series_exist_before_any_request() {
        let m = Metrics::new();
        assert!(!m.render().contains("router_ttft_seconds_count{backend=\"m1\"}"));
        m.init_backends(["m1", "m2"]);
        let text = m.render();
        for line in [
            "router_ttft_seconds_count{backend=\"m1\"} 0",
            "router_ttft_seconds_count{backend=\"m2\"} 0",
            "router_backend_errors_total{backend=\"m2\"} 0",
            "router_backend_in_flight{backend=\"m1\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_issue_metric_is_exposed() {
        let m = Metrics::new();
        m.requests.with_label_values(&["200"]).inc();
        m.model_selected.with_label_values(&["x", "m1", "cpu"]).inc();
        m.backend_errors.with_label_values(&["m1"]).inc();
        m.fallbacks.with_label_values(&["connect"]).inc();
        m.request_latency.observe(0.1);
        m.routing_latency.observe(0.00001);
        let text = m.render();
        for name in [
            "router_requests_total{status=\"200\"} 1",
            "router_model_selected_total{backend=\"m1\",device=\"cpu\",model=\"x\"} 1",
            "router_cache_hits_total 0",
            "router_cache_misses_total 0",
            "router_rate_limited_total 0",
            "router_request_latency_seconds_bucket",
            "router_routing_latency_seconds_bucket",
            "router_backend_errors_total{backend=\"m1\"} 1",
            "router_fallbacks_total{reason=\"connect\"} 1",
            "router_redis_errors_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
