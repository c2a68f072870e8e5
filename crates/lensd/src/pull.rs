//! `lensd pull ID`: downloads a model repository from the Hugging Face hub into the local hub
//! cache, in the layout the Python `huggingface_hub` writes (`blobs/`, `snapshots/<commit>/`
//! links into them, `refs/<revision>`), so that a config naming the id finds it offline
//! (`lensd_engine::hub`). This is the only part of lensd that downloads; the server never does.
//!
//! The transfers are hf-hub's: each file goes to `blobs/<etag>.part`, resumes from that file's
//! length with an HTTP `Range` request when a run was cut, and is renamed into `blobs/` and
//! linked into the snapshot only once complete, so a snapshot never shows a partial file.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use lensd_core::config::HubId;
use lensd_core::ByteSize;
use lensd_engine::hub::{self, HubCache};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Args)]
pub struct PullArgs {
    /// The model's hub id, `owner/name` (e.g. google/gemma-2-9b-it), optionally `@revision`.
    id: String,
    /// Branch, tag or commit to download (default: the id's `@revision`, else main).
    #[arg(long)]
    revision: Option<String>,
    /// Download only the files matching this glob (repeat; `*` matches any characters, `?` one),
    /// e.g. --include '*.json' --include '*.safetensors'. Default: every file.
    #[arg(long)]
    include: Vec<String>,
    /// Times a broken transfer is resumed within this run before giving up; a later run
    /// resumes it too.
    #[arg(long, default_value_t = 3)]
    retries: usize,
}

/// Where to download from, with what credentials, into which cache: the Python tools'
/// variables (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_CACHE`, `HF_HOME`).
struct Hub {
    endpoint: String,
    token: Option<String>,
    cache: HubCache,
}

impl Hub {
    fn from_env() -> Result<Hub> {
        let var = |k: &str| std::env::var_os(k);
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token(var)?,
            cache: HubCache::from_env(),
        })
    }
}

/// `HF_TOKEN`, else the file `huggingface-cli login` writes (`$HF_TOKEN_PATH`, else
/// `$HF_HOME/token`).
fn token(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<String>> {
    if let Some(t) = var("HF_TOKEN").and_then(|t| t.into_string().ok()) {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_string()));
        }
    }
    let path = match var("HF_TOKEN_PATH").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => hub::hf_home(&var).join("token"),
    };
    match fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the hub token {}", path.display())),
    }
}

pub fn run(args: PullArgs) -> Result<()> {
    let hub = Hub::from_env()?;
    let id = target(&args)?;
    pull(&hub, &id, &args.include, args.retries)
}

/// The id with its revision: `--revision` wins over `@revision`.
fn target(args: &PullArgs) -> Result<HubId> {
    let Some(mut id) = HubId::parse(&args.id) else {
        bail!(
            "`{}` is not a Hugging Face model id: expected owner/name, optionally @revision \
             (e.g. google/gemma-2-9b-it)",
            args.id
        );
    };
    if let Some(rev) = &args.revision {
        let Some(given) = HubId::parse(&format!("{}@{rev}", id.repo)) else {
            bail!("--revision {rev:?} is not a branch, tag or commit name");
        };
        id = given;
    }
    Ok(id)
}

