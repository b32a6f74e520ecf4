//! `trainer evaluate`: the router model against random, every fixed model and the oracle, on two
//! splits: the held-out random split the model never trained on, and leave-one-family-out, where
//! each template family is predicted by a model trained on all the other families (so nothing of
//! its phrasing was seen). Per split: mean quality and latency, APGR (RouteLLM's average performance
//! gap recovered, over the share of calls to the largest model, swept by the cost weight), the
//! cheapest operating point at 95% of always-largest quality, and where the default cost weight
//! lands. Writes report.json, report.md and a quality-against-latency plot.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lightgbm3::Booster;
use plotters::prelude::*;
use polyllm_common::features::Embedding;
use polyllm_common::router_model::{RouterModelMeta, MODEL_FILE};
use serde::{Deserialize, Serialize};

use crate::table::{Item, Table};
use crate::train::{
    cost_grid, fit, outcome, predict_quality, route_all, Split, TrainConfig, TrainReport, SPLIT_FILE, TRAIN_REPORT_FILE,
};

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_PNG: &str = "report.png";

/// The cost weights the report's knob table shows (besides the default).
const KNOB_TABLE: [f64; 7] = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 2.0];

/// One strategy's outcome on a split.
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

/// A point of the cost-weight sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub cost_weight: f64,
    pub largest_share: f64,
    pub mean_quality: f64,
    pub mean_latency_ms: f64,
    pub quality_vs_largest: f64,
    pub latency_vs_largest: f64,
    pub pgr: f64,
}

/// One split's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitReport {
    pub name: String,
    pub prompts: usize,
    pub families: usize,
    pub per_category: Vec<(String, usize)>,
    /// The learned router at the default cost weight, random, every fixed model, the oracle.
    pub strategies: Vec<StrategyResult>,
    /// RouteLLM's APGR; None when always-largest is not better than always-smallest.
    pub apgr: Option<f64>,
    /// Cheapest sweep point with at least 95% of always-largest quality.
    pub at_95: Option<SweepPoint>,
    pub sweep: Vec<SweepPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub classes: Vec<String>,
    pub cost_weight: f64,
    pub quality_target: f64,
    /// Per class, the expected latency of an idle backend the rule weighs (ms).
    pub latency_ms: Vec<f64>,
    pub splits: Vec<SplitReport>,
    pub training_data_sha256: String,
    pub command: String,
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

/// Every number of one split, from the predicted quality of its items.
pub fn split_report(name: &str, items: &[&Item], pred: &[Vec<f64>], meta: &RouterModelMeta) -> SplitReport {
    let k = meta.classes.len();
    let n = items.len();
    let (q_largest, l_largest, _) = outcome(items, &vec![k - 1; n]);
    let (q_smallest, _, _) = outcome(items, &vec![0; n]);
    let mk = |name: String, (q, l, s): (f64, f64, f64)| StrategyResult {
        name,
        mean_quality: q,
        mean_latency_ms: l,
        largest_share: s,
        quality_vs_largest: if q_largest > 0.0 { q / q_largest } else { 0.0 },
        latency_vs_largest: if l_largest > 0.0 { l / l_largest } else { 0.0 },
    };
    let learned = route_all(pred, &meta.latency_ms, meta.cost_weight);
    let mut strategies =
        vec![mk(format!("learned router (cost weight {:.3})", meta.cost_weight), outcome(items, &learned))];
    let mean = |v: &dyn Fn(&Item) -> f64| items.iter().map(|it| v(it)).sum::<f64>() / n.max(1) as f64;
    strategies.push(mk(
        "random".into(),
        (
            mean(&|it| it.quality.iter().sum::<f64>() / k as f64),
            mean(&|it| it.latency_ms.iter().sum::<f64>() / k as f64),
            1.0 / k as f64,
        ),
    ));
    for (c, name) in meta.classes.iter().enumerate() {
        let tag = if c == 0 {
            format!("always-smallest ({name})")
        } else if c == k - 1 {
            format!("always-largest ({name})")
        } else {
            format!("always {name}")
        };
        strategies.push(mk(tag, outcome(items, &vec![c; n])));
    }
    // The oracle: per prompt the best quality, of equals the fastest.
    let oracle: Vec<usize> = items.iter().map(|it| it.label(0.0)).collect();
    strategies.push(mk("oracle (best answer, fastest of equals)".into(), outcome(items, &oracle)));

    let gap = q_largest - q_smallest;
    let sweep: Vec<SweepPoint> = cost_grid()
        .into_iter()
        .map(|w| {
            let (q, l, s) = outcome(items, &route_all(pred, &meta.latency_ms, w));
            SweepPoint {
                cost_weight: w,
                largest_share: s,
                mean_quality: q,
                mean_latency_ms: l,
                quality_vs_largest: if q_largest > 0.0 { q / q_largest } else { 0.0 },
                latency_vs_largest: if l_largest > 0.0 { l / l_largest } else { 0.0 },
                pgr: if gap > 1e-12 { (q - q_smallest) / gap } else { 0.0 },
            }
        })
        .collect();
    let apgr_v = (gap > 1e-12).then(|| apgr(&sweep.iter().map(|p| (p.largest_share, p.pgr)).collect::<Vec<_>>()));
    let at_95 = sweep
        .iter()
        .filter(|p| p.mean_quality >= 0.95 * q_largest)
        .min_by(|a, b| a.mean_latency_ms.total_cmp(&b.mean_latency_ms))
        .cloned();
    let mut per_category: BTreeMap<String, usize> = Default::default();
    let mut families: Vec<&str> = Vec::new();
    for it in items {
        *per_category.entry(it.category.clone()).or_default() += 1;
        families.push(&it.family);
    }
    families.sort_unstable();
    families.dedup();
    SplitReport {
        name: name.to_string(),
        prompts: n,
        families: families.len(),
        per_category: per_category.into_iter().collect(),
        strategies,
        apgr: apgr_v,
        at_95,
        sweep,
    }
}

