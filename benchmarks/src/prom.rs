//! Reads series from the Prometheus HTTP API (`/api/v1/query_range`) over a run's window.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// The series read when `--prometheus` is given, as (name, PromQL). `--prom-query NAME=EXPR` adds more.
pub const DEFAULT_QUERIES: &[(&str, &str)] = &[
    ("cpu_utilization_pct", "100 * (1 - avg(rate(node_cpu_seconds_total{mode=\"idle\"}[1m])))"),
    ("gpu_utilization_pct", "avg(DCGM_FI_DEV_GPU_UTIL)"),
    ("gpu_memory_used_mib", "sum(DCGM_FI_DEV_FB_USED)"),
    ("process_cpu_seconds_rate", "sum by (job) (rate(process_cpu_seconds_total[1m]))"),
];

/// One sample of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub query: String,
    /// The series' labels as `k=v;k=v`.
    pub labels: String,
    pub unix_s: f64,
    pub value: f64,
}

/// One query's read-out over the window.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesSummary {
    pub query: String,
    pub labels: String,
    pub samples: usize,
    pub mean: Option<f64>,
    pub max: Option<f64>,
    /// Empty when the query answered; else why not.
    pub error: String,
}

/// Parses a `query_range` answer into samples.
pub fn parse_matrix(name: &str, body: &Value) -> Result<Vec<Sample>> {
    if body["status"].as_str() != Some("success") {
        bail!("prometheus: {}", body["error"].as_str().unwrap_or("unexpected answer"));
    }
    let mut out = Vec::new();
    for series in body["data"]["result"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let labels = series["metric"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(";"))
            .unwrap_or_default();
        for pair in series["values"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let t = pair[0].as_f64().unwrap_or(0.0);
            let Some(v) = pair[1].as_str().and_then(|s| s.parse::<f64>().ok()) else { continue };
            if v.is_finite() {
                out.push(Sample { query: name.to_string(), labels: labels.clone(), unix_s: t, value: v });
            }
        }
    }
    Ok(out)
}

/// Runs every query over [start, end] (unix seconds) and returns the samples and per-series summaries.
/// A failing query is reported in its summary and does not stop the others.
pub async fn read(
    client: &reqwest::Client,
    base: &str,
    queries: &[(String, String)],
    start: f64,
    end: f64,
) -> (Vec<Sample>, Vec<SeriesSummary>) {
    let step = ((end - start) / 200.0).max(1.0);
    let mut samples = Vec::new();
    let mut summaries = Vec::new();
    for (name, q) in queries {
        let res: Result<Vec<Sample>> = async {
            let resp = client
                .get(format!("{}/api/v1/query_range", base.trim_end_matches('/')))
                .query(&[
                    ("query", q.as_str()),
                    ("start", &format!("{start:.3}")),
                    ("end", &format!("{end:.3}")),
                    ("step", &format!("{step:.3}")),
                ])
                .send()
                .await
                .context("prometheus unreachable")?;
            let v: Value = resp.json().await.context("prometheus answer is not JSON")?;
            parse_matrix(name, &v)
        }
        .await;
        match res {
            Ok(s) => {
                let mut labels: Vec<String> = s.iter().map(|x| x.labels.clone()).collect();
                labels.dedup();
                if s.is_empty() {
                    summaries.push(SeriesSummary {
                        query: name.clone(),
                        labels: String::new(),
                        samples: 0,
                        mean: None,
                        max: None,
                        error: "no data".into(),
                    });
                }
                for l in labels {
                    let vals: Vec<f64> = s.iter().filter(|x| x.labels == l).map(|x| x.value).collect();
                    summaries.push(SeriesSummary {
                        query: name.clone(),
                        labels: l,
                        samples: vals.len(),
                        mean: crate::stats::mean(&vals).map(crate::record::r3),
                        max: vals.iter().copied().reduce(f64::max).map(crate::record::r3),
                        error: String::new(),
                    });
                }
                samples.extend(s);
            }
            Err(e) => summaries.push(SeriesSummary {
                query: name.clone(),
                labels: String::new(),
                samples: 0,
                mean: None,
                max: None,
                error: format!("{e:#}"),
            }),
        }
    }
    (samples, summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_matrix() {
        let v: Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"router"},"values":[[1700000000,"12.5"],[1700000001,"NaN"],[1700000002,"13"]]}]}}"#,
        )
        .unwrap();
        let s = parse_matrix("cpu", &v).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels, "job=router");
        assert_eq!(s[1].value, 13.0);
        assert!(parse_matrix("x", &serde_json::json!({"status":"error","error":"bad"})).is_err());
    }
}
