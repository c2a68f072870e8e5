//! The HTTP connections themselves, below the router: how many may be open (overall and per
//! client address), how long a client may take to send a request's headers, and how long a
//! kept-alive connection may wait for its next request.
//!
//! Each accepted connection gets a slot in [`Connections`] in the accept loop, so in the order
//! connections arrive, before hyper reads a byte. The slot lives inside the socket wrapper, so
//! it is given back exactly when the socket closes, whether the connection ended as HTTP, was
//! upgraded to a WebSocket that later closed, or was reset half-way through either. At the overall cap a new connection takes the slot of the
//! connection that has waited longest without a request in progress (a slow or idle client),
//! never of one that is being answered or was upgraded; past the per-address cap, or when
//! every slot is busy, the newcomer is answered at once and closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::state::{Phase, Shared};

/// What a connection is doing, as its watchdog and the eviction rule see it.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests being answered (their response bodies not yet finished).
    busy: usize,
    /// When the client began the head of a request not yet complete: the connection's start,
    /// or the first byte after an answer.
    head_since: Option<Instant>,
    /// When the connection last became idle: its start, or the end of its last answer.
    idle_since: Instant,
    /// Switched to another protocol (WebSocket): no longer HTTP's to time out or evict.
    upgraded: bool,
}

impl Activity {
    /// Since when the connection has waited without a request in progress, if it has.
    fn waiting_since(&self) -> Option<Instant> {
        (self.busy == 0 && !self.upgraded).then(|| self.head_since.unwrap_or(self.idle_since))
    }
}

struct Entry {
    addr: IpAddr,
    activity: watch::Receiver<Activity>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) {
        if let Some(e) = self.open.remove(&id) {
            if let Some(n) = self.per_address.get_mut(&e.addr) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&e.addr);
                }
            }
        }
    }
}

/// The open HTTP connections (WebSockets included) and their caps.
pub struct Connections {
    table: Mutex<Table>,
    max: usize,
    max_per_address: usize,
}

/// Why a connection was not admitted.
#[derive(Debug)]
enum Refusal {
    PerAddress(usize),
    Full(usize),
}

impl Refusal {
    fn error(&self) -> ApiError {
        match self {
            Refusal::PerAddress(n) => ApiError::RateLimited(format!(
                "your address has {n} connections open, the most the server allows one \
                 address; close some and try again"
            )),
            Refusal::Full(n) => ApiError::Unavailable(format!(
                "the server has {n} connections open, the most it allows, all of them busy; \
                 try again shortly"
            )),
        }
    }
}

/// A connection's place in [`Connections`], given back when dropped.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(self.id);
    }
}

