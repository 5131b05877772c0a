//! The accept loop and the per-connection timers.
//!
//! [`accept`] takes a permit of the process's [`ConnectionLimit`] before it accepts, so at the
//! cap new sockets wait in the kernel's backlog (and are served once a connection closes)
//! rather than taking descriptors. Reaching the cap is an overload: every connection of the
//! port accepted until then that is quiet (silent since it opened, or with no call in flight)
//! for [`QUIET_UNDER_PRESSURE`] is closed, so a flood of idle sockets delays new callers by
//! about that long per cap's worth of sockets ahead of them, not by the handshake or idle
//! timeout. Clients send their first bytes within milliseconds of connecting, and a pooled
//! idle connection is simply opened again on its next call. An accept error that is about the process (EMFILE, ENFILE,
//! ENOBUFS, ENOMEM) pauses accepting, 5 ms after the first and doubling up to 1 s, and is
//! logged once per pause; one that is about the peer (a reset before accept) is skipped.
//!
//! Each accepted socket is a [`Conn`]: it closes itself (its reads end) when no byte arrived
//! within the handshake timeout, or when it had no call in flight for the idle timeout. The
//! calls in flight are counted by [`crate::guard`] through [`ConnState`], which tonic hands to
//! every request as connect info.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::{Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

/// Descriptors kept free for everything but client connections (database pools, files, the
/// metrics listener): at least this many, or a quarter of the limit when that is more.
const RESERVED_DESCRIPTORS: usize = 64;

/// The longest pause after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a connection may be quiet once the port reached the connection cap.
pub const QUIET_UNDER_PRESSURE: Duration = Duration::from_millis(500);

/// How often reaching the cap is logged at most.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The cap on open connections, shared by every port of a process.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// Returns a cap of `max` connections, lowered to three quarters of the process's
    /// descriptor limit (`RLIMIT_NOFILE`) when that is lower.
    pub fn new(max: usize) -> Self {
        let max = match descriptor_limit() {
            Some(limit) => {
                let reserve = RESERVED_DESCRIPTORS.max(limit / 4);
                max.min(limit.saturating_sub(reserve).max(1))
            }
            None => max,
        };
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Returns the cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Returns how many connections are open.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// Returns the soft descriptor limit of the process, if it has one.
fn descriptor_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// The timers of every connection of a port.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub handshake: Duration,
    pub idle: Duration,
}

