//! Running a datastore's own tools for a service: its connection settings
//! (the kind's `configure`), runs to completion whose errors carry the
//! tool's stderr, guarded runs for tools that fork workers, user shell
//! commands, and the service's Redis connection. The fingerprints and the
//! adapters both run tools; this is below them.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use cairn_repo::RepoError;

use crate::StackError;
use crate::catalog::Service;
use crate::redis::Conn;

/// An error of the service (`service NAME: detail`).
pub(crate) fn err(svc: &Service, detail: impl Into<String>) -> StackError {
    StackError::Service {
        service: svc.name.clone(),
        detail: detail.into(),
    }
}

/// Apply connection settings to a tool's command.
pub(crate) fn tool(svc: &Service, program: &str) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    crate::children::contain(&mut c);
    svc.kind.datastore().configure(svc, &mut c);
    c
}

/// Run to completion; stdout on success, an error with stderr otherwise.
pub(crate) fn run(svc: &Service, c: Command, input: Option<&[u8]>) -> Result<String, StackError> {
    run_with(svc, c, input, false)
}

/// [`run`], with a [`crate::children::Watchdog`] over the child's process
/// group while it runs when `guard`.
fn run_with(
    svc: &Service,
    mut c: Command,
    input: Option<&[u8]>,
    guard: bool,
) -> Result<String, StackError> {
    let desc = format!("{:?}", c.get_program());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c
        .spawn()
        .map_err(|e| err(svc, format!("cannot run {desc}: {e}")))?;
    let dog = if guard {
        Some(
            crate::children::Watchdog::guard(child.id())
                .map_err(|e| err(svc, format!("{desc}: starting its watchdog: {e}")))?,
        )
    } else {
        None
    };
    if let Some(i) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(i)
            .map_err(|e| err(svc, format!("{desc}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(svc, format!("{desc}: {e}")))?;
    // Killed first, so it never signals a group id reused after the tool.
    drop(dog);
    if !out.status.success() {
        return Err(err(
            svc,
            format!(
                "{desc} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run`] for a tool that forks workers (`pg_restore -j`): its whole
/// process group is killed if cairn dies while it runs.
pub(crate) fn run_guarded(svc: &Service, c: Command) -> Result<String, StackError> {
    run_with(svc, c, None, true)
}

/// Wait for a child whose stdout was consumed; fail with its stderr.
pub(crate) fn finish(svc: &Service, child: Child, what: &str) -> Result<(), RepoError> {
    let out = child
        .wait_with_output()
        .map_err(|e| RepoError::io(what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RepoError::InvalidInput(format!(
            "service {}: {what} failed ({}): {}",
            svc.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A user command, run by `sh -c` in the catalog's directory.
pub fn shell(svc: &Service, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .current_dir(&svc.workdir);
    c
}

pub(crate) fn redis_conn(svc: &Service) -> Result<Conn, StackError> {
    let addr = format!(
        "{}:{}",
        svc.host.as_deref().unwrap_or("127.0.0.1"),
        svc.port.unwrap_or(6379)
    );
    Conn::connect(&addr, svc.password.as_deref())
        .map_err(|e| err(svc, format!("redis at {addr}: {e}")))
}
