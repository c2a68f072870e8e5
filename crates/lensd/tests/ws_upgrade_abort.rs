//! WebSocket upgrades that the client aborts, against a real `lensd serve`: the connection
//! count must come back to what is really open, so that the connection limit keeps meaning
//! "connections open" and never locks everyone out.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::client::{connect, http_get, recv};
use common::server::Server;
use common::testdata;
use tokio::io::AsyncWriteExt;

fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("model_groups.json");
    let doc = serde_json::json!({"model_groups": [
        {"group_id": "tiny", "group_name": "Tiny", "base_model_path": testdata("tiny-llama"),
         "models": [{"id": "logit", "name": "Logit", "lens": "logit"}]}
    ]});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    cfg
}

/// `lensd_websocket_connections` from `/metrics`.
async fn connections(addr: &str) -> u64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("lensd_websocket_connections "))
        .unwrap_or_else(|| panic!("no connection gauge in {body}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

/// Sends a complete upgrade request and resets the connection at once (`SO_LINGER` 0), after
/// waiting `pause` for the server to take up the request.
async fn aborted_upgrade(addr: &str, pause: Duration) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    // A reset rather than an orderly close: the server's 101 finds no one to write to.
    s.set_zero_linger().unwrap();
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_upgrades_give_their_connection_back() {
    // issue 17 item 1: an upgrade the client reset before it completed kept its place in the
    // connection count for ever; enough of them made every new client get 429.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = Server::start_with(&cfg, &dir.path().join("data"), &["--max-connections", "8"]);
    let addr = server.addr.clone();
    assert_eq!(connections(&addr).await, 0);
    // Resets at several points of the upgrade: before the server has read the request, while
    // it answers, and after. 20 rounds of 10 at once, 200 in all, 25 times the limit.
    for round in 0..20u64 {
        let pause = Duration::from_micros(round % 5 * 200);
        let attempts: Vec<_> = (0..10)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move { aborted_upgrade(&addr, pause).await })
            })
            .collect();
        for a in attempts {
            a.await.unwrap();
        }
    }
    // The count follows the aborted upgrades down to what is open: nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = connections(&addr).await;
    while open != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = connections(&addr).await;
    }
    assert_eq!(
        open, 0,
        "aborted upgrades still counted as open connections"
    );
    // And a normal client still gets in, as many times as the limit allows.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut ws = connect(&addr).await;
        assert_eq!(recv(&mut ws).await["type"], "connection_established");
        clients.push(ws);
    }
    assert_eq!(connections(&addr).await, 8);
    drop(clients);
    server.stop();
}
