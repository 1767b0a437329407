//! Per-client rate limiting: a token bucket per client IP address, refilled
//! at `per_minute / 60` tokens a second up to `burst`. A client over its
//! budget gets 429 with `Retry-After` (seconds until a token is back).
//! Loopback clients are exempt by default: the machine's own user and
//! local MCP clients are not who a limit is for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error_table::{rpc, ApiError};

/// Also the `[rate_limit]` section of the config file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per minute per client; 0 turns limiting off.
    pub per_minute: u32,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
    pub exempt_loopback: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_minute: 600,
            burst: 120,
            exempt_loopback: true,
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets beyond this many are pruned of full (idle) ones.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Arc::default(),
        }
    }

    /// Takes a token for `ip`; `Err(seconds)` when none is left.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let rate = f64::from(self.config.per_minute) / 60.0;
        let burst = f64::from(self.config.burst.max(1));
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    fn applies_to(&self, ip: IpAddr) -> bool {
        self.config.per_minute > 0 && !(self.config.exempt_loopback && ip.is_loopback())
    }
}

pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip.filter(|ip| limiter.applies_to(*ip)) {
        if let Err(retry_after) = limiter.check(ip, Instant::now()) {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                rpc::UNAVAILABLE,
                format!("too many requests from {ip}; retry in {retry_after} s"),
            );
            err.retry_after_secs = Some(retry_after);
            return err.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_minute: 60,
            burst: 3,
            exempt_loopback: true,
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip, t0).is_ok());
        }
        assert_eq!(limiter.check(ip, t0), Err(1));
        assert!(limiter.check(other, t0).is_ok(), "buckets are per client");
        assert!(limiter.check(ip, t0 + Duration::from_millis(1100)).is_ok());
        assert!(limiter.check(ip, t0 + Duration::from_millis(1200)).is_err());
        assert!(limiter.applies_to(ip));
        assert!(!limiter.applies_to("127.0.0.1".parse().unwrap()));
    }
}
