//! The HTTP layer over real sockets from several loopback addresses (the whole of 127.0.0.0/8
//! reaches the server): header and idle timeouts, the caps on open connections overall and per
//! address, who may read an anonymous result, the `Bearer` scheme and the throttle on failed
//! authentication.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{server_with, server_with_store, ADMIN, USER};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;
use lensd_server::store::Store;
use lensd_server::Shared;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serves `state` on a free loopback port until the returned sender is dropped or used.
async fn listen(state: Shared) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(lensd_server::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// A connection to `to` from the loopback address `from` (e.g. "127.0.0.2").
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server sends until it closes the connection, within `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).to_string()),
        Err(_) => None,
    }
}

/// One request from `from` on its own connection: the status and the body.
async fn request(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = connect_from(from, to).await;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: lensd\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let text = read_until_closed(&mut s, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("{method} {path} from {from}: no answer within 20 s"));
    parse(&text)
}

fn parse(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The start of a request whose headers never end.
const PARTIAL: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: lensd\r\nX-Slow: ";

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

fn serve_limits(l: Limits) -> Shared {
    server_with(l, QueueConfig::default(), FakeEngine::new(true)).state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_cut_off_after_the_header_timeout_and_one_address_has_a_cap() {
    // issue 17 item 3: connections that send part of a header stayed open indefinitely, and
    // there was no cap per client address.
    let (addr, _stop) = listen(serve_limits(limits(|l| {
        l.http_header_timeout = Duration::from_secs(2);
        l.max_http_connections_per_address = 8;
    })))
    .await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = connect_from("127.0.0.2", addr).await;
        s.write_all(PARTIAL).await.unwrap();
        slow.push(s);
    }
    // The ninth from the same address is answered and closed: with 429, where the header
    // timeout would have closed it with 408 or nothing.
    let mut ninth = connect_from("127.0.0.2", addr).await;
    let answer = read_until_closed(&mut ninth, Duration::from_secs(10))
        .await
        .expect("the connection over the per-address cap is answered and closed");
    let (status, body) = parse(&answer);
    assert_eq!(status, 429, "{answer}");
    assert_eq!(json(&body)["error_type"], "rate_limited");
    assert!(
        json(&body)["message"].as_str().unwrap().contains("8"),
        "the answer names the limit: {body}"
    );
    // Another address is served meanwhile.
    let (status, _) = request("127.0.0.3", addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    // Each slow connection is closed once the header timeout has passed, not before.
    for s in &mut slow {
        let rest = read_until_closed(s, Duration::from_secs(5))
            .await
            .expect("a partial header is cut off");
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{rest:?}"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1950));
    // Their slots are free again.
    let (status, _) = request("127.0.0.2", addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    // issue 17 item 3: an idle kept-alive connection stayed open indefinitely.
    let (addr, _stop) = listen(serve_limits(limits(|l| {
        l.http_idle_timeout = Duration::from_secs(1);
        l.http_header_timeout = Duration::from_secs(30);
    })))
    .await;
    let mut s = connect_from("127.0.0.4", addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lensd\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let all = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed");
    let idle = answered.elapsed();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_overall_cap_the_longest_waiting_connection_without_a_request_makes_room() {
    // issue 17 item 3: with no cap on open connections, a flood of partial headers exhausted
    // the descriptors and `/healthz` timed out. At the cap, a new connection replaces the
    // connection that has waited longest without a request in progress.
    let (addr, _stop) = listen(serve_limits(limits(|l| {
        l.max_http_connections = 6;
        l.http_header_timeout = Duration::from_secs(60);
    })))
    .await;
    let mut slow = Vec::new();
    for i in 0..6 {
        let mut s = connect_from(&format!("127.0.1.{}", i + 1), addr).await;
        s.write_all(PARTIAL).await.unwrap();
        // Admitted in the order they arrive, so each is younger than the one before.
        slow.push(s);
    }
    let (status, _) = request("127.0.1.100", addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let oldest = read_until_closed(&mut slow[0], Duration::from_secs(2)).await;
    assert!(oldest.is_some(), "the oldest waiting connection was closed");
    for s in &mut slow[2..] {
        assert!(
            read_until_closed(s, Duration::from_millis(100))
                .await
                .is_none(),
            "younger ones stay open"
        );
    }
}

/// Submits an analysis anonymously from `from` and waits for its end; returns its id.
async fn analyse_from(from: &str, addr: SocketAddr) -> String {
    let (status, body) = request(
        from,
        addr,
        "POST",
        "/api/v2/analyze",
        None,
        Some(r#"{"text": "the owner reads this", "models": ["pub-logit"]}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = json(&body)["request_id"].as_str().unwrap().to_string();
    let (status, events) = request(
        from,
        addr,
        "GET",
        &format!("/api/v2/requests/{id}/events"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    assert!(events.contains("event: completed"), "{events}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_result_is_read_only_from_the_address_that_submitted_it_also_after_a_restart()
{
    // issue 17 item 5: an anonymous result was returned in full to any anonymous caller,
    // from any address, by GET /api/v2/requests/{id}.
    let store = Arc::new(Store::open_in_memory().unwrap());
    let first = server_with_store(store.clone());
    let (addr, stop) = listen(first.state.clone()).await;
    let id = analyse_from("127.0.0.5", addr).await;
    let path = format!("/api/v2/requests/{id}");
    let (status, body) = request("127.0.0.6", addr, "GET", &path, None, None).await;
    assert_eq!(status, 404, "another address: {body}");
    assert!(!body.contains("the owner reads this"), "{body}");
    let (status, body) = request(
        "127.0.0.6",
        addr,
        "POST",
        &format!("{path}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = request("127.0.0.5", addr, "GET", &path, None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"]["state"], "completed", "{body}");
    assert!(json(&body)["result"].is_object(), "{body}");
    // A key's holder is not the anonymous owner either; an admin sees everything.
    let (status, _) = request(
        "127.0.0.5",
        addr,
        "GET",
        &path,
        Some(&format!("Bearer {USER}")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = request(
        "127.0.0.6",
        addr,
        "GET",
        &path,
        Some(&format!("Bearer {ADMIN}")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let _ = stop.send(());

    // A restart: only the database remembers the request.
    let second = server_with_store(store);
    assert!(second.state.requests.get(&id).is_none());
    let (addr, _stop) = listen(second.state.clone()).await;
    let (status, body) = request("127.0.0.6", addr, "GET", &path, None, None).await;
    assert_eq!(status, 404, "another address after a restart: {body}");
    let (status, body) = request("127.0.0.5", addr, "GET", &path, None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["result"].is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_header_needs_the_bearer_scheme() {
    // issue 17 item 10: a key sent without `Bearer ` was accepted.
    let (addr, _stop) = listen(serve_limits(Limits::default())).await;
    let (status, body) =
        request("127.0.0.7", addr, "GET", "/api/v1/models", Some(USER), None).await;
    assert_eq!(status, 401, "{body}");
    let message = json(&body)["message"].as_str().unwrap().to_string();
    assert!(message.contains("Bearer"), "{message}");
    assert!(!message.contains(USER), "never echo a key: {message}");
    for scheme in ["Bearer", "bearer"] {
        let (status, body) = request(
            "127.0.0.7",
            addr,
            "GET",
            "/api/v1/models",
            Some(&format!("{scheme} {USER}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{scheme}: {body}");
        // The backend-only model is listed for a key only.
        assert!(body.contains("\"be\""), "{scheme}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_throttled_per_address() {
    // issue 17 item 10: a storm of wrong keys was never slowed down.
    let (addr, _stop) = listen(serve_limits(Limits::default())).await;
    let wrong = "Bearer wrong-key-0123456789abcdef";
    for i in 0..10 {
        let (status, body) = request(
            "127.0.0.8",
            addr,
            "GET",
            "/api/v2/groups",
            Some(wrong),
            None,
        )
        .await;
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let (status, body) = request(
        "127.0.0.8",
        addr,
        "GET",
        "/api/v2/groups",
        Some(wrong),
        None,
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error_type"], "rate_limited");
    let message = json(&body)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("10 failed authentications per minute"),
        "{message}"
    );
    // While throttled even the right key is not checked from that address...
    let right = format!("Bearer {USER}");
    let (status, _) = request(
        "127.0.0.8",
        addr,
        "GET",
        "/api/v2/groups",
        Some(&right),
        None,
    )
    .await;
    assert_eq!(status, 429);
    // ...and anonymous calls from it still work, as does the key from elsewhere.
    let (status, _) = request("127.0.0.8", addr, "GET", "/api/v2/groups", None, None).await;
    assert_eq!(status, 200);
    let (status, _) = request(
        "127.0.0.9",
        addr,
        "GET",
        "/api/v2/groups",
        Some(&right),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_counts_from_a_requests_first_byte_not_from_the_last_answer() {
    // issue 17 item 3: the header timeout must not close a kept-alive connection that waits
    // (within the idle timeout) for its next request.
    let (addr, _stop) = listen(serve_limits(limits(|l| {
        l.http_header_timeout = Duration::from_millis(500);
        l.http_idle_timeout = Duration::from_secs(10);
    })))
    .await;
    let mut s = connect_from("127.0.0.10", addr).await;
    let get = b"GET /healthz HTTP/1.1\r\nHost: lensd\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        s.write_all(get).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "round {round}");
        // Three header timeouts of waiting between requests.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // A head begun and not finished is cut off after the header timeout.
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let rest = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the unfinished head is cut off");
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
}
