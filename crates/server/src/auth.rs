//! Who is calling: roles from API keys (an `Authorization: Bearer <key>` header; on WebSocket
//! also an `auth` message), what each role may see and do, and the throttle on failed
//! authentication per client address.
//!
//! Keys are kept as SHA-256 digests and a presented key is compared with every one of them in
//! constant time, so neither the answer's timing nor the order of the keys tells anything about
//! a key's characters.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Anonymous,
    User,
    Admin,
}

/// A caller as the server knows it. `label` names the key (never the key itself) or is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub label: String,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            role: Role::Anonymous,
            label: String::new(),
        }
    }

    pub fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        let need = match role {
            Role::Admin => "an admin key",
            Role::User => "an API key",
            Role::Anonymous => "nothing",
        };
        if self.role == Role::Anonymous {
            Err(ApiError::Unauthorized(format!(
                "{action} needs {need}: send it as `Authorization: Bearer <key>`"
            )))
        } else {
            Err(ApiError::Forbidden(format!("{action} needs {need}")))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct KeyEntry {
    key: String,
    role: Role,
    /// A name for logs and limits; defaults to the role and the key's position.
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

/// The configured API keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Each key's SHA-256 digest, role and name.
    keys: Vec<([u8; 32], Role, String)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    /// Reads `{"keys": [{"key": "...", "role": "user"|"admin", "name": "..."}]}`.
    pub fn from_file(path: &Path) -> Result<Keys, String> {
        let text = lensd_core::files::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid key file: {e}", path.display()))?;
        let mut keys = Keys::default();
        for (i, k) in file.keys.into_iter().enumerate() {
            if k.key.len() < 16 {
                return Err(format!(
                    "{}: keys[{i}] is shorter than 16 characters",
                    path.display()
                ));
            }
            if k.role == Role::Anonymous {
                return Err(format!(
                    "{}: keys[{i}] has role anonymous; use user or admin",
                    path.display()
                ));
            }
            let name = k
                .name
                .unwrap_or_else(|| format!("{:?}-{i}", k.role).to_lowercase());
            if name.starts_with(ANONYMOUS_OWNER) {
                return Err(format!(
                    "{}: keys[{i}] has the name `{name}`; names starting with \
                     `{ANONYMOUS_OWNER}` are kept for anonymous callers",
                    path.display()
                ));
            }
            keys.insert(&k.key, k.role, &name);
        }
        Ok(keys)
    }

    pub fn insert(&mut self, key: &str, role: Role, name: &str) {
        let d = digest(key);
        self.keys.retain(|(k, _, _)| *k != d);
        self.keys.push((d, role, name.to_string()));
    }

    /// The caller behind an `Authorization` header value: anonymous without one, else the
    /// holder of the key it carries in the `Bearer` scheme (the scheme's name in any case).
    pub fn caller(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(raw) = header else {
            return Ok(Caller::anonymous());
        };
        let key = raw
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        match key {
            Some(key) => self.holder(key),
            // Never echo what was sent: it may be a key.
            None => Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <key>`".into(),
            )),
        }
    }

    /// The holder of `key` itself (the WebSocket `auth` message carries a bare key).
    pub fn holder(&self, key: &str) -> Result<Caller, ApiError> {
        let d = digest(key);
        let mut found = None;
        // Every key is compared, whichever matches.
        for (k, role, name) in &self.keys {
            if bool::from(k.ct_eq(&d)) {
                found = Some((*role, name));
            }
        }
        match found {
            Some((role, name)) => Ok(Caller {
                role,
                label: name.clone(),
            }),
            // Never echo the key.
            None => Err(ApiError::Unauthorized("the API key is not valid".into())),
        }
    }
}

/// The owner label of anonymous callers starts with this, followed by their address: an
/// anonymous result belongs to the address that asked for it.
pub const ANONYMOUS_OWNER: &str = "ip:";

/// Failed authentications per client address over the last minute.
pub struct AuthThrottle {
    per_minute: u32,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl AuthThrottle {
    pub fn new(per_minute: u32) -> Self {
        AuthThrottle {
            per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates `attempt` for `addr` unless that address has failed too often in the last
    /// minute; records a failure.
    pub fn check(
        &self,
        addr: Option<IpAddr>,
        attempt: impl FnOnce() -> Result<Caller, ApiError>,
    ) -> Result<Caller, ApiError> {
        let Some(addr) = addr else {
            return attempt();
        };
        let now = Instant::now();
        {
            let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(times) = all.get_mut(&addr) {
                while times.front().is_some_and(|t| now - *t >= WINDOW) {
                    times.pop_front();
                }
                if times.len() >= self.per_minute as usize {
                    let wait = WINDOW.saturating_sub(now - times[0]).as_secs() + 1;
                    metrics::counter!(crate::metrics::AUTH_THROTTLED).increment(1);
                    return Err(ApiError::RateLimited(format!(
                        "your address has made {} failed authentications per minute, the \
                         most allowed; keys from it are not checked for {wait} s",
                        self.per_minute
                    )));
                }
            }
        }
        let r = attempt();
        if matches!(r, Err(ApiError::Unauthorized(_))) {
            let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            // Forget addresses whose failures are all old, so the table stays small.
            if all.len() > 4096 {
                all.retain(|_, t| t.back().is_some_and(|t| now - *t < WINDOW));
            }
            all.entry(addr).or_default().push_back(now);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Keys, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, text).unwrap();
        Keys::from_file(&path).map_err(|e| e.replace(&path.display().to_string(), "FILE"))
    }

    #[test]
    fn a_sound_key_file_gives_each_key_its_role_and_name() {
        let keys = read(
            r#"{"keys": [{"key": "0123456789abcdef", "role": "admin", "name": "ops"},
                                     {"key": "fedcba9876543210", "role": "user"}]}"#,
        )
        .unwrap();
        let admin = keys.caller(Some("Bearer 0123456789abcdef")).unwrap();
        assert_eq!((admin.role, admin.label.as_str()), (Role::Admin, "ops"));
        let user = keys.caller(Some("bearer fedcba9876543210")).unwrap();
        assert_eq!((user.role, user.label.as_str()), (Role::User, "user-1"));
        assert_eq!(keys.holder("fedcba9876543210").unwrap(), user);
        assert!(keys.caller(Some("Bearer nope")).is_err());
        // issue 17 item 10: a key without the scheme is refused, without echoing it.
        let e = keys.caller(Some("fedcba9876543210")).unwrap_err().body();
        assert_eq!(e.error_type, "unauthorized");
        assert!(
            e.message.contains("Bearer") && !e.message.contains("fedcba"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_bad_key_file_is_refused_naming_the_file_and_the_entry() {
        for (text, needle) in [
            ("{not json", "FILE: invalid key file"),
            (
                r#"{"keys": [{"key": "short", "role": "user"}]}"#,
                "FILE: keys[0] is shorter than 16",
            ),
            (
                r#"{"keys": [{"key": "0123456789abcdef", "role": "anonymous"}]}"#,
                "FILE: keys[0] has role anonymous",
            ),
            (
                r#"{"keys": [{"key": "0123456789abcdef", "role": "root"}]}"#,
                "FILE: invalid key file",
            ),
            (
                r#"{"keys": [{"key": "0123456789abcdef", "role": "user", "name": "ip:1.2.3.4"}]}"#,
                "FILE: keys[0] has the name `ip:1.2.3.4`",
            ),
        ] {
            let e = read(text).expect_err("refused");
            assert!(e.starts_with(needle), "{text}: {e}");
        }
        let missing = Keys::from_file(Path::new("/nonexistent/keys.json")).unwrap_err();
        assert!(missing.starts_with("/nonexistent/keys.json: "), "{missing}");
    }
}
