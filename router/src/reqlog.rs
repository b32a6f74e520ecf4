//! The response log for the trainer: one JSON line per answered request (request_id, time, prompt,
//! params, model, backend, text, ttft_ms, latency_ms, tokens) in `--response-log-dir`. Records go
//! through a bounded channel to a dedicated writer thread, so the request path never touches the
//! disk; when the writer falls behind, records are dropped and counted. Files rotate by size
//! (`responses-<UTC time>-<pid>-<n>.jsonl`). With `--response-log-no-text` prompt and answer text
//! are left out (their SHA-256 stays, to join with other logs).
use crate::metrics::Metrics;
use bytes::Bytes;
use polyllm_common::wire::FinishReason;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

const QUEUE: usize = 8192;

/// What the relay knows at the end of a request; turned into JSON on the writer thread.
#[derive(Debug, Clone)]
pub struct ResponseRecord {
    pub request_id: String,
    pub time: SystemTime,
    pub prompt: String,
    /// The body sent to the backend: its fields other than the prompt are the params.
    pub upstream_body: Bytes,
    pub model: String,
    pub backend: String,
    pub device: String,
    pub text: String,
    pub ttft_ms: f64,
    pub latency_ms: f64,
    pub backend_latency_ms: f64,
    pub tokens: u32,
    pub prompt_tokens: u32,
    pub finish_reason: FinishReason,
    pub policy: String,
    pub confidence: f64,
}

/// `2026-11-23T15:51:02.123Z` without a date crate (civil-from-days, Howard Hinnant).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl ResponseRecord {
    pub fn to_json(&self, with_text: bool) -> Value {
        let mut params: Map<String, Value> = serde_json::from_slice(&self.upstream_body).unwrap_or_default();
        params.remove("prompt");
        params.remove("stream");
        params.remove("stream_options");
        let messages = params.remove("messages");
        let mut v = Map::new();
        v.insert("request_id".into(), self.request_id.clone().into());
        v.insert("time".into(), rfc3339(self.time).into());
        if with_text {
            v.insert("prompt".into(), self.prompt.clone().into());
            if let Some(m) = messages {
                v.insert("messages".into(), m);
            }
        }
        v.insert("prompt_sha256".into(), sha(&self.prompt).into());
        v.insert("params".into(), Value::Object(params));
        v.insert("model".into(), self.model.clone().into());
        v.insert("backend".into(), self.backend.clone().into());
        v.insert("device".into(), self.device.clone().into());
        if with_text {
            v.insert("text".into(), self.text.clone().into());
        }
        v.insert("text_sha256".into(), sha(&self.text).into());
        v.insert("ttft_ms".into(), self.ttft_ms.into());
        v.insert("latency_ms".into(), self.latency_ms.into());
        v.insert("backend_latency_ms".into(), self.backend_latency_ms.into());
        v.insert("tokens".into(), self.tokens.into());
        v.insert("prompt_tokens".into(), self.prompt_tokens.into());
        v.insert("finish_reason".into(), serde_json::to_value(self.finish_reason).unwrap_or(Value::Null));
        v.insert("policy".into(), self.policy.clone().into());
        v.insert("confidence".into(), self.confidence.into());
        Value::Object(v)
    }
}

/// Handle to the writer thread.
pub struct ReqLog {
    tx: Mutex<Option<SyncSender<ResponseRecord>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl ReqLog {
    pub fn start(dir: &Path, max_bytes: u64, with_text: bool, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let mut writer =
            Writer { dir: dir.to_path_buf(), max_bytes: max_bytes.max(1024), file: None, written: 0, seq: 0 };
        writer.rotate()?;
        let thread =
            std::thread::Builder::new().name("response-log".into()).spawn(move || writer.run(rx, with_text))?;
        Ok(ReqLog { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), metrics })
    }

    /// Queues a record; never blocks.
    pub fn send(&self, rec: ResponseRecord) {
        let guard = self.tx.lock().expect("reqlog lock");
        let Some(tx) = guard.as_ref() else { return };
        match tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.metrics.reqlog_dropped.inc(),
        }
    }

    /// Writes what is queued, closes the file and stops the thread.
    pub fn shutdown(&self) {
        drop(self.tx.lock().expect("reqlog lock").take());
        if let Some(t) = self.thread.lock().expect("reqlog lock").take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    file: Option<BufWriter<File>>,
    written: u64,
    seq: u64,
}

impl Writer {
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        self.seq += 1;
        let stamp: String = rfc3339(SystemTime::now()).chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
        let name = format!("responses-{stamp}-{}-{}.jsonl", std::process::id(), self.seq);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(name))?;
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        self.written = 0;
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let f = self.file.as_mut().expect("open file");
        f.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn run(mut self, rx: Receiver<ResponseRecord>, with_text: bool) {
        let mut line = Vec::with_capacity(4096);
        while let Ok(rec) = rx.recv() {
            let mut next = Some(rec);
            // Drain what is queued, then flush once.
            while let Some(rec) = next.take() {
                line.clear();
                if serde_json::to_writer(&mut line, &rec.to_json(with_text)).is_ok() {
                    line.push(b'\n');
                    if let Err(e) = self.write(&line) {
                        tracing::error!(error = %e, "response log write failed");
                    }
                }
                next = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
                };
            }
            if let Some(f) = self.file.as_mut() {
                if let Err(e) = f.flush() {
                    tracing::error!(error = %e, "response log flush failed");
                }
            }
        }
        if let Some(mut f) = self.file.take() {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> ResponseRecord {
        ResponseRecord {
            request_id: format!("r{i}"),
            time: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            prompt: "secret prompt".into(),
            upstream_body: Bytes::from_static(br#"{"prompt":"secret prompt","max_tokens":4,"temp":0.0,"stream":true}"#),
            model: "gemma-3-270m".into(),
            backend: "m1".into(),
            device: "cpu".into(),
            text: "secret answer".into(),
            ttft_ms: 1.0,
            latency_ms: 2.0,
            backend_latency_ms: 1.5,
            tokens: 4,
            prompt_tokens: 3,
            finish_reason: FinishReason::Length,
            policy: "baseline-smallest".into(),
            confidence: 1.0,
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn writes_rotates_and_can_leave_text_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReqLog::start(dir.path(), 1024, true, Arc::new(Metrics::new())).unwrap();
        for i in 0..10 {
            log.send(rec(i));
        }
        log.shutdown();
        let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(files.len() >= 2, "rotated: {files:?}");
        let mut lines = Vec::new();
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1024);
            lines
                .extend(std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }
        assert_eq!(lines.len(), 10);
        let v = &lines[0];
        for k in
            ["request_id", "time", "prompt", "params", "model", "backend", "text", "ttft_ms", "latency_ms", "tokens"]
        {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["params"]["max_tokens"], 4);
        assert!(v["params"].get("prompt").is_none());

        let dir = tempfile::tempdir().unwrap();
        let log = ReqLog::start(dir.path(), 1 << 20, false, Arc::new(Metrics::new())).unwrap();
        log.send(rec(0));
        log.shutdown();
        let f = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("prompt_sha256"));
    }
}
