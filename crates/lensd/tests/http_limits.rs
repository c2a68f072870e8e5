//! `lensd serve`'s HTTP layer against a real process: a flood of partial headers under a low
//! descriptor limit, and an admin reload whose error must not reveal the new configuration's
//! paths.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::http;
use common::server::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn write_config(dir: &Path, base: &Path) -> std::path::PathBuf {
    let cfg = dir.join("model_groups.json");
    let doc = json!({"model_groups": [
        {"group_id": "demo", "group_name": "SmolLM2", "base_model_path": base,
         "models": [{"id": "logit", "name": "Logit", "lens": "logit"}]}],
        "settings": {"device_budget": "2GiB", "host_budget": "1GiB"}});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    cfg
}

/// `lensd serve` with its descriptor limit (soft and hard) set to `descriptors`.
fn start_limited(cfg: &Path, data: &Path, descriptors: u64, extra: &[&str]) -> Server {
    let mut cmd = Server::command(cfg, data, extra);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: descriptors,
                rlim_max: descriptors,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(cmd)
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: &str) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to.parse().unwrap()).await
}

/// `/healthz` answers 200 within `within`.
async fn healthy(addr: &str, within: Duration) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lensd\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(true)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_partial_headers_under_a_low_descriptor_limit_is_survived() {
    // issue 17 item 3: with the descriptor limit at 512, 600 connections that send part of a
    // header made `accept` fail with EMFILE and `/healthz` time out, and they stayed open.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &common::demo_model());
    let server = start_limited(
        &cfg,
        &dir.path().join("data"),
        512,
        &["--header-timeout", "3"],
    );
    assert!(healthy(&server.addr, Duration::from_secs(5)).await);
    let flood_started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..600 {
        // Twelve addresses, fifty connections each.
        let from = format!("127.0.2.{}", 1 + i % 12);
        let Ok(mut s) = connect_from(&from, &server.addr).await else {
            continue;
        };
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lensd\r\nX-Slow: ")
            .await
            .is_ok()
        {
            slow.push(s);
        }
    }
    // The server keeps answering while the flood is open.
    for _ in 0..3 {
        assert!(
            healthy(&server.addr, Duration::from_secs(2)).await,
            "/healthz during the flood"
        );
    }
    // Every partial header is cut off (closed, or answered and closed) soon after the header
    // timeout; none stays open.
    let deadline = flood_started + Duration::from_secs(3 + 10);
    let mut open = 0;
    for s in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = Vec::new();
        if tokio::time::timeout(left, s.read_to_end(&mut buf))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "connections still open 10 s after the header timeout"
    );
    assert!(healthy(&server.addr, Duration::from_secs(2)).await);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_does_not_reveal_the_new_configurations_paths() {
    // issue 17 item 8: the reload error named the missing base of the new configuration,
    // because only the running configuration's paths were scrubbed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &common::demo_model());
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"keys": [{"key": "admin-key-for-the-reload-test", "role": "admin", "name": "ops"}]}"#,
    )
    .unwrap();
    let server = Server::start_with(
        &cfg,
        &dir.path().join("data"),
        &["--keys", keys.to_str().unwrap()],
    );
    let secret = Path::new("/opt/distinctive-xq7/weights/missing-base.gguf");
    write_config(dir.path(), secret);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v2/admin/reload",
        Some("admin-key-for-the-reload-test"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("base_model_path"),
        "the error still says where the problem is: {body}"
    );
    for leak in [
        "distinctive-xq7",
        "missing-base",
        dir.path().to_str().unwrap(),
    ] {
        assert!(!body.contains(leak), "`{leak}` in {body}");
    }
    server.stop();
}

#[test]
fn role_limits_are_read_from_a_file_and_a_bad_one_stops_the_server_naming_it() {
    // issue 17 item 11: limits per role are configurable; a mistake in them must not start a
    // server with limits other than those asked for.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &common::demo_model());
    let limits = dir.path().join("roles.json");
    std::fs::write(&limits, r#"{"anonymous": {"compute_secs": 5}}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--role-limits")
        .arg(&limits)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(limits.to_str().unwrap())
            && stderr.contains("unknown limit `anonymous.compute_secs`"),
        "{stderr}"
    );
}
