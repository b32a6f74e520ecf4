//! What every request shares, and what one request is.
//!
//! [`Engine`] owns the weights, tokenizer, chat template and device. A request runs as a [`Job`]
//! in the batch ([`crate::batch`]), which sends each decoded piece as an [`Event`]; a
//! [`StopMatcher`] cuts the text at the request's stop strings.
use crate::chat::ChatTemplate;
use crate::metrics::Metrics;
use crate::model::{Arch, Weights};
use crate::sampling::SamplingParams;
use crate::tokenizer::GgufTokenizer;
use anyhow::Result;
use candle_core::Device;
use polyllm_common::wire::DoneStats;
use std::sync::Arc;
use std::time::Instant;

/// What every request shares.
pub struct Engine {
    pub weights: Weights,
    pub tokenizer: Arc<GgufTokenizer>,
    pub template: Option<ChatTemplate>,
    pub device: Device,
    pub arch: Arch,
    /// Largest prompt plus completion, in tokens.
    pub context: usize,
    pub model_id: String,
    pub model_name: String,
    pub metrics: Arc<Metrics>,
    /// Most prompt tokens per prefill forward pass; between passes a gone client is noticed.
    pub prefill_chunk: usize,
}

/// One validated request, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// When the request arrived: TTFT and latency count from here, queueing included.
    pub received: Instant,
}

/// What a running job reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(String),
    Done(DoneStats),
    Error(String),
}

pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Holds back text that might be the start of a stop string, and cuts at the first stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Adds `piece`; returns the text that is safe to emit and whether a stop string was hit
    /// (the stop string and anything after it are never emitted).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (piece.to_string(), false);
        }
        self.pending.push_str(piece);
        if let Some(i) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Whatever was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

impl Engine {
    pub fn device_name(&self) -> &'static str {
        device_name(&self.device)
    }

    /// One short greedy generation, so the first real request does not pay for lazy set-up.
    pub fn warm_up(&self) -> Result<()> {
        let ids = self.tokenizer.encode("Hello", self.tokenizer.add_bos_default())?;
        let mut s = self.weights.session(ids.len() + 2);
        let logits = s.forward(&ids, 0, &self.device)?;
        let next = logits.argmax(0)?.to_scalar::<u32>()?;
        s.forward(&[next], ids.len(), &self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            if hit {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".to_string(), true));
    }

    #[test]
    fn stop_matcher_cases() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".to_string(), true));
        assert_eq!(run(&["END"], &["hello E", "N", "x"]), ("hello ENx".to_string(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".to_string(), true));
        assert_eq!(run(&["x", "yz"], &["ay", "zx"]), ("a".to_string(), true));
    }

    #[test]
    fn held_back_text_is_released_when_it_cannot_be_a_stop() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abST"), ("ab".to_string(), false));
        assert_eq!(m.push("x"), ("STx".to_string(), false));
    }
}
