//! Models named by Hugging Face hub id (`google/gemma-2-9b-it`, `owner/name@revision`), found
//! in the local Hugging Face cache, the layout the Python `huggingface_hub` writes:
//!
//! ```text
//! {cache}/models--{owner}--{name}/refs/{revision}          the commit a branch or tag points at
//! {cache}/models--{owner}--{name}/snapshots/{commit}/...   the model folder (links into blobs/)
//! ```
//!
//! Resolution is offline: nothing here downloads (`lensd pull` does). A spec that exists as a
//! local path is always that path; a hub id is looked up only when no such path exists.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use lensd_core::config::HubId;

use crate::error::{EngineError, Result};

/// The local Hugging Face hub cache: the folder that holds `models--{owner}--{name}` folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    pub root: PathBuf,
}

impl HubCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// The cache the Python tools use: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// [`HubCache::from_env`] with the variables read through `var` (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        match set(&var, "HF_HUB_CACHE") {
            Some(root) => HubCache::new(root),
            None => HubCache::new(hf_home(var).join("hub")),
        }
    }

    /// The repository's folder, whether or not it exists.
    pub fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.root.join(id.cache_folder())
    }

    /// `spec` as a local path when one exists, else as a hub id read from this cache. A spec
    /// that is neither comes back unchanged, for the caller to report as a missing file.
    pub fn locate(&self, spec: &Path) -> Result<PathBuf> {
        // `symlink_metadata`: a dangling local link is a local path with a problem, not a hub id.
        if fs::symlink_metadata(spec).is_ok() {
            return Ok(spec.to_path_buf());
        }
        match spec.to_str().and_then(HubId::parse) {
            Some(id) => self.snapshot(&id),
            None => Ok(spec.to_path_buf()),
        }
    }

    /// The snapshot folder of `id` at its revision (`main` when none is given). A revision that
    /// is a full commit hash names its snapshot directly; any other is read from `refs/`.
    pub fn snapshot(&self, id: &HubId) -> Result<PathBuf> {
        let repo = self.repo_dir(id);
        let rev = id.revision_or_main();
        if !repo.is_dir() {
            return Err(missing(
                id,
                format!(
                    "no such local file or folder, and no model `{}` in the Hugging Face cache {} \
                     (looked for {}): download it with `lensd pull {id}`, or point HF_HUB_CACHE \
                     or HF_HOME at the cache that holds it",
                    id.repo,
                    self.root.display(),
                    repo.display()
                ),
            ));
        }
        let commit = if is_commit(rev) {
            rev.to_string()
        } else {
            let ref_path = repo.join("refs").join(rev);
            let text = fs::read_to_string(&ref_path).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    missing(
                        id,
                        format!(
                            "the Hugging Face cache has `{}` but not its revision `{rev}` (no {}): \
                             download it with `lensd pull {id}`",
                            id.repo,
                            ref_path.display()
                        ),
                    )
                } else {
                    EngineError::io(&ref_path, e)
                }
            })?;
            let commit = text.trim();
            if !is_commit(commit) {
                return Err(EngineError::format(
                    &ref_path,
                    format!(
                        "expected the 40-hex-digit commit that revision `{rev}` of {} points at, \
                         got {commit:?}: run `lensd pull {id}` again to rewrite it",
                        id.repo
                    ),
                ));
            }
            commit.to_string()
        };
        let snapshot = repo.join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            return Err(missing(
                id,
                format!(
                    "revision `{rev}` is commit {commit}, whose snapshot {} is not in the \
                     Hugging Face cache: download it with `lensd pull {id}`",
                    snapshot.display()
                ),
            ));
        }
        Ok(snapshot)
    }
}

/// `spec` as a local path when one exists, else as a hub id read from the cache named by the
/// environment ([`HubCache::from_env`]). What every loader calls before reading a base or a
/// donor.
pub fn locate(spec: &Path) -> Result<PathBuf> {
    HubCache::from_env().locate(spec)
}

/// The Hugging Face home: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`. It holds the hub cache (`hub/`) and the login token (`token`).
pub fn hf_home(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(home) = set(&var, "HF_HOME") {
        return home;
    }
    let cache = set(&var, "XDG_CACHE_HOME").unwrap_or_else(|| {
        // `HOME` first, as the Python tools do; the password database when it is unset.
        #[allow(deprecated)]
        let home = set(&var, "HOME").or_else(std::env::home_dir);
        home.unwrap_or_else(|| PathBuf::from("/")).join(".cache")
    });
    cache.join("huggingface")
}

