//! `trainer evaluate`: on the held-out split, the learned router against random, always-smallest,
//! always-largest, every fixed model and the oracle: routing accuracy, mean quality and latency,
//! APGR (RouteLLM's average performance gap recovered, over the share of calls sent to the largest
//! model) and the cheapest operating point at 95% of always-largest quality. Writes report.json,
//! report.md and a quality-against-latency plot.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lightgbm3::Booster;
use plotters::prelude::*;
use polyllm_common::features::Embedding;
use polyllm_common::router_model::{RouterModelMeta, MODEL_FILE};
use serde::{Deserialize, Serialize};

use crate::table::{Item, Table};
use crate::train::{argmax, predict_rows, rows, Split, SPLIT_FILE};

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_PNG: &str = "report.png";

/// One strategy's outcome on the test split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyResult {
    pub name: String,
    pub mean_quality: f64,
    pub mean_latency_ms: f64,
    /// Share of calls that went to the largest model.
    pub largest_share: f64,
    /// Mean quality over always-largest's.
    pub quality_vs_largest: f64,
    /// Mean latency over always-largest's.
    pub latency_vs_largest: f64,
}

/// A point of the router's sweep (bias towards the largest model).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub bias: f64,
    pub largest_share: f64,
    pub mean_quality: f64,
    pub mean_latency_ms: f64,
    pub pgr: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub classes: Vec<String>,
    pub test_prompts: usize,
    pub per_category: Vec<(String, usize)>,
    pub latency_weight: f64,
    pub confidence_threshold: f64,
    /// Share of test prompts where the router picked the oracle's label.
    pub routing_accuracy: f64,
    pub strategies: Vec<StrategyResult>,
    /// RouteLLM's APGR; None when always-largest is not better than always-smallest.
    pub apgr: Option<f64>,
    /// Cheapest sweep point with at least 95% of always-largest quality.
    pub at_95: Option<SweepPoint>,
    pub sweep: Vec<SweepPoint>,
    pub training_data_sha256: String,
    pub command: String,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Mean quality, mean latency and largest-share of a routing (one class per item).
fn outcome(items: &[&Item], choice: &[usize]) -> (f64, f64, f64) {
    let k = items.first().map_or(1, |i| i.quality.len());
    (
        mean(items.iter().zip(choice).map(|(it, &c)| it.quality[c])),
        mean(items.iter().zip(choice).map(|(it, &c)| it.latency_ms[c])),
        mean(choice.iter().map(|&c| (c == k - 1) as u8 as f64)),
    )
}

