//! The model and the generation loop of one request.
//!
//! [`Engine`] owns what every request shares (weights, tokenizer, chat template, device). A request
//! runs as a [`Job`] on a blocking thread: prefill the prompt in chunks of at most
//! [`Engine::prefill_chunk`] tokens, then decode token by token, sending each decoded piece as an
//! [`Event`] down a channel. When the receiver is gone (the client disconnected) the loop stops: it
//! looks between prefill chunks and after every token, so a disconnect costs at most one more chunk
//! or token, and the request's slot and KV cache are freed with the thread.
use crate::chat::ChatTemplate;
use crate::metrics::Metrics;
use crate::model::{Arch, Session, Weights};
use crate::sampling::SamplingParams;
use crate::scheduler::Slot;
use crate::tokenizer::{GgufTokenizer, TokenStream};
use anyhow::Result;
use candle_core::Device;
use polyllm_common::wire::{DoneStats, FinishReason};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

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

    /// Runs `job` to the end, sending events to `tx`; blocks the calling thread. `slot` is held
    /// until this returns.
    pub fn run(&self, job: Job, tx: mpsc::Sender<Event>, slot: Slot) {
        let outcome = self.generate(&job, &tx);
        let status = match &outcome {
            Ok(true) => "ok",
            Ok(false) => "cancelled",
            Err(e) => {
                tracing::error!(model_id = %self.model_id, error = %format!("{e:#}"), "generation failed");
                let _ = tx.blocking_send(Event::Error(format!("{e:#}")));
                "error"
            }
        };
        self.metrics.request_done(status);
        drop(slot);
    }

    /// Returns Ok(false) when the client went away.
    fn generate(&self, job: &Job, tx: &mpsc::Sender<Event>) -> Result<bool> {
        let total = job.prompt_ids.len() + job.max_tokens;
        let mut session: Session = self.weights.session(total);
        let mut sampler = job.sampling.processor();
        let mut stream = TokenStream::new(self.tokenizer.clone());
        let mut stops = StopMatcher::new(job.stop.clone());
        let stop_ids = self.tokenizer.stop_ids();
        self.metrics.prompt_tokens.inc_by(job.prompt_ids.len() as u64);

        let Some(mut logits) = self.prefill(&mut session, &job.prompt_ids, tx)? else {
            return Ok(false);
        };
        let mut pos = job.prompt_ids.len();
        let mut completion = 0usize;
        let mut first_token_at: Option<Instant> = None;
        let mut finish = FinishReason::Length;
        let send = |text: String| -> bool { text.is_empty() || tx.blocking_send(Event::Token(text)).is_ok() };

        while completion < job.max_tokens {
            let next = sampler.sample(&logits)?;
            if first_token_at.is_none() {
                let now = Instant::now();
                first_token_at = Some(now);
                self.metrics.ttft.observe((now - job.received).as_secs_f64());
            }
            if stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            completion += 1;
            self.metrics.tokens_generated.inc();
            if let Some(piece) = stream.push(next)? {
                let (text, hit) = stops.push(&piece);
                if !send(text) {
                    return Ok(false);
                }
                if hit {
                    finish = FinishReason::StopSequence;
                    break;
                }
            } else if tx.is_closed() {
                return Ok(false);
            }
            if completion == job.max_tokens {
                break;
            }
            logits = session.forward(&[next], pos, &self.device)?;
            pos += 1;
        }
        if finish != FinishReason::StopSequence {
            let mut rest = stream.finish()?.unwrap_or_default();
            let (text, hit) = stops.push(&rest);
            rest = if hit {
                finish = FinishReason::StopSequence;
                text
            } else {
                text + &stops.finish()
            };
            if !send(rest) {
                return Ok(false);
            }
        }

        let end = Instant::now();
        let latency = (end - job.received).as_secs_f64();
        self.metrics.generation_latency.observe(latency);
        let ttft = first_token_at.map(|t| (t - job.received).as_secs_f64()).unwrap_or(latency);
        let tokens_per_second = match first_token_at {
            Some(t) if completion > 1 && end > t => (completion - 1) as f64 / (end - t).as_secs_f64(),
            _ if latency > 0.0 => completion as f64 / latency,
            _ => 0.0,
        };
        let stats = DoneStats {
            model_id: self.model_id.clone(),
            model: self.model_name.clone(),
            device: self.device_name().to_string(),
            prompt_tokens: job.prompt_ids.len() as u32,
            completion_tokens: completion as u32,
            finish_reason: finish,
            ttft_ms: ttft * 1e3,
            latency_ms: latency * 1e3,
            tokens_per_second,
        };
        Ok(tx.blocking_send(Event::Done(stats)).is_ok())
    }

    /// Runs the prompt through `session` in chunks; the logits of its last position, or `None` when
    /// the client left between chunks.
    fn prefill(
        &self,
        session: &mut Session,
        prompt: &[u32],
        tx: &mpsc::Sender<Event>,
    ) -> Result<Option<candle_core::Tensor>> {
        anyhow::ensure!(!prompt.is_empty(), "empty prompt");
        let chunk = self.prefill_chunk.max(1);
        let mut logits = None;
        for (i, part) in prompt.chunks(chunk).enumerate() {
            if tx.is_closed() {
                return Ok(None);
            }
            logits = Some(session.forward(part, i * chunk, &self.device)?);
        }
        Ok(logits)
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
