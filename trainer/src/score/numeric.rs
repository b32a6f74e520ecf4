//! The `numeric` scorer: the reply's number (see [`super::extract::extract_number`]) against the
//! expected number within the checker's absolute tolerance. Quality is 1 or 0.

use anyhow::anyhow;

use super::extract::{extract_number, numbers_match, parse_number};
use super::Score;

pub const SCORER: &str = "numeric";

/// Score a reply against `expected` (a number as text) with absolute `tolerance`.
/// Errors only when `expected` itself is not a number (a dataset bug).
pub fn score(answer: &str, expected: &str, tolerance: f64) -> anyhow::Result<Score> {
    let want = parse_number(expected).ok_or_else(|| anyhow!("numeric checker answer {expected:?} is not a number"))?;
    Ok(match extract_number(answer) {
        None => {
            Score { quality: 0.0, scorer: SCORER, detail: format!("no number in the answer (expected {expected})") }
        }
        Some(got) => {
            let ok = numbers_match(got, want, tolerance);
            Score {
                quality: if ok { 1.0 } else { 0.0 },
                scorer: SCORER,
                detail: format!("extracted {got}, expected {expected}{}", if ok { "" } else { ": wrong" }),
            }
        }
    })
}
