//! The hostile clients of `lensd soak --hostile`, mixed among the virtual users: aborted
//! upgrades, slow readers, partial headers, oversize messages, hidden-model probes and
//! failed-auth storms. Each kind loops by itself until the load's deadline (a round under way
//! then finishes), from a loopback address of its own, so that the server's per-address limits
//! fall on it and not on the users at 127.0.0.1. What each saw is counted by outcome; an answer
//! other than the expected one, or more than the client's share, is a violation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::{SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::user::{add, ty, Counts, Ctx, Rng};
use super::{connect_from, http, http_from, listed, SoakOptions};

/// Each kind of hostile client with the loopback address it connects from.
pub(super) const KINDS: [(&str, Ipv4Addr); 6] = [
    ("aborted_upgrade", Ipv4Addr::new(127, 0, 0, 2)),
    ("slow_reader", Ipv4Addr::new(127, 0, 0, 3)),
    ("partial_header", Ipv4Addr::new(127, 0, 0, 4)),
    ("oversize", Ipv4Addr::new(127, 0, 0, 5)),
    ("hidden_probe", Ipv4Addr::new(127, 0, 0, 6)),
    ("auth_storm", Ipv4Addr::new(127, 0, 0, 7)),
];

/// The kinds of violation counted: a hostile connection, handshake or exchange that failed
/// where it should not (refused, reset, malformed); an aborted upgrade that read an answer
/// other than 101; a slow reader or a partial header still open past its bound; an oversize
/// message answered otherwise than `payload_too_large`, a session that did not go on after
/// one of 2× the limit, a connection left open after one over 4×; a probe answered otherwise
/// than `unknown_model`; a wrong key answered otherwise than 401 or 429 `rate_limited`, more
/// than 10 answered 401 within a minute, a storm never throttled; an anonymous call from the
/// storm's address refused.
pub(super) const VIOLATIONS: [&str; 12] = [
    "connection_failed",
    "upgrade_not_101",
    "slow_reader_not_closed",
    "partial_header_not_closed",
    "oversize_not_payload_too_large",
    "oversize_session_ended",
    "oversize_not_closed",
    "probe_not_unknown_model",
    "auth_not_401_or_429",
    "auth_over_10_per_minute",
    "auth_never_throttled",
    "anonymous_refused",
];

/// How long past the server's header or output timeout a partial header or a slow reader may
/// stay open before it counts as more than its share.
const CLOSE_SLACK: Duration = Duration::from_secs(30);
/// Partial-header connections open at once.
const PARTIAL_HEADERS: usize = 20;
/// Wrong keys the server answers 401 per address in any minute (its default
/// `--auth-failures-per-minute`); past them, 429.
const AUTH_FAILURES_PER_MINUTE: usize = 10;
const MINUTE: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<TcpStream>;

/// What the hostile clients need beyond the users' context.
pub(super) struct Plan {
    server: SocketAddr,
    /// Models the admin lists and anonymous callers do not, with their groups.
    hidden: Vec<(String, String)>,
    /// Models anonymous callers may use, which no made-up id may name.
    public: Vec<String>,
}

/// What the hostile clients saw, per kind.
#[derive(Debug, Default, Serialize)]
pub struct HostileReport {
    /// Per kind, the loopback address it connected from.
    pub sources: BTreeMap<&'static str, String>,
    /// Per kind, `attempted` and the count of each outcome.
    pub kinds: BTreeMap<&'static str, Counts>,
    /// Every kind of violation of [`VIOLATIONS`], with its count.
    pub violations: BTreeMap<&'static str, usize>,
    /// Slow readers and partial headers: the shortest and the longest time from connecting
    /// until the server closed, in seconds, and the bound the longest must keep.
    pub closed_after_seconds: BTreeMap<&'static str, [f64; 2]>,
    pub close_bound_seconds: BTreeMap<&'static str, f64>,
    /// The most wrong keys answered 401 within a minute: counted from the sending of one to
    /// the answer of a later one, so that delays in between can only raise it.
    pub most_401_in_a_minute: usize,
    /// The hidden models probed (learned with the admin key), beside made-up ids.
    pub hidden_models: Vec<String>,
    /// The first violations, as text.
    pub faults: Vec<String>,
}

