//! Summary statistics: nearest-rank percentiles and the rows of `summary.csv`, one per model and
//! one (`model = ALL`) per concurrency point.
use crate::record::{r3, RequestRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values: the smallest value such that at
/// least `p`% of the values are at or below it. `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(v[rank.clamp(1, n) - 1])
}

pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// One row of `summary.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub workload: String,
    pub concurrency: u32,
    /// A model name, or `ALL` for every request of the point.
    pub model: String,
    pub count: usize,
    pub ok: usize,
    pub errors: usize,
    pub error_rate: f64,
    pub cache_hits: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub mean_tokens_per_second: Option<f64>,
    /// Successful requests per second of the point's wall window.
    pub throughput_rps: f64,
    /// Completion tokens of successful requests per second of the point's wall window.
    pub throughput_tokens_per_s: f64,
    /// From the first request sent to the last one finished, in seconds.
    pub window_s: f64,
}

pub const ALL: &str = "ALL";

/// The wall window of a set of requests, in seconds.
pub fn window_s(recs: &[&RequestRecord]) -> f64 {
    let start = recs.iter().map(|r| r.start_offset_ms).fold(f64::INFINITY, f64::min);
    let end = recs.iter().map(|r| r.start_offset_ms + r.latency_ms.unwrap_or(0.0)).fold(f64::NEG_INFINITY, f64::max);
    if start.is_finite() && end.is_finite() {
        ((end - start) / 1000.0).max(0.0)
    } else {
        0.0
    }
}

fn row(workload: &str, concurrency: u32, model: &str, recs: &[&RequestRecord], window: f64) -> SummaryRow {
    let ok: Vec<&&RequestRecord> = recs.iter().filter(|r| r.ok()).collect();
    let lat: Vec<f64> = ok.iter().filter_map(|r| r.latency_ms).collect();
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    let tps: Vec<f64> = ok.iter().filter_map(|r| r.tokens_per_second).collect();
    let tokens: u64 = ok.iter().filter_map(|r| r.completion_tokens).map(u64::from).sum();
    let count = recs.len();
    let errors = count - ok.len();
    let per = |x: f64| if window > 0.0 { r3(x / window) } else { 0.0 };
    let o = |x: Option<f64>| x.map(r3);
    SummaryRow {
        workload: workload.to_string(),
        concurrency,
        model: model.to_string(),
        count,
        ok: ok.len(),
        errors,
        error_rate: if count == 0 { 0.0 } else { r3(errors as f64 / count as f64) },
        cache_hits: recs.iter().filter(|r| r.cache_hit).count(),
        latency_p50_ms: o(percentile(&lat, 50.0)),
        latency_p95_ms: o(percentile(&lat, 95.0)),
        latency_p99_ms: o(percentile(&lat, 99.0)),
        ttft_p50_ms: o(percentile(&ttft, 50.0)),
        ttft_p95_ms: o(percentile(&ttft, 95.0)),
        ttft_p99_ms: o(percentile(&ttft, 99.0)),
        mean_tokens_per_second: o(mean(&tps)),
        throughput_rps: per(ok.len() as f64),
        throughput_tokens_per_s: per(tokens as f64),
        window_s: r3(window),
    }
}

/// The summary of a run: for each (workload, concurrency) point in order of first appearance, one
/// `ALL` row and then one row per model (requests that never reached a model count as `(none)`).
pub fn summarize(records: &[RequestRecord]) -> Vec<SummaryRow> {
    let mut points: Vec<(String, u32)> = Vec::new();
    for r in records {
        let k = (r.workload.clone(), r.concurrency);
        if !points.contains(&k) {
            points.push(k);
        }
    }
    let mut out = Vec::new();
    for (w, c) in points {
        let recs: Vec<&RequestRecord> = records.iter().filter(|r| r.workload == w && r.concurrency == c).collect();
        let window = window_s(&recs);
        out.push(row(&w, c, ALL, &recs, window));
        let mut by_model: BTreeMap<String, Vec<&RequestRecord>> = BTreeMap::new();
        for r in &recs {
            let m = if r.model.is_empty() { "(none)".to_string() } else { r.model.clone() };
            by_model.entry(m).or_default().push(r);
        }
        for (m, rs) in by_model {
            out.push(row(&w, c, &m, &rs, window));
        }
    }
    out
}

