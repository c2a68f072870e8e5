//! The virtual users of `lensd soak`: their connections, the actions they draw, and what they
//! saw, counted per connection and merged at the end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{http, SoakOptions};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The kinds of violation counted: requests on connections that stayed open with no terminal
/// event or more than one; events after a request's terminal event; requests `status` listed
/// after their end; answers later than the stall limit; connections that failed or closed
/// unasked; requests whose connection was dropped and that had not ended by the end.
pub(super) const VIOLATIONS: [&str; 6] = [
    "without_one_terminal",
    "events_after_terminal",
    "listed_after_end",
    "stalled",
    "broken_connections",
    "dropped_not_ended",
];

/// Each action with its weight in the random draw (of 100) and whether it needs the admin key.
const ACTIONS: [(&str, u32, bool); 8] = [
    ("analyze", 30, false),
    ("generate", 15, false),
    ("cancel", 15, false),
    ("disconnect", 8, false),
    ("status", 29, false),
    ("preload", 1, true),
    ("unload", 1, true),
    ("reload", 1, true),
];

/// The actions that submit a request.
pub(super) const SUBMITS: [&str; 4] = ["analyze", "generate", "cancel", "disconnect"];

/// The users' and the hostile clients' seeded draws.
pub(super) struct Rng(StdRng);

impl Rng {
    pub(super) fn seeded(seed: u64) -> Self {
        Rng(StdRng::seed_from_u64(seed))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0.random()
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.0.random_range(0..100) < percent
    }
}

/// What happened to one kind of action, by outcome: `attempted`, `accepted`, `completed`,
/// `cancelled`, `failed`, and `refused` (an error answered before a request existed).
pub(super) type Counts = BTreeMap<&'static str, usize>;

pub(super) const OUTCOMES: [&str; 6] = [
    "attempted",
    "accepted",
    "completed",
    "cancelled",
    "failed",
    "refused",
];

pub(super) fn add<K: Ord>(m: &mut BTreeMap<K, usize>, k: K, n: usize) {
    *m.entry(k).or_default() += n;
}

/// What one virtual user saw, or all of them.
#[derive(Default)]
pub(super) struct Log {
    pub(super) actions: BTreeMap<&'static str, Counts>,
    pub(super) errors: BTreeMap<String, usize>,
    pub(super) violations: BTreeMap<&'static str, usize>,
    /// Requests whose connection was dropped before they ended.
    pub(super) dropped: Vec<String>,
    /// The first faults, as text.
    pub(super) faults: Vec<String>,
}

impl Log {
    fn count(&mut self, action: &'static str, outcome: &'static str) {
        add(self.actions.entry(action).or_default(), outcome, 1);
    }

    fn error(&mut self, v: &Value) {
        let kind = v["error_type"].as_str().unwrap_or("unknown");
        add(&mut self.errors, kind.to_string(), 1);
    }

    /// Counts a request's terminal event.
    pub(super) fn end(&mut self, action: &'static str, v: &Value) {
        match ty(v) {
            "completed" => self.count(action, "completed"),
            "cancelled" => self.count(action, "cancelled"),
            _ => {
                self.count(action, "failed");
                self.error(v);
            }
        }
    }

    fn refused(&mut self, action: &'static str, v: &Value) {
        self.count(action, "refused");
        self.error(v);
    }

    fn fault(&mut self, f: Fault) {
        let kind = match f {
            Fault::Stalled(_) => "stalled",
            Fault::Broken(_) => "broken_connections",
        };
        add(&mut self.violations, kind, 1);
        if self.faults.len() < 5 {
            self.faults.push(f.to_string());
        }
    }

    pub(super) fn merge(&mut self, o: Log) {
        for (action, counts) in o.actions {
            let all = self.actions.entry(action).or_default();
            counts.into_iter().for_each(|(k, n)| add(all, k, n));
        }
        o.errors
            .into_iter()
            .for_each(|(k, n)| add(&mut self.errors, k, n));
        o.violations
            .into_iter()
            .for_each(|(k, n)| add(&mut self.violations, k, n));
        self.dropped.extend(o.dropped);
        let room = 5usize.saturating_sub(self.faults.len());
        self.faults.extend(o.faults.into_iter().take(room));
    }
}

pub(super) fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or_default()
}

fn is_terminal(v: &Value) -> bool {
    matches!(ty(v), "completed" | "cancelled" | "error") && v["request_id"].is_string()
}

/// An `error` frame answering a message, not a request's event.
fn is_refusal(v: &Value) -> bool {
    ty(v) == "error" && !v["request_id"].is_string()
}

