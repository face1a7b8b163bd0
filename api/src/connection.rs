//! One HTTP/1 connection and the limits it is served under, so that what a
//! client can hold is bounded in time and memory:
//!
//! - **header-read timeout** (hyper's own timer): a request head must have
//!   arrived in full within this time of the connection opening or of the
//!   previous response ending. hyper arms it when it starts to wait for a
//!   head (`Conn::poll_read_head`) and arms it again when a kept-alive
//!   connection goes idle (`State::idle` sets `notify_read` for it), so it
//!   also bounds the wait for the next request: a connection that sends
//!   nothing, dribbles its head (slowloris) or sits unused between requests
//!   is closed when it runs out.
//! - **maximum head size**: hyper's read buffer never grows beyond it; a
//!   larger head is answered 431 and the connection closed.
//! - **idle timeout** (here): a connection on which no byte moves in either
//!   direction for this long is closed. That is a client that stopped reading
//!   its response: a large page, or an SSE stream whose keep-alives cannot be
//!   written any more — the stream ends and its slot is freed. A reading SSE
//!   subscriber is never idle (keep-alive comments flow more often).
//!
//! Handlers learn the connection's peer address from the [`Peer`] request
//! extension.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// hyper refuses a read buffer limit below its initial buffer (8 KiB).
const MIN_READ_BUFFER: usize = 8192;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_size: usize,
}

impl ConnectionSettings {
    /// hyper's HTTP/1 server with the timer, timeout and sizes set.
    pub fn http1(&self) -> http1::Builder {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_header_size(self.max_header_size)
            // Bounds the read buffer itself (pipelined bytes included), not
            // only what a head may parse to.
            .max_buf_size(self.max_header_size.max(MIN_READ_BUFFER));
        http
    }
}

/// The address of the peer a request arrived from (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Why the server closed a connection on the client's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    HeaderReadTimeout,
    HeaderTooLarge,
    IdleTimeout,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::IdleTimeout => "idle_timeout",
        }
    }

    fn of(err: &hyper::Error) -> Option<Self> {
        if err.is_timeout() {
            Some(Self::HeaderReadTimeout)
        } else if err.is_parse_too_large() {
            Some(Self::HeaderTooLarge)
        } else {
            None
        }
    }
}

/// Serves the connections admitted, each on its own task, and drains them
/// at shutdown.
#[derive(Debug)]
pub struct Connections {
    http: http1::Builder,
    idle_timeout: Duration,
    /// One route table for all connections, finalised once; each connection
    /// gets a cheap clone (not a rebuilt table: memory per SSE subscriber).
    service: Router,
    graceful: GracefulShutdown,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(settings: ConnectionSettings, service: Router, metrics: Arc<Metrics>) -> Self {
        Self {
            http: settings.http1(),
            idle_timeout: settings.idle_timeout,
            service,
            graceful: GracefulShutdown::new(),
            metrics,
        }
    }

    /// Serves `io` from `peer` until the connection ends, the client lets it
    /// sit idle too long, or shutdown ends it. `slot` (what admitted it) is
    /// given back as the connection closes, before the client can see it
    /// closed: a client that saw its connection end may count on its slot.
    pub fn serve<IO, H>(&self, io: IO, peer: SocketAddr, slot: H)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Unpin + Send + 'static,
    {
        let activity = Activity::new();
        self.metrics.connections_open.inc();
        let io = TokioIo::new(Tracked {
            open: Open {
                slot: Some(slot),
                metrics: self.metrics.clone(),
            },
            io,
            activity: activity.clone(),
        });
        let service = WithPeer {
            inner: TowerToHyperService::new(self.service.clone()),
            peer: Peer(peer),
        };
        let connection = self.graceful.watch(self.http.serve_connection(io, service));
        let (idle_timeout, metrics) = (self.idle_timeout, self.metrics.clone());
        tokio::spawn(async move {
            drive(connection, activity, idle_timeout, &metrics, peer).await;
        });
    }

    /// Lets every connection finish its request in flight (SSE streams end
    /// on shutdown themselves) and returns once all are closed.
    pub async fn shutdown(self) {
        tracing::debug!(connections = self.graceful.count(), "draining connections");
        self.graceful.shutdown().await;
    }
}