/// A variable's value when it is set and not empty.
fn set(var: &impl Fn(&str) -> Option<OsString>, key: &str) -> Option<PathBuf> {
    var(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// A full commit hash: 40 lowercase hex digits.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn missing(id: &HubId, msg: String) -> EngineError {
    EngineError::Io {
        path: PathBuf::from(id.to_string()),
        error: std::io::Error::new(ErrorKind::NotFound, msg),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const C1: &str = "0123456789abcdef0123456789abcdef01234567";
    const C2: &str = "89abcdef0123456789abcdef0123456789abcdef";

    /// A cache with `acme/tiny` at two commits: `main` → C1, tag `v2` → C2.
    fn cache() -> (tempfile::TempDir, HubCache) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--acme--tiny");
        for c in [C1, C2] {
            fs::create_dir_all(repo.join("snapshots").join(c)).unwrap();
            fs::write(repo.join("snapshots").join(c).join("config.json"), c).unwrap();
        }
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), C1).unwrap();
        fs::write(repo.join("refs/v2"), format!("{C2}\n")).unwrap();
        let cache = HubCache::new(tmp.path());
        (tmp, cache)
    }

    fn err(r: Result<PathBuf>) -> String {
        r.expect_err("resolution fails").to_string()
    }

    #[test]
    fn main_is_read_from_refs() {
        let (tmp, cache) = cache();
        let p = cache.locate(Path::new("acme/tiny")).unwrap();
        assert_eq!(p, tmp.path().join("models--acme--tiny/snapshots").join(C1));
    }

    #[test]
    fn a_pinned_revision_is_read_from_its_ref() {
        let (tmp, cache) = cache();
        let p = cache.locate(Path::new("acme/tiny@v2")).unwrap();
        assert_eq!(p, tmp.path().join("models--acme--tiny/snapshots").join(C2));
    }

    #[test]
    fn a_commit_revision_names_its_snapshot() {
        let (tmp, cache) = cache();
        // No ref names C2 as `main`; the commit itself is enough.
        fs::remove_file(tmp.path().join("models--acme--tiny/refs/v2")).unwrap();
        let p = cache.locate(Path::new(&format!("acme/tiny@{C2}"))).unwrap();
        assert_eq!(p, tmp.path().join("models--acme--tiny/snapshots").join(C2));
    }

    #[test]
    fn a_missing_snapshot_says_which_commit_and_how_to_fetch_it() {
        let (tmp, cache) = cache();
        fs::remove_dir_all(tmp.path().join("models--acme--tiny/snapshots").join(C1)).unwrap();
        let e = err(cache.locate(Path::new("acme/tiny")));
        assert!(e.starts_with("acme/tiny: "), "{e}");
        assert!(e.contains(C1) && e.contains("lensd pull acme/tiny`"), "{e}");
    }

    #[test]
    fn a_missing_revision_names_its_ref() {
        let (_tmp, cache) = cache();
        let e = err(cache.locate(Path::new("acme/tiny@v3")));
        assert!(
            e.contains("refs/v3") && e.contains("lensd pull acme/tiny@v3"),
            "{e}"
        );
    }

    #[test]
    fn a_corrupt_ref_is_a_format_error() {
        let (tmp, cache) = cache();
        fs::write(
            tmp.path().join("models--acme--tiny/refs/main"),
            "not a commit",
        )
        .unwrap();
        let e = err(cache.locate(Path::new("acme/tiny")));
        assert!(
            e.contains("refs/main") && e.contains("\"not a commit\""),
            "{e}"
        );
    }

    #[test]
    fn a_missing_model_names_the_id_the_cache_and_the_fix() {
        let (tmp, cache) = cache();
        let e = err(cache.locate(Path::new("google/gemma-2-9b-it")));
        assert!(e.starts_with("google/gemma-2-9b-it: "), "{e}");
        assert!(e.contains(&tmp.path().display().to_string()), "{e}");
        assert!(e.contains("models--google--gemma-2-9b-it"), "{e}");
        assert!(e.contains("lensd pull google/gemma-2-9b-it"), "{e}");
    }

    #[test]
    fn a_local_path_wins_over_the_cache() {
        let (tmp, cache) = cache();
        // A relative path that exists is that path, even when it also reads as a hub id.
        let local = tmp.path().join("acme/tiny");
        fs::create_dir_all(&local).unwrap();
        assert_eq!(cache.locate(&local).unwrap(), local);
        let cwd_relative = Path::new("src/lib.rs"); // the crate's folder is the tests' cwd
        assert_eq!(cache.locate(cwd_relative).unwrap(), cwd_relative);
    }

    #[test]
    fn specs_that_are_not_hub_ids_come_back_unchanged() {
        let (_tmp, cache) = cache();
        for spec in [
            "/no/such/model.gguf",
            "models/demo.gguf",
            "missing",
            "a/b/c",
        ] {
            assert_eq!(cache.locate(Path::new(spec)).unwrap(), Path::new(spec));
        }
    }

    #[test]
    fn the_cache_folder_follows_the_python_tools_variables() {
        let vars = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, OsString> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        let root = |pairs: &[(&str, &str)]| HubCache::from_vars(vars(pairs)).root;
        assert_eq!(
            root(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")]),
            Path::new("/c")
        );
        assert_eq!(
            root(&[("HF_HOME", "/h"), ("HOME", "/u")]),
            Path::new("/h/hub")
        );
        assert_eq!(
            root(&[("HF_HUB_CACHE", ""), ("HOME", "/u")]),
            Path::new("/u/.cache/huggingface/hub"),
            "an empty variable counts as unset"
        );
        assert_eq!(
            root(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")]),
            Path::new("/x/huggingface/hub")
        );
        assert_eq!(
            hf_home(vars(&[("HOME", "/u")])),
            Path::new("/u/.cache/huggingface")
        );
    }

    #[test]
    fn commits_are_forty_lowercase_hex_digits() {
        assert!(is_commit(C1));
        assert!(!is_commit("main"));
        assert!(!is_commit(&C1.to_uppercase()));
        assert!(!is_commit(&C1[..39]));
    }
}
