//! Who is calling: roles from API keys (bearer header; on WebSocket also a first `auth`
//! message), and what each role may see and do.

use std::collections::HashMap;
use std::path::Path;

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
    by_key: HashMap<String, (Role, String)>,
}

impl Keys {
    /// Reads `{"keys": [{"key": "...", "role": "user"|"admin", "name": "..."}]}`.
    pub fn from_file(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
            keys.insert(&k.key, k.role, &name);
        }
        Ok(keys)
    }

    pub fn insert(&mut self, key: &str, role: Role, name: &str) {
        self.by_key
            .insert(key.to_string(), (role, name.to_string()));
    }

    /// The caller behind an `Authorization` header value (or a bare key), if any.
    pub fn caller(&self, presented: Option<&str>) -> Result<Caller, ApiError> {
        let Some(raw) = presented else {
            return Ok(Caller::anonymous());
        };
        let key = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        match self.by_key.get(key) {
            Some((role, name)) => Ok(Caller {
                role: *role,
                label: name.clone(),
            }),
            // Never echo the key.
            None => Err(ApiError::Unauthorized("the API key is not valid".into())),
        }
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
        let user = keys.caller(Some("fedcba9876543210")).unwrap();
        assert_eq!((user.role, user.label.as_str()), (Role::User, "user-1"));
        assert!(keys.caller(Some("Bearer nope")).is_err());
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
        ] {
            let e = read(text).expect_err("refused");
            assert!(e.starts_with(needle), "{text}: {e}");
        }
        let missing = Keys::from_file(Path::new("/nonexistent/keys.json")).unwrap_err();
        assert!(missing.starts_with("/nonexistent/keys.json: "), "{missing}");
    }
}
