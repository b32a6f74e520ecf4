//! `trainer train`: featurize the table's prompts, fit the PCA on the training split, and train a
//! LightGBM `cross_entropy` model of answer quality over (prompt, model) rows: the prompt's
//! features plus the model's class index, labelled with the quality that model's answer got.
//! Cross-validation with folds grouped by template family (so the out-of-fold predictions are
//! for families the fold never saw) picks the number of boosting rounds and calibrates the default
//! cost weight of the routing rule ([`polyllm_common::router_model::choose`]) for a quality target.
//! Writes the router model directory.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lightgbm3::{Booster, Dataset};
use polyllm_common::features::{assemble, Embedding, Featurizer, Pca};
use polyllm_common::router_model::{
    choose, class_rows, model_feature_names, CostPoint, RouterModelMeta, META_FILE, MODEL_FILE,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::table::{Item, Table};

/// File names the trainer adds to the model directory.
pub const SPLIT_FILE: &str = "split.json";
pub const TRAIN_REPORT_FILE: &str = "training_report.json";

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub out_dir: PathBuf,
    /// The share of always-largest quality the default cost weight must keep (out of fold).
    pub quality_target: f64,
    pub folds: usize,
    pub test_share: f64,
    pub seed: u64,
    pub pca_dims: usize,
    pub max_rounds: u32,
    pub threads: usize,
}

/// Which prompts trained the model and which are held out (ids).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Split {
    pub seed: u64,
    pub test_share: f64,
    pub train: Vec<String>,
    pub test: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldResult {
    pub fold: usize,
    /// The template families this fold held out.
    pub families: Vec<String>,
    pub prompts: usize,
    pub best_rounds: i32,
    /// Mean cross-entropy of the predicted quality against the scored quality.
    pub log_loss: f64,
}

/// `training_report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub classes: Vec<String>,
    pub train_prompts: usize,
    pub test_prompts: usize,
    pub features: usize,
    pub pca_explained_variance: Vec<f32>,
    pub folds: Vec<FoldResult>,
    pub cv_log_loss: f64,
    pub rounds: i32,
    pub quality_target: f64,
    pub cost_weight: f64,
    /// Out-of-fold: where each cost weight lands (the curve the default was picked on).
    pub cost_curve: Vec<CostPoint>,
    pub params: serde_json::Value,
    pub training_data_sha256: String,
}