/// What one hostile task saw.
#[derive(Default)]
struct Seen {
    kind: &'static str,
    outcomes: Counts,
    violations: BTreeMap<&'static str, usize>,
    faults: Vec<String>,
    /// The shortest and the longest time from connecting until the server closed.
    closed_after: Option<(Duration, Duration)>,
    most_401_in_a_minute: usize,
}

impl Seen {
    fn new(kind: &'static str) -> Seen {
        Seen {
            kind,
            ..Seen::default()
        }
    }

    fn count(&mut self, outcome: &'static str) {
        add(&mut self.outcomes, outcome, 1);
    }

    fn violation(&mut self, kind: &'static str, what: String) {
        add(&mut self.violations, kind, 1);
        if self.faults.len() < 5 {
            self.faults.push(format!("{}: {what}", self.kind));
        }
    }

    fn closed_after(&mut self, d: Duration) {
        let (lo, hi) = self.closed_after.unwrap_or((d, d));
        self.closed_after = Some((lo.min(d), hi.max(d)));
    }
}

impl HostileReport {
    fn absorb(&mut self, s: Seen) {
        let all = self.kinds.entry(s.kind).or_default();
        s.outcomes.into_iter().for_each(|(k, n)| add(all, k, n));
        s.violations
            .into_iter()
            .for_each(|(k, n)| add(&mut self.violations, k, n));
        let room = 5usize.saturating_sub(self.faults.len());
        self.faults.extend(s.faults.into_iter().take(room));
        if let Some((lo, hi)) = s.closed_after {
            let (lo, hi) = (lo.as_secs_f64(), hi.as_secs_f64());
            let e = self.closed_after_seconds.entry(s.kind).or_insert([lo, hi]);
            *e = [e[0].min(lo), e[1].max(hi)];
        }
        self.most_401_in_a_minute = self.most_401_in_a_minute.max(s.most_401_in_a_minute);
    }

    /// Why the hostile part of the run fails: a kind that made no attempt, and each violation.
    pub(super) fn failures(&self) -> Vec<String> {
        let attempts = |k: &str| self.kinds.get(k).and_then(|c| c.get("attempted")).copied();
        let idle = KINDS.iter().filter(|(k, _)| attempts(k).unwrap_or(0) == 0);
        let mut f: Vec<String> = idle
            .map(|(k, _)| format!("the hostile {k} clients made no attempt"))
            .collect();
        let seen = self.violations.iter().filter(|e| *e.1 > 0);
        f.extend(seen.map(|(k, n)| format!("{n} × hostile {k}")));
        f
    }

    /// The report as text: per kind its address, attempts and outcomes, then the violations
    /// and the figures of the shares.
    pub(super) fn table(&self) -> String {
        let mut s = String::from("| hostile | from | attempted | outcomes |\n|---|---|---:|---|\n");
        for (kind, from) in KINDS {
            let mut outcomes = self.kinds.get(kind).cloned().unwrap_or_default();
            let attempted = outcomes.remove("attempted").unwrap_or(0);
            s += &format!(
                "| {kind} | {from} | {attempted} | {} |\n",
                listed(&outcomes)
            );
        }
        s += &format!("\nhostile violations: {}\n", listed(&self.violations));
        for (kind, [lo, hi]) in &self.closed_after_seconds {
            let bound = self.close_bound_seconds.get(kind).copied().unwrap_or(0.0);
            s += &format!("{kind}: closed by the server {lo:.1}–{hi:.1} s after connecting (bound {bound:.0} s)\n");
        }
        s += &format!(
            "most wrong keys answered 401 within a minute: {} (at most {AUTH_FAILURES_PER_MINUTE})\n",
            self.most_401_in_a_minute
        );
        let hidden = match self.hidden_models.is_empty() {
            true => "none (made-up ids only)".to_string(),
            false => self.hidden_models.join(", "),
        };
        s += &format!("hidden models probed: {hidden}\n");
        self.faults
            .iter()
            .for_each(|f| s += &format!("hostile fault: {f}\n"));
        s + "\n"
    }
}

