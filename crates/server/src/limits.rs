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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 20_000,
            max_lenses: 8,
            max_new_tokens: 512,
            max_message_bytes: 256 * 1024,
            max_connections: 512,
            requests_per_minute: 120,
            burst: 30,
            shutdown_grace: Duration::from_secs(20),
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
