//! One row of `requests.csv` per request, and the CSV read/write of those rows.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What became of a request.
pub const STATUS_OK: &str = "ok";
/// The router answered 429 (rate limited).
pub const STATUS_RATE_LIMITED: &str = "rate_limited";
/// Any other non-2xx answer.
pub const STATUS_HTTP_ERROR: &str = "http_error";
/// The stream carried `event: error`, or ended without `done`.
pub const STATUS_STREAM_ERROR: &str = "stream_error";
/// Connection failure or timeout.
pub const STATUS_TRANSPORT_ERROR: &str = "transport_error";
/// Stopped by Ctrl-C before it finished.
pub const STATUS_CANCELLED: &str = "cancelled";

/// One request as measured by the client. Times are client-side (wall clock from sending the
/// request); the `server_*` columns are the backend's own numbers from the `done` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The router's request id (from the `route` event or the x-request-id header); empty when none came.
    pub request_id: String,
    pub workload: String,
    pub concurrency: u32,
    pub prompt_id: String,
    /// Unix time the request was sent, in milliseconds.
    pub start_unix_ms: u64,
    /// Milliseconds from the start of this concurrency point.
    pub start_offset_ms: f64,
    /// Time to the first `token` event.
    pub ttft_ms: Option<f64>,
    /// Time to the end of the stream.
    pub latency_ms: Option<f64>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Client-side decode rate: completion tokens after the first over the time after the first;
    /// empty for cache hits (replayed at once, nothing decoded).
    pub tokens_per_second: Option<f64>,
    pub server_ttft_ms: Option<f64>,
    pub server_tokens_per_second: Option<f64>,
    pub model: String,
    pub backend: String,
    pub device: String,
    /// The router's `cache` field was `hit` or `semantic`: answered from the cache.
    pub cache_hit: bool,
    /// Backends the router sent the request to (its `route` events): above 1 when it fell back to
    /// another backend before the first token. Empty in runs recorded before this column existed.
    #[serde(default)]
    pub routes: u32,
    /// `ok`, `rate_limited`, `http_error`, `stream_error`, `transport_error` or `cancelled`.
    pub status: String,
    /// The HTTP status code (0 when no answer came).
    pub http_status: u16,
    pub error: String,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.status == STATUS_OK
    }
}

/// The header of `requests.csv`, in order.
pub const COLUMNS: &[&str] = &[
    "request_id",
    "workload",
    "concurrency",
    "prompt_id",
    "start_unix_ms",
    "start_offset_ms",
    "ttft_ms",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_second",
    "server_ttft_ms",
    "server_tokens_per_second",
    "model",
    "backend",
    "device",
    "cache_hit",
    "routes",
    "status",
    "http_status",
    "error",
];

pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}

pub fn read_requests(path: &Path) -> Result<Vec<RequestRecord>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for row in r.deserialize() {
        out.push(row?);
    }
    Ok(out)
}

/// Rounds to 3 decimals so the CSVs stay readable.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_the_struct_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("lt-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.csv");
        let rec = RequestRecord {
            request_id: "a".into(),
            workload: "short".into(),
            concurrency: 2,
            ttft_ms: Some(1.5),
            status: STATUS_OK.into(),
            error: "x, \"quoted\"\nline".into(),
            ..Default::default()
        };
        write_csv(&p, std::slice::from_ref(&rec)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
        assert_eq!(read_requests(&p).unwrap(), vec![rec]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