fn pull(hub: &Hub, id: &HubId, include: &[String], retries: usize) -> Result<()> {
    let api = ApiBuilder::from_cache(Cache::new(hub.cache.root.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(false)
        .with_retries(retries)
        .build()
        .context("cannot set up the HTTP client")?;
    let rev = id.revision_or_main();
    let repo = |rev: &str| Repo::with_revision(id.repo.clone(), RepoType::Model, rev.to_string());

    let info = api
        .repo(repo(rev))
        .info()
        .map_err(|e| explain(e, hub, id, &format!("the file list of {id}")))?;
    let commit = info.sha;
    if !hub::is_commit(&commit) {
        bail!(
            "{}: the hub gave {commit:?} as the commit of {id}, not a 40-hex-digit commit hash",
            hub.endpoint
        );
    }
    let all: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if let Some(bad) = all.iter().find(|f| !inside(f)) {
        // Each name becomes a path under the snapshot: none may lead out of it.
        bail!(
            "{}: the file list of {id} names {bad:?}, which is not a path inside the repository",
            hub.endpoint
        );
    }
    let files: Vec<&String> = all
        .iter()
        .filter(|f| include.is_empty() || include.iter().any(|g| glob(g, f)))
        .collect();
    if files.is_empty() {
        bail!(
            "no file of {id} matches --include {}; its files are: {}",
            include.join(" "),
            all.join(", ")
        );
    }

    let repo_dir = hub.cache.repo_dir(id);
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let commit_ref = repo_dir.join("refs").join(&commit);
    let had_commit_ref = commit_ref.exists();
    // Every file from the one commit the revision named, even if the branch moves meanwhile.
    let pinned = api.repo(repo(&commit));
    eprintln!(
        "pulling {id} (commit {commit}) from {} into {}",
        hub.endpoint,
        hub.cache.root.display()
    );
    let fetched = fetch(&pinned, hub, id, &files, &snapshot);
    // hf-hub records the commit of each download under the revision it was asked for, here the
    // commit itself; the Python layout keeps refs for branches and tags only.
    if !had_commit_ref {
        let _ = fs::remove_file(&commit_ref);
    }
    let (fetched, bytes) = fetched?;
    if rev != commit {
        write_ref(&repo_dir, rev, &commit)?;
    }
    eprintln!(
        "pulled {id}: {} files, {fetched} of them fetched by this run ({})",
        files.len(),
        ByteSize(bytes)
    );
    // The folder, on standard output, for scripts and for configs that name folders.
    println!("{}", snapshot.display());
    Ok(())
}

/// Downloads each of `files` not yet in `snapshot`; how many it fetched, and their bytes.
fn fetch(
    pinned: &ApiRepo,
    hub: &Hub,
    id: &HubId,
    files: &[&String],
    snapshot: &Path,
) -> Result<(usize, u64)> {
    let (mut fetched, mut bytes) = (0, 0);
    for (i, file) in files.iter().enumerate() {
        let n = format!("[{}/{}]", i + 1, files.len());
        let local = snapshot.join(file);
        if local.exists() {
            eprintln!("{n} {file}: already in the cache");
            continue;
        }
        if fs::symlink_metadata(&local).is_ok() {
            // A link whose blob was deleted: replaced by the download's new link.
            fs::remove_file(&local)
                .with_context(|| format!("cannot remove {}", local.display()))?;
        }
        pinned
            .download_with_progress(file, Printer::new(format!("{n} {file}")))
            .map_err(|e| explain(e, hub, id, file))
            .with_context(|| {
                format!(
                    "downloading {file} of {id} failed; run `lensd pull {id}` again to resume \
                     from the partial file in {}",
                    hub.cache.repo_dir(id).join("blobs").display()
                )
            })?;
        fetched += 1;
        bytes += fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
    }
    Ok((fetched, bytes))
}

/// Writes `refs/{rev}` = `commit` whole or not at all: the cache's readers never see an empty
/// or half-written ref.
fn write_ref(repo_dir: &Path, rev: &str, commit: &str) -> Result<()> {
    let path = repo_dir.join("refs").join(rev);
    let dir = path.parent().unwrap_or(repo_dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, commit.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The hub's answer in words, with what to do about it.
fn explain(e: ApiError, hub: &Hub, id: &HubId, what: &str) -> anyhow::Error {
    let ApiError::RequestError(req) = &e else {
        return anyhow::anyhow!("{what}: {e}");
    };
    match req.as_ref() {
        ureq::Error::Status(401 | 403, r) => {
            let fix = if hub.token.is_some() {
                "the token in HF_TOKEN (or the login token file) has no access to it: accept \
                 the model's terms on its page, or use a token of an account that has"
            } else {
                "the repository is gated or private: set HF_TOKEN to an access token of an \
                 account that may read it"
            };
            anyhow::anyhow!(
                "{what}: {} answered {} for {}: {fix}",
                hub.endpoint,
                r.status(),
                r.get_url()
            )
        }
        ureq::Error::Status(404, r) => anyhow::anyhow!(
            "{what}: {} answered 404 (not found) for {}: check the id `{}` and the revision `{}`",
            hub.endpoint,
            r.get_url(),
            id.repo,
            id.revision_or_main()
        ),
        ureq::Error::Status(code, r) => {
            anyhow::anyhow!(
                "{what}: {} answered {code} for {}",
                hub.endpoint,
                r.get_url()
            )
        }
        ureq::Error::Transport(t) => anyhow::anyhow!(
            "{what}: cannot reach {}: {t} (set HF_ENDPOINT to use a mirror)",
            hub.endpoint
        ),
    }
}

/// Byte progress of one file on standard error: a line a second while it runs, and one at the
/// end.
struct Printer {
    label: String,
    size: u64,
    done: u64,
    /// Set by `init`: the next `update` is the byte the transfer starts at.
    starting: bool,
    started: Instant,
    shown: Instant,
}

impl Printer {
    fn new(label: String) -> Self {
        let now = Instant::now();
        Printer {
            label,
            size: 0,
            done: 0,
            starting: true,
            started: now,
            shown: now,
        }
    }

    fn show(&self) {
        let pct = if self.size == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.size as f64
        };
        eprintln!(
            "{}: {} of {} bytes ({pct:.0}%, {})",
            self.label,
            self.done,
            self.size,
            ByteSize(self.size)
        );
    }
}

impl Progress for Printer {
    fn init(&mut self, size: usize, _filename: &str) {
        // Called again for each attempt, which then reports its starting byte first.
        self.size = size as u64;
        self.done = 0;
        self.starting = true;
    }

    fn update(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if std::mem::take(&mut self.starting) && bytes > 0 {
            eprintln!(
                "{}: resuming at byte {bytes} of {} from the partial file",
                self.label, self.size
            );
        }
        if self.shown.elapsed() >= Duration::from_secs(1) {
            self.shown = Instant::now();
            self.show();
        }
    }

    fn finish(&mut self) {
        self.show();
        let secs = self.started.elapsed().as_secs_f64();
        if secs >= 1.0 {
            eprintln!(
                "{}: {}/s",
                self.label,
                ByteSize((self.size as f64 / secs) as u64)
            );
        }
    }
}

/// Whether a repository file name stays inside the folder it is joined onto.
fn inside(name: &str) -> bool {
    !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Whether `name` matches `pattern`, where `*` stands for any characters (`/` included, as in
/// `huggingface_hub`'s `allow_patterns`) and `?` for one.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy match with one backtrack point: the last `*` seen and where it resumed.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn globs_match_like_allow_patterns() {
        assert!(glob("*.json", "config.json"));
        assert!(glob("*.json", "sub/config.json"), "`*` crosses folders");
        assert!(!glob("*.json", "model.safetensors"));
        assert!(glob(
            "model-?????-of-*.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(glob("*", "anything"));
        assert!(glob("tokenizer*", "tokenizer.json"));
        assert!(!glob("tokenizer", "tokenizer.json"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn file_names_may_not_leave_the_snapshot() {
        assert!(inside("config.json") && inside("tuned-lens/params.pt"));
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\b",
            "",
        ] {
            assert!(!inside(bad), "{bad}");
        }
    }

    #[test]
    fn the_token_comes_from_hf_token_then_the_login_file() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_path_buf();
        let vars = |pairs: Vec<(&'static str, OsString)>| {
            let m: HashMap<&str, OsString> = pairs.into_iter().collect();
            move |k: &str| m.get(k).cloned()
        };
        let none = token(vars(vec![("HF_HOME", home.clone().into())])).unwrap();
        assert_eq!(none, None);
        fs::write(home.join("token"), "hf_file\n").unwrap();
        let file = token(vars(vec![("HF_HOME", home.clone().into())])).unwrap();
        assert_eq!(file.as_deref(), Some("hf_file"));
        let env = token(vars(vec![
            ("HF_HOME", home.clone().into()),
            ("HF_TOKEN", "hf_env".into()),
        ]))
        .unwrap();
        assert_eq!(env.as_deref(), Some("hf_env"));
    }

    #[test]
    fn revision_flag_wins_over_the_ids_own() {
        let args = |id: &str, revision: Option<&str>| PullArgs {
            id: id.into(),
            revision: revision.map(String::from),
            include: vec![],
            retries: 0,
        };
        let id = target(&args("acme/tiny@v1", Some("v2"))).unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision_or_main()),
            ("acme/tiny", "v2")
        );
        let id = target(&args("acme/tiny@v1", None)).unwrap();
        assert_eq!(id.revision_or_main(), "v1");
        let e = target(&args("/abs/path", None)).unwrap_err().to_string();
        assert!(e.contains("not a Hugging Face model id"), "{e}");
    }
}
