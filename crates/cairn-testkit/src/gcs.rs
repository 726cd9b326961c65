//! A Google Cloud Storage server for tests: [`GcsServer`] starts
//! gcp-storage-emulator (from PyPI, `scripts/gcs-server.sh` installs it on
//! first use) on a free port of 127.0.0.1, and `scripts/gcs-shim.py` in
//! front of it for the XML API calls the emulator lacks (HEAD, DELETE,
//! `list-type=2` listings, `x-goog-if-generation-match: 0`). Both stop when
//! it is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::s3::{free_port, wait_listening};

/// The emulator and the shim in front of it.
pub struct GcsServer {
    emulator: Child,
    shim: Child,
    emulator_port: u16,
    /// The shim's port on 127.0.0.1 (where clients connect).
    pub port: u16,
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

impl GcsServer {
    /// Start the emulator and the shim and wait until both listen.
    pub fn start() -> Result<GcsServer, String> {
        let emulator_port = free_port();
        let emulator = Command::new("bash")
            .arg(scripts().join("gcs-server.sh"))
            .arg(emulator_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting gcs-server.sh: {e}"))?;
        let port = free_port();
        let shim = Command::new("python3")
            .arg(scripts().join("gcs-shim.py"))
            .arg(port.to_string())
            .arg(emulator_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting gcs-shim.py: {e}"))?;
        let mut s = GcsServer {
            emulator,
            shim,
            emulator_port,
            port,
        };
        wait_listening(emulator_port, &mut s.emulator, "the GCS emulator")?;
        wait_listening(port, &mut s.shim, "the GCS shim")?;
        Ok(s)
    }

    /// `http://127.0.0.1:PORT` (the shim).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (through the emulator's JSON API).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let body = format!("{{\"name\":\"{name}\"}}");
        let mut c =
            TcpStream::connect(("127.0.0.1", self.emulator_port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            c,
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        c.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(format!(
                "creating bucket {name}: {}",
                out.lines().next().unwrap_or("")
            ))
        }
    }

    /// The backend options that reach this server, the URL first.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("base_url", self.endpoint()),
            ("bearer_token", "test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        let _ = self.shim.kill();
        let _ = self.shim.wait();
        // The script execs python, so this is the emulator itself.
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
    }
}
