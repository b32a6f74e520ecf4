//! `trainer score`: every collected answer to a prompt of the set, through its checker, into the
//! scores file (rewritten whole each run: scoring is deterministic and takes about a minute).
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use polyllm_common::features::Featurizer;

use crate::collect::ResponseRow;
use crate::dataset::{HumanEval, PromptRecord};
use crate::score::{score, ScoreContext};
use crate::table::{join_responses, ScoreRow};

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

/// Score every response whose prompt is in `prompts`. `featurizer` supplies the embedding for
/// reference checkers.
pub fn score_all(
    prompts: &[PromptRecord],
    responses: &[ResponseRow],
    humaneval: &HumanEval,
    featurizer: &Featurizer,
) -> Result<Vec<ScoreRow>> {
    let sim = |answer: &str, reference: &str| -> anyhow::Result<f64> {
        let a = featurizer.embedder().embed(answer)?;
        let r = featurizer.embedder().embed(reference)?;
        Ok(cosine(&a.vector, &r.vector))
    };
    let ctx = ScoreContext::new(humaneval)?.with_similarity(&sim);
    let pairs = join_responses(prompts, responses);
    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("scoring {bar:40} {pos}/{len} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = Vec::with_capacity(pairs.len());
    for (p, r) in pairs {
        let s = score(p, &r.text, &ctx)?;
        out.push(ScoreRow {
            prompt_id: p.id.clone(),
            model: r.model.clone(),
            backend: r.backend.clone(),
            quality: s.quality.clamp(0.0, 1.0),
            scorer: s.scorer.to_string(),
            detail: s.detail,
            latency_ms: r.latency_ms,
            completion_tokens: r.completion_tokens,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
