//! `lensd bench-ws`: a bounded WebSocket load on a running `lensd serve`. Many clients connect
//! and stay connected; each sends `status` messages one after another, then submits analyses,
//! waits for `queued`, cancels and waits for the request's end. Reports the server's memory,
//! descriptors and threads before and with the clients, the message rate, the submit → `queued`
//! latency, and whether every request ended with exactly one terminal event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone)]
pub struct WsOptions {
    pub url: String,
    /// The server's process id, for its memory, descriptors and threads.
    pub pid: Option<u32>,
    pub clients: usize,
    /// `status` round trips per client.
    pub messages: usize,
    /// Analyses each client submits and cancels.
    pub submits: usize,
    pub model: String,
    /// The whole run fails past this.
    pub timeout: Duration,
}

/// A server process's resources at one moment.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub open_fds: usize,
    pub threads: usize,
}

pub(crate) fn sample(pid: Option<u32>) -> Option<ProcessSample> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(ProcessSample {
        rss_bytes: field("VmRSS:")? * 1024,
        threads: field("Threads:")? as usize,
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count(),
    })
}

/// Milliseconds at the given quantiles.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if ms.is_empty() {
                return f64::NAN;
            }
            let i = ((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        Latency {
            count: ms.len(),
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WsReport {
    pub clients: usize,
    pub connect_seconds: f64,
    pub server_before: Option<ProcessSample>,
    pub server_connected: Option<ProcessSample>,
    pub server_after_close: Option<ProcessSample>,
    /// (connected − before) resident bytes / clients.
    pub bytes_per_connection: Option<f64>,
    pub messages: usize,
    pub messages_seconds: f64,
    pub messages_per_s: f64,
    pub message_latency: Latency,
    pub submitted: usize,
    pub submit_to_queued: Latency,
    pub completed: usize,
    pub cancelled: usize,
    pub failed: usize,
    /// Submissions refused before a request existed, by error type.
    pub refused: BTreeMap<String, usize>,
    /// Requests that had no terminal event, or more than one.
    pub without_one_terminal: usize,
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    message_ms: Vec<f64>,
    queued_ms: Vec<f64>,
    completed: usize,
    cancelled: usize,
    failed: usize,
    without_one_terminal: usize,
    refused: BTreeMap<String, usize>,
}

async fn next_json(ws: &mut Socket) -> Result<Value> {
    loop {
        match ws
            .next()
            .await
            .context("the server closed the connection")??
        {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(f) => bail!("the server closed the connection: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until a message of `kind` (and, when given, for `request`) arrives.
async fn wait_for(ws: &mut Socket, kinds: &[&str], request: Option<&str>) -> Result<Value> {
    loop {
        let v = next_json(ws).await?;
        let ty = v["type"].as_str().unwrap_or_default();
        if ty == "error" && request.is_none_or(|r| v["request_id"].as_str() == Some(r)) {
            if kinds.contains(&"error") {
                return Ok(v);
            }
            bail!("the server answered with an error: {v}");
        }
        if kinds.contains(&ty) && request.is_none_or(|r| v["request_id"].as_str() == Some(r)) {
            return Ok(v);
        }
    }
}

async fn connect(url: &str) -> Result<Socket> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    wait_for(&mut ws, &["connection_established"], None).await?;
    Ok(ws)
}

async fn round_trips(ws: &mut Socket, n: usize, log: &mut ClientLog) -> Result<()> {
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::text(json!({"type": "status"}).to_string()))
            .await?;
        wait_for(ws, &["queue_update"], None).await?;
        log.message_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

const TEXT: &str = "The lighthouse keeper wrote down the wind and the swell.";

async fn submissions(ws: &mut Socket, o: &WsOptions, log: &mut ClientLog) -> Result<()> {
    for _ in 0..o.submits {
        let t = Instant::now();
        let msg = json!({"type": "analyze", "model_id": o.model, "text": TEXT,
                         "options": {"layers": "30", "top_k": 1}});
        ws.send(Message::text(msg.to_string())).await?;
        let accepted = wait_for(ws, &["accepted", "error"], None).await?;
        if accepted["type"] == "error" {
            // Refused at the door (a full queue, the rate limit): no request exists.
            let kind = accepted["error_type"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            *log.refused.entry(kind).or_default() += 1;
            continue;
        }
        let id = accepted["request_id"]
            .as_str()
            .context("`accepted` without a request_id")?
            .to_string();
        let first = wait_for(
            ws,
            &["queued", "completed", "cancelled", "error"],
            Some(&id),
        )
        .await?;
        let mut terminals = 0;
        match first["type"].as_str() {
            Some("queued") => log.queued_ms.push(t.elapsed().as_secs_f64() * 1e3),
            _ => terminals += 1,
        }
        if terminals == 0 {
            let cancel = json!({"type": "cancel_request", "request_id": id});
            ws.send(Message::text(cancel.to_string())).await?;
            let end = wait_for(ws, &["completed", "cancelled", "error"], Some(&id)).await?;
            match end["type"].as_str() {
                Some("completed") => log.completed += 1,
                Some("cancelled") => log.cancelled += 1,
                _ => log.failed += 1,
            }
            terminals += 1;
        }
        // A second terminal event for the same request would arrive right behind the first;
        // a `status` round trip flushes everything the server sent before it.
        ws.send(Message::text(json!({"type": "status"}).to_string()))
            .await?;
        loop {
            let v = next_json(ws).await?;
            let ty = v["type"].as_str().unwrap_or_default();
            if ty == "queue_update" {
                break;
            }
            if v["request_id"].as_str() == Some(id.as_str())
                && ["completed", "cancelled", "error"].contains(&ty)
            {
                terminals += 1;
            }
        }
        if terminals != 1 {
            log.without_one_terminal += 1;
        }
    }
    Ok(())
}

/// One analysis run to its end, so that the model is loaded before anything is measured.
async fn warm_up(o: &WsOptions) -> Result<()> {
    let mut ws = connect(&o.url).await?;
    let msg = json!({"type": "analyze", "model_id": o.model, "text": TEXT,
                     "options": {"layers": "30", "top_k": 1}});
    ws.send(Message::text(msg.to_string())).await?;
    let accepted = wait_for(&mut ws, &["accepted"], None).await?;
    let id = accepted["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let end = wait_for(&mut ws, &["completed", "cancelled", "error"], Some(&id)).await?;
    anyhow::ensure!(
        end["type"] == "completed",
        "the warm-up analysis did not complete: {end}"
    );
    ws.close(None).await?;
    Ok(())
}

pub async fn run(o: WsOptions) -> Result<WsReport> {
    let idle = sample(o.pid);
    warm_up(&o).await?;
    // The model is loaded and the warm-up connection released.
    let before = wait_for_release(o.pid, idle).await;
    let started = Instant::now();
    // Bounded concurrency while connecting, so that the listen backlog never overflows.
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        let gate = gate.clone();
        let url = o.url.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            connect(&url).await
        }));
    }
    let mut sockets = Vec::with_capacity(o.clients);
    for c in connecting {
        sockets.push(c.await??);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = sample(o.pid);

    let phase = |sockets: Vec<Socket>, submit: bool| {
        let o = o.clone();
        async move {
            let tasks: Vec<_> = sockets
                .into_iter()
                .map(|mut ws| {
                    let o = o.clone();
                    tokio::spawn(async move {
                        let mut log = ClientLog::default();
                        if submit {
                            submissions(&mut ws, &o, &mut log).await?;
                        } else {
                            round_trips(&mut ws, o.messages, &mut log).await?;
                        }
                        anyhow::Ok((ws, log))
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        }
    };
    let body = async {
        let t = Instant::now();
        let done = phase(sockets, false).await?;
        let messages_seconds = t.elapsed().as_secs_f64();
        let (sockets, mut logs): (Vec<_>, Vec<_>) = done.into_iter().unzip();
        let done = phase(sockets, true).await?;
        let (sockets, submit_logs): (Vec<_>, Vec<_>) = done.into_iter().unzip();
        logs.extend(submit_logs);
        anyhow::Ok((messages_seconds, sockets, logs))
    };
    let (messages_seconds, sockets, logs) = tokio::time::timeout(o.timeout, body)
        .await
        .with_context(|| format!("the load did not finish within {:?}", o.timeout))??;
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    // The server notices each close asynchronously; give it a moment before sampling.
    let after = wait_for_release(o.pid, before).await;

    let message_ms: Vec<f64> = logs.iter().flat_map(|l| l.message_ms.clone()).collect();
    let queued_ms: Vec<f64> = logs.iter().flat_map(|l| l.queued_ms.clone()).collect();
    let sum = |f: fn(&ClientLog) -> usize| logs.iter().map(f).sum::<usize>();
    let messages = message_ms.len();
    Ok(WsReport {
        clients: o.clients,
        connect_seconds,
        server_before: before,
        server_connected: connected,
        server_after_close: after,
        bytes_per_connection: before
            .zip(connected)
            .map(|(b, c)| (c.rss_bytes as f64 - b.rss_bytes as f64) / o.clients.max(1) as f64),
        messages,
        messages_seconds,
        messages_per_s: messages as f64 / messages_seconds,
        message_latency: Latency::of(message_ms),
        submitted: o.clients * o.submits,
        submit_to_queued: Latency::of(queued_ms),
        completed: sum(|l| l.completed),
        cancelled: sum(|l| l.cancelled),
        failed: sum(|l| l.failed),
        refused: logs.iter().fold(BTreeMap::new(), |mut all, l| {
            for (k, n) in &l.refused {
                *all.entry(k.clone()).or_default() += n;
            }
            all
        }),
        without_one_terminal: sum(|l| l.without_one_terminal),
    })
}

/// Samples the server until its descriptor count is back to where it started (every closed
/// connection released), or five seconds pass.
async fn wait_for_release(
    pid: Option<u32>,
    before: Option<ProcessSample>,
) -> Option<ProcessSample> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = sample(pid);
        let released = match (now, before) {
            (Some(n), Some(b)) => n.open_fds <= b.open_fds,
            _ => true,
        };
        if released || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