/// Returns the connections `listener` accepts, within `limit`, each with the `timeouts`.
pub fn accept(
    listener: TcpListener,
    limit: ConnectionLimit,
    timeouts: Timeouts,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> + Send + 'static {
    let base = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        // Cancelled when the cap is reached: the connections holding it close once quiet.
        let mut pressure = CancellationToken::new();
        let mut cap_logged: Option<Instant> = None;
        loop {
            let permit = match limit.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => {
                    if cap_logged.is_none_or(|at| at.elapsed() >= CAP_LOG_INTERVAL) {
                        cap_logged = Some(Instant::now());
                        tracing::warn!(
                            max = limit.max,
                            "connection cap reached; closing quiet connections"
                        );
                    }
                    pressure.cancel();
                    pressure = CancellationToken::new();
                    tokio::select! {
                        permit = limit.permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            match accepted {
                Ok((stream, remote)) => {
                    backoff = Duration::ZERO;
                    let pressure = pressure.clone().cancelled_owned();
                    let conn = Conn::new(stream, remote, permit, timeouts, base, pressure);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(error) if is_peer_error(&error) => {}
                Err(error) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(
                        %error,
                        pause_ms = backoff.as_millis() as u64,
                        open = limit.open(),
                        "accept failed; pausing"
                    );
                    drop(permit);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Returns whether an accept error concerns one peer only (the next accept may succeed).
fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// What the calls of one connection share with its timers.
#[derive(Debug)]
pub struct ConnState {
    base: Instant,
    /// Calls in flight.
    active: AtomicUsize,
    /// When the last call ended (or the connection opened), in ms since `base`.
    idle_since_ms: AtomicU64,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Counts a call in flight until the returned guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

/// One call in flight on a connection; it ends when dropped.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .fetch_max(self.0.now_ms(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connect info of a [`Conn`], in every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote_addr: SocketAddr,
    pub state: Arc<ConnState>,
}

/// An accepted socket that ends its reads when it stays silent or idle too long.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    remote: SocketAddr,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    opened: Instant,
    /// Whether any byte arrived.
    heard: bool,
    /// When the timers next look at the connection.
    timer: Pin<Box<Sleep>>,
    /// Completes when the port reaches the connection cap after this connection opened.
    pressure: Pin<Box<WaitForCancellationFutureOwned>>,
    pressured: bool,
    closed: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        stream: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
        timeouts: Timeouts,
        base: Instant,
        pressure: WaitForCancellationFutureOwned,
    ) -> Self {
        // gRPC answers are small: without this a response waits for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState {
            base,
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(base.elapsed().as_millis() as u64),
        });
        let opened = Instant::now();
        Self {
            stream,
            remote,
            state,
            timeouts,
            opened,
            heard: false,
            timer: Box::pin(tokio::time::sleep_until(opened + timeouts.handshake)),
            pressure: Box::pin(pressure),
            pressured: false,
            closed: false,
            _permit: permit,
        }
    }

    /// Returns when the connection is to be closed if nothing changes, or `None` while a call
    /// is in flight (then the timers look again one idle timeout later).
    fn deadline(&self) -> Option<Instant> {
        let (quiet_since, allowed) = if !self.heard {
            (self.opened, self.timeouts.handshake)
        } else if self.state.active.load(Ordering::SeqCst) > 0 {
            return None;
        } else {
            let idle_since = self.state.idle_since_ms.load(Ordering::SeqCst);
            (
                self.state.base + Duration::from_millis(idle_since),
                self.timeouts.idle,
            )
        };
        let allowed = if self.pressured {
            allowed.min(QUIET_UNDER_PRESSURE)
        } else {
            allowed
        };
        Some(quiet_since + allowed)
    }

    /// Polls the timers; returns true once the connection must close.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.pressured && self.pressure.as_mut().poll(cx).is_ready() {
            self.pressured = true;
            if let Some(at) = self.deadline() {
                self.timer.as_mut().reset(at);
            }
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.deadline() {
                Some(at) if at <= now => return true,
                Some(at) => self.timer.as_mut().reset(at),
                None => self.timer.as_mut().reset(now + self.timeouts.idle),
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed || this.poll_expired(cx) {
            if !this.closed {
                this.closed = true;
                tracing::debug!(
                    remote = %this.remote,
                    heard = this.heard,
                    "closing a silent or idle connection"
                );
            }
            // End of stream: the HTTP/2 connection (or the TLS handshake) ends, and the socket
            // is closed when it is dropped.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if !this.heard && matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.heard = true;
            // From now on the idle timer decides; it counts from the connection's opening.
            if let Some(at) = this.deadline() {
                this.timer.as_mut().reset(at);
            }
            // Registers the waker with the new deadline.
            let _ = this.timer.as_mut().poll(cx);
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote_addr: self.remote,
            state: self.state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    use super::*;

    async fn one_conn(timeouts: Timeouts) -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(accept(listener, ConnectionLimit::new(8), timeouts));
        let client = TcpStream::connect(addr).await.expect("connect");
        let conn = incoming.next().await.expect("accepted").expect("ok");
        (client, conn)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_is_closed_after_the_handshake_timeout() {
        let timeouts = Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        };
        let (_client, mut conn) = one_conn(timeouts).await;
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let n = conn.read(&mut buf).await.expect("read");
        assert_eq!(n, 0, "the silent connection ends");
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_a_call_in_flight_stays_and_closes_once_idle() {
        let timeouts = Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let (mut client, mut conn) = one_conn(timeouts).await;
        client.write_all(b"x").await.expect("write");
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).await.expect("read"), 1);
        let call = conn.state.call();
        // A call in flight for far longer than the idle timeout keeps the connection.
        let read = conn.read(&mut buf);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(Duration::from_secs(600), read.as_mut())
                .await
                .is_err(),
            "closed while a call was in flight"
        );
        let ended = Instant::now();
        drop(call);
        let n = read.await.expect("read");
        assert_eq!(n, 0, "idle connection ends");
        let waited = ended.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_secs(121),
            "closed {waited:?} after its last call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_quiet_connections_make_room() {
        let timeouts = Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(accept(listener, ConnectionLimit::new(1), timeouts));
        let _a = TcpStream::connect(addr).await.expect("connect");
        let mut first = incoming.next().await.expect("accepted").expect("ok");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(first.read(&mut buf).await.expect("read"), 0);
        let waited = started.elapsed();
        assert!(waited <= QUIET_UNDER_PRESSURE, "closed after {waited:?}");
        drop(first);
        let second = incoming.next().await.expect("accepted").expect("ok");
        assert!(!second.pressured);
    }

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        let limit = ConnectionLimit::new(usize::MAX);
        if let Some(nofile) = descriptor_limit() {
            assert!(limit.max() < nofile, "{} of {nofile}", limit.max());
        }
        assert_eq!(ConnectionLimit::new(3).max(), 3);
    }
}
