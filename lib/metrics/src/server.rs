//! The metrics endpoint: `GET /metrics` over HTTP/1.x on a TCP address.
//!
//! One thread runs a `mio` event loop over the listener and every client
//! connection, so idle, slow or hostile clients cannot hold the endpoint:
//! - at most [`MAX_CONNS`] connections are open; a new one beyond that
//!   evicts the connection closest to its deadline (the oldest);
//! - each connection has [`DEADLINE`] to send a request head of at most
//!   [`MAX_REQUEST`] bytes and take the reply, and is closed after one
//!   reply (after its unread input is drained, so the client sees the
//!   reply rather than a reset);
//! - memory is bounded by `MAX_CONNS` × (`MAX_REQUEST` + one reply).
//!
//! `GET /metrics` renders and answers 200; other paths 404, other methods
//! 405; a head that is too large or not HTTP/1.x gets 400. The render
//! function runs on the event-loop thread, once per scrape.
//!
//! Thread-safety: [`MetricsServer`] owns its thread; dropping it (or
//! [`MetricsServer::stop`]) stops and joins it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Connections open at once.
pub const MAX_CONNS: usize = 64;
/// How long one connection may take from accept to the end of the reply.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read.
pub const MAX_REQUEST: usize = 8192;
/// Input drained after the reply before closing.
const MAX_DRAIN: usize = 64 * 1024;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// Why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source} (is the address in use, or not on this host?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event loop or its thread could not start.
    #[error("cannot start the metrics endpoint: {0}")]
    Start(#[source] std::io::Error),
}

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port) and serves what `render`
    /// returns.
    ///
    /// # Errors
    /// [`ServerError`] when the address cannot be bound or the loop not
    /// started.
    pub fn start(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + 'static,
    ) -> Result<MetricsServer, ServerError> {
        let mut listener =
            TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let poll = Poll::new().map_err(ServerError::Start)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Start)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Start)?);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || run(poll, listener, &st, &render))
            .map_err(ServerError::Start)?;
        tracing::info!("metrics on http://{local}/metrics");
        Ok(MetricsServer {
            addr: local,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops and joins its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One client.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    head: Vec<u8>,
    /// The reply, once known, and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
    drained: usize,
}

fn run(mut poll: Poll, listener: TcpListener, stop: &AtomicBool, render: &dyn Fn() -> String) {
    let mut events = Events::with_capacity(128);
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 2usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let timeout = conns
            .values()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min();
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::error!("metrics endpoint stopped: {e}");
                return;
            }
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            if conns.len() >= MAX_CONNS {
                                // Evict the oldest: a fresh scrape always gets in.
                                if let Some(t) = conns
                                    .iter()
                                    .min_by_key(|(_, c)| c.deadline)
                                    .map(|(t, _)| *t)
                                {
                                    conns.remove(&t);
                                }
                            }
                            let t = Token(next);
                            next = next.wrapping_add(1).max(2);
                            if poll
                                .registry()
                                .register(&mut stream, t, Interest::READABLE)
                                .is_ok()
                            {
                                conns.insert(
                                    t,
                                    Conn {
                                        stream,
                                        deadline: Instant::now() + DEADLINE,
                                        head: Vec::new(),
                                        reply: None,
                                        drained: 0,
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                },
                t => {
                    let done = match conns.get_mut(&t) {
                        Some(c) => step(c, &poll, t, render),
                        None => false,
                    };
                    if done {
                        conns.remove(&t);
                    }
                }
            }
        }
        let now = Instant::now();
        conns.retain(|_, c| c.deadline > now);
    }
}

/// Advances one connection; true when it is finished.
fn step(c: &mut Conn, poll: &Poll, t: Token, render: &dyn Fn() -> String) -> bool {
    let mut buf = [0u8; 2048];
    if c.reply.is_none() {
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let room = MAX_REQUEST.saturating_sub(c.head.len());
                    c.head.extend_from_slice(&buf[..n.min(room)]);
                    if let Some(reply) = respond(&c.head, render) {
                        c.reply = Some((reply, 0));
                        let _ = poll.registry().reregister(
                            &mut c.stream,
                            t,
                            Interest::READABLE | Interest::WRITABLE,
                        );
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
    if let Some((reply, at)) = &mut c.reply {
        while *at < reply.len() {
            match c.stream.write(&reply[*at..]) {
                Ok(0) => return true,
                Ok(n) => *at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        // Replied: half-close, then drain what the client still sends so
        // that closing does not reset the connection under its reply.
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.drained += n;
                    if c.drained > MAX_DRAIN {
                        return true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
    false
}

/// The reply to a request head, once it is complete or cannot be.
fn respond(head: &[u8], render: &dyn Fn() -> String) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n");
    let (status, body, ctype) = match end {
        None if head.len() >= MAX_REQUEST => (
            "400 Bad Request",
            "request head too large\n".to_string(),
            "text/plain",
        ),
        None => return None,
        Some(i) => {
            let head = String::from_utf8_lossy(&head[..i]);
            let line = head.lines().next().unwrap_or("");
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(_), Some(v)) if !v.starts_with("HTTP/1.") => (
                    "400 Bad Request",
                    "not HTTP/1.x\n".to_string(),
                    "text/plain",
                ),
                (Some("GET"), Some(p), Some(_))
                    if p == "/metrics" || p.starts_with("/metrics?") =>
                {
                    ("200 OK", render(), crate::CONTENT_TYPE)
                }
                (Some("GET"), Some(_), Some(_)) => (
                    "404 Not Found",
                    "the metrics are at /metrics\n".to_string(),
                    "text/plain",
                ),
                (Some(_), Some(_), Some(_)) => (
                    "405 Method Not Allowed",
                    "only GET /metrics\n".to_string(),
                    "text/plain",
                ),
                _ => (
                    "400 Bad Request",
                    "not an HTTP request\n".to_string(),
                    "text/plain",
                ),
            }
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}
