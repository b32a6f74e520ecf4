//! Rate limiting: who the caller is (API key from `Authorization: Bearer` or `X-API-Key`, else the
//! client IP), what their limit is (`--rate-limit-rps`/`--rate-limit-burst`, per-key overrides from
//! a file), and the token bucket itself. With Redis the bucket lives in Redis and is read and
//! updated by one atomic Lua script on Redis' own clock, so every router replica shares it. Without
//! Redis, or while Redis is down, an in-process `governor` limiter with the same quota decides.
use crate::redis_conn::RedisConn;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A token bucket: `rps` tokens per second refill, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub rps: f64,
    pub burst: u32,
}

impl Limit {
    pub fn enabled(&self) -> bool {
        self.rps > 0.0
    }

    fn quota(&self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.rps.max(1e-6));
        Quota::with_period(period)
            .expect("nonzero period")
            .allow_burst(NonZeroU32::new(self.burst.max(1)).expect("nonzero"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitFileError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid rate-limit overrides {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads the overrides file: `{"key": {"rps": 5, "burst": 10}}` as JSON (`.json`) or the same map
/// as TOML (`"key" = { rps = 5, burst = 10 }`). The result is keyed by identity
/// ([`key_identity`]), so the raw keys are not kept.
pub fn load_overrides(path: &Path) -> Result<HashMap<String, Limit>, LimitFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LimitFileError::Io { path: p.clone(), source })?;
    let parsed: Result<HashMap<String, Limit>, String> = if p.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string())
    };
    let parsed = parsed.map_err(|message| LimitFileError::Invalid { path: p, message })?;
    Ok(parsed.into_iter().map(|(k, l)| (key_identity(&hex::encode(Sha256::digest(k.as_bytes()))), l)).collect())
}

/// The caller, for limits and for `/last_request_stats`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `key:<16 hex of SHA-256(api key)>` or `ip:<address>`; never the raw key.
    pub key: Arc<str>,
}

/// The API key of a request: `Authorization: Bearer <key>`, else `X-API-Key`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()))
}

/// The identity key of an API key given by the hex SHA-256 of the key.
pub fn key_identity(sha256_hex: &str) -> String {
    format!("key:{}", &sha256_hex[..16.min(sha256_hex.len())])
}

/// Who the caller is: an API key the router knows (from `--api-keys` or the rate-limit overrides)
/// gets a bucket of its own; anything else, including a key nobody configured, is the client's
/// address, so a client cannot escape its limit by sending a new random key with each request.
/// The address is the TCP peer's, or, when the peer is one of `--trusted-proxies`, the rightmost
/// X-Forwarded-For address that is not itself a trusted proxy (the leftmost entries are whatever
/// the client wrote, so they are never believed on their own).
#[derive(Debug, Default, Clone)]
pub struct Identifier {
    known_keys: HashSet<String>,
    trusted_proxies: Vec<IpNet>,
}