/// Area under PGR(share of calls to the largest model) on [0, 1], trapezoids between the sweep's
/// points, extended flat to 0 and 1.
pub fn apgr(points: &[(f64, f64)]) -> f64 {
    let mut pts: Vec<(f64, f64)> = points.to_vec();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    if pts.is_empty() {
        return 0.0;
    }
    let mut area = pts[0].0 * pts[0].1;
    for w in pts.windows(2) {
        area += (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0;
    }
    let last = pts[pts.len() - 1];
    area + (1.0 - last.0) * last.1
}

/// Evaluate the model in `model_dir` on its held-out split.
pub fn evaluate(table: &Table, embeddings: &[Embedding], model_dir: &Path, command: &str) -> Result<Report> {
    let meta = RouterModelMeta::load(model_dir)?;
    if meta.classes != table.classes {
        bail!("the model's classes {:?} differ from the data's {:?}", meta.classes, table.classes);
    }
    let split: Split = serde_json::from_slice(
        &std::fs::read(model_dir.join(SPLIT_FILE))
            .with_context(|| format!("reading {}", model_dir.join(SPLIT_FILE).display()))?,
    )?;
    let booster = Booster::from_file(&model_dir.join(MODEL_FILE).to_string_lossy())
        .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;
    let test: std::collections::HashSet<&str> = split.test.iter().map(String::as_str).collect();
    let idx: Vec<usize> = (0..table.items.len()).filter(|&i| test.contains(table.items[i].id.as_str())).collect();
    if idx.is_empty() {
        bail!("none of the held-out prompts is in the data");
    }
    let k = table.classes.len();
    let w = meta.latency_weight;
    let all_rows = rows(table, embeddings, &meta.pca);
    let test_rows: Vec<Vec<f32>> = idx.iter().map(|&i| all_rows[i].clone()).collect();
    let probs = predict_rows(&booster, &test_rows, k)?;
    let items: Vec<&Item> = idx.iter().map(|&i| &table.items[i]).collect();

    let oracle: Vec<usize> = items.iter().map(|it| it.label(w)).collect();
    let learned: Vec<usize> = probs.iter().map(|p| meta.route(p).class).collect();
    let routing_accuracy = mean(learned.iter().zip(&oracle).map(|(a, b)| (a == b) as u8 as f64));

    let (_, l_largest, _) = outcome(&items, &vec![k - 1; items.len()]);
    let (q_largest, _, _) = outcome(&items, &vec![k - 1; items.len()]);
    let (q_smallest, _, _) = outcome(&items, &vec![0; items.len()]);
    let mk = |name: String, (q, l, s): (f64, f64, f64)| StrategyResult {
        name,
        mean_quality: q,
        mean_latency_ms: l,
        largest_share: s,
        quality_vs_largest: if q_largest > 0.0 { q / q_largest } else { 0.0 },
        latency_vs_largest: if l_largest > 0.0 { l / l_largest } else { 0.0 },
    };
    let mut strategies = vec![mk("learned router".into(), outcome(&items, &learned))];
    // Random: the expectation over a uniform choice.
    strategies.push(mk(
        "random".into(),
        (
            mean(items.iter().map(|it| mean(it.quality.iter().copied()))),
            mean(items.iter().map(|it| mean(it.latency_ms.iter().copied()))),
            1.0 / k as f64,
        ),
    ));
    for (c, name) in table.classes.iter().enumerate() {
        let tag = if c == 0 {
            format!("always-smallest ({name})")
        } else if c == k - 1 {
            format!("always-largest ({name})")
        } else {
            format!("always {name}")
        };
        strategies.push(mk(tag, outcome(&items, &vec![c; items.len()])));
    }
    strategies.push(mk("oracle (label)".into(), outcome(&items, &oracle)));

    // The sweep: add `bias` to the largest model's log-probability, from never to always.
    let gap = q_largest - q_smallest;
    let mut sweep = Vec::new();
    let mut biases: Vec<f64> = vec![-1e9];
    biases.extend((0..=120).map(|i| -6.0 + 0.1 * i as f64));
    biases.push(1e9);
    for &b in &biases {
        let choice: Vec<usize> = probs
            .iter()
            .map(|p| {
                let s: Vec<f64> =
                    p.iter().enumerate().map(|(c, v)| v.max(1e-12).ln() + if c == k - 1 { b } else { 0.0 }).collect();
                argmax(&s)
            })
            .collect();
        let (q, l, s) = outcome(&items, &choice);
        sweep.push(SweepPoint {
            bias: b,
            largest_share: s,
            mean_quality: q,
            mean_latency_ms: l,
            pgr: if gap > 1e-12 { (q - q_smallest) / gap } else { 0.0 },
        });
    }
    let apgr_v = (gap > 1e-12).then(|| apgr(&sweep.iter().map(|p| (p.largest_share, p.pgr)).collect::<Vec<_>>()));
    let at_95 = sweep
        .iter()
        .filter(|p| p.mean_quality >= 0.95 * q_largest)
        .min_by(|a, b| a.mean_latency_ms.total_cmp(&b.mean_latency_ms))
        .cloned();

    let mut per_category: std::collections::BTreeMap<String, usize> = Default::default();
    for it in &items {
        *per_category.entry(it.category.clone()).or_default() += 1;
    }
    Ok(Report {
        classes: table.classes.clone(),
        test_prompts: items.len(),
        per_category: per_category.into_iter().collect(),
        latency_weight: w,
        confidence_threshold: meta.confidence_threshold,
        routing_accuracy,
        strategies,
        apgr: apgr_v,
        at_95,
        sweep,
        training_data_sha256: meta.training_data_sha256.clone(),
        command: command.to_string(),
    })
}

/// Write report.json, report.md and report.png into `dir`.
pub fn write_report(dir: &Path, r: &Report, font: Option<&Path>) -> Result<Vec<PathBuf>> {
    let json_path = dir.join(REPORT_JSON);
    std::fs::write(&json_path, serde_json::to_vec_pretty(r)?)?;
    let png = dir.join(REPORT_PNG);
    let plotted = plot(&png, r, font);
    let md_path = dir.join(REPORT_MD);
    std::fs::write(&md_path, markdown(r, plotted.is_ok()))?;
    let mut out = vec![json_path, md_path];
    match plotted {
        Ok(()) => out.push(png),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "no plot"),
    }
    Ok(out)
}

