//! Limits on the work of each role (anonymous, user, admin): how long one request may compute,
//! the deadline of a request that names none, how large an analysis may be (estimated before it
//! is queued), and how much compute one client may use per minute. Each refusal names the limit
//! and the role. `lensd serve --role-limits FILE` overrides the defaults (docs/server.md).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lensd_core::registry::Registry;
use lensd_core::work::{Prompt, Text, Work};
use lensd_core::LensKind;
use serde::Serialize;

use crate::auth::Role;
use crate::error::ApiError;

/// One role's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoleLimits {
    /// Seconds one request may compute once it runs; past it, it ends with `compute_limit`.
    pub compute_seconds: Option<f64>,
    /// The deadline, in seconds from submission, of a request that names none.
    pub default_deadline_seconds: Option<f64>,
    /// Positions × layers × lenses of one analysis, its positions estimated by the text's
    /// UTF-8 bytes (no tokenizer makes more tokens than that, byte fallback included).
    pub max_analysis_cells: Option<u64>,
    /// `best_of_k` × positions of an analysis with a talkative lens (positions as above).
    pub max_explanation_samples: Option<u64>,
    /// Seconds of compute one client (a key, or an anonymous caller's address) may use over
    /// any minute while other clients have work waiting or running; past it, its new work is
    /// refused until the minute has moved on or the others are served. A client alone on the
    /// server is never refused: the share is of a worker others want.
    pub compute_seconds_per_minute: Option<f64>,
}

/// The limits of every role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleTable {
    pub anonymous: RoleLimits,
    pub user: RoleLimits,
    pub admin: RoleLimits,
}

impl Default for RoleTable {
    fn default() -> Self {
        RoleTable {
            anonymous: RoleLimits {
                compute_seconds: Some(60.0),
                default_deadline_seconds: Some(300.0),
                max_analysis_cells: Some(1_000_000),
                max_explanation_samples: Some(4_096),
                compute_seconds_per_minute: Some(30.0),
            },
            user: RoleLimits {
                compute_seconds: Some(600.0),
                default_deadline_seconds: None,
                max_analysis_cells: Some(20_000_000),
                max_explanation_samples: Some(65_536),
                compute_seconds_per_minute: None,
            },
            admin: RoleLimits {
                compute_seconds: None,
                default_deadline_seconds: None,
                max_analysis_cells: None,
                max_explanation_samples: None,
                compute_seconds_per_minute: None,
            },
        }
    }
}

const FIELDS: [&str; 5] = [
    "compute_seconds",
    "default_deadline_seconds",
    "max_analysis_cells",
    "max_explanation_samples",
    "compute_seconds_per_minute",
];

impl RoleTable {
    pub fn of(&self, role: Role) -> &RoleLimits {
        match role {
            Role::Anonymous => &self.anonymous,
            Role::User => &self.user,
            Role::Admin => &self.admin,
        }
    }

    /// Reads `{"anonymous": {...}, "user": {...}, "admin": {...}}`: each field given replaces
    /// that role's default, `null` removes the limit; roles and fields left out keep theirs.
    pub fn from_file(path: &Path) -> Result<RoleTable, String> {
        let text = lensd_core::files::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<RoleTable, String> {
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid role limits: {e}"))?;
        let roles = doc
            .as_object()
            .ok_or("expected an object with `anonymous`, `user` and `admin`")?;
        let mut table = RoleTable::default();
        for (name, fields) in roles {
            let limits = match name.as_str() {
                "anonymous" => &mut table.anonymous,
                "user" => &mut table.user,
                "admin" => &mut table.admin,
                other => {
                    return Err(format!(
                        "unknown role `{other}`: the roles are anonymous, user and admin"
                    ))
                }
            };
            let fields = fields
                .as_object()
                .ok_or_else(|| format!("`{name}` must be an object of limits"))?;
            for (field, value) in fields {
                let at = format!("{name}.{field}");
                let seconds = || -> Result<Option<f64>, String> {
                    match value {
                        serde_json::Value::Null => Ok(None),
                        v => v
                            .as_f64()
                            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1e9)
                            .map(Some)
                            .ok_or_else(|| {
                                format!("`{at}` must be a positive number of seconds or null")
                            }),
                    }
                };
                let count =
                    || -> Result<Option<u64>, String> {
                        match value {
                            serde_json::Value::Null => Ok(None),
                            v => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
                                format!("`{at}` must be a positive integer or null")
                            }),
                        }
                    };
                match field.as_str() {
                    "compute_seconds" => limits.compute_seconds = seconds()?,
                    "default_deadline_seconds" => limits.default_deadline_seconds = seconds()?,
                    "max_analysis_cells" => limits.max_analysis_cells = count()?,
                    "max_explanation_samples" => limits.max_explanation_samples = count()?,
                    "compute_seconds_per_minute" => limits.compute_seconds_per_minute = seconds()?,
                    other => {
                        return Err(format!(
                            "unknown limit `{name}.{other}`: the limits are {}",
                            FIELDS.join(", ")
                        ))
                    }
                }
            }
        }
        Ok(table)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Anonymous => "anonymous callers",
        Role::User => "API keys with the user role",
        Role::Admin => "admin keys",
    }
}