/// Embed every prompt of the table (bulk, with a progress bar).
pub fn embed_all(featurizer: &Featurizer, table: &Table) -> Result<Vec<Embedding>> {
    let bar = ProgressBar::new(table.items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("embedding {bar:40} {pos}/{len} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = Vec::with_capacity(table.items.len());
    for it in &table.items {
        out.push(featurizer.embedder().embed(&it.prompt).with_context(|| format!("embedding prompt {}", it.id))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// LightGBM parameters of every fit.
pub fn params(rounds: u32, seed: u64, threads: usize, early_stopping: bool) -> serde_json::Value {
    let mut p = json!({
        "objective": "cross_entropy",
        "metric": "cross_entropy",
        "learning_rate": 0.05,
        "num_leaves": 15,
        "max_depth": 6,
        "min_data_in_leaf": 8,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_iterations": rounds,
        "seed": seed,
        "deterministic": true,
        "force_row_wise": true,
        "num_threads": threads,
        "verbosity": -1,
    });
    if early_stopping {
        p["early_stopping_rounds"] = json!(30);
    }
    p
}

fn dataset(rows: &[Vec<f32>], labels: &[f32], names: &[String], reference: Option<&Dataset>) -> Result<Dataset> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let mut d = Dataset::from_slice_with_reference(&flat, labels, names.len() as i32, true, reference)
        .map_err(|e| anyhow::anyhow!("LightGBM dataset: {e}"))?;
    d.set_feature_names(names).map_err(|e| anyhow::anyhow!("LightGBM feature names: {e}"))?;
    Ok(d)
}

/// A fitted quality model: the PCA of its training prompts and the booster.
pub struct Fitted {
    pub pca: Pca,
    pub booster: Booster,
}

/// (prompt, class) rows and quality labels of the items `idx`.
fn class_table(table: &Table, embeddings: &[Embedding], pca: &Pca, idx: &[usize]) -> (Vec<Vec<f32>>, Vec<f32>) {
    let k = table.classes.len();
    let (mut x, mut y) = (Vec::with_capacity(idx.len() * k), Vec::with_capacity(idx.len() * k));
    for &i in idx {
        let it = &table.items[i];
        let row = assemble(&it.prompt, embeddings[i].clone(), pca).values;
        x.extend(class_rows(&row, k));
        y.extend(it.quality.iter().map(|q| q.clamp(0.0, 1.0) as f32));
    }
    (x, y)
}

/// Fit on the items `fit` (PCA included); with `valid`, stop early on it.
pub fn fit(
    table: &Table,
    embeddings: &[Embedding],
    fit: &[usize],
    valid: Option<&[usize]>,
    rounds: u32,
    cfg: &TrainConfig,
) -> Result<Fitted> {
    let emb: Vec<Vec<f32>> = fit.iter().map(|&i| embeddings[i].vector.clone()).collect();
    let pca = Pca::fit(&emb, cfg.pca_dims).context("fitting the PCA")?;
    let names = model_feature_names(pca.dims());
    let (fx, fy) = class_table(table, embeddings, &pca, fit);
    let dtrain = dataset(&fx, &fy, &names, None)?;
    let booster = match valid {
        Some(v) => {
            let (vx, vy) = class_table(table, embeddings, &pca, v);
            let dvalid = dataset(&vx, &vy, &names, Some(&dtrain))?;
            Booster::train_with_valid(dtrain, Some(dvalid), &params(rounds, cfg.seed, cfg.threads, true))
        }
        None => Booster::train(dtrain, &params(rounds, cfg.seed, cfg.threads, false)),
    }
    .map_err(|e| anyhow::anyhow!("LightGBM training: {e}"))?;
    Ok(Fitted { pca, booster })
}

impl Fitted {
    /// Predicted quality per class of each item of `idx`.
    pub fn predict(&self, table: &Table, embeddings: &[Embedding], idx: &[usize]) -> Result<Vec<Vec<f64>>> {
        predict_quality(&self.booster, &self.pca, table, embeddings, idx)
    }
}

/// Predicted quality per class of each item of `idx`, from a booster and its PCA.
pub fn predict_quality(
    booster: &Booster,
    pca: &Pca,
    table: &Table,
    embeddings: &[Embedding],
    idx: &[usize],
) -> Result<Vec<Vec<f64>>> {
    if idx.is_empty() {
        return Ok(Vec::new());
    }
    let k = table.classes.len();
    let (x, _) = class_table(table, embeddings, pca, idx);
    let flat: Vec<f32> = x.iter().flatten().copied().collect();
    let p = booster.predict(&flat, x[0].len() as i32, true).map_err(|e| anyhow::anyhow!("LightGBM predict: {e}"))?;
    if p.len() != x.len() {
        bail!("LightGBM gave {} predictions for {} rows", p.len(), x.len());
    }
    Ok(p.chunks(k).map(|c| c.to_vec()).collect())
}

/// Per class, the median latency of the items `idx`: the expected latency of an idle backend.
pub fn median_latency(table: &Table, idx: &[usize]) -> Vec<f64> {
    (0..table.classes.len())
        .map(|c| {
            let mut l: Vec<f64> = idx.iter().map(|&i| table.items[i].latency_ms[c]).collect();
            l.sort_by(f64::total_cmp);
            l.get(l.len() / 2).copied().unwrap_or(1.0).max(1e-3)
        })
        .collect()
}

/// The cost weights every curve is evaluated at: 0, then geometric from 0.005 to 20, then the most.
pub fn cost_grid() -> Vec<f64> {
    let mut g = vec![0.0];
    let mut w = 0.005f64;
    while w <= 20.0 {
        g.push((w * 1e6).round() / 1e6);
        w *= 1.15;
    }
    g.push(polyllm_common::router_model::MAX_COST_WEIGHT);
    g
}

/// The routing rule's choice per item at cost weight `w`.
pub fn route_all(pred: &[Vec<f64>], latency_ms: &[f64], w: f64) -> Vec<usize> {
    let reference = latency_ms[latency_ms.len() - 1];
    pred.iter().map(|q| choose(q, latency_ms, reference, w)).collect()
}

/// Mean quality, mean latency and largest share of a routing (one class per item).
pub fn outcome(items: &[&Item], choice: &[usize]) -> (f64, f64, f64) {
    let k = items.first().map_or(1, |i| i.quality.len());
    let n = items.len().max(1) as f64;
    (
        items.iter().zip(choice).map(|(it, &c)| it.quality[c]).sum::<f64>() / n,
        items.iter().zip(choice).map(|(it, &c)| it.latency_ms[c]).sum::<f64>() / n,
        choice.iter().filter(|&&c| c == k - 1).count() as f64 / n,
    )
}

/// Where each cost weight of [`cost_grid`] lands on `items`, relative to always-largest.
pub fn cost_curve(items: &[&Item], pred: &[Vec<f64>], latency_ms: &[f64]) -> Vec<CostPoint> {
    let k = latency_ms.len();
    let (q_l, l_l, _) = outcome(items, &vec![k - 1; items.len()]);
    cost_grid()
        .into_iter()
        .map(|w| {
            let (q, l, s) = outcome(items, &route_all(pred, latency_ms, w));
            CostPoint {
                cost_weight: w,
                quality_vs_largest: if q_l > 0.0 { q / q_l } else { 0.0 },
                latency_vs_largest: if l_l > 0.0 { l / l_l } else { 0.0 },
                largest_share: s,
            }
        })
        .collect()
}

/// The highest cost weight whose quality is at least `target` × always-largest's (0 if none).
pub fn calibrate(curve: &[CostPoint], target: f64) -> f64 {
    curve.iter().filter(|p| p.quality_vs_largest >= target).map(|p| p.cost_weight).fold(0.0, f64::max)
}

/// Folds of `idx` grouped by template family: whole families, greedily balanced by size.
pub fn family_folds(table: &Table, idx: &[usize], folds: usize) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        by.entry(&table.items[i].family).or_default().push(i);
    }
    let mut fams: Vec<Vec<usize>> = by.into_values().collect();
    fams.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); folds.max(2).min(fams.len().max(1))];
    for f in fams {
        let smallest = (0..out.len()).min_by_key(|&j| (out[j].len(), j)).unwrap_or(0);
        out[smallest].extend(f);
    }
    for f in &mut out {
        f.sort_unstable();
    }
    out.retain(|f| !f.is_empty());
    out
}

