//! One streamed request against the router's `POST /generate`, measured from the client side.
use crate::record::*;
use futures::StreamExt;
use polyllm_common::route::RouterGenerateRequest;
use polyllm_common::sse::SseParser;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the router, without a trailing slash.
    pub url: String,
    pub api_key: Option<String>,
    /// Limit of one whole request.
    pub timeout: Duration,
}

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    Continue,
    /// Wait before the next request: the router asked to (429 or 503 with Retry-After), or could not
    /// be reached.
    Wait(Duration),
}

/// The pause after a request that could not reach the router at all.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(500);

fn ms(d: Duration) -> f64 {
    r3(d.as_secs_f64() * 1000.0)
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// Sends `body` (always streaming) and fills `rec` with what came back. `point_start` is the start of
/// the concurrency point, for `start_offset_ms`.
pub async fn run_one(
    client: &reqwest::Client,
    target: &Target,
    body: &RouterGenerateRequest,
    point_start: Instant,
    rec: &mut RequestRecord,
) -> After {
    let t0 = Instant::now();
    rec.start_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    rec.start_offset_ms = ms(t0 - point_start);
    match tokio::time::timeout(target.timeout, stream(client, target, body, t0, rec)).await {
        Ok(after) => after,
        Err(_) => {
            rec.status = STATUS_TRANSPORT_ERROR.into();
            rec.error = format!("timed out after {:?}", target.timeout);
            rec.latency_ms = None;
            After::Continue
        }
    }
}

async fn stream(
    client: &reqwest::Client,
    target: &Target,
    body: &RouterGenerateRequest,
    t0: Instant,
    rec: &mut RequestRecord,
) -> After {
    let mut req = client.post(format!("{}/generate", target.url)).json(body).header("accept", "text/event-stream");
    if let Some(k) = &target.api_key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            rec.status = STATUS_TRANSPORT_ERROR.into();
            rec.error = format!("{e:#}");
            // The router is unreachable (restarting, say): back off as a real client would, instead of
            // sending the next request at once in a tight loop.
            return After::Wait(UNREACHABLE_BACKOFF);
        }
    };
    let status = resp.status();
    rec.http_status = status.as_u16();
    if let Some(id) = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        rec.request_id = id.to_string();
    }
    if !status.is_success() {
        let retry =
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        let text = resp.text().await.unwrap_or_default();
        rec.latency_ms = Some(ms(t0.elapsed()));
        rec.error = error_message(&text);
        if status.as_u16() == 429 {
            rec.status = STATUS_RATE_LIMITED.into();
            return After::Wait(Duration::from_secs_f64(retry.unwrap_or(1.0).clamp(0.0, 60.0)));
        }
        rec.status = STATUS_HTTP_ERROR.into();
        // A 503 with Retry-After (no healthy backend, a full queue) is honored too.
        return match retry {
            Some(secs) => After::Wait(Duration::from_secs_f64(secs.clamp(0.0, 60.0))),
            None => After::Continue,
        };
    }
    let mut parser = SseParser::new();
    let mut bytes = resp.bytes_stream();
    let mut first_token: Option<Duration> = None;
    let mut tokens_seen = 0u32;
    while let Some(chunk) = bytes.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                rec.status = STATUS_TRANSPORT_ERROR.into();
                rec.error = format!("stream broke: {e:#}");
                rec.latency_ms = Some(ms(t0.elapsed()));
                return After::Continue;
            }
        };
        for ev in parser.push(&chunk) {
            let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            match ev.event.as_str() {
                "route" => {
                    rec.routes += 1;
                    set_str(&mut rec.request_id, &v["request_id"]);
                    set_str(&mut rec.model, &v["model"]);
                    set_str(&mut rec.backend, &v["backend"]);
                    set_str(&mut rec.device, &v["device"]);
                    rec.cache_hit = matches!(v["cache"].as_str(), Some("hit" | "semantic"));
                }
                "token" => {
                    tokens_seen += 1;
                    first_token.get_or_insert_with(|| t0.elapsed());
                }
                "done" => {
                    let total = t0.elapsed();
                    rec.latency_ms = Some(ms(total));
                    rec.ttft_ms = first_token.map(ms);
                    set_str(&mut rec.request_id, &v["request_id"]);
                    set_str(&mut rec.model, &v["model"]);
                    set_str(&mut rec.backend, &v["model_id"]);
                    set_str(&mut rec.device, &v["device"]);
                    if let Some(c) = v["cache"].as_str() {
                        rec.cache_hit = c == "hit" || c == "semantic";
                    }
                    rec.prompt_tokens = v["prompt_tokens"].as_u64().map(|x| x as u32);
                    let completion = v["completion_tokens"].as_u64().map(|x| x as u32).unwrap_or(tokens_seen);
                    rec.completion_tokens = Some(completion);
                    rec.server_ttft_ms = v["ttft_ms"].as_f64().map(r3);
                    rec.server_tokens_per_second = v["tokens_per_second"].as_f64().map(r3);
                    // A cache hit is replayed at once: there is no decode to measure.
                    rec.tokens_per_second = first_token.filter(|_| !rec.cache_hit).and_then(|ft| {
                        let secs = (total - ft).as_secs_f64();
                        (completion > 1 && secs > 0.0).then(|| r3((completion - 1) as f64 / secs))
                    });
                    rec.status = STATUS_OK.into();
                    return After::Continue;
                }
                "error" => {
                    rec.latency_ms = Some(ms(t0.elapsed()));
                    rec.ttft_ms = first_token.map(ms);
                    rec.status = STATUS_STREAM_ERROR.into();
                    rec.error = error_message(&ev.data);
                    return After::Continue;
                }
                _ => {}
            }
        }
    }
    rec.latency_ms = Some(ms(t0.elapsed()));
    rec.ttft_ms = first_token.map(ms);
    rec.status = STATUS_STREAM_ERROR.into();
    rec.error = "the stream ended without a done event".into();
    After::Continue
}

fn set_str(dst: &mut String, v: &Value) {
    if let Some(s) = v.as_str() {
        if !s.is_empty() {
            *dst = s.to_string();
        }
    }
}
