//! Logging setup: JSON lines when `LOG_FORMAT=json` or stderr is not a terminal, text otherwise,
//! filtered by `RUST_LOG` (default `info`). Lines go through a bounded queue to a writer thread,
//! so a slow stderr (a pipe to a log shipper) never blocks a request and lines are written in
//! batches; when the queue is full, lines are dropped and counted rather than waited for.
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

const QUEUE: usize = 16 * 1024;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the writer fell behind.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A `MakeWriter` that queues each formatted line for the writer thread.
#[derive(Clone)]
pub struct QueueWriter {
    tx: SyncSender<Vec<u8>>,
}

/// One event's bytes, sent as a whole when the formatter drops it.
pub struct Line {
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line { buf: Vec::with_capacity(256), tx: self.tx.clone() }
    }
}

/// Writes queued lines in batches. While lines keep coming it wakes every 10 ms and writes what
/// has accumulated (senders never have to wake it); when a round finds nothing it blocks until
/// the next line.
fn writer_thread(rx: Receiver<Vec<u8>>) {
    let stderr = std::io::stderr();
    let write_batch = |first: Option<Vec<u8>>| -> u64 {
        let mut out = stderr.lock();
        let mut n = 0;
        if let Some(line) = first {
            let _ = out.write_all(&line);
            n += 1;
        }
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
            n += 1;
        }
        let _ = out.flush();
        WRITTEN.fetch_add(n, Ordering::Release);
        n
    };
    while let Ok(line) = rx.recv() {
        write_batch(Some(line));
        loop {
            std::thread::sleep(std::time::Duration::from_millis(10));
            if write_batch(None) == 0 {
                break;
            }
        }
    }
}

/// Waits (up to `max`) until every queued line is written; call before the process exits.
pub fn flush(max: std::time::Duration) {
    let deadline = std::time::Instant::now() + max;
    while WRITTEN.load(Ordering::Acquire) < QUEUED.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

static STARTED: OnceLock<()> = OnceLock::new();

/// Installs the global subscriber (once).
pub fn init() {
    STARTED.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json = match std::env::var("LOG_FORMAT") {
            Ok(f) => f.eq_ignore_ascii_case("json"),
            Err(_) => !std::io::stderr().is_terminal(),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("log-writer".into()).spawn(move || writer_thread(rx)).expect("log thread");
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(QueueWriter { tx });
        if json {
            builder.json().flatten_event(true).with_current_span(false).init();
        } else {
            builder.with_ansi(std::io::stderr().is_terminal()).init();
        }
    });
}
