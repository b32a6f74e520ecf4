//! Continuous batching: one thread runs every admitted request, stepping all of them together.
//!
//! Each step (i) drops the sequences whose client left, (ii) reads at most
//! [`Engine::prefill_chunk`] prompt tokens in all, oldest prompt first (several short prompts join
//! in one step; a long one is read a chunk per step), and (iii)
//! decodes one token for every sequence past its prompt, with one pass over each weight matrix for
//! all of them ([`Session::forward_batch`]); each sequence keeps its own KV cache, sampler, stop
//! strings and `max_tokens`. Sequences join between steps as the scheduler admits them and leave
//! when they finish, so a long prompt holds the running streams up by at most one chunk per token.
//! A sequence's outputs are bit for bit those of the same request run alone.
//!
//! Admission stays with [`crate::scheduler`]: its slots are the batch's places, and a sequence's
//! [`Slot`] is released when the sequence leaves the batch.
use crate::engine::{Engine, Event, Job, StopMatcher};
use crate::model::Session;
use crate::scheduler::Slot;
use crate::tokenizer::TokenStream;
use anyhow::Result;
use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;
use polyllm_common::wire::{DoneStats, FinishReason};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A request admitted to the batch: the job, where its events go, and its slot. The events'
/// channel is unbounded so that a slow reader never stalls the batch thread (and with it every
/// other stream); what it can hold is bounded by the request's `max_tokens`.
struct Admitted {
    job: Job,
    events: mpsc::UnboundedSender<Event>,
    slot: Slot,
}

/// The handle of the batch thread; requests are handed to it with [`Batcher::submit`]. The thread
/// ends when the handle is dropped and its last sequence has finished.
pub struct Batcher {
    tx: std_mpsc::Sender<Admitted>,
}

impl Batcher {
    /// Starts the batch thread over `engine`.
    pub fn start(engine: Arc<Engine>) -> Batcher {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("batch".into())
            .spawn(move || Batch { engine, rx, seqs: Vec::new() }.run())
            .expect("cannot start the batch thread");
        Batcher { tx }
    }

    /// Adds `job` to the batch at its next step; its events go to `events`, and `slot` is held
    /// until it leaves the batch.
    pub fn submit(&self, job: Job, events: mpsc::UnboundedSender<Event>, slot: Slot) {
        if let Err(std_mpsc::SendError(a)) = self.tx.send(Admitted { job, events, slot }) {
            let _ = a.events.send(Event::Error("the model service is shutting down".into()));
        }
    }
}

/// What a sequence does after a step.
enum Next {
    /// Decode `token` at the next step.
    Decode(u32),
    /// Finished, or its client left; it leaves the batch.
    Leave,
}

/// One request in the batch.
struct Seq {
    job: Job,
    events: mpsc::UnboundedSender<Event>,
    _slot: Slot,
    session: Session,
    sampler: LogitsProcessor,
    stream: TokenStream,
    stops: StopMatcher,
    /// Prompt tokens already run.
    prefilled: usize,
    completion: usize,
    first_token_at: Option<Instant>,
    /// The logits to sample the next token from, once the prompt has run.
    logits: Option<Tensor>,
}

struct Batch {
    engine: Arc<Engine>,
    rx: std_mpsc::Receiver<Admitted>,
    seqs: Vec<Seq>,
}

impl Batch {
    fn run(mut self) {
        loop {
            if self.seqs.is_empty() {
                match self.rx.recv() {
                    Ok(a) => self.admit(a),
                    Err(_) => return,
                }
            }
            while let Ok(a) = self.rx.try_recv() {
                self.admit(a);
            }
            self.step();
            self.engine.metrics.batch_occupancy.set(self.seqs.len() as i64);
        }
    }

    fn admit(&mut self, a: Admitted) {
        let e = &self.engine;
        let total = a.job.prompt_ids.len() + a.job.max_tokens;
        e.metrics.prompt_tokens.inc_by(a.job.prompt_ids.len() as u64);
        self.seqs.push(Seq {
            session: e.weights.session(total),
            sampler: a.job.sampling.processor(),
            stream: TokenStream::new(e.tokenizer.clone()),
            stops: StopMatcher::new(a.job.stop.clone()),
            prefilled: 0,
            completion: 0,
            first_token_at: None,
            logits: None,
            job: a.job,
            events: a.events,
            _slot: a.slot,
        });
        self.engine.metrics.batch_occupancy.set(self.seqs.len() as i64);
    }