/// Positions of `prompt` as the limits estimate them: its UTF-8 bytes.
fn positions(prompt: &Prompt) -> u64 {
    let bytes = match prompt {
        Prompt::Plain { text } | Prompt::Rendered { text } => text.len(),
        Prompt::Chat { messages } | Prompt::Prefill { messages } => {
            messages.iter().map(|m| m.content.len()).sum()
        }
    };
    bytes.max(1) as u64
}

impl RoleLimits {
    /// Checks the size of `work` against these limits for `role`, before it is queued. An
    /// analysis of a generation is not estimated here (its text does not exist yet); the
    /// compute limit bounds it.
    pub fn check_size(&self, role: Role, work: &Work, registry: &Registry) -> Result<(), ApiError> {
        let Work::Analyze(a) = work else {
            return Ok(());
        };
        let Text::Given(prompt) = &a.text else {
            return Ok(());
        };
        let positions = positions(prompt);
        let base = a
            .models
            .first()
            .and_then(|m| registry.models.get(m))
            .and_then(|r| registry.bases.get(&r.base));
        let layers = match base {
            Some(b) => match a.layers.resolve(b.n_layers) {
                Ok(l) => l.len() as u64,
                // A bad layer list is the scheduler's to refuse, naming the layers.
                Err(_) => return Ok(()),
            },
            None => return Ok(()),
        };
        let lenses = a.models.len() as u64;
        let cells = positions.saturating_mul(layers).saturating_mul(lenses);
        if let Some(max) = self.max_analysis_cells.filter(|m| cells > *m) {
            return Err(ApiError::TooLarge(format!(
                "the analysis is estimated at {cells} cells ({positions} positions, counted as \
                 the text's bytes, × {layers} layers × {lenses} lenses); the limit \
                 `max_analysis_cells` for {} is {max}: send a shorter text, fewer layers or \
                 fewer lenses",
                role_name(role)
            )));
        }
        let talkative = a.models.iter().any(|m| {
            registry
                .models
                .get(m)
                .and_then(|r| r.lens.as_ref())
                .and_then(|l| registry.lenses.get(l))
                .is_some_and(|l| l.kind == LensKind::Talkative)
        });
        let samples = positions.saturating_mul(a.explain.best_of_k as u64);
        if let Some(max) = self
            .max_explanation_samples
            .filter(|m| talkative && samples > *m)
        {
            return Err(ApiError::TooLarge(format!(
                "the explanations are estimated at {samples} samples (best_of_k {} × {positions} \
                 positions, counted as the text's bytes); the limit `max_explanation_samples` \
                 for {} is {max}: lower best_of_k or send a shorter text",
                a.explain.best_of_k,
                role_name(role)
            )));
        }
        Ok(())
    }

    pub fn compute(&self) -> Option<Duration> {
        self.compute_seconds.map(Duration::from_secs_f64)
    }