async fn drive(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    activity: Activity,
    idle_timeout: Duration,
    metrics: &Metrics,
    peer: SocketAddr,
) {
    let mut connection = std::pin::pin!(connection);
    let mut idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    if let Some(reason) = Dropped::of(&err) {
                        metrics.connection_dropped(reason);
                    }
                    tracing::debug!(%peer, %err, "connection ended with an error");
                }
                return;
            }
            () = idle.as_mut() => {
                let deadline = activity.last() + idle_timeout;
                if deadline <= Instant::now() {
                    metrics.connection_dropped(Dropped::IdleTimeout);
                    tracing::debug!(%peer, ?idle_timeout, "closing an idle connection");
                    // Dropping the connection closes its socket.
                    return;
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// When a byte last moved on a connection.
#[derive(Debug, Clone)]
struct Activity(Arc<AtomicU64>);

/// The origin of [`Activity`]'s clock (milliseconds since it).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Activity {
    fn new() -> Self {
        let me = Self(Arc::new(AtomicU64::new(0)));
        me.touch();
        me
    }

    fn touch(&self) {
        let since = Instant::now().saturating_duration_since(origin());
        self.0.store(
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn last(&self) -> Instant {
        origin() + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// A connection's slot, counted as open until it is given back.
#[derive(Debug)]
struct Open<H> {
    slot: Option<H>,
    metrics: Arc<Metrics>,
}

impl<H> Open<H> {
    fn release(&mut self) {
        if self.slot.take().is_some() {
            self.metrics.connections_open.dec();
        }
    }
}

impl<H> Drop for Open<H> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A connection's I/O, noting each read or write that moves bytes, and
/// holding the connection's slot until the socket is shut down or closed.
#[derive(Debug)]
pub struct Tracked<IO, H> {
    // Before `io`: fields are dropped in order, the slot before the socket.
    open: Open<H>,
    io: IO,
    activity: Activity,
}

impl<IO, H> Tracked<IO, H> {
    fn moved<T>(
        &self,
        result: Poll<io::Result<T>>,
        bytes: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(value)) = &result
            && bytes(value)
        {
            self.activity.touch();
        }
        result
    }
}

impl<IO: AsyncRead + Unpin, H: Unpin> AsyncRead for Tracked<IO, H> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut me.io).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        me.moved(result, |()| read)
    }
}

impl<IO: AsyncWrite + Unpin, H: Unpin> AsyncWrite for Tracked<IO, H> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let result = Pin::new(&mut me.io).poll_write(cx, buf);
        me.moved(result, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let result = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.moved(result, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper queues body chunks instead of copying them when it is.
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // hyper shuts down only a connection it is done with.
        me.open.release();
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

/// A hyper service that tells handlers the peer ([`Peer`]).
#[derive(Debug, Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: Peer,
}

impl<S, B> hyper::service::Service<Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;
    use crate::metrics::Metrics;

    const HEADER_READ: Duration = Duration::from_secs(4);
    const IDLE: Duration = Duration::from_secs(1);

    /// A connection served over an in-memory pipe of `buffer` bytes (and
    /// what serves it: dropping that is a shutdown).
    fn connect(buffer: usize) -> (DuplexStream, Connections) {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/big", get(|| async { "x".repeat(1 << 20) }));
        let mut registry = prometheus_client::registry::Registry::default();
        let connections = Connections::new(
            ConnectionSettings {
                header_read_timeout: HEADER_READ,
                idle_timeout: IDLE,
                max_header_size: 16384,
            },
            router,
            Arc::new(Metrics::register(&mut registry)),
        );
        let (client, server) = tokio::io::duplex(buffer);
        connections.serve(server, "192.0.2.1:4711".parse().unwrap(), ());
        (client, connections)
    }

    /// Reads until the server closes; the time it took.
    async fn until_closed(client: &mut DuplexStream) -> Duration {
        let started = Instant::now();
        let mut sink = vec![0; 64 * 1024];
        while client.read(&mut sink).await.unwrap_or(0) > 0 {}
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let (mut client, _server) = connect(1024);
        let took = until_closed(&mut client).await;
        assert!(
            took >= IDLE && took < IDLE + Duration::from_millis(50),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dribbled_head_is_cut_by_the_header_read_timeout() {
        let (mut client, _server) = connect(1024);
        let started = Instant::now();
        let dribble = async {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                if client.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(IDLE / 2).await;
            }
        };
        dribble.await;
        let took = started.elapsed();
        assert!(took >= HEADER_READ && took < HEADER_READ + IDLE, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_and_a_slow_reader_is_not() {
        // Never reads: the 1 MiB body stalls in a 4 KiB pipe.
        let (mut stalled, _server) = connect(4096);
        stalled
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(IDLE * 3).await;
        let mut sink = vec![0; 1 << 21];
        let mut received = 0;
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
        assert!(received < 1 << 20, "the whole body arrived: {received}");

        // Reads a little more often than the idle timeout: served in full.
        let (mut slow, _server2) = connect(4096);
        slow.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut received = 0;
        let mut chunk = vec![0; 64 * 1024];
        while received < (1 << 20) {
            tokio::time::sleep(IDLE / 2).await;
            match slow.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
        assert!(received >= 1 << 20, "cut after {received} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_head_is_answered_431() {
        let (mut client, _server) = connect(64 * 1024);
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let _ = client.write_all(head.as_bytes()).await;
        let mut response = Vec::new();
        let _ = client.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }
}