impl Identifier {
    pub fn new(known_keys: impl IntoIterator<Item = String>, trusted_proxies: Vec<IpNet>) -> Self {
        Identifier { known_keys: known_keys.into_iter().collect(), trusted_proxies }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address as seen through trusted proxies.
    pub fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let mut client = peer.ip();
        if !self.trusted(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        for hop in hops.iter().rev() {
            // An entry that is not an address ends the chain: the hop after it is the client.
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        client
    }

    /// Finds the caller's identity in the request.
    pub fn identify(&self, headers: &HeaderMap, peer: SocketAddr) -> Identity {
        if let Some(k) = api_key(headers) {
            let id = key_identity(&hex::encode(Sha256::digest(k.as_bytes())));
            if self.known_keys.contains(&id) {
                return Identity { key: Arc::from(id) };
            }
        }
        Identity { key: Arc::from(format!("ip:{}", self.client_ip(headers, peer))) }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No limit applies.
    Unlimited,
    Allowed {
        limit: u32,
        remaining: u32,
    },
    Limited {
        limit: u32,
        retry_after: Duration,
    },
}

/// Token bucket on Redis time: refill, take one if there is one, store, expire when full again.
/// Returns {allowed (0/1), whole tokens left, microseconds until one token is available}.
const TOKEN_BUCKET_LUA: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(st[1])
local ts = tonumber(st[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
local allowed = 0
local retry_us = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_us = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, math.floor(tokens), retry_us}
"#;

type Keyed = DefaultKeyedRateLimiter<Arc<str>, StateInformationMiddleware>;
type Direct = DefaultDirectRateLimiter<StateInformationMiddleware>;

pub struct RateLimiter {
    /// Who a request counts as.
    pub identifier: Identifier,
    default: Limit,
    overrides: HashMap<String, (Limit, Direct)>,
    local: Keyed,
    clock: DefaultClock,
    redis: Option<Arc<RedisConn>>,
    script: redis::Script,
}

impl RateLimiter {
    /// `overrides` maps identity keys (`key:…`, see [`key_identity`]) to their limits.
    pub fn new(default: Limit, overrides: HashMap<String, Limit>, redis: Option<Arc<RedisConn>>) -> Self {
        let identifier = Identifier::new(overrides.keys().cloned(), Vec::new());
        let overrides: HashMap<String, (Limit, Direct)> = overrides
            .into_iter()
            .map(|(k, l)| {
                let direct = governor::RateLimiter::direct(l.quota()).with_middleware::<StateInformationMiddleware>();
                (k, (l, direct))
            })
            .collect();
        RateLimiter {
            identifier,
            default,
            overrides,
            local: governor::RateLimiter::keyed(default.quota()).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            redis,
            script: redis::Script::new(TOKEN_BUCKET_LUA),
        }
    }

    /// The limit that applies to `id`.
    pub fn limit_for(&self, id: &Identity) -> Limit {
        self.overrides.get(&*id.key).map(|(l, _)| *l).unwrap_or(self.default)
    }

    /// Takes one token for `id`, from Redis when it is up, else from the in-process limiter.
    pub async fn check(&self, id: &Identity) -> Verdict {
        let limit = self.limit_for(id);
        if !limit.enabled() {
            return Verdict::Unlimited;
        }
        if let Some(redis) = &self.redis {
            let key = format!("{}rl:{}", redis.prefix, id.key);
            let res = redis
                .run(|mut c| {
                    let script = &self.script;
                    async move {
                        let mut inv = script.prepare_invoke();
                        inv.key(&key).arg(limit.rps).arg(limit.burst.max(1));
                        inv.invoke_async::<(i64, i64, i64)>(&mut c).await
                    }
                })
                .await;
            if let Ok((allowed, remaining, retry_us)) = res {
                let l = limit.burst.max(1);
                return if allowed == 1 {
                    Verdict::Allowed { limit: l, remaining: remaining.max(0) as u32 }
                } else {
                    Verdict::Limited { limit: l, retry_after: Duration::from_micros(retry_us.max(0) as u64) }
                };
            }
        }
        self.check_local(id, limit)
    }

    fn check_local(&self, id: &Identity, limit: Limit) -> Verdict {
        let l = limit.burst.max(1);
        let res = match self.overrides.get(&*id.key) {
            Some((_, direct)) => direct.check(),
            None => self.local.check_key(&id.key),
        };
        match res {
            Ok(snap) => Verdict::Allowed { limit: l, remaining: snap.remaining_burst_capacity() },
            Err(not_until) => Verdict::Limited { limit: l, retry_after: not_until.wait_time_from(self.clock.now()) },
        }
    }

    /// Forgets in-process buckets that are full again (call now and then).
    pub fn housekeeping(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(addr: &str) -> Identity {
        Identifier::default().identify(&HeaderMap::new(), format!("{addr}:1").parse().unwrap())
    }

    fn key_id(k: &str) -> String {
        key_identity(&hex::encode(Sha256::digest(k.as_bytes())))
    }

    #[test]
    fn only_known_keys_have_their_own_identity() {
        let peer: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let ids = Identifier::new([key_id("k1"), key_id("k2")], vec![]);
        let mut h = HeaderMap::new();
        assert_eq!(&*ids.identify(&h, peer).key, "ip:10.0.0.1");
        h.insert("x-api-key", "k2".parse().unwrap());
        let id = ids.identify(&h, peer);
        assert!(id.key.starts_with("key:") && !id.key.contains("k2"));
        assert_eq!(api_key(&h), Some("k2"));
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(api_key(&h), Some("k1"));
        assert_ne!(ids.identify(&h, peer).key, id.key);
        // A key nobody configured is the client's address: random keys share one bucket.
        for random in ["r1", "r2", "0123456789abcdef"] {
            h.insert("authorization", format!("Bearer {random}").parse().unwrap());
            assert_eq!(&*ids.identify(&h, peer).key, "ip:10.0.0.1", "{random}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7".parse().unwrap());
        // No trusted proxies: the header is ignored.
        assert_eq!(&*Identifier::default().identify(&h, proxy).key, "ip:10.0.0.1");
        let ids = Identifier::new([], vec!["10.0.0.0/8".parse().unwrap()]);
        // From a trusted proxy: the rightmost untrusted address, not the spoofable leftmost one.
        assert_eq!(&*ids.identify(&h, proxy).key, "ip:198.51.100.7");
        // From anyone else: the peer, whatever the header says.
        assert_eq!(&*ids.identify(&h, stranger).key, "ip:203.0.113.9");
        // Trusted hops in the chain are skipped; several header lines are one list.
        h.insert("x-forwarded-for", "6.6.6.6, 198.51.100.7".parse().unwrap());
        h.append("x-forwarded-for", "10.1.2.3".parse().unwrap());
        assert_eq!(&*ids.identify(&h, proxy).key, "ip:198.51.100.7");
        // Garbage ends the chain at the last good hop; an empty header leaves the peer.
        h.insert("x-forwarded-for", "1.2.3.4, not-an-ip, 10.9.9.9".parse().unwrap());
        assert_eq!(&*ids.identify(&h, proxy).key, "ip:10.9.9.9");
        h.insert("x-forwarded-for", "".parse().unwrap());
        assert_eq!(&*ids.identify(&h, proxy).key, "ip:10.0.0.1");
    }

    #[tokio::test]
    async fn local_bucket_allows_exactly_burst() {
        let rl = RateLimiter::new(Limit { rps: 0.01, burst: 3 }, HashMap::new(), None);
        let id = ip("1.1.1.1");
        let mut passed = 0;
        for _ in 0..10 {
            if let Verdict::Allowed { limit, .. } = rl.check(&id).await {
                assert_eq!(limit, 3);
                passed += 1;
            }
        }
        assert_eq!(passed, 3);
        match rl.check(&id).await {
            Verdict::Limited { retry_after, .. } => assert!(retry_after > Duration::from_secs(50)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(rl.check(&ip("2.2.2.2")).await, Verdict::Allowed { remaining: 2, .. }));
    }

    #[tokio::test]
    async fn overrides_and_disabled() {
        let id = key_id;
        let mut o = HashMap::new();
        o.insert(id("vip"), Limit { rps: 0.01, burst: 5 });
        o.insert(id("free"), Limit { rps: 0.0, burst: 1 });
        let ids = Identifier::new(o.keys().cloned(), vec![]);
        let rl = RateLimiter::new(Limit { rps: 0.01, burst: 1 }, o, None);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "vip".parse().unwrap());
        let vip = ids.identify(&h, "1.1.1.1:1".parse().unwrap());
        let mut passed = 0;
        for _ in 0..8 {
            passed += matches!(rl.check(&vip).await, Verdict::Allowed { .. }) as u32;
        }
        assert_eq!(passed, 5);
        h.insert("x-api-key", "free".parse().unwrap());
        let free = ids.identify(&h, "1.1.1.1:1".parse().unwrap());
        assert_eq!(rl.check(&free).await, Verdict::Unlimited);
    }

    #[test]
    fn overrides_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("o.toml");
        let id = |k: &str| key_identity(&hex::encode(Sha256::digest(k.as_bytes())));
        std::fs::write(&t, "\"k1\" = { rps = 2.5, burst = 4 }\n").unwrap();
        assert_eq!(load_overrides(&t).unwrap()[&id("k1")], Limit { rps: 2.5, burst: 4 });
        let j = dir.path().join("o.json");
        std::fs::write(&j, r#"{"k2": {"rps": 1, "burst": 2}}"#).unwrap();
        let o = load_overrides(&j).unwrap();
        assert_eq!(o[&id("k2")].burst, 2);
        assert!(!o.contains_key("k2"), "raw keys are not kept");
        std::fs::write(&j, r#"{"k2": {"rps": 1}}"#).unwrap();
        assert!(load_overrides(&j).is_err());
    }
}