/// Evaluate the model in `model_dir` on its held-out split and leave-one-family-out.
pub fn evaluate(table: &Table, embeddings: &[Embedding], model_dir: &Path, command: &str) -> Result<Report> {
    let meta = RouterModelMeta::load(model_dir)?;
    if meta.classes != table.classes {
        bail!("the model's classes {:?} differ from the data's {:?}", meta.classes, table.classes);
    }
    let read = |f: &str| -> Result<Vec<u8>> {
        std::fs::read(model_dir.join(f)).with_context(|| format!("reading {}", model_dir.join(f).display()))
    };
    let split: Split = serde_json::from_slice(&read(SPLIT_FILE)?)?;
    let trained: TrainReport = serde_json::from_slice(&read(TRAIN_REPORT_FILE)?)?;
    let booster = Booster::from_file(&model_dir.join(MODEL_FILE).to_string_lossy())
        .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;

    // The random held-out split, predicted by the model as written.
    let test: std::collections::HashSet<&str> = split.test.iter().map(String::as_str).collect();
    let idx: Vec<usize> = (0..table.items.len()).filter(|&i| test.contains(table.items[i].id.as_str())).collect();
    if idx.is_empty() {
        bail!("none of the held-out prompts is in the data");
    }
    let pred = predict_quality(&booster, &meta.pca, table, embeddings, &idx)?;
    let items: Vec<&Item> = idx.iter().map(|&i| &table.items[i]).collect();
    let random = split_report("random held-out split", &items, &pred, &meta);

    // Leave one family out: every family predicted by a model fitted on all the others.
    let cfg = TrainConfig {
        out_dir: model_dir.to_path_buf(),
        quality_target: meta.quality_target,
        folds: 2,
        test_share: split.test_share,
        seed: split.seed,
        pca_dims: meta.pca.dims(),
        max_rounds: trained.rounds.max(1) as u32,
        threads: 2,
    };
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, it) in table.items.iter().enumerate() {
        by.entry(&it.family).or_default().push(i);
    }
    let (mut lofo_idx, mut lofo_pred) = (Vec::new(), Vec::new());
    for held in by.values() {
        let rest: Vec<usize> = (0..table.items.len()).filter(|i| held.binary_search(i).is_err()).collect();
        let m = fit(table, embeddings, &rest, None, cfg.max_rounds, &cfg)?;
        lofo_pred.extend(m.predict(table, embeddings, held)?);
        lofo_idx.extend_from_slice(held);
    }
    let items: Vec<&Item> = lofo_idx.iter().map(|&i| &table.items[i]).collect();
    let family = split_report("leave-one-family-out (all prompts)", &items, &lofo_pred, &meta);

    Ok(Report {
        classes: table.classes.clone(),
        cost_weight: meta.cost_weight,
        quality_target: meta.quality_target,
        latency_ms: meta.latency_ms.clone(),
        splits: vec![random, family],
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
    s.push_str("# Router model evaluation\n\n");
    s.push_str(&format!(
        "Classes, smallest first: {}. The model predicts each model's answer quality; the router takes the model \
         with the highest predicted quality − cost weight × expected latency / the largest model's ({} ms idle). \
         Default cost weight **{:.3}**, calibrated out of fold (folds by template family) to keep {:.0}% of \
         always-largest quality.\n",
        r.classes.join(", "),
        r.latency_ms.last().map_or(0.0, |l| l.round()),
        r.cost_weight,
        r.quality_target * 100.0
    ));
    for sp in &r.splits {
        s.push_str(&format!(
            "\n## {}\n\n{} prompts ({}), {} template families.\n\n",
            sp.name,
            sp.prompts,
            sp.per_category.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "),
            sp.families
        ));
        match sp.apgr {
            Some(a) => s.push_str(&format!(
                "- APGR (area under performance-gap-recovered vs share of calls to the largest model, swept by the cost weight): **{a:.3}**\n"
            )),
            None => s.push_str("- APGR: undefined here (always-largest is not better than always-smallest)\n"),
        }
        let oracle = sp.strategies.iter().find(|x| x.name.starts_with("oracle"));
        match &sp.at_95 {
            Some(p) => s.push_str(&format!(
                "- Cheapest operating point at ≥ 95% of always-largest quality: cost weight {:.3}, {:.0}% of calls to the \
                 largest model, mean latency **{:.2}x** always-largest (the oracle: {:.2}x)\n",
                p.cost_weight,
                p.largest_share * 100.0,
                p.latency_vs_largest,
                oracle.map_or(0.0, |o| o.latency_vs_largest)
            )),
            None => s.push_str("- No setting of the cost weight reaches 95% of always-largest quality.\n"),
        }
        s.push_str("\n| strategy | mean quality | quality / largest | mean latency (ms) | latency / largest | calls to largest |\n|---|---|---|---|---|---|\n");
        for x in &sp.strategies {
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
        s.push_str("\nThe knob: where each cost weight lands on this split.\n\n| cost weight | quality / largest | latency / largest | calls to largest |\n|---|---|---|---|\n");
        // The sweep's points nearest to the table's weights, and the default's own point.
        let nearest = |w: f64| {
            sp.sweep.iter().min_by(|a, b| (a.cost_weight - w).abs().total_cmp(&(b.cost_weight - w).abs())).cloned()
        };
        let mut points: Vec<SweepPoint> = KNOB_TABLE.iter().filter_map(|&w| nearest(w)).collect();
        points.extend(nearest(r.cost_weight));
        points.sort_by(|a, b| a.cost_weight.total_cmp(&b.cost_weight));
        points.dedup_by(|a, b| (a.cost_weight - b.cost_weight).abs() < 1e-9);
        let default = nearest(r.cost_weight).map_or(f64::NAN, |p| p.cost_weight);
        for p in points {
            let mark = if (p.cost_weight - default).abs() < 1e-9 { " (default)" } else { "" };
            s.push_str(&format!(
                "| {:.3}{mark} | {:.2} | {:.2} | {:.0}% |\n",
                p.cost_weight,
                p.quality_vs_largest,
                p.latency_vs_largest,
                p.largest_share * 100.0
            ));
        }
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
    let pts =
        || r.splits.iter().flat_map(|s| s.strategies.iter().map(|x| (x.latency_vs_largest, x.quality_vs_largest)));
    let max_l = pts().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let max_q = pts().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Quality against latency, relative to always-largest", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_l, 0.0..max_q)?;
    chart.configure_mesh().x_desc("mean latency / always-largest").y_desc("mean quality / always-largest").draw()?;
    for (i, sp) in r.splits.iter().enumerate() {
        let color = if i == 0 { BLUE } else { RED };
        chart
            .draw_series(LineSeries::new(
                sp.sweep.iter().map(|p| (p.latency_vs_largest, p.quality_vs_largest)),
                color.stroke_width(2),
            ))?
            .label(format!("learned router, cost-weight sweep: {}", sp.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if let Some(sp) = r.splits.last() {
        for (i, s) in sp.strategies.iter().enumerate() {
            let color = Palette99::pick(i + 2).to_rgba();
            chart
                .draw_series(std::iter::once(Circle::new(
                    (s.latency_vs_largest, s.quality_vs_largest),
                    6,
                    color.filled(),
                )))?
                .label(format!("{} ({})", s.name, sp.name))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
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
