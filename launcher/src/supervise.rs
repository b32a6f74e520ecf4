//! Supervised child processes: each service's output prefixed with its id, a service that exits
//! restarted with backoff, and all of them stopped (SIGTERM, then SIGKILL) on shutdown.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// One supervised child process.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub(crate) id: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
}

async fn pump<R: AsyncRead + Unpin + Send + 'static>(reader: R, id: String) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("[{id}] {line}");
    }
}

fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// Runs `svc` until shutdown, restarting it with exponential backoff (1 s to 30 s) when it exits.
pub(crate) async fn supervise(svc: Service, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut cmd = Command::new(&svc.program);
        cmd.args(&svc.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Own process group: a terminal's Ctrl-C reaches only the launcher, which then stops
            // the children in order (and does not mistake their exit for a crash).
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                error!("cannot start {} ({}): {e}", svc.id, svc.program.display());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        info!("started {} pid={pid}", svc.id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, svc.id.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, svc.id.clone()));
        }
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                if *shutdown.borrow() {
                    return;
                }
                let ran = started.elapsed();
                if ran > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                warn!(
                    "{} (pid {pid}) exited: {status} after {:.1}s; restarting in {}s",
                    svc.id,
                    ran.as_secs_f64(),
                    backoff.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => {
                signal(pid, libc::SIGTERM);
                match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                    Ok(_) => info!("stopped {} (pid {pid})", svc.id),
                    Err(_) => {
                        warn!("{} (pid {pid}) ignored SIGTERM for 10 s; killing it", svc.id);
                        let _ = child.kill().await;
                    }
                }
                return;
            }
        }
    }
}