/// The models `GET /api/v2/groups` lists to `key` (anonymous without one), with their groups.
async fn listed_models(addr: &str, key: Option<&str>) -> Result<Vec<(String, String)>> {
    let (status, body) = http(addr, "GET", "/api/v2/groups", key).await?;
    ensure!(
        status == 200,
        "GET /api/v2/groups answered {status}: {body}"
    );
    let v: Value = serde_json::from_str(&body).context("GET /api/v2/groups")?;
    let mut models = Vec::new();
    for g in v["groups"].as_array().into_iter().flatten() {
        let group = g["group_id"].as_str().unwrap_or_default();
        for m in g["models"].as_array().into_iter().flatten() {
            if let Some(id) = m["id"].as_str() {
                models.push((id.to_string(), group.to_string()));
            }
        }
    }
    Ok(models)
}

/// Checks that the server is on loopback and each hostile address can reach it, and learns
/// the hidden models where the admin key allows.
pub(super) async fn prepare(addr: &str, o: &SoakOptions) -> Result<Plan> {
    let server = tokio::net::lookup_host(addr)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{addr} has no IPv4 address"))?;
    ensure!(
        server.ip().is_loopback(),
        "--hostile connects from loopback addresses (127.0.0.2 to 127.0.0.7); the server at {addr} is not on loopback"
    );
    for (kind, from) in KINDS {
        connect_from(Some(IpAddr::V4(from)), addr)
            .await
            .with_context(|| format!("the hostile {kind} clients cannot connect from {from}"))?;
    }
    let public = listed_models(addr, None).await?;
    let hidden = match &o.admin_key {
        Some(key) => {
            let all = listed_models(addr, Some(key)).await?;
            all.into_iter().filter(|m| !public.contains(m)).collect()
        }
        None => Vec::new(),
    };
    let public = public.into_iter().map(|m| m.0).collect();
    Ok(Plan {
        server,
        hidden,
        public,
    })
}

/// Runs every kind until the load's deadline; what they saw.
pub(super) async fn run(ctx: Arc<Ctx>, plan: Plan) -> Result<HostileReport> {
    let plan = Arc::new(plan);
    let seed = |k: u64| Rng::seeded(ctx.o.seed ^ 0x5eed_0000_0000_0000 ^ k);
    let mut tasks = vec![
        tokio::spawn(aborted_upgrades(ctx.clone(), plan.clone(), seed(1))),
        tokio::spawn(slow_readers(ctx.clone(), plan.clone())),
        tokio::spawn(oversize(ctx.clone(), plan.clone(), seed(2))),
        tokio::spawn(hidden_probes(ctx.clone(), plan.clone(), seed(3))),
        tokio::spawn(auth_storm(ctx.clone(), plan.clone(), seed(4))),
    ];
    for k in 0..PARTIAL_HEADERS {
        let rng = seed(100 + k as u64);
        tasks.push(tokio::spawn(partial_headers(
            ctx.clone(),
            plan.clone(),
            rng,
        )));
    }
    let bound = |timeout: Duration| (timeout + CLOSE_SLACK).as_secs_f64();
    let mut r = HostileReport {
        sources: KINDS.iter().map(|(k, a)| (*k, a.to_string())).collect(),
        violations: VIOLATIONS.iter().map(|v| (*v, 0)).collect(),
        hidden_models: plan.hidden.iter().map(|m| m.0.clone()).collect(),
        close_bound_seconds: BTreeMap::from([
            ("slow_reader", bound(ctx.o.ws_output_timeout)),
            ("partial_header", bound(ctx.o.header_timeout)),
        ]),
        ..HostileReport::default()
    };
    for t in tasks {
        r.absorb(t.await?);
    }
    Ok(r)
}

fn source(kind: &str) -> Option<IpAddr> {
    let found = KINDS.iter().find(|k| k.0 == kind);
    found.map(|k| IpAddr::V4(k.1))
}

