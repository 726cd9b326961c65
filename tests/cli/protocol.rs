//! The prune protocol against skewed host clocks, through the binary run
//! under libfaketime (format-spec §5): ages are judged by the storage's
//! clock, so a prune on a host whose clock is days off neither erases the
//! grace period nor deletes what another prune marked a second earlier,
//! and a host with a skewed clock is told so.

use std::path::PathBuf;
use std::process::Output;

use crate::util::Env;

fn faketime(env: &Env, offset: &str, args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/faketime.sh");
    let c = env.cmd();
    let mut f = std::process::Command::new(script);
    f.arg(offset).arg(c.get_program()).args(args).env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            f.env(k, v);
        }
    }
    f.stdin(std::process::Stdio::null()).output().unwrap()
}

fn json_of(o: &Output, what: &str) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Case 4 of the prune-safety report: a prune with a clock two days behind
/// marks packs, and a normal prune a second later must not delete them; a
/// prune with a clock two days ahead must not delete packs a normal prune
/// marked a second earlier (default grace period, 24 h).
#[test]
fn prunes_on_hosts_with_skewed_clocks_keep_the_grace_period() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), vec![7u8; 3 << 20]).unwrap();
    let b = env.json(&["backup", src.to_str().unwrap()]);
    let id = b["id"].as_str().unwrap().to_string();
    env.ok(&["forget", &id]);
    // Marked by a host two days behind.
    let behind = json_of(&faketime(&env, "-2d", &["prune", "--json"]), "prune at -2d");
    assert!(behind["packs_marked"].as_u64().unwrap() >= 1, "{behind}");
    let normal = env.json(&["prune"]);
    assert_eq!(
        normal["packs_deleted"], 0,
        "the grace period was erased: {normal}"
    );
    assert!(normal["markers_pending"].as_u64().unwrap() >= 1, "{normal}");
    // A host two days ahead, one second after a normal prune marked.
    let ahead = json_of(&faketime(&env, "+2d", &["prune", "--json"]), "prune at +2d");
    assert_eq!(
        ahead["packs_deleted"], 0,
        "a skewed host deleted marked packs: {ahead}"
    );
    assert!(
        ahead["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("ahead of the storage's clock")),
        "no skew warning: {ahead}"
    );
    let report = env.json(&["check", "--read-data"]);
    assert_eq!(report["ok"], true, "{report}");
}

/// A backup from a host whose clock is off says so (it still saves: every
/// decision uses the storage's clock).
#[test]
fn a_backup_from_a_skewed_host_warns() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"hello").unwrap();
    let o = faketime(&env, "-3d", &["backup", src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("behind the storage's clock"), "{err}");
}

/// Retention by a time the writer cannot fake: snapshots written, in this
/// order, by hosts two days ahead, on time and two days behind;
/// `forget --keep-last 1` keeps the one written last (by the storage's
/// clock), and both listings say which snapshots' times are off.
#[test]
fn forget_keeps_the_newest_by_storage_time_whatever_the_hosts_clocks_say() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for (i, off) in ["+2d", "+0", "-2d"].iter().enumerate() {
        std::fs::write(src.join("a"), format!("version {i}")).unwrap();
        let o = faketime(&env, off, &["backup", src.to_str().unwrap(), "--json"]);
        ids.push(json_of(&o, "backup")["id"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let list = env.run(&["snapshots"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("the clock of its host was off"), "{text}");
    let o = env.run(&["forget", "--keep-last", "1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("retention uses the storage's time"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let left: Vec<String> = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[2].clone()], "kept the wrong snapshot");
}

/// Case 2 of the prune-safety report through the binary, with the default
/// grace period: the first backup into an empty repository trickles in for
/// a few seconds while a normal prune and then a prune from a host whose
/// clock is two days ahead run. Protocol 1 marked the backup's uploaded,
/// not yet indexed packs and deleted them, and the backup still said
/// "saved"; now the snapshot restores byte-identical and the repository
/// checks clean.
#[test]
fn first_backup_while_a_normal_and_a_skewed_prune_run_is_saved_whole() {
    use std::io::Write;
    let env = Env::new();
    env.init(&["--pack-size", "1M"]);
    let data = crate::util::prng(42, 8 << 20);
    let mut child = env
        .cmd()
        .args(["backup", "--stdin", "--stdin-name", "db.dump", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let feeder = std::thread::spawn(move || {
        for piece in feed.chunks(256 << 10) {
            stdin.write_all(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(120));
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let p1 = env.json(&["prune"]);
    let p2 = json_of(&faketime(&env, "+2d", &["prune", "--json"]), "prune at +2d");
    feeder.join().unwrap();
    let o = child.wait_with_output().unwrap();
    let b = json_of(&o, "backup");
    assert_eq!(p2["packs_deleted"], 0, "{p1}\n{p2}");
    let out = env.path("out");
    env.ok(&[
        "restore",
        b["id"].as_str().unwrap(),
        "--target",
        out.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(out.join("db.dump")).unwrap() == data,
        "restored dump differs"
    );
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}
