//! Readiness gates: a command, a TCP connect, or an HTTP 2xx, polled until a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::catalog::Ready;

fn tcp(addr: &str) -> Result<TcpStream, String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))
}

fn http(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut s = tcp(&addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: cairn\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{url} answered {code:?}"))
    }
}

/// Check once (commands run in `workdir`).
pub fn check(r: &Ready, workdir: &std::path::Path) -> Result<(), String> {
    match r {
        Ready::Tcp(a) => tcp(a).map(|_| ()),
        Ready::Http(u) => http(u),
        Ready::Command(c) => {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .current_dir(workdir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("{c:?} exited with {st}"))
            }
        }
    }
}

/// Poll until ready or `timeout`; the error is the last failure.
pub fn wait(r: &Ready, timeout: Duration, workdir: &std::path::Path) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check(r, workdir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("not ready after {:.0?}: {e}", timeout));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