fn cross_entropy(pred: &[Vec<f64>], items: &[&Item]) -> f64 {
    let mut s = 0.0;
    let mut n = 0usize;
    for (p, it) in pred.iter().zip(items) {
        for (q, y) in p.iter().zip(&it.quality) {
            let q = q.clamp(1e-15, 1.0 - 1e-15);
            s -= y * q.ln() + (1.0 - y) * (1.0 - q).ln();
            n += 1;
        }
    }
    s / n.max(1) as f64
}

/// Everything `train` produced (also written to `cfg.out_dir`).
pub struct TrainOutcome {
    pub meta: RouterModelMeta,
    pub report: TrainReport,
    pub split: Split,
}

/// Train and write the model directory.
pub fn train(table: &Table, embeddings: &[Embedding], cfg: &TrainConfig) -> Result<TrainOutcome> {
    let (train_idx, test_idx) = table.split(cfg.test_share, cfg.seed);
    if train_idx.len() < cfg.folds.max(2) * 2 {
        bail!("only {} training prompts: too few to train", train_idx.len());
    }
    let latency_ms = median_latency(table, &train_idx);

    // Cross-validation, folds by template family: out-of-fold predictions are for unseen families.
    let folds = family_folds(table, &train_idx, cfg.folds);
    if folds.len() < 2 {
        bail!("the training split holds one template family: nothing to cross-validate on");
    }
    let mut oof: Vec<Option<Vec<f64>>> = vec![None; table.items.len()];
    let mut fold_results = Vec::new();
    for (f, valid) in folds.iter().enumerate() {
        let fit_idx: Vec<usize> = train_idx.iter().copied().filter(|i| valid.binary_search(i).is_err()).collect();
        let m = fit(table, embeddings, &fit_idx, Some(valid), cfg.max_rounds, cfg)?;
        let pred = m.predict(table, embeddings, valid)?;
        let items: Vec<&Item> = valid.iter().map(|&i| &table.items[i]).collect();
        let mut families: Vec<String> = items.iter().map(|it| it.family.clone()).collect();
        families.sort();
        families.dedup();
        fold_results.push(FoldResult {
            fold: f,
            families,
            prompts: valid.len(),
            best_rounds: m.booster.num_iterations(),
            log_loss: cross_entropy(&pred, &items),
        });
        for (&i, p) in valid.iter().zip(pred) {
            oof[i] = Some(p);
        }
    }
    let total: usize = fold_results.iter().map(|r| r.prompts).sum();
    let cv_log_loss = fold_results.iter().map(|r| r.log_loss * r.prompts as f64).sum::<f64>() / total.max(1) as f64;
    let rounds = ((fold_results.iter().map(|r| r.best_rounds as f64).sum::<f64>() / fold_results.len() as f64).round()
        as i32)
        .max(5);

    // The default cost weight: the cheapest setting that keeps the quality target out of fold.
    let covered: Vec<usize> = train_idx.iter().copied().filter(|&i| oof[i].is_some()).collect();
    let items: Vec<&Item> = covered.iter().map(|&i| &table.items[i]).collect();
    let pred: Vec<Vec<f64>> = covered.iter().filter_map(|&i| oof[i].clone()).collect();
    let curve = cost_curve(&items, &pred, &latency_ms);
    let cost_weight = calibrate(&curve, cfg.quality_target);

    // The final model on the whole training split.
    let m = fit(table, embeddings, &train_idx, None, rounds as u32, cfg)?;
    let names = model_feature_names(m.pca.dims());
    let meta = RouterModelMeta {
        version: RouterModelMeta::VERSION,
        feature_names: names.clone(),
        pca: m.pca.clone(),
        classes: table.classes.clone(),
        latency_ms: latency_ms.clone(),
        cost_weight,
        quality_target: cfg.quality_target,
        cost_curve: curve.clone(),
        training_data_sha256: table.data_sha256.clone(),
        trained_at: crate::now_rfc3339(),
    };
    meta.check().map_err(|e| anyhow::anyhow!("internal: the meta written would not load: {e}"))?;
    let split = Split {
        seed: cfg.seed,
        test_share: cfg.test_share,
        train: train_idx.iter().map(|&i| table.items[i].id.clone()).collect(),
        test: test_idx.iter().map(|&i| table.items[i].id.clone()).collect(),
    };
    let report = TrainReport {
        classes: table.classes.clone(),
        train_prompts: train_idx.len(),
        test_prompts: test_idx.len(),
        features: names.len(),
        pca_explained_variance: m.pca.explained_variance_ratio.clone(),
        folds: fold_results,
        cv_log_loss,
        rounds,
        quality_target: cfg.quality_target,
        cost_weight,
        cost_curve: curve,
        params: params(rounds as u32, cfg.seed, cfg.threads, false),
        training_data_sha256: table.data_sha256.clone(),
    };
    write_model_dir(&cfg.out_dir, &m.booster, &meta, &split, &report)?;
    Ok(TrainOutcome { meta, report, split })
}