pub fn markdown(r: &Report, with_plot: bool) -> String {
    let mut s = String::new();
    s.push_str("# Router model evaluation (held-out split)\n\n");
    s.push_str(&format!(
        "{} held-out prompts ({}); classes, smallest first: {}. Label: best quality − {} × latency / slowest latency. \
         Confidence threshold {:.2}.\n\n",
        r.test_prompts,
        r.per_category.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "),
        r.classes.join(", "),
        r.latency_weight,
        r.confidence_threshold
    ));
    s.push_str(&format!("- Routing accuracy against the oracle label: **{:.3}**\n", r.routing_accuracy));
    match r.apgr {
        Some(a) => s.push_str(&format!("- APGR (area under performance-gap-recovered vs share of calls to the largest model): **{a:.3}** (goal ≥ 0.8)\n")),
        None => s.push_str("- APGR: undefined here (always-largest is not better than always-smallest on this split)\n"),
    }
    match &r.at_95 {
        Some(p) => {
            let l =
                r.strategies.iter().find(|x| x.name.starts_with("always-largest")).map_or(0.0, |x| x.mean_latency_ms);
            s.push_str(&format!(
                "- Cheapest operating point at ≥ 95% of always-largest quality: {:.0}% of calls to the largest model, \
                 mean latency {:.0} ms = **{:.2}x** always-largest (goal ≤ 0.5x)\n",
                p.largest_share * 100.0,
                p.mean_latency_ms,
                if l > 0.0 { p.mean_latency_ms / l } else { 0.0 }
            ))
        }
        None => s.push_str("- No operating point reaches 95% of always-largest quality.\n"),
    }
    s.push_str("\n| strategy | mean quality | quality / largest | mean latency (ms) | latency / largest | calls to largest |\n|---|---|---|---|---|---|\n");
    for x in &r.strategies {
        s.push_str(&format!(
            "| {} | {:.3} | {:.2} | {:.0} | {:.2} | {:.0}% |\n",
            x.name,
            x.mean_quality,
            x.quality_vs_largest,
            x.mean_latency_ms,
            x.latency_vs_largest,
            x.largest_share * 100.0
        ));
    }
    if with_plot {
        s.push_str(&format!("\n![quality against latency]({REPORT_PNG})\n"));
    }
    s.push_str(&format!("\nTraining data SHA-256 `{}`.\n\nReproduce: `{}`\n", r.training_data_sha256, r.command));
    s
}

fn plot(path: &Path, r: &Report, font: Option<&Path>) -> Result<()> {
    polyllm_common::font::init_font(font)?;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_l = r
        .strategies
        .iter()
        .map(|s| s.mean_latency_ms)
        .chain(r.sweep.iter().map(|p| p.mean_latency_ms))
        .fold(1.0, f64::max)
        * 1.1;
    let max_q = r.strategies.iter().map(|s| s.mean_quality).fold(0.0, f64::max).max(0.05) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Quality against latency (held-out prompts)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_l, 0.0..max_q.min(1.05))?;
    chart.configure_mesh().x_desc("mean latency per prompt (ms)").y_desc("mean quality").draw()?;
    chart
        .draw_series(LineSeries::new(
            r.sweep.iter().map(|p| (p.mean_latency_ms, p.mean_quality)),
            BLUE.stroke_width(2),
        ))?
        .label("learned router, bias sweep")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    for (i, s) in r.strategies.iter().enumerate() {
        let color = Palette99::pick(i + 1).to_rgba();
        chart
            .draw_series(std::iter::once(Circle::new((s.mean_latency_ms, s.mean_quality), 6, color.filled())))?
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apgr_of_known_curves() {
        // A router that recovers the whole gap with no calls to the largest model.
        assert!((apgr(&[(0.0, 1.0), (1.0, 1.0)]) - 1.0).abs() < 1e-9);
        // The random-mix diagonal.
        assert!((apgr(&[(0.0, 0.0), (1.0, 1.0)]) - 0.5).abs() < 1e-9);
        // Unsorted points, flat extension past the last one.
        assert!((apgr(&[(0.5, 1.0), (0.0, 0.0)]) - (0.25 + 0.5)).abs() < 1e-9);
    }
}
