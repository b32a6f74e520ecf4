//! Hostile clients against a real router process: slow headers (slowloris), slow bodies, huge
//! headers and bodies, and more idle connections than the router allows. Each is cut off by a
//! timeout or a limit with a clear answer, and the router keeps serving everyone else.
mod common;

use common::*;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads until the server closes the connection (or resets it); the bytes it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("no close from the server: {e}"),
        }
    }
}

/// Status and body of the first response in `raw`.
fn parse(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn error_type(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["type"].as_str().unwrap_or_default().to_string()
}

/// A router in front of the stub backend, with `env`.
fn router(env: &[(&str, String)]) -> (Router, Proc) {
    let (stub, port) = stub("m1", "cpu");
    (Router::start(&[("m1", format!("http://127.0.0.1:{port}"))], env, &["m1"]), stub)
}

fn health_ok(r: &Router) -> bool {
    http().get(format!("{}/health", r.url())).send().map(|a| a.status().as_u16() == 200).unwrap_or(false)
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let (r, _stub) = router(&[("HEADER_READ_TIMEOUT_MS", "1000".into())]);
    // Slowloris: a header line every 300 ms, never the blank line that ends the block.
    let mut s = connect(r.port);
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let closed_at = loop {
        let mut b = [0u8; 512];
        match s.read(&mut b) {
            Ok(0) => break t0.elapsed(),
            Ok(n) => assert!(
                String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break t0.elapsed(),
            Err(_) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "a slow header block held the connection for 10 s");
                // The peer may already be gone; a failed write is the close showing.
                if s.write_all(b"X-Drip: 1\r\n").is_err() {
                    break t0.elapsed();
                }
            }
        }
    };
    assert!(closed_at >= Duration::from_millis(900), "closed before the deadline: {closed_at:?}");

    // An idle keep-alive connection, after one answered request, is closed by the same deadline.
    let mut s = connect(r.port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).unwrap();
    assert_eq!(parse(&b[..n]).0, 200);
    let t0 = Instant::now();
    let rest = read_to_close(&mut s);
    assert!(rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"), "{rest:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(health_ok(&r));
}

#[test]
fn connections_over_the_limit_get_503_and_idle_ones_free_their_slots() {
    // The header deadline is long enough for every connection below to be made (and accepted) first.
    let (r, _stub) = router(&[("MAX_CONNECTIONS", "1000".into()), ("HEADER_READ_TIMEOUT_MS", "20000".into())]);
    // Two thousand idle connections: the first thousand hold every slot...
    let t_connect = Instant::now();
    let idle: Vec<TcpStream> = (0..2000).map(|_| connect(r.port)).collect();
    assert!(t_connect.elapsed() < Duration::from_secs(15), "connecting took {:?}", t_connect.elapsed());
    // ...so a real request now is refused at once with a JSON 503, like every idle one past the limit.
    let mut s = connect(r.port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, body) = parse(&read_to_close(&mut s));
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_type(&body), "overloaded");

    // The server closes every idle connection by itself: the refused ones at once, the rest at the
    // header deadline. Then it serves again.
    let t0 = Instant::now();
    let mut refused = 0;
    for mut c in idle {
        let raw = read_to_close(&mut c);
        if parse(&raw).0 == 503 {
            refused += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(40), "idle connections held for {:?}", t0.elapsed());
    assert!(refused >= 1000, "only {refused} of the 1,000 connections past the limit were refused");
    wait_for("the router to serve again", Duration::from_secs(10), || health_ok(&r));
    assert!(r.metric("router_connections_refused_total") >= 1001.0);
    // What is left open is this test's own probes (a client's pool may linger a moment).
    assert!(r.metric("router_connections_open") < 10.0);
}

#[test]
fn huge_headers_and_bodies_and_slow_bodies_get_json_errors() {
    let (r, _stub) = router(&[
        ("MAX_BODY_BYTES", "65536".into()),
        ("BODY_READ_TIMEOUT_MS", "1000".into()),
        ("RATE_LIMIT_RPS", "0".into()),
    ]);
    // A 100 KB header: 431 from the HTTP layer, and the router stays up.
    let mut s = connect(r.port);
    let big = "a".repeat(100 * 1024);
    let _ = s.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(parse(&read_to_close(&mut s)).0, 431);
    // 500 small headers: over hyper's count limit, also 431.
    let mut s = connect(r.port);
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let _ = s.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert_eq!(parse(&read_to_close(&mut s)).0, 431);

    // A declared body that never finishes arriving: 408 after the body deadline.
    let mut s = connect(r.port);
    s.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":").unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).unwrap();
    let (status, body) = parse(&b[..n]);
    assert_eq!(status, 408, "{body}");
    assert_eq!(error_type(&body), "request_timeout");
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // Bodies over the limit, declared or chunked: 413 with a JSON body.
    let huge = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(200 * 1024));
    let a = http()
        .post(format!("{}/generate", r.url()))
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .unwrap();
    assert_eq!(a.status().as_u16(), 413);
    assert_eq!(error_type(&a.text().unwrap()), "request_too_large");
    let mut s = connect(r.port);
    let mut req =
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in huge.as_bytes().chunks(16 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = s.write_all(&req);
    let (status, body) = parse(&read_to_close(&mut s));
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_type(&body), "request_too_large");

    assert!(health_ok(&r));
}

