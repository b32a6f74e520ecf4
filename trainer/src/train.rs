//! `trainer train`: featurize the table's prompts, fit the PCA on the training split, label each
//! prompt (best quality minus a latency penalty), run k-fold cross-validation with early stopping
//! to pick the number of boosting rounds and the confidence threshold, train LightGBM multiclass on
//! the whole training split, and write the router model directory.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lightgbm3::{Booster, Dataset};
use polyllm_common::features::{assemble, feature_names, Embedding, Featurizer, Pca};
use polyllm_common::router_model::{RouterModelMeta, META_FILE, MODEL_FILE};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::table::Table;

/// File names the trainer adds to the model directory.
pub const SPLIT_FILE: &str = "split.json";
pub const TRAIN_REPORT_FILE: &str = "training_report.json";

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub out_dir: PathBuf,
    pub latency_weight: f64,
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
    pub rows: usize,
    pub best_rounds: i32,
    pub accuracy: f64,
    pub log_loss: f64,
}

/// `training_report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub classes: Vec<String>,
    pub label_counts: Vec<usize>,
    pub train_rows: usize,
    pub test_rows: usize,
    pub features: usize,
    pub pca_explained_variance: Vec<f32>,
    pub folds: Vec<FoldResult>,
    pub cv_accuracy: f64,
    pub cv_log_loss: f64,
    pub rounds: i32,
    pub latency_weight: f64,
    pub confidence_threshold: f64,
    /// threshold -> mean out-of-fold utility, the curve the threshold was picked on.
    pub threshold_curve: Vec<(f64, f64)>,
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
pub fn params(classes: usize, rounds: u32, seed: u64, threads: usize, early_stopping: bool) -> serde_json::Value {
    let mut p = json!({
        "objective": "multiclass",
        "num_class": classes,
        "metric": "multi_logloss",
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

/// Class probabilities, one Vec per row.
pub fn predict_rows(b: &Booster, rows: &[Vec<f32>], classes: usize) -> Result<Vec<Vec<f64>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let p = b.predict(&flat, rows[0].len() as i32, true).map_err(|e| anyhow::anyhow!("LightGBM predict: {e}"))?;
    Ok(p.chunks(classes).map(|c| c.to_vec()).collect())
}

pub fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// The router's routing rule ([`polyllm_common::router_model::route`]) with the trainer's
/// fallback, the last class (the largest model), which `train` writes as `fallback_model`.
pub fn route(probs: &[f64], threshold: f64) -> usize {
    polyllm_common::router_model::route(probs, threshold, probs.len() - 1).class
}

/// Feature rows of the items, in table order.
pub fn rows(table: &Table, embeddings: &[Embedding], pca: &Pca) -> Vec<Vec<f32>> {
    table.items.iter().zip(embeddings).map(|(it, e)| assemble(&it.prompt, e.clone(), pca).values).collect()
}

/// Everything `train` produced (also written to `cfg.out_dir`).
pub struct TrainOutcome {
    pub meta: RouterModelMeta,
    pub report: TrainReport,
    pub split: Split,
}

/// Train and write the model directory.
pub fn train(table: &Table, embeddings: &[Embedding], cfg: &TrainConfig) -> Result<TrainOutcome> {
    let k = table.classes.len();
    let w = cfg.latency_weight;
    let (train_idx, test_idx) = table.split(cfg.test_share, cfg.seed);
    if train_idx.len() < cfg.folds.max(2) * 2 {
        bail!("only {} training prompts: too few to train", train_idx.len());
    }
    let train_emb: Vec<Vec<f32>> = train_idx.iter().map(|&i| embeddings[i].vector.clone()).collect();
    let pca = Pca::fit(&train_emb, cfg.pca_dims).context("fitting the PCA")?;
    let names = feature_names(pca.dims());
    let all_rows = rows(table, embeddings, &pca);
    let labels: Vec<f32> = table.items.iter().map(|it| it.label(w) as f32).collect();

    // k-fold cross-validation on the training split, folds by a seeded hash order.
    let mut order = train_idx.clone();
    order.sort_by_key(|&i| {
        let mut h = Sha256::new();
        h.update((cfg.seed ^ 0x5eed).to_le_bytes());
        h.update(table.items[i].id.as_bytes());
        h.finalize()
    });
    let folds = cfg.folds.max(2);
    let mut oof: Vec<Option<Vec<f64>>> = vec![None; table.items.len()];
    let mut fold_results = Vec::new();
    for f in 0..folds {
        let valid: Vec<usize> = order.iter().enumerate().filter(|(j, _)| j % folds == f).map(|(_, &i)| i).collect();
        let fit: Vec<usize> = order.iter().enumerate().filter(|(j, _)| j % folds != f).map(|(_, &i)| i).collect();
        let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<f32>) {
            (idx.iter().map(|&i| all_rows[i].clone()).collect(), idx.iter().map(|&i| labels[i]).collect())
        };
        let (fx, fy) = pick(&fit);
        let (vx, vy) = pick(&valid);
        let dtrain = dataset(&fx, &fy, &names, None)?;
        let dvalid = dataset(&vx, &vy, &names, Some(&dtrain))?;
        let b =
            Booster::train_with_valid(dtrain, Some(dvalid), &params(k, cfg.max_rounds, cfg.seed, cfg.threads, true))
                .map_err(|e| anyhow::anyhow!("LightGBM training (fold {f}): {e}"))?;
        let preds = predict_rows(&b, &vx, k)?;
        let mut correct = 0usize;
        let mut ll = 0.0;
        for (p, &y) in preds.iter().zip(&vy) {
            correct += (argmax(p) == y as usize) as usize;
            ll -= p[y as usize].max(1e-15).ln();
        }
        for (&i, p) in valid.iter().zip(preds) {
            oof[i] = Some(p);
        }
        fold_results.push(FoldResult {
            fold: f,
            rows: valid.len(),
            best_rounds: b.num_iterations(),
            accuracy: correct as f64 / valid.len().max(1) as f64,
            log_loss: ll / valid.len().max(1) as f64,
        });
    }
    let total: usize = fold_results.iter().map(|r| r.rows).sum();
    let cv_accuracy = fold_results.iter().map(|r| r.accuracy * r.rows as f64).sum::<f64>() / total as f64;
    let cv_log_loss = fold_results.iter().map(|r| r.log_loss * r.rows as f64).sum::<f64>() / total as f64;
    let rounds =
        ((fold_results.iter().map(|r| r.best_rounds as f64).sum::<f64>() / folds as f64).round() as i32).max(5);

    // Confidence threshold: the one whose out-of-fold routing has the best mean utility.
    let mut curve = Vec::new();
    for step in 0..=18 {
        let t = if step == 0 { 0.0 } else { 0.3 + 0.035 * (step - 1) as f64 };
        let u: f64 = train_idx
            .iter()
            .filter_map(|&i| oof[i].as_ref().map(|p| table.items[i].utility(w)[route(p, t)]))
            .sum::<f64>()
            / train_idx.len() as f64;
        curve.push((t, u));
    }
    let (threshold, _) =
        curve
            .iter()
            .copied()
            .fold((0.0, f64::NEG_INFINITY), |best, (t, u)| if u > best.1 + 1e-12 { (t, u) } else { best });

    // The final model on the whole training split.
    let (tx, ty): (Vec<Vec<f32>>, Vec<f32>) =
        (train_idx.iter().map(|&i| all_rows[i].clone()).collect(), train_idx.iter().map(|&i| labels[i]).collect());
    let final_params = params(k, rounds as u32, cfg.seed, cfg.threads, false);
    let booster = Booster::train(dataset(&tx, &ty, &names, None)?, &final_params)
        .map_err(|e| anyhow::anyhow!("LightGBM training: {e}"))?;

    let mut label_counts = vec![0usize; k];
    for &i in &train_idx {
        label_counts[labels[i] as usize] += 1;
    }
    let meta = RouterModelMeta {
        version: RouterModelMeta::VERSION,
        feature_names: names.clone(),
        pca: pca.clone(),
        classes: table.classes.clone(),
        fallback_model: table.classes[k - 1].clone(),
        latency_weight: w,
        confidence_threshold: threshold,
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
        label_counts,
        train_rows: train_idx.len(),
        test_rows: test_idx.len(),
        features: names.len(),
        pca_explained_variance: pca.explained_variance_ratio.clone(),
        folds: fold_results,
        cv_accuracy,
        cv_log_loss,
        rounds,
        latency_weight: w,
        confidence_threshold: threshold,
        threshold_curve: curve,
        params: final_params,
        training_data_sha256: table.data_sha256.clone(),
    };
    write_model_dir(&cfg.out_dir, &booster, &meta, &split, &report)?;
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
