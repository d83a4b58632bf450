//! The endpoint against real TCP clients: a scrape, wrong paths and
//! methods, garbage, an oversized head, and more idle connections than
//! the endpoint keeps open (bounded waits, no timing assertions).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_metrics::{Exposition, Kind, MetricsServer};

fn request(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(raw).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reply");
    out
}

fn server() -> (MetricsServer, Arc<AtomicU64>) {
    let scrapes = Arc::new(AtomicU64::new(0));
    let n = scrapes.clone();
    let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), move || {
        let v = n.fetch_add(1, Ordering::Relaxed) + 1;
        let mut e = Exposition::new();
        e.family("test_scrapes_total", Kind::Counter, "Scrapes.")
            .sample(&[], v as f64);
        e.finish().expect("valid")
    })
    .expect("start");
    (srv, scrapes)
}

#[test]
fn scrapes_and_refusals() {
    let (srv, scrapes) = server();
    let a = srv.addr();
    let r = request(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    assert!(r.ends_with("test_scrapes_total 1\n"), "{r}");
    assert!(request(a, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(request(a, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(request(a, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(request(a, b"GET /metrics SPDY/3\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(20_000, b'a');
    assert!(request(a, &big).starts_with("HTTP/1.1 400"));
    assert_eq!(
        scrapes.load(Ordering::Relaxed),
        1,
        "only the real scrape rendered"
    );
}

#[test]
fn idle_clients_do_not_stop_the_endpoint() {
    let (srv, _) = server();
    let a = srv.addr();
    // More idle connections than the endpoint keeps open: the oldest are
    // evicted, and a real scrape is answered at once.
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(a).ok())
        .collect();
    let r = request(a, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    drop(idle);
}
