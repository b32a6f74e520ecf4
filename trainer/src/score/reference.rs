//! The `reference` scorer (reported as `"embedding_similarity"`): cosine similarity of the reply's
//! and the reference answer's embeddings, from the caller's similarity function, mapped to a
//! quality by [`similarity_to_quality`].

use anyhow::bail;

use super::{Score, ScoreContext};

pub const SCORER: &str = "embedding_similarity";

/// Cosine similarity below this is quality 0.
pub const COS_FLOOR: f64 = 0.3;
/// Cosine similarity at or above this is quality 1.
pub const COS_CEIL: f64 = 0.9;

/// The monotone map from cosine similarity to quality: `clamp((cos - 0.3) / 0.6, 0, 1)`
/// (unrelated sentences of MiniLM sit around 0–0.3, paraphrases above ~0.8). NaN maps to 0.
pub fn similarity_to_quality(cos: f64) -> f64 {
    if cos.is_nan() {
        return 0.0;
    }
    ((cos - COS_FLOOR) / (COS_CEIL - COS_FLOOR)).clamp(0.0, 1.0)
}

/// Score a reply by its similarity to `reference`. An empty reply is quality 0 without embedding;
/// a context without a similarity function is an error.
pub fn score(answer: &str, reference: &str, ctx: &ScoreContext) -> anyhow::Result<Score> {
    let Some(sim) = ctx.similarity else {
        bail!("a reference checker needs a similarity function in the ScoreContext");
    };
    if answer.trim().is_empty() {
        return Ok(Score { quality: 0.0, scorer: SCORER, detail: "empty answer".into() });
    }
    let cos = sim(answer.trim(), reference)?;
    Ok(Score { quality: similarity_to_quality(cos), scorer: SCORER, detail: format!("cosine {cos:.4}") })
}
