//! A real S3 server for tests: [`S3Server`] starts `moto` (the S3
//! implementation from PyPI, in server mode) on a free port of 127.0.0.1 and
//! stops it when dropped. `scripts/s3-server.sh` installs it on first use
//! (a virtualenv under `~/.cache/cairn/moto`, or `$CAIRN_TOOLS_DIR/moto`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running S3 server.
pub struct S3Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Wait until `child` (a test server, installing itself on first start)
/// listens on `port` of 127.0.0.1, or fail if it exits or takes 10 minutes.
pub fn wait_listening(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    // The first start installs the emulator (a minute or so).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited: {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen within 10 minutes"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3-server.sh")
}

impl S3Server {
    /// Start a server (installing moto first if needed) and wait until it
    /// answers.
    pub fn start() -> Result<S3Server, String> {
        Self::start_with_env(&[])
    }

    /// [`S3Server::start`] with extra environment for moto (for example
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0`, which makes it check credentials).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<S3Server, String> {
        let port = free_port();
        let child = Command::new("bash")
            .envs(env.iter().copied())
            .arg(script())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", script().display()))?;
        let mut s = S3Server { child, port };
        // The first start installs moto (a minute or two).
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("the S3 server exited: {status}"));
            }
            // Any answer will do (with credential checks on, it is a 403).
            if s.request("GET", "/", b"")
                .is_ok_and(|r| r.starts_with("HTTP/1.1 "))
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err("the S3 server did not answer within 10 minutes".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let r = self.request("PUT", &format!("/{name}"), b"")?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "creating bucket {name}: {}",
                r.lines().next().unwrap_or("")
            ))
        }
    }

    /// The keys of a bucket (up to 1,000, the server's first page).
    pub fn list_keys(&self, bucket: &str) -> Result<Vec<String>, String> {
        let r = self.request("GET", &format!("/{bucket}?list-type=2"), b"")?;
        if !r.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "listing bucket {bucket}: {}",
                r.lines().next().unwrap_or("")
            ));
        }
        Ok(r.split("<Key>")
            .skip(1)
            .filter_map(|x| x.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect())
    }

    /// The backend options that reach this server (credentials are not
    /// checked by moto, but the client signs with them).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("endpoint", self.endpoint()),
            ("allow_http", "true".into()),
            ("region", "us-east-1".into()),
            ("access_key_id", "cairn-test".into()),
            ("secret_access_key", "cairn-test-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<String, String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .and_then(|_| c.write_all(body))
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        c.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The script execs moto, so this is the server itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
