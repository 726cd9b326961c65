//! Backups, forgets and prunes as concurrent processes for a bounded time;
//! afterwards every snapshot that still exists must restore exactly and
//! `check --read-data` must pass.

use std::collections::HashMap;
use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::{Env, prng};

/// What a committed snapshot must contain: its service and files by name.
type Committed = (String, HashMap<String, Vec<u8>>);

#[test]
fn concurrent_backups_forgets_and_prunes_lose_nothing() {
    let env = Env::new();
    env.init(&[
        "--pack-size",
        "1M",
        "--chunk-min",
        "16K",
        "--chunk-avg",
        "64K",
        "--chunk-max",
        "256K",
    ]);
    let shared = prng(90, 700_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    // snapshot id -> (service, file name -> content)
    let committed: Mutex<HashMap<String, Committed>> = Mutex::new(HashMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let prunes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (env, shared, committed, failures) = (&env, &shared, &committed, &failures);
            s.spawn(move || {
                let dir = env.path(&format!("w{w}"));
                fs::create_dir_all(&dir).unwrap();
                let mut round = 0u64;
                while Instant::now() < deadline {
                    round += 1;
                    let mut files = HashMap::new();
                    files.insert("shared.bin".to_string(), shared.clone());
                    // Content that recurs across rounds (so prune and dedup interact) and content that is new.
                    files.insert(
                        "recurring.bin".to_string(),
                        prng(100 + (round % 3), 300_000),
                    );
                    files.insert("new.bin".to_string(), prng(1000 * (w + 1) + round, 200_000));
                    for (n, c) in &files {
                        fs::write(dir.join(n), c).unwrap();
                    }
                    let svc = format!("w{w}");
                    let o =
                        env.run(&["backup", dir.to_str().unwrap(), "--service", &svc, "--json"]);
                    if o.status.success() {
                        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                        committed
                            .lock()
                            .unwrap()
                            .insert(v["id"].as_str().unwrap().to_string(), (svc, files));
                    } else {
                        let err = String::from_utf8_lossy(&o.stderr).into_owned();
                        // The one acceptable failure: a prune removed what the backup
                        // relied on, and it said so and wrote no snapshot.
                        if !err.contains("run the backup again") {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("backup {svc}: {err}"));
                        }
                    }
                }
            });
        }
        let (env, failures, prunes) = (&env, &failures, &prunes);
        s.spawn(move || {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
                for args in [
                    vec!["forget", "--keep-last", "2"],
                    vec!["prune", "--keep-delete", "1s", "--max-unused", "10%"],
                ] {
                    let o = env.run(&args);
                    if !o.status.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{args:?}: {}", String::from_utf8_lossy(&o.stderr)));
                    }
                }
                prunes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    // Finish every pending deletion, then verify.
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["prune", "--keep-delete", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["prune", "--keep-delete", "1s"]);
    let o = env.run(&["check", "--read-data"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let committed = committed.into_inner().unwrap();
    let existing = env.json(&["snapshots"]);
    let mut verified = 0;
    for s in existing.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let (svc, files) = committed
            .get(id)
            .unwrap_or_else(|| panic!("snapshot {id} was never reported committed"));
        for (name, content) in files {
            let path = format!("{}/{name}", env.path(svc).display());
            let o = env.cmd().args(["dump", id, &path]).output().unwrap();
            assert!(
                o.status.success(),
                "snapshot {id} {path}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                &o.stdout == content,
                "snapshot {id} {path}: content differs"
            );
        }
        verified += 1;
    }
    eprintln!(
        "concurrency: {} backups committed, {} prune rounds, {verified} surviving snapshots verified",
        committed.len(),
        prunes.into_inner()
    );
    assert!(
        verified >= 3 && committed.len() >= 6,
        "too little happened to prove anything"
    );
}
