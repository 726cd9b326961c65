//! [`FaultProxy`]: a TCP proxy in front of an HTTP server (the test S3
//! server) that breaks connections the way networks do, below the client's
//! own retry logic: HTTP 503 answers, connections dropped before the request
//! reaches the server, answers lost after the server acted on the request,
//! responses cut off half-way, latency, and a network that is gone for good
//! after N connections.
//!
//! Faults are decided per connection. Clients that should meet one fault per
//! request must not keep connections alive (for `object_store`:
//! `pool_max_idle_per_host=0`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to connections. Rates are per thousand connections.
#[derive(Clone, Debug, Default)]
pub struct ProxyPlan {
    /// Answer `503 Slow Down` without contacting the server.
    pub unavailable_per_mille: u32,
    /// Read the request, then close without forwarding it.
    pub drop_request_per_mille: u32,
    /// Forward the request, let the server act on it, then close without
    /// passing its answer on (a write that landed but looks failed).
    pub lose_response_per_mille: u32,
    /// Pass on only the first half of the server's answer, then close.
    pub cut_response_per_mille: u32,
    /// Delay before each connection is served.
    pub latency: Duration,
    /// Connection `n` and every later one are closed at once (the network is
    /// gone).
    pub stop_after: Option<u64>,
    /// Seed of the fault generator.
    pub seed: u64,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: u16,
    plan: Mutex<ProxyPlan>,
    rng: Mutex<u64>,
    connections: AtomicU64,
    faults: AtomicU64,
    stop: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Pass,
    Unavailable,
    DropRequest,
    LoseResponse,
    CutResponse,
    Gone,
}

impl FaultProxy {
    /// Start a proxy to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, plan: ProxyPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState {
            upstream,
            rng: Mutex::new(plan.seed | 1),
            plan: Mutex::new(plan),
            connections: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || st.serve(conn));
            }
        });
        FaultProxy { port, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replace the plan (connection numbers keep counting).
    pub fn set_plan(&self, plan: ProxyPlan) {
        *self.state.rng.lock().expect("rng") = plan.seed | 1;
        *self.state.plan.lock().expect("plan") = plan;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read one HTTP message head and its Content-Length body (if any).
fn read_request(c: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = c.read(&mut tmp)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(buf);
        }
        let n = c.read(&mut tmp)?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Read the server's answer: until it closes or stays quiet for a moment.
fn read_answer(up: &mut TcpStream) -> Vec<u8> {
    up.set_read_timeout(Some(Duration::from_millis(300))).ok();
    let mut out = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    while let Ok(n) = up.read(&mut tmp) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&tmp[..n]);
    }
    out
}

impl ProxyState {
    fn fate(&self) -> Fate {
        let n = self.connections.fetch_add(1, Ordering::SeqCst);
        let p = self.plan.lock().expect("plan").clone();
        if p.stop_after.is_some_and(|s| n >= s) {
            return Fate::Gone;
        }
        let r = {
            let mut x = self.rng.lock().expect("rng");
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x % 1000
        } as u32;
        let mut edge = 0;
        for (rate, fate) in [
            (p.unavailable_per_mille, Fate::Unavailable),
            (p.drop_request_per_mille, Fate::DropRequest),
            (p.lose_response_per_mille, Fate::LoseResponse),
            (p.cut_response_per_mille, Fate::CutResponse),
        ] {
            edge += rate;
            if r < edge {
                return fate;
            }
        }
        Fate::Pass
    }

    fn serve(&self, mut client: TcpStream) {
        let fate = self.fate();
        let latency = self.plan.lock().expect("plan").latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if fate != Fate::Pass {
            self.faults.fetch_add(1, Ordering::SeqCst);
        }
        let _ = client.set_nodelay(true);
        match fate {
            Fate::Gone => {
                let _ = client.shutdown(Shutdown::Both);
            }
            Fate::Unavailable => {
                if read_request(&mut client).is_ok() {
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected by FaultProxy</Message></Error>";
                    let _ = write!(
                        client,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                let _ = client.shutdown(Shutdown::Both);
            }
            Fate::DropRequest => {
                let _ = read_request(&mut client);
                let _ = client.shutdown(Shutdown::Both);
            }
            Fate::LoseResponse | Fate::CutResponse => {
                let Ok(req) = read_request(&mut client) else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
                    return;
                };
                if up.write_all(&req).is_err() {
                    return;
                }
                let answer = read_answer(&mut up);
                if fate == Fate::CutResponse {
                    let _ = client.write_all(&answer[..answer.len() / 2]);
                }
                let _ = client.shutdown(Shutdown::Both);
            }
            Fate::Pass => {
                let Ok(up) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                };
                let _ = up.set_nodelay(true);
                let (mut c2, mut u2) = match (client.try_clone(), up.try_clone()) {
                    (Ok(c), Ok(u)) => (c, u),
                    _ => return,
                };
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(Shutdown::Write);
                });
                let mut up = up;
                let _ = std::io::copy(&mut up, &mut client);
                let _ = client.shutdown(Shutdown::Both);
                let _ = t.join();
            }
        }
    }
}