    /// One step of every sequence; see the module's doc.
    fn step(&mut self) {
        let e = self.engine.clone();
        // Clients that left: their sequences leave now.
        self.seqs.retain(|s| {
            let gone = s.events.is_closed();
            if gone {
                e.metrics.request_done("cancelled");
            }
            !gone
        });
        // Prompts, oldest first, at most one chunk's worth of tokens in all: several short
        // prompts join in one step, a long one is read a chunk per step.
        let mut budget = e.prefill_chunk.max(1);
        let mut i = 0;
        while budget > 0 && i < self.seqs.len() {
            let s = &mut self.seqs[i];
            if s.logits.is_some() {
                i += 1;
                continue;
            }
            let end = (s.prefilled + budget).min(s.job.prompt_ids.len());
            match s.session.forward(&s.job.prompt_ids[s.prefilled..end], s.prefilled, &e.device) {
                Ok(logits) => {
                    budget -= end - s.prefilled;
                    s.prefilled = end;
                    if end == s.job.prompt_ids.len() {
                        s.logits = Some(logits);
                    }
                    i += 1;
                }
                Err(err) => self.seqs.remove(i).report_error(&e, &err),
            }
        }
        // Sample each sequence that has logits; those that go on decode together.
        let mut decoding: Vec<(usize, u32)> = Vec::new();
        let mut leaving = Vec::new();
        for (i, s) in self.seqs.iter_mut().enumerate() {
            let Some(logits) = s.logits.take() else { continue };
            match s.next(&e, &logits) {
                Ok(Next::Decode(token)) => decoding.push((i, token)),
                Ok(Next::Leave) => leaving.push(i),
                Err(err) => {
                    s.report_error(&e, &err);
                    leaving.push(i);
                }
            }
        }
        if !decoding.is_empty() {
            e.metrics.decode_batch.observe(decoding.len() as f64);
            let tokens: Vec<u32> = decoding.iter().map(|&(_, t)| t).collect();
            let positions: Vec<usize> = decoding
                .iter()
                .map(|&(i, _)| self.seqs[i].job.prompt_ids.len() + self.seqs[i].completion - 1)
                .collect();
            let mut sessions: Vec<&mut Session> = Vec::with_capacity(decoding.len());
            let mut want = decoding.iter().map(|&(i, _)| i).peekable();
            for (i, s) in self.seqs.iter_mut().enumerate() {
                if want.peek() == Some(&i) {
                    want.next();
                    sessions.push(&mut s.session);
                }
            }
            match Session::forward_batch(&mut sessions, &tokens, &positions, &e.device) {
                Ok(logits) => {
                    for (row, &(i, _)) in decoding.iter().enumerate() {
                        match logits.get(row) {
                            Ok(l) => self.seqs[i].logits = Some(l),
                            Err(err) => {
                                self.seqs[i].report_error(&e, &err.into());
                                leaving.push(i);
                            }
                        }
                    }
                }
                Err(err) => {
                    for &(i, _) in &decoding {
                        self.seqs[i].report_error(&e, &err);
                        leaving.push(i);
                    }
                }
            }
        }
        leaving.sort_unstable();
        leaving.dedup();
        for i in leaving.into_iter().rev() {
            self.seqs.remove(i);
        }
    }
}

impl Seq {
    /// Samples the next token from `logits` and sends its text; says whether the sequence goes on.
    fn next(&mut self, e: &Engine, logits: &Tensor) -> Result<Next> {
        let next = self.sampler.sample(logits)?;
        if self.first_token_at.is_none() {
            let now = Instant::now();
            self.first_token_at = Some(now);
            e.metrics.ttft.observe((now - self.job.received).as_secs_f64());
        }
        if e.tokenizer.stop_ids().contains(&next) {
            return self.finish(e, FinishReason::Stop);
        }
        self.completion += 1;
        e.metrics.tokens_generated.inc();
        if let Some(piece) = self.stream.push(next)? {
            let (text, hit) = self.stops.push(&piece);
            if !self.send(text) {
                e.metrics.request_done("cancelled");
                return Ok(Next::Leave);
            }
            if hit {
                return self.done(e, FinishReason::StopSequence);
            }
        } else if self.events.is_closed() {
            e.metrics.request_done("cancelled");
            return Ok(Next::Leave);
        }
        if self.completion >= self.job.max_tokens {
            return self.finish(e, FinishReason::Length);
        }
        Ok(Next::Decode(next))
    }

    /// Sends `text` unless it is empty; false when the client is gone.
    fn send(&self, text: String) -> bool {
        text.is_empty() || self.events.send(Event::Token(text)).is_ok()
    }

    /// Flushes the text held back by the detokenizer and the stop matcher, then reports.
    fn finish(&mut self, e: &Engine, mut finish: FinishReason) -> Result<Next> {
        let rest = self.stream.finish()?.unwrap_or_default();
        let (text, hit) = self.stops.push(&rest);
        let rest = if hit {
            finish = FinishReason::StopSequence;
            text
        } else {
            text + &self.stops.finish()
        };
        if !self.send(rest) {
            e.metrics.request_done("cancelled");
            return Ok(Next::Leave);
        }
        self.done(e, finish)
    }

    /// Sends the final statistics.
    fn done(&mut self, e: &Engine, finish: FinishReason) -> Result<Next> {
        let end = Instant::now();
        let latency = (end - self.job.received).as_secs_f64();
        e.metrics.generation_latency.observe(latency);
        let completion = self.completion;
        let ttft = self.first_token_at.map(|t| (t - self.job.received).as_secs_f64()).unwrap_or(latency);
        let tokens_per_second = match self.first_token_at {
            Some(t) if completion > 1 && end > t => (completion - 1) as f64 / (end - t).as_secs_f64(),
            _ if latency > 0.0 => completion as f64 / latency,
            _ => 0.0,
        };
        let stats = DoneStats {
            model_id: e.model_id.clone(),
            model: e.model_name.clone(),
            device: e.device_name().to_string(),
            prompt_tokens: self.job.prompt_ids.len() as u32,
            completion_tokens: completion as u32,
            finish_reason: finish,
            ttft_ms: ttft * 1e3,
            latency_ms: latency * 1e3,
            tokens_per_second,
        };
        let status = if self.events.send(Event::Done(stats)).is_ok() { "ok" } else { "cancelled" };
        e.metrics.request_done(status);
        Ok(Next::Leave)
    }

    fn report_error(&self, e: &Engine, err: &anyhow::Error) {
        tracing::error!(model_id = %e.model_id, error = %format!("{err:#}"), "generation failed");
        let _ = self.events.send(Event::Error(format!("{err:#}")));
        e.metrics.request_done("error");
    }
}