#[derive(Debug)]
pub(super) enum Fault {
    Stalled(String),
    Broken(String),
}

impl std::error::Error for Fault {}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Stalled(s) => write!(f, "stalled: {s}"),
            Fault::Broken(s) => write!(f, "connection broken: {s}"),
        }
    }
}

/// One WebSocket connection, counting each request's terminal events as frames arrive.
pub(super) struct Conn {
    pub(super) ws: Socket,
    stall: Duration,
    /// Terminal events seen per request accepted on this connection.
    terminals: HashMap<String, u32>,
    pub(super) log: Log,
}

impl Conn {
    pub(super) async fn open(url: &str, key: Option<&str>, stall: Duration) -> Result<Conn, Fault> {
        let deadline = tokio::time::Instant::now() + stall;
        let (ws, _) = timeout_at(deadline, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Fault::Stalled(format!("connecting to {url}")))?
            .map_err(|e| Fault::Broken(format!("cannot connect to {url}: {e}")))?;
        let (terminals, log) = Default::default();
        let mut c = Conn {
            ws,
            stall,
            terminals,
            log,
        };
        c.until(|v| ty(v) == "connection_established").await?;
        if let Some(key) = key {
            c.send(json!({"type": "auth", "key": key})).await?;
            let v = c
                .until(|v| ty(v) == "connection_established" || is_refusal(v))
                .await?;
            if v["role"] != "admin" {
                return Err(Fault::Broken(format!("the admin key was not taken: {v}")));
            }
        }
        Ok(c)
    }

    pub(super) async fn send(&mut self, v: Value) -> Result<(), Fault> {
        let sent = self.ws.send(Message::text(v.to_string())).await;
        sent.map_err(|e| Fault::Broken(format!("send: {e}")))
    }

    /// The next frame that `want` accepts, within the stall limit; every frame on the way is
    /// counted.
    pub(super) async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Result<Value, Fault> {
        let deadline = tokio::time::Instant::now() + self.stall;
        loop {
            let frame = timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| Fault::Stalled(format!("no answer within {:?}", self.stall)))?;
            let v: Value = match frame {
                Some(Ok(Message::Text(t))) => serde_json::from_str(&t)
                    .map_err(|e| Fault::Broken(format!("a frame that is not JSON: {e}")))?,
                Some(Ok(Message::Close(f))) => {
                    return Err(Fault::Broken(format!("the server closed: {f:?}")))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Fault::Broken(e.to_string())),
                None => return Err(Fault::Broken("the server closed the connection".into())),
            };
            if ty(&v) == "server_shutdown" {
                return Err(Fault::Broken("the server is shutting down".into()));
            }
            self.observe(&v);
            if want(&v) {
                return Ok(v);
            }
        }
    }

    fn observe(&mut self, v: &Value) {
        let Some(id) = v["request_id"].as_str() else {
            return;
        };
        if ty(v) == "accepted" {
            self.terminals.insert(id.to_string(), 0);
        } else if let Some(n) = self.terminals.get_mut(id) {
            if is_terminal(v) {
                *n += 1;
            } else if *n > 0 {
                add(&mut self.log.violations, "events_after_terminal", 1);
            }
        }
    }

    /// Submits for `action`: the request's id, or `None` when refused (counted either way).
    pub(super) async fn submit(
        &mut self,
        action: &'static str,
        msg: Value,
    ) -> Result<Option<String>, Fault> {
        self.send(msg).await?;
        let v = self.until(|v| ty(v) == "accepted" || is_refusal(v)).await?;
        match v["request_id"].as_str() {
            Some(id) if ty(&v) == "accepted" => {
                self.log.count(action, "accepted");
                Ok(Some(id.to_string()))
            }
            _ => {
                self.log.refused(action, &v);
                Ok(None)
            }
        }
    }

    pub(super) async fn terminal(&mut self, id: &str) -> Result<Value, Fault> {
        self.until(|v| is_terminal(v) && v["request_id"] == id)
            .await
    }

    /// A `status` round trip: every frame the server queued before it has arrived. Answers to
    /// earlier messages on the way are returned.
    async fn flush(&mut self) -> Result<Vec<Value>, Fault> {
        self.send(json!({"type": "status"})).await?;
        let mut answers = Vec::new();
        let update = loop {
            let v = self
                .until(|v| ty(v) == "queue_update" || is_refusal(v))
                .await?;
            if ty(&v) == "queue_update" {
                break v;
            }
            answers.push(v);
        };
        for r in update["requests"].as_array().into_iter().flatten() {
            let id = r["request_id"].as_str().unwrap_or_default();
            if self.terminals.get(id).is_some_and(|&n| n > 0) {
                add(&mut self.log.violations, "listed_after_end", 1);
            }
        }
        Ok(answers)
    }

    /// This connection's findings. `cut` requests had no chance to end (the connection broke)
    /// and are not counted as missing their terminal event.
    fn settle(&mut self, cut: bool) -> Log {
        for (_, n) in self.terminals.drain() {
            if n > 1 || (n == 0 && !cut) {
                add(&mut self.log.violations, "without_one_terminal", 1);
            }
        }
        std::mem::take(&mut self.log)
    }
}