/// One row of `outcomes.csv`: how many requests ended each way (fault runs read this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRow {
    /// `ok`, `rate_limited`, `http_error`, `stream_error`, `transport_error` or `cancelled`.
    pub status: String,
    /// The HTTP status of the answer (0 when none came).
    pub http_status: u16,
    pub count: usize,
    /// Of these, requests the router moved to another backend before their first token.
    pub fell_back: usize,
    /// Of these, requests that got at least one token before they ended.
    pub got_tokens: usize,
    /// The longest of these requests took, client-side (ms).
    pub max_latency_ms: Option<f64>,
    /// The most common error message among them (empty for `ok`).
    pub example_error: String,
}

/// The requests of a run counted by how they ended, in order of status then HTTP status.
pub fn outcomes(records: &[RequestRecord]) -> Vec<OutcomeRow> {
    let mut groups: BTreeMap<(String, u16), Vec<&RequestRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((r.status.clone(), r.http_status)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((status, http_status), rs)| {
            let mut msgs: BTreeMap<&str, usize> = BTreeMap::new();
            for r in rs.iter().filter(|r| !r.error.is_empty()) {
                *msgs.entry(r.error.as_str()).or_default() += 1;
            }
            let example_error =
                msgs.into_iter().max_by_key(|(m, n)| (*n, std::cmp::Reverse(*m))).map(|(m, _)| m.to_string());
            OutcomeRow {
                status,
                http_status,
                count: rs.len(),
                fell_back: rs.iter().filter(|r| r.routes > 1).count(),
                got_tokens: rs.iter().filter(|r| r.ttft_ms.is_some()).count(),
                max_latency_ms: rs
                    .iter()
                    .filter_map(|r| r.latency_ms)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                    .map(r3),
                example_error: example_error.unwrap_or_default(),
            }
        })
        .collect()
}

/// A fixed-width text table of the summary, for the terminal.
pub fn table(rows: &[SummaryRow]) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0}"));
    let mut s = format!(
        "{:<7} {:>4} {:<28} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}\n",
        "load",
        "conc",
        "model",
        "n",
        "err%",
        "hits",
        "lat p50",
        "lat p95",
        "lat p99",
        "ttft p50",
        "ttft p95",
        "tok/s",
        "req/s",
        "out tok/s"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<7} {:>4} {:<28} {:>5} {:>6.1} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7.2} {:>8.1}\n",
            r.workload,
            r.concurrency,
            r.model.chars().take(28).collect::<String>(),
            r.count,
            r.error_rate * 100.0,
            r.cache_hits,
            f(r.latency_p50_ms),
            f(r.latency_p95_ms),
            f(r.latency_p99_ms),
            f(r.ttft_p50_ms),
            f(r.ttft_p95_ms),
            r.mean_tokens_per_second.map_or("-".to_string(), |v| format!("{v:.1}")),
            r.throughput_rps,
            r.throughput_tokens_per_s,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: &str, http: u16, routes: u32, ttft: Option<f64>, lat: f64, err: &str) -> RequestRecord {
        RequestRecord {
            status: status.into(),
            http_status: http,
            routes,
            ttft_ms: ttft,
            latency_ms: Some(lat),
            error: err.into(),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_count_each_ending() {
        let recs = [
            rec("ok", 200, 1, Some(5.0), 100.0, ""),
            rec("ok", 200, 2, Some(50.0), 300.0, ""),
            rec("stream_error", 200, 1, Some(9.0), 120.0, "backend m1 failed"),
            rec("stream_error", 200, 1, None, 40.0, "backend m1 failed"),
            rec("stream_error", 200, 1, None, 30.0, "other"),
            rec("http_error", 503, 0, None, 2.0, "no backend"),
        ];
        let o = outcomes(&recs);
        let keys: Vec<(&str, u16, usize)> = o.iter().map(|r| (r.status.as_str(), r.http_status, r.count)).collect();
        assert_eq!(keys, [("http_error", 503, 1), ("ok", 200, 2), ("stream_error", 200, 3)]);
        assert_eq!((o[1].fell_back, o[1].got_tokens, o[1].max_latency_ms), (1, 2, Some(300.0)));
        assert_eq!((o[2].fell_back, o[2].got_tokens, o[2].example_error.as_str()), (0, 1, "backend m1 failed"));
        assert_eq!(o[0].example_error, "no backend");
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let v = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert_eq!(percentile(&v, 50.0), Some(30.0));
        assert_eq!(percentile(&v, 95.0), Some(50.0));
        assert_eq!(percentile(&v, 20.0), Some(10.0));
        assert_eq!(percentile(&v, 21.0), Some(20.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
