//! A bad link in user space: a TCP proxy that adds delay and loss, and can be cut and
//! healed while a test runs. The kernel here has no `netem` qdisc, so the harness puts
//! this proxy on the links that need delay or loss.
//!
//! What the settings mean for a TCP stream (the proxy sees bytes, not packets):
//! - `delay`: every chunk read from one side is written to the other `delay` later,
//!   in each direction (a round trip gains twice the delay); chunks keep their order
//!   and throughput is not limited.
//! - `loss_per_mille`: each chunk (one read, up to 16 KiB) is "lost" with this
//!   probability: as TCP would retransmit a lost segment after its retransmission
//!   timeout, the chunk is held [`Settings::retransmit`] longer (by default the Linux
//!   minimum RTO of 200 ms plus one round trip), and everything behind it on that
//!   connection waits too (head-of-line blocking). Nothing is dropped for good and no
//!   connection is reset: "5 % loss" is 5 % of chunks stalled by one retransmission.
//! - `cut`: open connections are closed and new ones are closed as soon as they are
//!   accepted, until `heal`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::storm::Rng;

/// Bytes of one read.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction before reading waits (bounds memory).
const IN_FLIGHT: usize = 256;
/// Connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Linux's minimum retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(200);

/// How the link behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub delay: Duration,
    /// Chunks in 1000 held for a retransmission.
    pub loss_per_mille: u32,
    pub cut: bool,
}

impl Settings {
    /// How long a lost chunk is held on top of the delay: the minimum RTO plus one
    /// round trip.
    pub fn retransmit(&self) -> Duration {
        MIN_RTO + self.delay * 2
    }
}

/// What went through, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub chunks: AtomicU64,
    pub lost: AtomicU64,
    pub bytes: AtomicU64,
}

/// One listening proxy in front of one upstream address. Dropping it closes the
/// listener and every connection.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    settings: watch::Sender<Settings>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `listen` (port 0: any) and forwards each connection to `upstream`.
    /// `seed` makes the losses reproducible.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the link proxy on {listen}"))?;
        let addr = listener.local_addr()?;
        let (settings, watch) = watch::channel(Settings::default());
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            watch,
            Arc::clone(&counters),
            seed,
        ));
        Ok(Self {
            addr,
            settings,
            counters,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn settings(&self) -> Settings {
        *self.settings.borrow()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replaces the settings; open connections follow at their next chunk.
    pub fn set(&self, settings: Settings) {
        self.settings.send_replace(settings);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.settings.send_modify(|s| s.delay = delay);
    }

    pub fn set_loss_per_mille(&self, loss: u32) {
        self.settings
            .send_modify(|s| s.loss_per_mille = loss.min(1000));
    }

    /// Closes every connection and refuses new ones until [`LinkProxy::heal`].
    pub fn cut(&self) {
        self.settings.send_modify(|s| s.cut = true);
    }

    pub fn heal(&self) {
        self.settings.send_modify(|s| s.cut = false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it ends them all.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    settings: watch::Receiver<Settings>,
    counters: Arc<Counters>,
    seed: u64,
) {
    let mut connections = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if settings.borrow().cut {
                    drop(client);
                    continue;
                }
                n += 1;
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let (settings, counters) = (settings.clone(), Arc::clone(&counters));
                connections.spawn(connection(client, upstream, settings, counters, seed ^ n));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    settings: watch::Receiver<Settings>,
    counters: Arc<Counters>,
    seed: u64,
) {
    let Ok(Ok(server)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut cut = settings.clone();
    let pipes = async {
        tokio::join!(
            pipe(
                client_read,
                server_write,
                settings.clone(),
                Arc::clone(&counters),
                seed
            ),
            pipe(
                server_read,
                client_write,
                settings.clone(),
                Arc::clone(&counters),
                seed.rotate_left(17)
            ),
        )
    };
    // Dropping both halves of both streams closes the connection.
    tokio::select! {
        _ = pipes => {}
        _ = cut.wait_for(|s| s.cut) => {}
    }
}

/// Reads chunks from `from`, and writes each to `to` when it is due.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: watch::Receiver<Settings>,
    counters: Arc<Counters>,
    seed: u64,
) {
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut rng = Rng::new(seed);
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = *settings.borrow();
            let mut at = Instant::now() + now.delay;
            counters.chunks.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if now.loss_per_mille > 0 && rng.below(1000) < now.loss_per_mille as usize {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                at += now.retransmit();
            }
            if queue.send((at, buffer[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        // A chunk is never written before the one read before it.
        let mut not_before = Instant::now();
        while let Some((at, bytes)) = due.recv().await {
            not_before = not_before.max(at);
            tokio::time::sleep_until(not_before).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