async fn pause(rng: &mut Rng, from_ms: u64, to_ms: u64) {
    let ms = from_ms + rng.below((to_ms - from_ms) as usize) as u64;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A WebSocket session from `kind`'s address, past the upgrade.
async fn ws_from(kind: &str, ctx: &Ctx, plan: &Plan) -> Result<Ws> {
    let tcp = connect_from(source(kind), &plan.server.to_string()).await?;
    let deadline = Instant::now() + ctx.o.stall;
    let upgrade = tokio_tungstenite::client_async(ctx.o.url.as_str(), tcp);
    let (ws, _) = timeout_at(deadline.into(), upgrade)
        .await
        .context("no answer to the upgrade")??;
    Ok(ws)
}

/// What came next on a WebSocket, broadcasts left aside.
#[derive(Debug)]
enum Frame {
    Json(Value),
    Closed(String),
    Silent,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Json(v) => write!(f, "{v}"),
            Frame::Closed(why) => write!(f, "nothing: the connection ended ({why})"),
            Frame::Silent => write!(f, "nothing in time"),
        }
    }
}

impl Frame {
    fn is_error(&self, error_type: &str) -> bool {
        matches!(self, Frame::Json(v) if ty(v) == "error" && v["error_type"] == error_type)
    }
}

/// The next frame that answers something (not a broadcast), by `deadline`.
async fn answer<S>(ws: &mut S, deadline: Instant) -> Frame
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let next = match timeout_at(deadline.into(), ws.next()).await {
            Ok(next) => next,
            Err(_) => return Frame::Silent,
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(json!({"text": t.as_str()}));
                if ty(&v) != "residency_changed" {
                    return Frame::Json(v);
                }
            }
            Some(Ok(Message::Close(f))) => return Frame::Closed(format!("close frame {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Frame::Closed(e.to_string()),
            None => return Frame::Closed("end of stream".into()),
        }
    }
}

/// The server's first frame, which must be `connection_established`.
async fn hello(ws: &mut Ws, ctx: &Ctx) -> Result<Value> {
    match answer(ws, Instant::now() + ctx.o.stall).await {
        Frame::Json(v) if ty(&v) == "connection_established" => Ok(v),
        other => anyhow::bail!("the session began with {other}"),
    }
}

/// Reads an HTTP head (up to the blank line) by `deadline`.
async fn read_head(tcp: &mut TcpStream, deadline: Instant) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout_at(deadline.into(), tcp.read(&mut chunk))
            .await
            .context("no answer in time")??;
        ensure!(n > 0, "the server closed without answering");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Complete upgrade requests, each reset (`SO_LINGER` 0) at once, after a pause of a few
/// milliseconds, or after reading the 101.
async fn aborted_upgrades(ctx: Arc<Ctx>, plan: Arc<Plan>, mut rng: Rng) -> Seen {
    let mut s = Seen::new("aborted_upgrade");
    while Instant::now() < ctx.deadline {
        s.count("attempted");
        if let Err(e) = aborted_upgrade(&ctx, &plan, &mut rng, &mut s).await {
            s.violation("connection_failed", format!("{e:#}"));
        }
        pause(&mut rng, 50, 250).await;
    }
    s
}

async fn aborted_upgrade(ctx: &Ctx, plan: &Plan, rng: &mut Rng, s: &mut Seen) -> Result<()> {
    let addr = plan.server.to_string();
    let mut tcp = connect_from(source("aborted_upgrade"), &addr).await?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    match rng.below(3) {
        0 => s.count("reset_at_once"),
        1 => {
            pause(rng, 0, 5).await;
            s.count("reset_unread");
        }
        _ => {
            let head = read_head(&mut tcp, Instant::now() + ctx.o.stall).await?;
            match head.split_whitespace().nth(1) {
                Some("101") => s.count("reset_after_101"),
                _ => {
                    s.count("not_101");
                    let first = head.lines().next().unwrap_or_default();
                    s.violation(
                        "upgrade_not_101",
                        format!("the upgrade was answered {first}"),
                    );
                }
            }
        }
    }
    // A reset rather than an orderly close: whatever the server is doing finds no one there.
    tcp.set_zero_linger()?;
    Ok(())
}

