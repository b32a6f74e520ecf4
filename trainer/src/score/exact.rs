//! The `exact` scorer: the reply's short answer equals the expected one after normalization
//! (see [`super::extract::exact_match`]). Quality is 1 or 0.

use crate::dataset::Normalize;

use super::extract::exact_match;
use super::Score;

pub const SCORER: &str = "exact";

/// Score a reply against `expected` under `mode`.
pub fn score(answer: &str, expected: &str, mode: Normalize) -> Score {
    match exact_match(answer, expected, mode) {
        Some(span) => {
            Score { quality: 1.0, scorer: SCORER, detail: format!("matched {:?}", truncate(span.trim(), 80)) }
        }
        None => Score {
            quality: 0.0,
            scorer: SCORER,
            detail: format!("expected {expected:?}, got {:?}", truncate(answer.trim(), 80)),
        },
    }
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}
