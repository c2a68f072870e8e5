//! `lensd pull` against a hub served inside the test on 127.0.0.1:0 (the hub's file-list API and
//! `resolve` paths, with Range support), then configs and commands that name the pulled id.
//! The served model is the tiny test checkpoint.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

const REPO: &str = "acme/tiny-llama";
const COMMIT: &str = "3f4c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";
const TOKEN: &str = "hf_test_token";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> PathBuf {
    root().join("testdata/tiny-llama")
}

/// The repository's files: the tiny checkpoint and, in a subfolder, its tuned lens.
fn repo_files() -> Vec<(String, Vec<u8>)> {
    [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tuned-lens/config.json",
    ]
    .iter()
    .map(|f| (f.to_string(), fs::read(tiny().join(f)).unwrap()))
    .collect()
}

/// One request as the hub saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct Hub {
    files: HashMap<String, Vec<u8>>,
    order: Vec<String>,
    /// When set, answers 401 to requests without `Authorization: Bearer {token}`.
    token: Option<String>,
    /// The next full transfer of this file stops after this many bytes and the connection
    /// closes (once).
    cut: Mutex<Option<(String, usize)>>,
    seen: Mutex<Vec<Seen>>,
}

/// Starts the hub on a free port; its base URL and state.
fn serve(token: Option<&str>, cut: Option<(&str, usize)>) -> (String, Arc<Hub>) {
    let files = repo_files();
    let hub = Arc::new(Hub {
        order: files.iter().map(|(f, _)| f.clone()).collect(),
        files: files.into_iter().collect(),
        token: token.map(String::from),
        cut: Mutex::new(cut.map(|(f, n)| (f.to_string(), n))),
        seen: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = hub.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = state.clone();
            thread::spawn(move || answer(&state, stream));
        }
    });
    (url, hub)
}