    pub fn default_deadline(&self) -> Option<Duration> {
        self.default_deadline_seconds.map(Duration::from_secs_f64)
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Compute each client used over the last minute.
#[derive(Default)]
pub struct ComputeLedger {
    spent: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl ComputeLedger {
    /// Records `ms` of compute that `owner`'s request just used.
    pub fn record(&self, owner: &str, ms: u64) {
        let now = Instant::now();
        let mut all = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() > 4096 {
            all.retain(|_, v| v.back().is_some_and(|(t, _)| now - *t < MINUTE));
        }
        all.entry(owner.to_string())
            .or_default()
            .push_back((now, ms));
    }

    /// Refuses new work of `owner` (of `role`) while it has used its compute of the minute and
    /// `others_waiting` (other clients have work queued or running).
    pub fn check(
        &self,
        owner: &str,
        role: Role,
        limits: &RoleLimits,
        others_waiting: bool,
    ) -> Result<(), ApiError> {
        let Some(per_minute) = limits.compute_seconds_per_minute else {
            return Ok(());
        };
        if !others_waiting {
            return Ok(());
        }
        let now = Instant::now();
        let mut all = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spent) = all.get_mut(owner) else {
            return Ok(());
        };
        while spent.front().is_some_and(|(t, _)| now - *t >= MINUTE) {
            spent.pop_front();
        }
        let used: u64 = spent.iter().map(|(_, ms)| ms).sum();
        let allowed = (per_minute * 1e3) as u64;
        if used < allowed {
            return Ok(());
        }
        // The earliest time enough of the minute's compute has aged out.
        let mut left = used;
        let mut free_at = now;
        for (t, ms) in spent.iter() {
            left -= ms;
            free_at = *t + MINUTE;
            if left < allowed {
                break;
            }
        }
        let wait = free_at.saturating_duration_since(now).as_secs() + 1;
        Err(ApiError::RateLimited(format!(
            "you used {:.1} s of compute in the last minute while others wait; the limit \
             `compute_seconds_per_minute` for {} is {per_minute} s: try again in {wait} s",
            used as f64 / 1e3,
            role_name(role)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_some_limits_removes_others_and_refuses_what_it_does_not_know() {
        let t = RoleTable::parse(
            r#"{"anonymous": {"compute_seconds": 5, "max_analysis_cells": null},
                "admin": {"compute_seconds_per_minute": 120}}"#,
        )
        .unwrap();
        let d = RoleTable::default();
        assert_eq!(t.anonymous.compute_seconds, Some(5.0));
        assert_eq!(t.anonymous.max_analysis_cells, None);
        assert_eq!(
            t.anonymous.default_deadline_seconds,
            d.anonymous.default_deadline_seconds
        );
        assert_eq!(t.user, d.user);
        assert_eq!(t.admin.compute_seconds_per_minute, Some(120.0));
        for (text, needle) in [
            (r#"{"guest": {}}"#, "unknown role `guest`"),
            (r#"{"user": {"cpu": 1}}"#, "unknown limit `user.cpu`"),
            (
                r#"{"user": {"compute_seconds": -1}}"#,
                "`user.compute_seconds` must be",
            ),
            (
                r#"{"user": {"max_analysis_cells": 1.5}}"#,
                "`user.max_analysis_cells` must be",
            ),
            (r#"[1]"#, "expected an object"),
            ("{", "invalid role limits"),
        ] {
            let e = RoleTable::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn the_ledger_refuses_a_client_past_its_minute_and_no_other() {
        let limits = RoleLimits {
            compute_seconds_per_minute: Some(2.0),
            ..RoleTable::default().admin
        };
        let ledger = ComputeLedger::default();
        ledger.record("ip:10.0.0.1", 1500);
        assert!(ledger
            .check("ip:10.0.0.1", Role::Anonymous, &limits, true)
            .is_ok());
        ledger.record("ip:10.0.0.1", 600);
        // Alone on the server, the client is not held back.
        assert!(ledger
            .check("ip:10.0.0.1", Role::Anonymous, &limits, false)
            .is_ok());
        let e = ledger
            .check("ip:10.0.0.1", Role::Anonymous, &limits, true)
            .unwrap_err()
            .body();
        assert_eq!(e.error_type, "rate_limited");
        assert!(e.message.contains("2.1 s of compute"), "{}", e.message);
        assert!(
            e.message.contains("`compute_seconds_per_minute`"),
            "{}",
            e.message
        );
        assert!(ledger
            .check("ip:10.0.0.2", Role::Anonymous, &limits, true)
            .is_ok());
    }
}