pub(super) const TEXTS: [&str; 4] = [
    "The capital of France is",
    "The lighthouse keeper wrote down the wind and the swell.",
    "Water boils at one hundred degrees",
    "She opened the old book and read the first line aloud.",
];

/// What every virtual user shares.
pub(super) struct Ctx {
    pub(super) o: SoakOptions,
    pub(super) addr: String,
    /// Per group, the models the analyses may name.
    pub(super) groups: Vec<(String, Vec<String>)>,
    pub(super) models: Vec<String>,
    pub(super) deadline: Instant,
}

impl Ctx {
    /// An analysis of one model, or now and then of every model of a group; `long` reads a
    /// longer text at every layer, to have time to cancel it.
    fn analyze(&self, rng: &mut Rng, long: bool) -> Value {
        let (_, same_base) = &self.groups[rng.below(self.groups.len())];
        let mut models = vec![same_base[rng.below(same_base.len())].clone()];
        if same_base.len() > 1 && rng.chance(25) {
            models = same_base.clone();
        }
        let text = TEXTS[rng.below(TEXTS.len())];
        let (text, layers) = match long {
            true => (format!("{text} ").repeat(4), "all"),
            false => (text.to_string(), "0-30:5"),
        };
        json!({"type": "analyze", "models": models, "text": text,
               "options": {"layers": layers, "top_k": 3, "best_of_k": 2}})
    }

    fn generate(&self, rng: &mut Rng, max_tokens: usize) -> Value {
        json!({"type": "generate", "model_id": self.models[rng.below(self.models.len())],
               "prompt": TEXTS[rng.below(TEXTS.len())], "max_tokens": max_tokens,
               "temperature": 0.7, "seed": rng.next() % 1000})
    }
}

/// Submits, waits for the end, and flushes.
async fn wait_for_end(c: &mut Conn, action: &'static str, msg: Value) -> Result<(), Fault> {
    if let Some(id) = c.submit(action, msg).await? {
        let end = c.terminal(&id).await?;
        c.log.end(action, &end);
    }
    for stray in c.flush().await? {
        c.log.error(&stray);
    }
    Ok(())
}

/// Submits a longer analysis and cancels it after `queued` or after its first `progress`.
async fn cancel(c: &mut Conn, ctx: &Ctx, rng: &mut Rng) -> Result<(), Fault> {
    if let Some(id) = c.submit("cancel", ctx.analyze(rng, true)).await? {
        let when = if rng.chance(50) { "queued" } else { "progress" };
        let first = c
            .until(|v| v["request_id"] == id.as_str() && (ty(v) == when || is_terminal(v)))
            .await?;
        let end = match is_terminal(&first) {
            true => first,
            false => {
                c.send(json!({"type": "cancel_request", "request_id": id}))
                    .await?;
                c.terminal(&id).await?
            }
        };
        c.log.end("cancel", &end);
    }
    // A cancel that arrived after the end is answered with an error, as it should be.
    c.flush().await.map(drop)
}

/// Submits, then leaves the connection to be dropped right after `accepted` or once the
/// request runs.
async fn disconnect(c: &mut Conn, ctx: &Ctx, rng: &mut Rng) -> Result<(), Fault> {
    let msg = match rng.chance(50) {
        true => ctx.analyze(rng, true),
        false => ctx.generate(rng, 32),
    };
    let Some(id) = c.submit("disconnect", msg).await? else {
        return Ok(());
    };
    if rng.chance(50) {
        let v = c
            .until(|v| {
                v["request_id"] == id.as_str()
                    && (matches!(ty(v), "progress" | "token") || is_terminal(v))
            })
            .await?;
        if is_terminal(&v) {
            c.log.end("disconnect", &v);
            return Ok(());
        }
    }
    c.terminals.remove(&id);
    c.log.dropped.push(id);
    Ok(())
}