/// Answers one request and closes the connection.
fn answer(hub: &Hub, mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let seen = Seen {
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    hub.seen.lock().unwrap().push(seen.clone());

    if let Some(t) = &hub.token {
        if seen.authorization.as_deref() != Some(&format!("Bearer {t}")) {
            return reply(&mut stream, "401 Unauthorized", &[], b"gated");
        }
    }
    let list = format!("/api/models/{REPO}/revision/");
    let resolve = format!("/{REPO}/resolve/");
    if let Some(rev) = path.strip_prefix(&list) {
        if rev != "main" && rev != COMMIT {
            return reply(&mut stream, "404 Not Found", &[], b"no such revision");
        }
        let siblings: Vec<Value> = hub.order.iter().map(|f| json!({"rfilename": f})).collect();
        let body = json!({"id": REPO, "sha": COMMIT, "siblings": siblings}).to_string();
        return reply(&mut stream, "200 OK", &[], body.as_bytes());
    }
    let Some(file) = path
        .strip_prefix(&resolve)
        .and_then(|rest| rest.split_once('/'))
        .map(|(_rev, file)| file.to_string())
    else {
        return reply(&mut stream, "404 Not Found", &[], b"");
    };
    let Some(bytes) = hub.files.get(&file) else {
        return reply(&mut stream, "404 Not Found", &[], b"");
    };
    let etag = format!("\"{:016x}\"", fnv(bytes));
    let mut head = vec![
        ("ETag".to_string(), etag),
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    let total = bytes.len();
    let Some(range) = &seen.range else {
        return reply(&mut stream, "200 OK", &head, bytes);
    };
    let (start, end) = parse_range(range, total);
    if start >= total {
        return reply(&mut stream, "416 Range Not Satisfiable", &[], b"");
    }
    head.push((
        "Content-Range".into(),
        format!("bytes {start}-{}/{total}", end - 1),
    ));
    let body = &bytes[start..end];
    let mut cut = hub.cut.lock().unwrap();
    let cut_here = matches!(&*cut, Some((f, _)) if *f == file) && start == 0 && end == total;
    if cut_here {
        // Promise the whole body, send part of it, and hang up.
        let (_, n) = cut.take().unwrap();
        drop(cut);
        write_head(&mut stream, "206 Partial Content", &head, body.len());
        let _ = stream.write_all(&body[..n]);
        let _ = stream.flush();
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    drop(cut);
    reply(&mut stream, "206 Partial Content", &head, body)
}

/// `bytes=a-` or `bytes=a-b` as the half-open range [a, end).
fn parse_range(range: &str, total: usize) -> (usize, usize) {
    let spec = range.strip_prefix("bytes=").expect("a byte range");
    let (a, b) = spec.split_once('-').expect("a-b");
    let start: usize = a.parse().unwrap();
    let end = if b.is_empty() {
        total
    } else {
        (b.parse::<usize>().unwrap() + 1).min(total)
    };
    (start, end)
}

fn write_head(stream: &mut TcpStream, status: &str, head: &[(String, String)], len: usize) {
    let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in head {
        text += &format!("{k}: {v}\r\n");
    }
    text += "\r\n";
    let _ = stream.write_all(text.as_bytes());
}

fn reply(stream: &mut TcpStream, status: &str, head: &[(String, String)], body: &[u8]) {
    write_head(stream, status, head, body.len());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// FNV-1a: a stand-in for the hub's content hashes, distinct per file.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `lensd ARGS` with the hub variables pointing at `url` and `cache`, and no others leaking in
/// from the machine running the tests.
fn lensd(args: &[&str], url: &str, cache: &Path, token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lensd"));
    cmd.args(args)
        .current_dir("/")
        .env("HF_ENDPOINT", url)
        .env("HF_HUB_CACHE", cache)
        // The login token file would be looked for here: an empty folder.
        .env("HF_HOME", cache.join("home"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("LENSD_MODEL");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().expect("lensd runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--acme--tiny-llama")
}

/// Every served file is in the snapshot, as a link into blobs/, with the served bytes.
fn assert_pulled(cache: &Path) {
    let snapshot = repo_dir(cache).join("snapshots").join(COMMIT);
    for (f, bytes) in repo_files() {
        let p = snapshot.join(&f);
        let link = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(link.file_type().is_symlink(), "{f} is a link into blobs/");
        assert_eq!(fs::read(&p).unwrap(), bytes, "{f} has the served bytes");
        let target = fs::canonicalize(&p).unwrap();
        assert_eq!(
            target.parent().unwrap(),
            fs::canonicalize(repo_dir(cache).join("blobs")).unwrap()
        );
    }
    let main = fs::read_to_string(repo_dir(cache).join("refs/main")).unwrap();
    assert_eq!(main, COMMIT);
    assert!(
        !repo_dir(cache).join("refs").join(COMMIT).exists(),
        "refs/ holds branches and tags, not commits"
    );
    let parts: Vec<_> = fs::read_dir(repo_dir(cache).join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "no partial file is left: {parts:?}");
}

#[test]
fn pull_writes_the_python_cache_layout_and_sends_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let (url, hub) = serve(Some(TOKEN), None);

    // A gated repository without a token: the error says which variable to set.
    let out = lensd(&["pull", REPO], &url, &cache, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("401") && err.contains("HF_TOKEN") && err.contains(REPO),
        "{err}"
    );

    let out = lensd(&["pull", REPO], &url, &cache, Some(TOKEN));
    succeeded(&out, "lensd pull");
    assert_pulled(&cache);
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert_eq!(text(&out.stdout).trim(), snapshot.display().to_string());
    let err = text(&out.stderr);
    let size = fs::metadata(tiny().join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        err.contains(&format!("model.safetensors: {size} of {size} bytes (100%")),
        "byte progress is printed: {err}"
    );
    let seen = hub.seen.lock().unwrap().clone();
    let with_token: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")))
        .collect();
    assert!(
        with_token
            .iter()
            .any(|s| s.path == format!("/api/models/{REPO}/revision/main")),
        "{seen:?}"
    );
    assert!(
        with_token
            .iter()
            .any(|s| s.path == format!("/{REPO}/resolve/{COMMIT}/tuned-lens/config.json")),
        "files are fetched at the listed commit, with the token: {seen:?}"
    );

    // Pulled again: nothing is downloaded.
    let before = hub.seen.lock().unwrap().len();
    let out = lensd(&["pull", REPO], &url, &cache, Some(TOKEN));
    succeeded(&out, "lensd pull again");
    assert!(text(&out.stderr).contains("already in the cache"));
    let resolves = hub.seen.lock().unwrap()[before..]
        .iter()
        .filter(|s| s.path.contains("/resolve/"))
        .count();
    assert_eq!(resolves, 0);
}

#[test]
fn include_globs_pick_files_and_name_the_choices_when_none_match() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let (url, _hub) = serve(None, None);
    let out = lensd(&["pull", REPO, "--include", "*.json"], &url, &cache, None);
    succeeded(&out, "lensd pull --include");
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert!(snapshot.join("config.json").is_file());
    assert!(snapshot.join("tuned-lens/config.json").is_file());
    assert!(!snapshot.join("model.safetensors").exists());

    let out = lensd(&["pull", REPO, "--include", "*.gguf"], &url, &cache, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("*.gguf") && err.contains("model.safetensors"),
        "{err}"
    );

    let out = lensd(&["pull", "acme/other"], &url, &cache, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("404") && err.contains("acme/other"), "{err}");
}

#[test]
fn a_cut_transfer_resumes_from_the_partial_file() {
    const CUT: usize = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let (url, hub) = serve(None, Some(("model.safetensors", CUT)));

    let args = ["pull", REPO, "--retries", "0"];
    let out = lensd(&args, &url, &cache, None);
    assert!(!out.status.success(), "the cut transfer fails the run");
    let err = text(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains(&format!("lensd pull {REPO}")),
        "{err}"
    );
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert!(
        !snapshot.join("model.safetensors").exists(),
        "a partial file never appears in the snapshot"
    );
    assert!(
        !repo_dir(&cache).join("refs/main").exists(),
        "main points at a snapshot only once it is complete"
    );
    let part: Vec<u64> = fs::read_dir(repo_dir(&cache).join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(part, [CUT as u64], "the bytes received are kept");

    let before = hub.seen.lock().unwrap().len();
    let out = lensd(&args, &url, &cache, None);
    succeeded(&out, "lensd pull after the cut");
    assert!(
        text(&out.stderr).contains(&format!("resuming at byte {CUT}")),
        "{}",
        text(&out.stderr)
    );
    let ranges: Vec<Option<String>> = hub.seen.lock().unwrap()[before..]
        .iter()
        .filter(|s| s.path.ends_with("/model.safetensors"))
        .map(|s| s.range.clone())
        .collect();
    assert!(
        ranges.contains(&Some(format!("bytes={CUT}-"))),
        "the rerun asks for the rest only: {ranges:?}"
    );
    assert!(
        !ranges.contains(&Some("bytes=0-".into())),
        "and not the whole file: {ranges:?}"
    );
    assert_pulled(&cache);

    // With retries (the default), the same run resumes.
    let cache2 = tmp.path().join("hub2");
    *hub.cut.lock().unwrap() = Some(("model.safetensors".into(), CUT));
    let out = lensd(&["pull", REPO], &url, &cache2, None);
    succeeded(&out, "lensd pull with retries");
    assert_pulled(&cache2);
}

#[test]
fn configs_and_commands_naming_the_id_find_the_pulled_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let (url, _hub) = serve(None, None);
    succeeded(&lensd(&["pull", REPO], &url, &cache, None), "lensd pull");

    let config = |base: &str| {
        let doc = json!({
            "model_groups": [{
                "group_id": "tiny", "group_name": "Tiny", "base_model_path": base,
                "models": [
                    {"id": "tiny-logit", "name": "Logit", "layer": 3},
                    {"id": "tiny-tuned", "name": "Tuned", "lens": "tuned",
                     "lens_checkpoint_path": tiny().join("tuned-lens"), "layer": 2}
                ]
            }],
            "settings": {"device_budget": "1GiB", "host_budget": "1GiB"}
        });
        let path = tmp.path().join(format!("{}.json", base.replace('/', "_")));
        fs::write(&path, doc.to_string()).unwrap();
        path
    };

    // Relative to the config's folder nothing is called acme/tiny-llama: the cache is read.
    let good = config(REPO);
    let out = lensd(
        &["check-config", good.to_str().unwrap(), "--format", "json"],
        &url,
        &cache,
        None,
    );
    succeeded(&out, "check-config naming the id");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 0, "{v}");

    let absent = config("acme/absent");
    let out = lensd(
        &["check-config", absent.to_str().unwrap()],
        &url,
        &cache,
        None,
    );
    assert!(!out.status.success());
    let report = text(&out.stdout) + &text(&out.stderr);
    assert!(
        report.contains("acme/absent") && report.contains("lensd pull acme/absent"),
        "{report}"
    );

    // Commands that load a base take the id too.
    let out = lensd(
        &[
            "tokenize", "--model", REPO, "--text", "hello", "--format", "json",
        ],
        &url,
        &cache,
        None,
    );
    succeeded(&out, "tokenize --model ID");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["ids"].as_array().unwrap().is_empty(), "{v}");
}
