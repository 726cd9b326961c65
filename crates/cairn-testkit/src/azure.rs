//! A real Azure Blob Storage server for tests: [`AzuriteServer`] starts
//! Azurite (Microsoft's emulator, from npm) on a free port of 127.0.0.1 and
//! stops it when dropped. `scripts/azurite-server.sh` installs it on first
//! use (under `~/.cache/cairn/azurite`, or `$CAIRN_TOOLS_DIR/azurite`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::s3::{free_port, wait_listening};

/// Azurite's well-known account and key (public, emulator only).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The key of [`ACCOUNT`].
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service.
pub struct AzuriteServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _data: tempfile::TempDir,
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

impl AzuriteServer {
    /// Start a server (installing Azurite first if needed) and wait until it
    /// accepts connections.
    pub fn start() -> Result<AzuriteServer, String> {
        let port = free_port();
        let data = tempfile::Builder::new()
            .prefix("cairn-azurite-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let child = Command::new("bash")
            .arg(scripts().join("azurite-server.sh"))
            .arg(port.to_string())
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting azurite-server.sh: {e}"))?;
        let mut s = AzuriteServer {
            child,
            port,
            _data: data,
        };
        wait_listening(port, &mut s.child, "Azurite")?;
        Ok(s)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (path-style, as Azurite serves it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Create a container.
    pub fn create_container(&self, name: &str) -> Result<(), String> {
        let o = Command::new("python3")
            .arg(scripts().join("azurite-container.py"))
            .arg(self.port.to_string())
            .arg(name)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// The backend options that reach this server, endpoint first.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("endpoint", self.endpoint()),
            ("allow_http", "true".into()),
            ("account_name", ACCOUNT.into()),
            ("access_key", KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        // The script execs node, so this is the server itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
