//! The load-test prompt set (`datasets/prompts/loadtest.jsonl`, compiled in) and the seeded draw.
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The prompt set shipped with the repository, compiled into the binary.
pub const BUILTIN: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/prompts/loadtest.jsonl"));

/// One line of the prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    /// `short`, `medium` or `long`.
    pub category: String,
    pub prompt: String,
}

/// Parses JSONL (blank lines and `#` lines are skipped).
pub fn parse(text: &str) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let p: Prompt = serde_json::from_str(l).with_context(|| format!("prompt set line {}", i + 1))?;
        out.push(p);
    }
    Ok(out)
}

/// The built-in set, or the file given.
pub fn load(path: Option<&Path>) -> Result<Vec<Prompt>> {
    match path {
        None => parse(BUILTIN),
        Some(p) => parse(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
    }
}

/// Draws the prompts of one run, reproducibly from `seed`.
#[derive(Debug, Clone)]
pub struct Draw {
    pool: Vec<Prompt>,
    rng: StdRng,
}

impl Draw {
    /// The prompts of `workload` (`short|medium|long`, or `mixed` for all of them), shuffled with
    /// `seed`; with `repeat = Some(k)` only the first `k` of the shuffled pool are drawn from, so the
    /// same prompts recur (cache-hit runs).
    pub fn new(all: &[Prompt], workload: &str, seed: u64, repeat: Option<usize>) -> Result<Draw> {
        let mut pool: Vec<Prompt> =
            all.iter().filter(|p| workload == "mixed" || p.category == workload).cloned().collect();
        if pool.is_empty() {
            bail!("the prompt set has no prompt of category {workload:?}");
        }
        let mut rng = StdRng::seed_from_u64(seed);
        pool.shuffle(&mut rng);
        if let Some(k) = repeat {
            pool.truncate(k.max(1));
        }
        Ok(Draw { pool, rng })
    }

    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// The next prompt: uniform over the pool.
    pub fn next_prompt(&mut self) -> Prompt {
        let i = self.rng.random_range(0..self.pool.len());
        self.pool[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_set_is_valid_and_bucketed() {
        let all = parse(BUILTIN).unwrap();
        assert!(all.len() >= 60, "{} prompts", all.len());
        let mut ids = std::collections::HashSet::new();
        for p in &all {
            assert!(ids.insert(p.id.clone()), "duplicate id {}", p.id);
            assert!(["short", "medium", "long"].contains(&p.category.as_str()), "{}", p.category);
            let words = p.prompt.split_whitespace().count();
            match p.category.as_str() {
                // < 30 tokens: a word is at least one token, so stay well under.
                "short" => assert!(words <= 20, "{} has {words} words", p.id),
                "medium" => assert!((30..=250).contains(&words), "{} has {words} words", p.id),
                _ => assert!(words > 250 || p.prompt.lines().count() >= 100, "{} is not long", p.id),
            }
        }
        for c in ["short", "medium", "long"] {
            assert!(all.iter().filter(|p| p.category == c).count() >= 8, "too few {c}");
        }
    }

    #[test]
    fn draw_is_reproducible_and_repeat_limits_the_pool() {
        let all = parse(BUILTIN).unwrap();
        let a: Vec<String> = {
            let mut d = Draw::new(&all, "short", 7, None).unwrap();
            (0..20).map(|_| d.next_prompt().id).collect()
        };
        let mut d = Draw::new(&all, "short", 7, None).unwrap();
        let b: Vec<String> = (0..20).map(|_| d.next_prompt().id).collect();
        assert_eq!(a, b);
        let mut d = Draw::new(&all, "medium", 7, Some(2)).unwrap();
        let ids: std::collections::HashSet<String> = (0..50).map(|_| d.next_prompt().id).collect();
        assert!(ids.len() <= 2);
        assert!(Draw::new(&all, "nope", 1, None).is_err());
    }
}
