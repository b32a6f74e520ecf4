//! The training table: prompts joined with every model's answer and its score, one [`Item`] per
//! prompt that every model answered, with per-model quality and latency, and the label rule
//! (best quality minus a latency penalty) that `train` learns and `evaluate` checks against.
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use polyllm_common::catalog::model_params;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collect::ResponseRow;
use crate::dataset::PromptRecord;

/// One scored answer: a line of the scores file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub prompt_id: String,
    pub model: String,
    pub backend: String,
    /// In [0, 1].
    pub quality: f64,
    /// Which scorer produced `quality` (numeric, exact, python_tests, humaneval, embedding_similarity).
    pub scorer: String,
    #[serde(default)]
    pub detail: String,
    pub latency_ms: f64,
    pub completion_tokens: u32,
}

pub fn read_scores(path: &Path) -> Result<Vec<ScoreRow>> {
    let f =
        std::fs::File::open(path).with_context(|| format!("opening {} (run `trainer score` first)", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    Ok(rows)
}

pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for r in rows {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One prompt with every class's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub category: String,
    /// The template family ([`crate::dataset::PromptRecord::family`], or the category).
    pub family: String,
    pub prompt: String,
    /// Per class (same order as [`Table::classes`]).
    pub quality: Vec<f64>,
    pub latency_ms: Vec<f64>,
}

impl Item {
    /// Latency over the slowest model's latency for this prompt, in [0, 1].
    pub fn norm_latency(&self) -> Vec<f64> {
        let max = self.latency_ms.iter().copied().fold(0.0, f64::max).max(1e-9);
        self.latency_ms.iter().map(|l| l / max).collect()
    }

    /// quality − w · normalized latency, per class.
    pub fn utility(&self, w: f64) -> Vec<f64> {
        self.quality.iter().zip(self.norm_latency()).map(|(q, l)| q - w * l).collect()
    }

    /// The label: the class with the highest utility; ties go to the faster model.
    pub fn label(&self, w: f64) -> usize {
        let u = self.utility(w);
        let mut best = 0;
        for i in 1..u.len() {
            if u[i] > u[best] + 1e-12 || ((u[i] - u[best]).abs() <= 1e-12 && self.latency_ms[i] < self.latency_ms[best])
            {
                best = i;
            }
        }
        best
    }
}

/// Every prompt that all classes answered and were scored on.
#[derive(Debug, Clone)]
pub struct Table {
    /// Model names, smallest first (the last is the largest: the fallback).
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    /// SHA-256 over the joined rows, identifying the training data.
    pub data_sha256: String,
}

/// Classes sorted by parameter count (names without a size last, by name).
pub fn order_classes(mut models: Vec<String>) -> Vec<String> {
    models.sort_by(|a, b| {
        let (pa, pb) = (model_params(a).unwrap_or(f64::INFINITY), model_params(b).unwrap_or(f64::INFINITY));
        pa.total_cmp(&pb).then(a.cmp(b))
    });
    models.dedup();
    models
}

impl Table {
    /// Join. Several answers of one model to one prompt (router logs) are averaged (quality) and
    /// their median latency taken.
    pub fn build(prompts: &[PromptRecord], scores: &[ScoreRow]) -> Result<Table> {
        let classes = order_classes(scores.iter().map(|s| s.model.clone()).collect());
        if classes.len() < 2 {
            bail!("the scores name {} model(s); routing needs at least two", classes.len());
        }
        let mut by: HashMap<(&str, &str), Vec<&ScoreRow>> = HashMap::new();
        for s in scores {
            by.entry((s.prompt_id.as_str(), s.model.as_str())).or_default().push(s);
        }
        let mut hasher = Sha256::new();
        let mut items = Vec::new();
        for p in prompts {
            let mut quality = Vec::with_capacity(classes.len());
            let mut latency = Vec::with_capacity(classes.len());
            for c in &classes {
                let Some(rows) = by.get(&(p.id.as_str(), c.as_str())) else { break };
                quality.push(rows.iter().map(|r| r.quality).sum::<f64>() / rows.len() as f64);
                let mut l: Vec<f64> = rows.iter().map(|r| r.latency_ms).collect();
                l.sort_by(f64::total_cmp);
                latency.push(l[l.len() / 2]);
            }
            if quality.len() != classes.len() {
                continue;
            }
            hasher.update(p.id.as_bytes());
            for (q, l) in quality.iter().zip(&latency) {
                hasher.update(q.to_le_bytes());
                hasher.update(l.to_le_bytes());
            }
            items.push(Item {
                id: p.id.clone(),
                category: p.category.as_str().to_string(),
                family: p.family.clone().unwrap_or_else(|| p.category.as_str().to_string()),
                prompt: p.prompt.clone(),
                quality,
                latency_ms: latency,
            });
        }
        if items.is_empty() {
            bail!("no prompt was answered and scored by every model ({})", classes.join(", "));
        }
        Ok(Table { classes, items, data_sha256: hex::encode(hasher.finalize()) })
    }

    /// Deterministic stratified split: per category, ids ordered by SHA-256(seed, id); the first
    /// `test_share` of each category is the test split. Returns (train, test) item indices.
    pub fn split(&self, test_share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, it) in self.items.iter().enumerate() {
            by_cat.entry(&it.category).or_default().push(i);
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (_, mut idx) in by_cat {
            idx.sort_by_key(|&i| {
                let mut h = Sha256::new();
                h.update(seed.to_le_bytes());
                h.update(self.items[i].id.as_bytes());
                h.finalize()
            });
            let n_test = ((idx.len() as f64) * test_share).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (train, test)
    }
}

/// Score every response with a known prompt; responses to prompts outside the set are left out.
pub fn join_responses<'a>(
    prompts: &'a [PromptRecord],
    responses: &'a [ResponseRow],
) -> Vec<(&'a PromptRecord, &'a ResponseRow)> {
    let by_id: HashMap<&str, &PromptRecord> = prompts.iter().map(|p| (p.id.as_str(), p)).collect();
    responses.iter().filter_map(|r| by_id.get(r.prompt_id.as_str()).map(|p| (*p, r))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &[f64], l: &[f64]) -> Item {
        Item {
            id: "x".into(),
            category: "math".into(),
            family: "add".into(),
            prompt: "p".into(),
            quality: q.to_vec(),
            latency_ms: l.to_vec(),
        }
    }

    #[test]
    fn label_trades_quality_for_latency() {
        // Both right: the faster wins.
        assert_eq!(item(&[1.0, 1.0, 1.0], &[100.0, 300.0, 1000.0]).label(0.3), 0);
        // Only the largest right: it wins despite its latency.
        assert_eq!(item(&[0.0, 0.0, 1.0], &[100.0, 300.0, 1000.0]).label(0.3), 2);
        // A small quality edge does not pay for 10x latency at w = 0.3 ...
        assert_eq!(item(&[0.8, 0.8, 0.9], &[100.0, 300.0, 1000.0]).label(0.3), 0);
        // ... but does at w = 0.
        assert_eq!(item(&[0.8, 0.8, 0.9], &[100.0, 300.0, 1000.0]).label(0.0), 2);
        // All wrong: the fastest.
        assert_eq!(item(&[0.0, 0.0, 0.0], &[500.0, 300.0, 1000.0]).label(0.3), 1);
    }

    #[test]
    fn classes_are_ordered_by_size() {
        let c = order_classes(vec![
            "qwen2.5-coder-1.5b-instruct".into(),
            "gemma-3-270m".into(),
            "qwen2.5-coder-0.5b-instruct".into(),
            "gemma-3-270m".into(),
        ]);
        assert_eq!(c, ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]);
    }
}
