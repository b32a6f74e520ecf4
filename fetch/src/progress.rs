//! Progress: indicatif bars on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How `ensure` reports what it does (on stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Progress bars (bytes, rate, ETA per wheel, and an overall bar).
    Bars,
    /// One log line per step.
    Plain,
    /// Nothing.
    Quiet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bars,
    Plain,
    Quiet,
}

struct Overall {
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    started: Mutex<Option<Instant>>,
}

/// Shared by every task of one `ensure` call; cheap to clone.
#[derive(Clone)]
pub(crate) struct Reporter {
    mode: Mode,
    multi: MultiProgress,
    overall: Arc<Overall>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", HumanBytes((bytes as f64 / secs) as u64))
}

impl Reporter {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => Mode::Bars,
            ProgressMode::Auto | ProgressMode::Plain => Mode::Plain,
            ProgressMode::Bars => Mode::Bars,
            ProgressMode::Quiet => Mode::Quiet,
        };
        let target = match mode {
            Mode::Bars => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall =
            Overall { bar: None, total: AtomicU64::new(0), done: AtomicU64::new(0), started: Mutex::new(None) };
        Self { mode, multi, overall: Arc::new(overall) }
    }

    /// A line above the bars, or on stderr.
    pub fn log(&self, msg: impl AsRef<str>) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(msg.as_ref());
            }
            Mode::Plain => eprintln!("{}", msg.as_ref()),
            Mode::Quiet => {}
        }
    }

    /// Starts the overall line for `total` bytes of wheels.
    pub fn start_overall(&mut self, total: u64, wheels: usize) {
        let bar = (self.mode == Mode::Bars).then(|| {
            let bar = self.multi.add(ProgressBar::new(total));
            bar.set_style(style(
                "{prefix:>12.cyan.bold} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            ));
            bar.set_prefix("overall");
            bar.set_message(format!("{wheels} wheels"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        self.overall = Arc::new(Overall {
            bar,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Mutex::new(Some(Instant::now())),
        });
        if self.mode == Mode::Plain {
            eprintln!("need {wheels} wheels, {} in all", HumanBytes(total));
        }
    }

    pub fn finish_overall(&self) {
        if let Some(bar) = &self.overall.bar {
            bar.finish_and_clear();
        }
    }

    fn add_bar(&self, len: u64, prefix: &str, template: &str) -> ProgressBar {
        if self.mode != Mode::Bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(style(template));
        bar.set_prefix(prefix.to_owned());
        let bar = match &self.overall.bar {
            Some(overall) => self.multi.insert_before(overall, bar),
            None => self.multi.add(bar),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A bar for a long local step (joining, hashing, extracting) over `len` bytes.
    pub fn task(&self, label: &str, len: Option<u64>) -> ProgressBar {
        if self.mode == Mode::Plain {
            match len {
                Some(len) => eprintln!("{label} ({})", HumanBytes(len)),
                None => eprintln!("{label}"),
            }
        }
        self.add_bar(
            len.unwrap_or(0),
            label,
            "{prefix:>12.bold} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
        )
    }

    /// Tracks one wheel download.
    pub fn wheel(&self, filename: &str, size: Option<u64>) -> WheelProgress {
        let bar = self.add_bar(
            size.unwrap_or(0),
            "download",
            "{prefix:>12.green.bold} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
        );
        bar.set_message(filename.to_owned());
        WheelProgress {
            reporter: self.clone(),
            bar,
            filename: filename.to_owned(),
            counted: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn overall_add(&self, delta: i64) {
        let o = &self.overall;
        if delta >= 0 {
            o.done.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            o.done.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
        if let Some(bar) = &o.bar {
            bar.set_position(o.done.load(Ordering::Relaxed));
        }
    }

    fn overall_summary(&self) -> String {
        let o = &self.overall;
        let (done, total) = (o.done.load(Ordering::Relaxed), o.total.load(Ordering::Relaxed));
        let elapsed = o.started.lock().unwrap().map(|t| t.elapsed()).unwrap_or_default();
        let mut s = format!("overall {} of {}", HumanBytes(done), HumanBytes(total));
        if let Some(percent) = (done * 100).checked_div(total) {
            s += &format!(" ({percent}%)");
        }
        if done > 0 && done < total && elapsed > Duration::from_millis(100) {
            let eta = elapsed.mul_f64((total - done) as f64 / done as f64);
            if eta >= Duration::from_secs(1) {
                s += &format!(", ETA {}", HumanDuration(eta));
            }
        }
        s
    }
}

/// Progress of one wheel: its bar, and its share of the overall line.
pub(crate) struct WheelProgress {
    reporter: Reporter,
    bar: ProgressBar,
    filename: String,
    counted: AtomicU64,
    started: Instant,
}

impl WheelProgress {
    pub fn set_len(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// The wheel now has `pos` bytes on disk (it can go down when a download restarts).
    pub fn set(&self, pos: u64) {
        let before = self.counted.swap(pos, Ordering::Relaxed);
        self.reporter.overall_add(pos as i64 - before as i64);
        self.bar.set_position(pos);
    }

    pub fn log(&self, msg: impl AsRef<str>) {
        self.reporter.log(format!("{}: {}", self.filename, msg.as_ref()));
    }

    pub fn started(&self, from: u64, total: Option<u64>) {
        self.set(from);
        if self.reporter.mode == Mode::Plain {
            let size = total.map(|t| format!(" ({})", HumanBytes(t))).unwrap_or_default();
            if from > 0 {
                eprintln!("downloading {}{size}, resuming at {}", self.filename, HumanBytes(from));
            } else {
                eprintln!("downloading {}{size}", self.filename);
            }
        }
    }

    /// A verified wheel was already in the cache.
    pub fn cached(&self, len: u64) {
        self.set(len);
        self.bar.finish_and_clear();
        self.reporter.log(format!("cached {} ({}), verified", self.filename, HumanBytes(len)));
    }

    pub fn finished(&self, len: u64) {
        self.set(len);
        self.bar.finish_and_clear();
        let elapsed = self.started.elapsed();
        let line = format!(
            "downloaded {} ({} in {:.1}s, {}), verified",
            self.filename,
            HumanBytes(len),
            elapsed.as_secs_f64(),
            rate(len, elapsed)
        );
        match self.reporter.mode {
            Mode::Plain => eprintln!("{line}; {}", self.reporter.overall_summary()),
            _ => self.reporter.log(line),
        }
    }

    pub fn abandon(&self) {
        self.bar.finish_and_clear();
    }
}

/// Logs how a local task went.
pub(crate) fn done_line(what: &str, bytes: u64, started: Instant) -> String {
    let elapsed = started.elapsed();
    format!("{what} ({} in {:.1}s, {})", HumanBytes(bytes), elapsed.as_secs_f64(), rate(bytes, elapsed))
}
