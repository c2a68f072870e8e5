//! The original site's dialect: its WebSocket messages, its REST routes and its slim API, so
//! that its web page and its clients work against lensd unchanged. Everything here translates
//! into lensd's own work and views; access, limits and fairness stay lensd's.
//!
//! A WebSocket connection speaks one dialect. `/ws?dialect=original` (or `lensd`) chooses it;
//! otherwise the first message decides: one that lensd's protocol reads makes the connection
//! lensd's, one that only the original's reads makes it the original's (the original page's
//! first message, `list_model_groups` with `refresh`, is such a one).

pub mod control;
pub mod jobs;
pub mod listing;
pub mod messages;
pub mod rest;
pub mod rows;
pub mod slim;
pub mod ws;

/// How often a session in the original's dialect hears the server's queue, as the original
/// broadcast it.
pub const QUEUE_UPDATE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Which protocol a WebSocket connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Not known until the first message.
    Undecided,
    Lensd,
    Original,
}

impl Dialect {
    /// The dialect a `dialect` query parameter names.
    pub fn named(name: Option<&str>) -> Result<Dialect, String> {
        match name {
            None => Ok(Dialect::Undecided),
            Some("lensd") => Ok(Dialect::Lensd),
            Some("original") => Ok(Dialect::Original),
            Some(other) => Err(format!(
                "unknown dialect `{other}`: use `lensd` or `original`"
            )),
        }
    }
}