/// Write into a temporary directory beside `dir`, then rename each file into place, meta.json last,
/// so a watching router never loads a half-written file.
fn write_model_dir(
    dir: &Path,
    booster: &Booster,
    meta: &RouterModelMeta,
    split: &Split,
    report: &TrainReport,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    booster
        .save_file(&tmp.join(MODEL_FILE).to_string_lossy())
        .map_err(|e| anyhow::anyhow!("saving the LightGBM model: {e}"))?;
    std::fs::write(tmp.join(SPLIT_FILE), serde_json::to_vec_pretty(split)?)?;
    std::fs::write(tmp.join(TRAIN_REPORT_FILE), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(tmp.join(META_FILE), serde_json::to_vec_pretty(meta)?)?;
    for f in [MODEL_FILE, SPLIT_FILE, TRAIN_REPORT_FILE, META_FILE] {
        std::fs::rename(tmp.join(f), dir.join(f)).with_context(|| format!("moving {f} into {}", dir.display()))?;
    }
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, family: &str, q: &[f64], l: &[f64]) -> Item {
        Item {
            id: id.into(),
            category: "math".into(),
            family: family.into(),
            prompt: "p".into(),
            quality: q.to_vec(),
            latency_ms: l.to_vec(),
        }
    }

    #[test]
    fn folds_hold_whole_families() {
        let fams = ["a", "a", "a", "b", "b", "c", "d", "d", "e"];
        let table = Table {
            classes: vec!["s".into(), "l".into()],
            items: fams.iter().enumerate().map(|(i, f)| item(&i.to_string(), f, &[0.0, 1.0], &[1.0, 2.0])).collect(),
            data_sha256: String::new(),
        };
        let idx: Vec<usize> = (0..fams.len()).collect();
        let folds = family_folds(&table, &idx, 3);
        assert_eq!(folds.len(), 3);
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, idx, "every prompt in exactly one fold");
        for f in &folds {
            for g in &folds {
                if f != g {
                    let fa: Vec<&str> = f.iter().map(|&i| fams[i]).collect();
                    assert!(g.iter().all(|&i| !fa.contains(&fams[i])), "a family split across folds: {folds:?}");
                }
            }
        }
    }

    #[test]
    fn the_default_is_the_cheapest_weight_that_keeps_the_target() {
        // The small model answers the first prompt as well as the large one, not the second.
        let a = item("a", "x", &[1.0, 1.0], &[100.0, 1000.0]);
        let b = item("b", "x", &[0.0, 1.0], &[100.0, 1000.0]);
        let items = vec![&a, &b];
        // Predictions that know it.
        let pred = vec![vec![0.9, 0.95], vec![0.1, 0.9]];
        let curve = cost_curve(&items, &pred, &[100.0, 1000.0]);
        let w = calibrate(&curve, 0.95);
        let at = curve.iter().find(|p| p.cost_weight == w).unwrap();
        assert!(at.quality_vs_largest >= 0.95 && at.latency_vs_largest < 0.6, "{at:?}");
        // A higher weight sends the second prompt to the small model too and loses quality.
        assert!(curve.iter().filter(|p| p.cost_weight > w).all(|p| p.quality_vs_largest < 0.95), "{curve:?}");
        assert_eq!(calibrate(&curve, 2.0), 0.0, "an unreachable target keeps the weight at 0");
    }
}
