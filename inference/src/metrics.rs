//! Prometheus metrics of one model service, every series labelled with its `model_id`.
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub generation_latency: Histogram,
    pub ttft: Histogram,
    pub tokens_generated: IntCounter,
    pub prompt_tokens: IntCounter,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    /// Sequences in the running batch (prompt being read or decoding).
    pub batch_occupancy: IntGauge,
    /// The batch's size, its most sequences at once (`--max-concurrent`).
    pub batch_size: IntGauge,
    /// Sequences decoded together per step: the tokens one pass over the weights produced.
    pub decode_batch: Histogram,
}

const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0];
const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0];

impl Metrics {
    pub fn new(model_id: &str) -> Self {
        let registry = Registry::new();
        let with_id = |o: Opts| o.const_label("model_id", model_id);
        let requests = IntCounterVec::new(
            with_id(Opts::new("model_requests_total", "Requests finished, by outcome")),
            &["status"],
        )
        .unwrap();
        let generation_latency = Histogram::with_opts(
            HistogramOpts::new("model_generation_latency_seconds", "Time from request to last token")
                .const_label("model_id", model_id)
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let ttft = Histogram::with_opts(
            HistogramOpts::new("model_time_to_first_token_seconds", "Time from request to first token")
                .const_label("model_id", model_id)
                .buckets(TTFT_BUCKETS.to_vec()),
        )
        .unwrap();
        let tokens_generated =
            IntCounter::with_opts(with_id(Opts::new("model_tokens_generated_total", "Completion tokens generated")))
                .unwrap();
        let prompt_tokens =
            IntCounter::with_opts(with_id(Opts::new("model_prompt_tokens_total", "Prompt tokens processed"))).unwrap();
        let queue_depth =
            IntGauge::with_opts(with_id(Opts::new("model_queue_depth", "Requests waiting for a slot"))).unwrap();
        let in_flight = IntGauge::with_opts(with_id(Opts::new("model_in_flight", "Requests generating now"))).unwrap();
        let batch_occupancy =
            IntGauge::with_opts(with_id(Opts::new("model_batch_occupancy", "Sequences in the running batch"))).unwrap();
        let batch_size =
            IntGauge::with_opts(with_id(Opts::new("model_batch_size", "Most sequences in the batch at once"))).unwrap();
        let decode_batch = Histogram::with_opts(
            HistogramOpts::new("model_decode_batch_tokens", "Sequences decoded together per step (tokens per step)")
                .const_label("model_id", model_id)
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
        )
        .unwrap();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(generation_latency.clone()),
            Box::new(ttft.clone()),
            Box::new(tokens_generated.clone()),
            Box::new(prompt_tokens.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(batch_occupancy.clone()),
            Box::new(batch_size.clone()),
            Box::new(decode_batch.clone()),
        ] {
            registry.register(c).unwrap();
        }
        // Make the common outcomes visible at zero before the first request.
        for s in ["ok", "client_error", "overloaded", "cancelled", "error"] {
            requests.with_label_values(&[s]);
        }
        Metrics {
            registry,
            requests,
            generation_latency,
            ttft,
            tokens_generated,
            prompt_tokens,
            queue_depth,
            in_flight,
            batch_occupancy,
            batch_size,
            decode_batch,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn request_done(&self, status: &str) {
        self.requests.with_label_values(&[status]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_model_id() {
        let m = Metrics::new("m7");
        m.request_done("ok");
        m.tokens_generated.inc_by(5);
        let text = m.render();
        assert!(text.contains(r#"model_requests_total{model_id="m7",status="ok"} 1"#), "{text}");
        assert!(text.contains(r#"model_tokens_generated_total{model_id="m7"} 5"#), "{text}");
        assert!(text.contains("model_time_to_first_token_seconds_bucket"));
        assert!(text.contains("model_queue_depth"));
        assert!(text.contains("model_batch_occupancy") && text.contains("model_decode_batch_tokens_bucket"));
    }
}