/// Sessions that flood `list_model_groups` and never read, until the server closes them.
async fn slow_readers(ctx: Arc<Ctx>, plan: Arc<Plan>) -> Seen {
    let mut s = Seen::new("slow_reader");
    while Instant::now() < ctx.deadline {
        s.count("attempted");
        if let Err(e) = slow_reader(&ctx, &plan, &mut s).await {
            s.violation("connection_failed", format!("{e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s
}

async fn slow_reader(ctx: &Ctx, plan: &Plan, s: &mut Seen) -> Result<()> {
    let started = Instant::now();
    let bound = started + ctx.o.ws_output_timeout + CLOSE_SLACK;
    let mut ws = ws_from("slow_reader", ctx, plan).await?;
    let frame = Message::text(json!({"type": "list_model_groups"}).to_string());
    // Messages go out 32 at a time; a write that fails means the server has closed.
    let flood = async {
        loop {
            for _ in 0..32 {
                if let Err(e) = ws.feed(frame.clone()).await {
                    return e;
                }
            }
            if let Err(e) = ws.flush().await {
                return e;
            }
        }
    };
    let Ok(why) = timeout_at(bound.into(), flood).await else {
        s.count("not_closed");
        s.violation(
            "slow_reader_not_closed",
            format!(
                "still taking messages {:.0} s after connecting",
                started.elapsed().as_secs_f64()
            ),
        );
        return Ok(());
    };
    s.count("closed");
    s.closed_after(started.elapsed());
    tracing::debug!(%why, "a slow reader was closed");
    // What reached the client may end with the close frame saying why, unless the reset
    // lost it (the client's buffer was full when the server gave up).
    let look = Instant::now() + Duration::from_secs(2);
    while let Ok(Some(Ok(m))) = timeout_at(look.into(), ws.next()).await {
        if let Message::Close(f) = m {
            if f.is_some_and(|f| u16::from(f.code) == 1008) {
                s.count("close_frame_1008");
            }
            break;
        }
    }
    Ok(())
}

/// Connections that send part of a request's head and then nothing, each waiting to be
/// closed; [`PARTIAL_HEADERS`] of these tasks run at once.
async fn partial_headers(ctx: Arc<Ctx>, plan: Arc<Plan>, mut rng: Rng) -> Seen {
    let mut s = Seen::new("partial_header");
    // Spread the first connections, so that they do not all time out together.
    pause(&mut rng, 0, 2000).await;
    while Instant::now() < ctx.deadline {
        s.count("attempted");
        if let Err(e) = partial_header(&ctx, &plan, &mut s).await {
            s.violation("connection_failed", format!("{e:#}"));
        }
        pause(&mut rng, 0, 500).await;
    }
    s
}

async fn partial_header(ctx: &Ctx, plan: &Plan, s: &mut Seen) -> Result<()> {
    let started = Instant::now();
    let bound = started + ctx.o.header_timeout + CLOSE_SLACK;
    let addr = plan.server.to_string();
    let mut tcp = connect_from(source("partial_header"), &addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
        .await?;
    let mut buf = [0u8; 1024];
    let mut answered = false;
    loop {
        match timeout_at(bound.into(), tcp.read(&mut buf)).await {
            Err(_) => {
                s.count("not_closed");
                let what = format!(
                    "open {:.0} s after connecting",
                    started.elapsed().as_secs_f64()
                );
                s.violation("partial_header_not_closed", what);
                return Ok(());
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => answered = true,
        }
    }
    s.count("closed");
    if answered {
        s.count("answered_before_closing");
    }
    s.closed_after(started.elapsed());
    Ok(())
}

/// A message of `bytes` bytes, JSON with a padding field.
fn padded(bytes: usize) -> Message {
    let head = r#"{"type":"status","pad":""#;
    let pad = "x".repeat(bytes.saturating_sub(head.len() + 2));
    Message::text(format!("{head}{pad}\"}}"))
}

/// Sessions that send two messages of twice the size limit, each to be answered
/// `payload_too_large` with the session going on, then one over four times the limit, to be
/// answered so and closed.
async fn oversize(ctx: Arc<Ctx>, plan: Arc<Plan>, mut rng: Rng) -> Seen {
    let mut s = Seen::new("oversize");
    while Instant::now() < ctx.deadline {
        if let Err(e) = oversize_session(&ctx, &plan, &mut s).await {
            s.violation("connection_failed", format!("{e:#}"));
        }
        pause(&mut rng, 1000, 3000).await;
    }
    s
}

async fn oversize_session(ctx: &Ctx, plan: &Plan, s: &mut Seen) -> Result<()> {
    let mut ws = ws_from("oversize", ctx, plan).await?;
    let hello = hello(&mut ws, ctx).await?;
    let limit = hello["limits"]["max_message_bytes"].as_u64();
    let limit = limit.with_context(|| format!("no limits.max_message_bytes in {hello}"))? as usize;
    for _ in 0..2 {
        s.count("attempted");
        ws.send(padded(2 * limit)).await?;
        let a = answer(&mut ws, Instant::now() + ctx.o.stall).await;
        if !a.is_error("payload_too_large") {
            let what = format!("a message of 2 × {limit} bytes was answered {a}");
            s.violation("oversize_not_payload_too_large", what);
            return Ok(());
        }
        s.count("twice_answered");
        ws.send(Message::text(json!({"type": "status"}).to_string()))
            .await?;
        match answer(&mut ws, Instant::now() + ctx.o.stall).await {
            Frame::Json(v) if ty(&v) == "queue_update" => s.count("session_went_on"),
            other => {
                let what =
                    format!("after a message of 2 × {limit} bytes, status was answered {other}");
                s.violation("oversize_session_ended", what);
                return Ok(());
            }
        }
    }
    s.count("attempted");
    let (mut tx, mut rx) = ws.split();
    let huge = padded(4 * limit + 1024);
    // Read while sending: the server answers and closes before it has read the message, and
    // its reset could otherwise come before the answer was read.
    let send = tx.send(huge);
    let hear = async {
        let first = answer(&mut rx, Instant::now() + ctx.o.stall).await;
        let until = Instant::now() + Duration::from_secs(30);
        let closed = match first {
            Frame::Closed(_) => true,
            _ => loop {
                match timeout_at(until.into(), rx.next()).await {
                    Err(_) => break false,
                    Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => break true,
                    Ok(Some(Ok(_))) => {}
                }
            },
        };
        (first, closed)
    };
    tokio::pin!(send, hear);
    let (first, closed) = tokio::select! {
        heard = &mut hear => heard,
        _ = &mut send => hear.await,
    };
    if first.is_error("payload_too_large") {
        s.count("over_4x_answered");
    } else {
        let what = format!("a message of 4 × {limit} + 1024 bytes was answered {first}");
        s.violation("oversize_not_payload_too_large", what);
    }
    match closed {
        true => s.count("over_4x_closed"),
        false => {
            let what =
                format!("the connection stayed open after a message of 4 × {limit} + 1024 bytes");
            s.violation("oversize_not_closed", what);
        }
    }
    Ok(())
}

/// Anonymous sessions naming hidden and made-up models: switches with and without the group,
/// model info and analyses, each to be answered `unknown_model`.
async fn hidden_probes(ctx: Arc<Ctx>, plan: Arc<Plan>, mut rng: Rng) -> Seen {
    let mut s = Seen::new("hidden_probe");
    while Instant::now() < ctx.deadline {
        if let Err(e) = probe_session(&ctx, &plan, &mut rng, &mut s).await {
            s.violation("connection_failed", format!("{e:#}"));
        }
        pause(&mut rng, 500, 1500).await;
    }
    s
}

/// A made-up model id, with a public group to name beside it: a number, or a public id with
/// something added.
fn made_up(ctx: &Ctx, plan: &Plan, rng: &mut Rng) -> (String, String) {
    let (group, models) = &ctx.groups[rng.below(ctx.groups.len())];
    let public = &models[rng.below(models.len())];
    let id = match rng.below(3) {
        0 => format!("no-such-model-{}", rng.next() % 100_000),
        1 => format!("{public}-hidden"),
        _ => format!("../{public}"),
    };
    match plan.public.contains(&id) {
        true => (format!("no-such-model-{}", rng.next()), group.clone()),
        false => (id, group.clone()),
    }
}

async fn probe_session(ctx: &Ctx, plan: &Plan, rng: &mut Rng, s: &mut Seen) -> Result<()> {
    let mut ws = ws_from("hidden_probe", ctx, plan).await?;
    hello(&mut ws, ctx).await?;
    // Three models a session: the server's rate limit of submissions (a burst of 30 per
    // session) is never what answers the analyses.
    for _ in 0..3 {
        let hidden = !plan.hidden.is_empty() && rng.chance(50);
        let (id, group) = match hidden {
            true => plan.hidden[rng.below(plan.hidden.len())].clone(),
            false => made_up(ctx, plan, rng),
        };
        s.count(if hidden { "hidden_id" } else { "made_up_id" });
        let probes = [
            json!({"type": "switch_model_grouped", "model_id": id, "group_id": group}),
            json!({"type": "switch_model_grouped", "model_id": id}),
            json!({"type": "get_model_info", "model_id": id}),
            json!({"type": "analyze", "models": [id], "text": "The capital of France is"}),
        ];
        for p in probes {
            s.count("attempted");
            ws.send(Message::text(p.to_string())).await?;
            let a = answer(&mut ws, Instant::now() + ctx.o.stall).await;
            if a.is_error("unknown_model") {
                s.count("unknown_model");
                continue;
            }
            s.count("answered_otherwise");
            let which = if hidden { "hidden" } else { "made-up" };
            let what = format!(
                "{} naming the {which} model `{id}` was answered {a}",
                p["type"]
            );
            s.violation("probe_not_unknown_model", what);
            if matches!(a, Frame::Closed(_) | Frame::Silent) {
                return Ok(());
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// The most of `answered` (each a request's sending and its answer, in order) that fall within
/// a minute: from the sending of one to the answer of a later one. The server keeps at most
/// so many failures within any minute of its own clock, which lies between the two.
fn most_in_a_minute(answered: &[(Instant, Instant)]) -> usize {
    let mut most = 0;
    for (i, (sent, _)) in answered.iter().enumerate() {
        let within = answered[i..]
            .iter()
            .take_while(|(_, got)| got.saturating_duration_since(*sent) < MINUTE)
            .count();
        most = most.max(within);
    }
    most
}

/// Wrong keys from one address, with now and then an anonymous call from it: the first
/// [`AUTH_FAILURES_PER_MINUTE`] wrong keys of a minute answered 401, then 429, and the
/// anonymous calls 200 throughout.
async fn auth_storm(ctx: Arc<Ctx>, plan: Arc<Plan>, mut rng: Rng) -> Seen {
    let mut s = Seen::new("auth_storm");
    let from = source("auth_storm");
    let addr = plan.server.to_string();
    let mut answered_401 = Vec::new();
    let mut n = 0u64;
    while Instant::now() < ctx.deadline {
        n += 1;
        if n.is_multiple_of(4) {
            match http_from(from, &addr, "GET", "/api/v2/groups", None).await {
                Ok((200, _)) => s.count("anonymous_200"),
                Ok((status, body)) => {
                    s.count("anonymous_refused");
                    let what = format!("an anonymous call was answered {status}: {body}");
                    s.violation("anonymous_refused", what);
                }
                Err(e) => s.violation("connection_failed", format!("{e:#}")),
            }
        }
        s.count("attempted");
        let key = format!("soak-wrong-key-{:016x}", rng.next());
        let sent = Instant::now();
        match http_from(from, &addr, "GET", "/api/v2/groups", Some(&key)).await {
            Ok((401, _)) => {
                s.count("401");
                answered_401.push((sent, Instant::now()));
            }
            Ok((429, body)) if body.contains("\"rate_limited\"") => s.count("429"),
            Ok((status, body)) => {
                s.count("answered_otherwise");
                let what = format!("a wrong key was answered {status}: {body}");
                s.violation("auth_not_401_or_429", what);
            }
            Err(e) => s.violation("connection_failed", format!("{e:#}")),
        }
        pause(&mut rng, 150, 450).await;
    }
    s.most_401_in_a_minute = most_in_a_minute(&answered_401);
    if s.most_401_in_a_minute > AUTH_FAILURES_PER_MINUTE {
        let what = format!(
            "{} wrong keys were answered 401 within a minute",
            s.most_401_in_a_minute
        );
        s.violation("auth_over_10_per_minute", what);
    }
    let refused = s.outcomes.get("429").copied().unwrap_or(0);
    if answered_401.len() > AUTH_FAILURES_PER_MINUTE && refused == 0 {
        let what = format!("{} wrong keys answered 401, none 429", answered_401.len());
        s.violation("auth_never_throttled", what);
    }
    s
}

#[cfg(test)]
mod tests;
