//! Limits on what one request or one client may ask, each answering with an error that names
//! the limit.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Characters of text in one request.
    pub max_text_chars: usize,
    /// Lenses named by one analysis.
    pub max_lenses: usize,
    /// Tokens one generation may produce.
    pub max_new_tokens: usize,
    /// Bytes of one HTTP body or WebSocket message.
    pub max_message_bytes: usize,
    /// WebSocket connections open at once.
    pub max_connections: usize,
    /// Submissions per client per minute, and the burst allowed.
    pub requests_per_minute: u32,
    pub burst: u32,
    /// Running work may finish for this long after a shutdown begins.
    pub shutdown_grace: Duration,
    /// A WebSocket session whose output queue stays full this long (its client reads nothing
    /// while answers wait; meanwhile its input is not read) is closed, saying why.
    pub ws_output_timeout: Duration,
    /// HTTP connections (plain and upgraded to WebSocket) open at once, and from one client
    /// address; past either the connection is answered (503 / 429) and closed, never left in
    /// the kernel's queue. `lensd serve` also keeps the first under its descriptor limit.
    pub max_http_connections: usize,
    pub max_http_connections_per_address: usize,
    /// A request's headers must arrive within this, counted from the connection's start or
    /// from the first byte of a later request on it; else the connection is closed.
    pub http_header_timeout: Duration,
    /// A kept-alive HTTP connection with no request in progress is closed after this.
    pub http_idle_timeout: Duration,
    /// Failed authentications per client address per minute; past it keys from that address
    /// are not even checked (429) until the minute has let some through again.
    pub auth_failures_per_minute: u32,
    /// Limits on each role's work: compute per request and per minute, default deadlines,
    /// the size of analyses.
    pub roles: crate::roles::RoleTable,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 20_000,
            max_lenses: 8,
            max_new_tokens: 1000,
            max_message_bytes: 256 * 1024,
            max_connections: 512,
            requests_per_minute: 120,
            burst: 30,
            shutdown_grace: Duration::from_secs(20),
            ws_output_timeout: Duration::from_secs(30),
            max_http_connections: 1024,
            max_http_connections_per_address: 256,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            auth_failures_per_minute: 10,
            roles: crate::roles::RoleTable::default(),
        }
    }
}

impl Limits {
    /// `n` characters of text in `field`.
    pub fn check_text(&self, field: &str, n: usize) -> Result<(), ApiError> {
        if n > self.max_text_chars {
            return Err(ApiError::TooLarge(format!(
                "`{field}` has {n} characters; the limit is {}",
                self.max_text_chars
            )));
        }
        Ok(())
    }

    pub fn check_lenses(&self, n: usize) -> Result<(), ApiError> {
        if n > self.max_lenses {
            return Err(ApiError::TooLarge(format!(
                "the request names {n} models; the limit is {}",
                self.max_lenses
            )));
        }
        Ok(())
    }

    pub fn check_new_tokens(&self, n: usize) -> Result<(), ApiError> {
        if n > self.max_new_tokens {
            return Err(ApiError::TooLarge(format!(
                "`max_tokens` is {n}; the limit is {}",
                self.max_new_tokens
            )));
        }
        Ok(())
    }
}

/// A token bucket per client for submissions.
pub struct Rate {
    limiter: DefaultKeyedRateLimiter<String>,
    per_minute: u32,
}

impl Rate {
    pub fn new(limits: &Limits) -> Rate {
        let per_minute = NonZeroU32::new(limits.requests_per_minute.max(1)).expect("non-zero");
        let burst = NonZeroU32::new(limits.burst.max(1)).expect("non-zero");
        Rate {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            per_minute: limits.requests_per_minute,
        }
    }

    pub fn check(&self, client: &str) -> Result<(), ApiError> {
        self.limiter.check_key(&client.to_string()).map_err(|_| {
            ApiError::RateLimited(format!(
                "too many requests: the limit is {} per minute per client; try again shortly",
                self.per_minute
            ))
        })
    }
}