impl Connections {
    pub fn new(max: usize, max_per_address: usize) -> Arc<Connections> {
        Arc::new(Connections {
            table: Mutex::new(Table::default()),
            max: max.max(1),
            max_per_address: max_per_address.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// A slot for a connection from `addr`, making room at the overall cap by evicting the
    /// connection that has waited longest without a request in progress.
    fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
        activity: watch::Receiver<Activity>,
        evict: Arc<Notify>,
    ) -> Result<Slot, Refusal> {
        let mut t = self.lock();
        if t.per_address.get(&addr).copied().unwrap_or(0) >= self.max_per_address {
            return Err(Refusal::PerAddress(self.max_per_address));
        }
        if t.open.len() >= self.max {
            let oldest = t
                .open
                .iter()
                .filter_map(|(id, e)| Some((e.activity.borrow().waiting_since()?, *id)))
                .min();
            let Some((_, victim)) = oldest else {
                return Err(Refusal::Full(self.max));
            };
            if let Some(e) = t.open.get(&victim) {
                e.evict.notify_one();
            }
            t.remove(victim);
            metrics::counter!(crate::metrics::HTTP_EVICTED).increment(1);
        }
        let id = t.next;
        t.next += 1;
        t.open.insert(
            id,
            Entry {
                addr,
                activity,
                evict,
            },
        );
        *t.per_address.entry(addr).or_default() += 1;
        Ok(Slot {
            connections: self.clone(),
            id,
        })
    }
}

/// The socket with its slot, noticing the first byte of a request's head.
struct Socket {
    stream: TcpStream,
    activity: watch::Sender<Activity>,
    _slot: Slot,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.send_if_modified(|a| {
                let starts = a.busy == 0 && a.head_since.is_none() && !a.upgraded;
                if starts {
                    a.head_since = Some(Instant::now());
                }
                starts
            });
        }
        r
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A response body that marks its request finished when it ends or is dropped.
struct Tracked {
    inner: Body,
    done: Option<watch::Sender<Activity>>,
}

impl Tracked {
    fn finish(&mut self) {
        if let Some(a) = self.done.take() {
            a.send_modify(|a| {
                a.busy = a.busy.saturating_sub(1);
                if a.busy == 0 {
                    a.idle_since = Instant::now();
                    a.head_since = None;
                }
            });
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until the connection has gone past its header timeout (a request's head begun and
/// not finished) or its idle timeout (no request since its last answer).
async fn expired(mut activity: watch::Receiver<Activity>, header: Duration, idle: Duration) {
    loop {
        let a = *activity.borrow_and_update();
        let deadline = match (a.upgraded, a.busy, a.head_since) {
            (true, _, _) | (false, 1.., _) => None,
            (false, 0, Some(since)) => Some(since + header),
            (false, 0, None) => Some(a.idle_since + idle),
        };
        match deadline {
            None => {
                if activity.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
            Some(at) => {
                tokio::select! {
                    changed = activity.changed() => if changed.is_err() {
                        return std::future::pending().await;
                    },
                    _ = tokio::time::sleep_until(at) => return,
                }
            }
        }
    }
}

/// Answers a connection that was not admitted with `refusal`'s error and closes it, taking at
/// most a second whatever the client does.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let e = refusal.error();
    let body = serde_json::to_string(&e.body()).unwrap_or_default();
    let status = e.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 1\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent meanwhile, so that closing does not reset the connection
        // before the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// A connection admitted by [`Connections::admit`], not yet served.
struct Admitted {
    slot: Slot,
    activity: watch::Sender<Activity>,
    watching: watch::Receiver<Activity>,
    evict: Arc<Notify>,
}

/// Admits a connection from `peer` or says why not. Called in the accept loop, so connections
/// are admitted in the order they arrived, whichever task later runs first.
fn admit(connections: &Arc<Connections>, peer: SocketAddr) -> Result<Admitted, Refusal> {
    let now = Instant::now();
    let (activity, watching) = watch::channel(Activity {
        busy: 0,
        head_since: Some(now),
        idle_since: now,
        upgraded: false,
    });
    let evict = Arc::new(Notify::new());
    let slot = connections.admit(peer.ip(), watching.clone(), evict.clone())?;
    Ok(Admitted {
        slot,
        activity,
        watching,
        evict,
    })
}

/// Serves one accepted connection with `app` until it closes, is evicted, times out, or the
/// server closes; a connection that was not admitted is answered with the refusal and closed.
async fn connection(
    state: Shared,
    app: Router,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Result<Admitted, Refusal>,
) {
    let Admitted {
        slot,
        activity,
        watching,
        evict,
    } = match admitted {
        Ok(a) => a,
        Err(r) => {
            tracing::debug!(%peer, ?r, "connection refused");
            metrics::counter!(crate::metrics::HTTP_REFUSED).increment(1);
            refuse(stream, r).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let requests = activity.clone();
    let io = TokioIo::new(Socket {
        stream,
        activity,
        _slot: slot,
    });
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        requests.send_modify(|a| {
            a.busy += 1;
            a.head_since = None;
        });
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        let done = requests.clone();
        async move {
            let response = app.oneshot(req.map(Body::new)).await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                done.send_modify(|a| a.upgraded = true);
            }
            Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked {
                inner,
                done: Some(done),
            }))
        }
    });
    // No timer: hyper's own header timeout would start as soon as an answer is sent, closing
    // kept-alive connections before the idle timeout. `expired` keeps both.
    let builder = hyper::server::conn::http1::Builder::new();
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut phase = state.shutdown.subscribe();
    let timeout = expired(
        watching,
        state.limits.http_header_timeout,
        state.limits.http_idle_timeout,
    );
    tokio::pin!(timeout);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(%peer, %e, "connection ended");
                }
                break;
            }
            _ = evict.notified() => {
                tracing::debug!(%peer, "connection evicted to make room for a new one");
                break;
            }
            _ = &mut timeout, if !closing => {
                tracing::debug!(%peer, "connection closed: header or idle timeout");
                metrics::counter!(crate::metrics::HTTP_TIMED_OUT).increment(1);
                break;
            }
            changed = phase.changed(), if !closing => {
                if changed.is_err() || *phase.borrow() == Phase::Closing {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Accepts connections on `listener` for `app` until the server reaches [`Phase::Closing`],
/// then waits (a bounded time) for the connections being answered to finish.
pub async fn accept(state: Shared, listener: tokio::net::TcpListener, app: Router) {
    let connections = state.http.clone();
    let mut phase = state.shutdown.subscribe();
    // Each connection task holds a receiver; all dropped means all ended.
    let (all_ended, ended) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Closing {
                    break;
                }
                continue;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let admitted = admit(&connections, peer);
                let (state, app) = (state.clone(), app.clone());
                let ended = ended.clone();
                tokio::spawn(async move {
                    connection(state, app, stream, peer, admitted).await;
                    drop(ended);
                });
            }
            Err(e) => {
                // Out of descriptors or memory for a moment: connections close on their
                // timeouts, so wait a little rather than spin.
                tracing::warn!(%e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drop(ended);
    let _ = tokio::time::timeout(Duration::from_secs(5), all_ended.closed()).await;
}
