//! The accept loop of the HTTP listeners (API and metrics): a cap on open connections and a
//! deadline for request headers, so that idle or slow unauthenticated sockets cannot exhaust the
//! node's file descriptors or tasks, and a legitimate client still gets a connection while
//! someone holds idle ones open.
//!
//! - A connection must deliver a complete request head within the header deadline: a socket
//!   that never sends a byte is closed by this loop (hyper's protocol sniffing would wait on it
//!   forever), a slow or partial head and an idle keep-alive connection by hyper's HTTP/1
//!   header timer.
//! - At most `max_connections` are open. A connection that has not yet delivered its first
//!   request head is *unproven*; when the cap is reached, a new connection evicts the oldest
//!   unproven one (closing a socket that has sent nothing costs no request), and only when every
//!   open connection has sent a request is the new one refused with a bare 503 and closed.
//!
//! - With TLS (the API listener of a node started with `--tls-dir`), the TLS handshake must also
//!   finish within the header deadline; a client speaking plain HTTP fails the handshake and is
//!   closed. The certificate is chosen per handshake ([`super::tls::ReloadingCert`]), so a
//!   reload applies to new connections without touching open ones.
//!
//! It must never close a connection that is handling a request because of the cap (the shutdown
//! grace period is the only exception), nor hold an unbounded number of sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time a connection has to deliver a complete request head (also the keep-alive idle time).
    pub header_read_timeout: Duration,
}

/// What a refused connection is told, without waiting on the peer.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 58\r\n\r\n{\"code\":\"overloaded\",\"message\":\"too many open connections\"}";

/// Connections that have not delivered a request head yet, oldest first.
#[derive(Default)]
struct Unproven {
    next_id: u64,
    conns: BTreeMap<u64, CancellationToken>,
}

impl Unproven {
    fn add(&mut self) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let token = CancellationToken::new();
        self.conns.insert(id, token.clone());
        (id, token)
    }

    fn evict_oldest(&mut self) -> bool {
        match self.conns.pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Why a connection ended early, for the metric.
fn closed(metrics: &Metrics, reason: &str) {
    metrics
        .connections_closed
        .with_label_values(&[reason])
        .inc();
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown`, then lets open
/// connections finish their requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(1 << 30));
    let permits = Arc::new(Semaphore::new(max));
    let unproven = Arc::new(Mutex::new(Unproven::default()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE/ENFILE and aborted handshakes: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = unproven.lock().evict_oldest();
                let freed = if evicted {
                    closed(&metrics, "evicted");
                    // The evicted task drops its permit as soon as it is woken.
                    tokio::time::timeout(Duration::from_secs(1), permits.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match freed {
                    Some(p) => p,
                    None => {
                        refuse(stream, &metrics);
                        continue;
                    }
                }
            }
        };
        let (id, evict) = unproven.lock().add();
        let task = Connection {
            app: app.clone(),
            tls: tls.clone(),
            limits,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            unproven: unproven.clone(),
            id,
            evict,
        };
        tokio::spawn(async move {
            let _permit = permit;
            task.run(stream).await;
        });
    }
    // Every connection task holds a permit: all are back once every connection is closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; dropping open connections"
        );
    }
}

fn refuse(stream: TcpStream, metrics: &Metrics) {
    closed(metrics, "refused");
    // Best effort and never waiting: the socket is closed right after.
    let _ = stream.try_write(REFUSED);
    drop(stream);
}

struct Connection {
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    unproven: Arc<Mutex<Unproven>>,
    id: u64,
    evict: CancellationToken,
}

impl Connection {
    async fn run(self, mut stream: TcpStream) {
        let gauge = self.metrics.connections_open.clone();
        gauge.inc();
        let _open = scopeguard(move || gauge.dec());
        let deadline = self.limits.header_read_timeout;
        // The first byte must come within the header deadline (hyper starts its own header
        // timer only once it knows the protocol, which needs bytes).
        let mut first = [0u8; 1];
        let got = tokio::select! {
            r = tokio::time::timeout(deadline, stream.peek(&mut first)) => r,
            _ = self.evict.cancelled() => return,
            _ = self.shutdown.cancelled() => Ok(Ok(0)),
        };
        match got {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) | Ok(Err(_)) => {
                self.forget();
                return;
            }
            Err(_) => {
                self.forget();
                closed(&self.metrics, "header_timeout");
                let _ = stream.shutdown().await;
                return;
            }
        }
        match self.tls.clone() {
            None => self.serve_io(stream).await,
            Some(acceptor) => {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(deadline, acceptor.accept(stream)) => r,
                    _ = self.evict.cancelled() => return,
                    _ = self.shutdown.cancelled() => {
                        self.forget();
                        return;
                    }
                };
                match handshake {
                    Ok(Ok(tls)) => self.serve_io(tls).await,
                    Ok(Err(e)) => {
                        self.forget();
                        closed(&self.metrics, "tls_handshake");
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.forget();
                        closed(&self.metrics, "header_timeout");
                    }
                }
            }
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 on an established (plain or TLS) connection.
    async fn serve_io<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = self.limits.header_read_timeout;
        let proven = Arc::new(AtomicBool::new(false));
        let svc = {
            let (app, unproven, proven, id) = (
                self.app.clone(),
                self.unproven.clone(),
                proven.clone(),
                self.id,
            );
            tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                if !proven.swap(true, Ordering::AcqRel) {
                    unproven.lock().conns.remove(&id);
                }
                app.clone().oneshot(req.map(Body::new))
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(deadline);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(deadline))
            .keep_alive_timeout(deadline);
        let conn =
            builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.evict.cancelled() => return,
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        self.forget();
        if let Err(e) = result {
            if !proven.load(Ordering::Acquire) {
                closed(&self.metrics, "header_timeout");
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    fn forget(&self) {
        self.unproven.lock().conns.remove(&self.id);
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