/// Preloads a group to the device, or unloads one to the host, on an admin connection.
async fn residency(action: &'static str, ctx: &Ctx, rng: &mut Rng) -> Result<Log, Fault> {
    let key = ctx.o.admin_key.as_deref();
    let mut c = Conn::open(&ctx.o.url, key, ctx.o.stall).await?;
    let group = ctx.groups[rng.below(ctx.groups.len())].0.clone();
    let (msg, done) = match action {
        "preload" => (
            json!({"type": "preload_group", "group_id": group}),
            "preloaded",
        ),
        _ => (
            json!({"type": "unload_group", "group_id": group, "to": "host"}),
            "unloaded",
        ),
    };
    c.send(msg).await?;
    let v = c
        .until(|v| {
            is_refusal(v)
                || ty(v) == "group_switch_status"
                    && v["group_id"] == group.as_str()
                    && (v["status"] == done || v["status"] == "failed")
        })
        .await?;
    if is_refusal(&v) {
        c.log.refused(action, &v);
    } else if v["status"] == "failed" {
        c.log.count(action, "failed");
        c.log
            .error(&json!({"error_type": format!("{action}_failed")}));
    } else {
        c.log.count(action, "completed");
    }
    let _ = c.ws.close(None).await;
    Ok(c.settle(false))
}

async fn reload(ctx: &Ctx, log: &mut Log) -> Result<(), Fault> {
    let key = ctx.o.admin_key.as_deref();
    match http(&ctx.addr, "POST", "/api/v2/admin/reload", key).await {
        Ok((200, _)) => log.count("reload", "completed"),
        Ok((status, body)) => {
            let v = serde_json::from_str(&body).unwrap_or(json!({"error_type": status}));
            log.refused("reload", &v);
        }
        Err(e) => return Err(Fault::Broken(format!("reload: {e:#}"))),
    }
    Ok(())
}

/// One virtual user: every action once, then random ones until the time is up.
pub(super) async fn run(k: usize, ctx: Arc<Ctx>) -> Log {
    let mut rng = Rng::seeded(ctx.o.seed ^ (k as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut log = Log::default();
    let admin = ctx.o.admin_key.is_some();
    let allowed: Vec<(&'static str, u32)> = ACTIONS
        .into_iter()
        .filter(|a| admin || !a.2)
        .map(|a| (a.0, a.1))
        .collect();
    let mut tour: Vec<&'static str> = allowed.iter().map(|a| a.0).collect();
    let n = tour.len();
    tour.rotate_left(k % n);
    tour.reverse();
    let total: u32 = allowed.iter().map(|a| a.1).sum();
    let mut conn: Option<Conn> = None;
    while Instant::now() < ctx.deadline {
        let action = tour.pop().unwrap_or_else(|| {
            let mut x = rng.below(total as usize) as u32;
            for &(a, w) in &allowed {
                if x < w {
                    return a;
                }
                x -= w;
            }
            "status"
        });
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Conn::open(&ctx.o.url, None, ctx.o.stall).await {
                Ok(c) => c,
                Err(f) => {
                    log.fault(f);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        c.log.count(action, "attempted");
        let outcome = match action {
            "analyze" => wait_for_end(&mut c, action, ctx.analyze(&mut rng, false)).await,
            "generate" => wait_for_end(&mut c, action, ctx.generate(&mut rng, 8)).await,
            "cancel" => cancel(&mut c, &ctx, &mut rng).await,
            "disconnect" => disconnect(&mut c, &ctx, &mut rng).await,
            "preload" | "unload" => residency(action, &ctx, &mut rng)
                .await
                .map(|admin| log.merge(admin)),
            "reload" => reload(&ctx, &mut c.log).await,
            _ => c.flush().await.map(|stray| {
                stray.iter().for_each(|v| c.log.error(v));
                c.log.count(action, "completed");
            }),
        };
        match outcome {
            Ok(()) if action != "disconnect" => conn = Some(c),
            Ok(()) => {
                log.merge(c.settle(false));
                if rng.chance(50) {
                    // A close frame; otherwise the TCP connection just ends.
                    let _ = c.ws.close(None).await;
                }
            }
            Err(f) => {
                log.merge(c.settle(true));
                log.fault(f);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300) as u64)).await;
    }
    if let Some(mut c) = conn {
        match c.flush().await {
            Ok(stray) => {
                stray.iter().for_each(|v| c.log.error(v));
                log.merge(c.settle(false));
            }
            Err(f) => {
                log.merge(c.settle(true));
                log.fault(f);
            }
        }
        let _ = c.ws.close(None).await;
    }
    log
}