/// A model service double that answers `/health` at once and streams `/generate` slowly: the SSE
/// headers, then one token after `delay`, then `done`.
fn slow_backend(delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /health") {
                    let body = r#"{"status":"ok","model_id":"m1","model":"stub-100m","arch":"stub","device":"cpu"}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                let _ =
                    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n");
                std::thread::sleep(delay);
                let done = r#"{"model_id":"m1","model":"stub-100m","device":"cpu","prompt_tokens":3,"completion_tokens":1,"finish_reason":"stop","ttft_ms":1.0,"latency_ms":1.0,"tokens_per_second":0.0}"#;
                let _ = write!(conn, "event: token\ndata: {{\"text\":\"late\"}}\n\nevent: done\ndata: {done}\n\n");
            });
        }
    });
    port
}

/// SIGTERM while a stream is running, a client is halfway through its headers and another sits
/// idle: the stream is finished, the other two are closed at once, and the router exits by itself
/// right after the stream. (hyper's own graceful shutdown waited for the half-sent headers until
/// the header deadline, which held the router's exit for 8 s.)
#[test]
fn sigterm_finishes_running_streams_and_does_not_wait_for_half_sent_headers() {
    let port = slow_backend(Duration::from_millis(1500));
    let mut r = Router::start(&[("m1", format!("http://127.0.0.1:{port}"))], &[], &["m1"]);
    let url = format!("{}/generate", r.url());
    let streaming = std::thread::spawn(move || post(&url, r#"{"prompt":"a slow answer","max_tokens":1}"#, &[]));
    let mut idle = connect(r.port);
    write!(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    let mut half = connect(r.port);
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));

    let term = Instant::now();
    let ok = std::process::Command::new("kill").args(["-TERM", &r.proc.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rest = read_to_close(&mut half);
    let half_closed = term.elapsed();
    assert!(rest.is_empty(), "the half-sent request got an answer: {}", String::from_utf8_lossy(&rest));
    assert!(half_closed < Duration::from_millis(500), "a connection with half-sent headers stayed {half_closed:?}");

    let answer = streaming.join().unwrap();
    assert_eq!(answer.status, 200);
    let names: Vec<&str> = answer.events.iter().map(|e| e.event.as_str()).collect();
    assert!(names.ends_with(&["token", "done"]), "the running stream was cut: {names:?}");
    let streamed = term.elapsed();

    wait_for("the router to exit", Duration::from_secs(5), || r.proc.exited());
    let exited = term.elapsed();
    let code = r.proc.child.take().map(|mut c| c.wait().unwrap().code());
    eprintln!("half-sent headers closed after {half_closed:?}, stream done after {streamed:?}, exit after {exited:?}");
    assert_eq!(code, Some(Some(0)), "{}", r.proc.log_tail());
    assert!(
        exited < streamed + Duration::from_millis(1500),
        "exit {exited:?} long after the stream ended {streamed:?}"
    );
    assert!(r.proc.log_tail().contains("drain_ms"), "no drain time logged:\n{}", r.proc.log_tail());
}
