//! The CSV schema and the summary statistics, checked on a recorded run whose numbers were worked
//! out by hand (tests/fixtures/recorded/requests.csv: two concurrency points, two models, a cache
//! hit, a stream error and a 429).
use benchmarks::record::{self, COLUMNS};
use benchmarks::stats::{summarize, SummaryRow, ALL};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded/requests.csv")
}

fn find<'a>(rows: &'a [SummaryRow], c: u32, model: &str) -> &'a SummaryRow {
    rows.iter().find(|r| r.concurrency == c && r.model == model).unwrap_or_else(|| panic!("no row c={c} {model}"))
}

#[test]
fn recorded_requests_csv_has_the_schema() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
    let recs = record::read_requests(&fixture()).unwrap();
    assert_eq!(recs.len(), 7);
    assert!(recs[2].cache_hit);
    assert_eq!(recs[1].routes, 2, "r2 fell back once before its first token");
    assert_eq!(recs[5].routes, 0);
    assert_eq!(recs[3].ttft_ms, None);
    assert_eq!(recs[5].http_status, 429);
}

#[test]
fn summary_statistics_of_the_recorded_run() {
    let recs = record::read_requests(&fixture()).unwrap();
    let rows = summarize(&recs);
    // Point order, ALL first, then models by name, "(none)" for the request that never reached one.
    let keys: Vec<(u32, &str)> = rows.iter().map(|r| (r.concurrency, r.model.as_str())).collect();
    assert_eq!(
        keys,
        vec![
            (1, ALL),
            (1, "gemma-3-270m"),
            (1, "qwen2.5-coder-0.5b-instruct"),
            (2, ALL),
            (2, "(none)"),
            (2, "gemma-3-270m"),
            (2, "qwen2.5-coder-0.5b-instruct"),
        ]
    );

    // c=1: window 0..5000 ms; ok latencies [1000, 2000, 1000], TTFT [100, 200, 300], tok/s [10, 20]
    // (the cache hit has none).
    let a = find(&rows, 1, ALL);
    assert_eq!((a.count, a.ok, a.errors, a.cache_hits), (4, 3, 1, 1));
    assert_eq!(a.error_rate, 0.25);
    assert_eq!(a.window_s, 5.0);
    assert_eq!((a.latency_p50_ms, a.latency_p95_ms, a.latency_p99_ms), (Some(1000.0), Some(2000.0), Some(2000.0)));
    assert_eq!((a.ttft_p50_ms, a.ttft_p95_ms, a.ttft_p99_ms), (Some(200.0), Some(300.0), Some(300.0)));
    assert_eq!(a.mean_tokens_per_second, Some(15.0));
    assert_eq!(a.throughput_rps, 0.6);
    assert_eq!(a.throughput_tokens_per_s, 8.0);

    let g = find(&rows, 1, "gemma-3-270m");
    assert_eq!((g.count, g.ok, g.errors), (3, 2, 1));
    assert_eq!(g.error_rate, 0.333);
    assert_eq!((g.ttft_p50_ms, g.ttft_p95_ms), (Some(100.0), Some(300.0)));
    assert_eq!(g.mean_tokens_per_second, Some(10.0));
    assert_eq!((g.throughput_rps, g.throughput_tokens_per_s), (0.4, 4.0));
    let q = find(&rows, 1, "qwen2.5-coder-0.5b-instruct");
    assert_eq!(
        (q.count, q.ok, q.latency_p50_ms, q.throughput_rps, q.throughput_tokens_per_s),
        (1, 1, Some(2000.0), 0.2, 4.0)
    );

    // c=2: window 0..3000 ms (10 + 2990); the 429 counts as an error of "(none)".
    let a = find(&rows, 2, ALL);
    assert_eq!((a.count, a.ok, a.errors), (3, 2, 1));
    assert_eq!(a.window_s, 3.0);
    assert_eq!(a.latency_p50_ms, Some(1500.0));
    assert_eq!(a.latency_p99_ms, Some(2990.0));
    assert_eq!(a.mean_tokens_per_second, Some(10.75));
    assert_eq!(a.throughput_rps, 0.667);
    assert_eq!(a.throughput_tokens_per_s, 14.0);
    let n = find(&rows, 2, "(none)");
    assert_eq!((n.count, n.ok, n.error_rate, n.latency_p50_ms), (1, 0, 1.0, None));
}

#[test]
fn summary_csv_round_trips_with_its_header() {
    let recs = record::read_requests(&fixture()).unwrap();
    let rows = summarize(&recs);
    let dir = std::env::temp_dir().join(format!("lt-summary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("summary.csv");
    record::write_csv(&p, &rows).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        "workload,concurrency,model,count,ok,errors,error_rate,cache_hits,latency_p50_ms,latency_p95_ms,latency_p99_ms,\
ttft_p50_ms,ttft_p95_ms,ttft_p99_ms,mean_tokens_per_second,throughput_rps,throughput_tokens_per_s,window_s"
    );
    let back: Vec<SummaryRow> = csv::Reader::from_path(&p).unwrap().deserialize().map(Result::unwrap).collect();
    assert_eq!(back, rows);
    // The figures render from the same data (PNG + SVG), given a font.
    if benchmarks::plots::init_font(None).is_ok() {
        let files = benchmarks::plots::draw_all(&dir, &recs, &rows, "fixture", None).unwrap();
        assert_eq!(files.len(), 8);
        for f in files {
            assert!(std::fs::metadata(&f).unwrap().len() > 1000, "{} is tiny", f.display());
        }
    } else {
        eprintln!("no TTF font here: figures not checked (apt-get install fonts-dejavu-core)");
    }
    std::fs::remove_dir_all(&dir).ok();
}
