//! The binary against a real S3 server (moto, started here) and Azure Blob
//! Storage (Azurite, started here): an s3:// or az:// URL
//! with `--option`s through init, backup, snapshots (from the cache),
//! restore and check; and the errors for a missing bucket and an unreachable
//! endpoint.

use std::fs;

use cairn_testkit::s3::{S3Server, free_port};

use crate::util::{CHEAP_KDF, Env};

/// `--repo URL` and one `--option K=V` per option.
fn repo_args(url: &str, options: &[(String, String)]) -> Vec<String> {
    let mut a = vec!["--repo".to_string(), url.to_string()];
    for (k, v) in options {
        a.push("--option".into());
        a.push(format!("{k}={v}"));
    }
    a
}

fn s3_args(s3: &S3Server, url: &str) -> Vec<String> {
    repo_args(url, &s3.options())
}

fn run(env: &Env, base: &[String], args: &[&str]) -> std::process::Output {
    let mut c = env.cmd();
    c.env("CAIRN_CACHE_DIR", env.path("cache"));
    c.args(base).args(args).output().unwrap()
}

fn ok(env: &Env, base: &[String], args: &[&str]) -> String {
    let o = run(env, base, args);
    assert!(
        o.status.success(),
        "cairn {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Run, require exit code 1, return stderr.
fn fails(env: &Env, base: &[String], args: &[&str]) -> String {
    let o = run(env, base, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "cairn {args:?}: {err}");
    err
}

#[test]
fn s3_url_backup_restore_check_through_the_binary() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("cli").unwrap();
    let env = Env::new();
    let base = s3_args(&s3, "s3://cli/team/repo");
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    ok(&env, &base, &init);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a"), "hello s3\n".repeat(10_000)).unwrap();
    fs::write(src.join("b"), crate::util::prng(7, 3 << 20)).unwrap();
    ok(&env, &base, &["backup", src.to_str().unwrap()]);
    let listed = ok(&env, &base, &["snapshots"]);
    assert!(listed.contains("1 snapshots"), "{listed}");
    // The cache holds the snapshot and the index.
    let cache_dirs: Vec<_> = fs::read_dir(env.path("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(cache_dirs.len(), 1);
    assert!(
        cache_dirs[0]
            .path()
            .join("snapshots")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    // ... and the index object this backup wrote.
    assert!(
        cache_dirs[0]
            .path()
            .join("index")
            .read_dir()
            .unwrap()
            .count()
            >= 1
    );
    let target = env.path("out");
    ok(
        &env,
        &base,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("d/a")).unwrap(),
        fs::read(src.join("d/a")).unwrap()
    );
    assert_eq!(
        fs::read(restored.join("b")).unwrap(),
        fs::read(src.join("b")).unwrap()
    );
    let checked = ok(&env, &base, &["check", "--read-data"]);
    assert!(checked.contains("no errors were found"), "{checked}");
    // A second init on the same location is refused.
    fails(&env, &base, &init);
}

#[test]
fn missing_bucket_and_unreachable_endpoint_are_named() {
    let s3 = S3Server::start().unwrap();
    let env = Env::new();
    let base = s3_args(&s3, "s3://no-such-bucket/repo");
    for args in [["snapshots"], ["init"]] {
        let err = fails(&env, &base, &args);
        assert!(err.contains("s3://no-such-bucket/repo"), "{err}");
        assert!(
            err.contains("bucket (or container) does not exist"),
            "{err}"
        );
    }
    // Nothing listens on this port; the client's retry budget is cut short.
    let port = free_port();
    let options: Vec<(String, String)> = [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("allow_http", "true".into()),
        ("access_key_id", "x".into()),
        ("secret_access_key", "y".into()),
        ("region", "us-east-1".into()),
        ("retry_timeout", "2".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let err = fails(&env, &repo_args("s3://b/repo", &options), &["snapshots"]);
    assert!(
        err.contains("s3://b/repo") && err.contains("config"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    // A bad option is named.
    let bad = [("no_such_key".to_string(), "1".to_string())];
    let err = fails(&env, &repo_args("s3://b/repo", &bad), &["snapshots"]);
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn wrong_credentials_are_refused_at_once_and_named() {
    // moto checks signatures against its (empty) IAM from the first request.
    let s3 = S3Server::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).unwrap();
    let env = Env::new();
    let base = s3_args(&s3, "s3://any/repo");
    let started = std::time::Instant::now();
    let err = fails(&env, &base, &["snapshots"]);
    assert!(
        err.contains("s3://any/repo") && err.contains("config"),
        "{err}"
    );
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
    // A refusal is final: not retried for minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// init (create-only writes enforced: no warning), two backups, restore
/// byte for byte, forget, two prunes, `check --read-data` and a refused
/// second init, through the binary at `base`.
fn cloud_round_trip(env: &Env, base: &[String], seed: u64) {
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    let o = run(env, base, &init);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("ignores create-only"), "{err}");
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a"), "hello cloud\n".repeat(10_000)).unwrap();
    fs::write(src.join("b"), crate::util::prng(seed, 3 << 20)).unwrap();
    ok(env, base, &["backup", src.to_str().unwrap()]);
    fs::write(src.join("b"), crate::util::prng(seed + 1, 3 << 20)).unwrap();
    ok(env, base, &["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    ok(
        env,
        base,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    for f in ["b", "d/a"] {
        assert_eq!(
            fs::read(restored.join(f)).unwrap(),
            fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    ok(env, base, &["forget", "--keep-last", "1"]);
    ok(env, base, &["prune", "--keep-delete", "0s"]);
    ok(env, base, &["prune", "--keep-delete", "0s"]);
    let checked = ok(env, base, &["check", "--read-data"]);
    assert!(checked.contains("no errors were found"), "{checked}");
    fails(env, base, &init);
}

#[test]
fn azure_url_backup_restore_forget_prune_check_through_the_binary_and_a_missing_container() {
    use cairn_testkit::azure::AzuriteServer;
    let az = AzuriteServer::start().unwrap();
    az.create_container("cli").unwrap();
    let env = Env::new();
    cloud_round_trip(&env, &repo_args("az://cli/team/repo", &az.options()), 8);
    let err = fails(
        &env,
        &repo_args("az://no-such-container/repo", &az.options()),
        &["snapshots"],
    );
    assert!(err.contains("az://no-such-container/repo"), "{err}");
}

#[test]
fn gcs_url_backup_restore_forget_prune_check_through_the_binary() {
    use cairn_testkit::gcs::GcsServer;
    let gcs = GcsServer::start().unwrap();
    gcs.create_bucket("cli").unwrap();
    let env = Env::new();
    cloud_round_trip(&env, &repo_args("gs://cli/team/repo", &gcs.options()), 10);
}

/// S3 without conditional writes (`conditional_put=disabled`: cairn emulates
/// create-only puts with a HEAD first): `init` says the prune lease cannot
/// keep two prunes apart there, `prune` refuses naming `--single-pruner`
/// and changes nothing (`forget --prune` refuses before it forgets), and
/// with it prunes, warns, and leaves `check` clean.
#[test]
fn prune_on_s3_without_conditional_writes_is_refused_unless_single_pruner() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("lax").unwrap();
    let env = Env::new();
    let mut opts = s3.options();
    opts.push(("conditional_put".into(), "disabled".into()));
    let base = repo_args("s3://lax/repo", &opts);
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    let o = run(&env, &base, &init);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--single-pruner"), "{err}");
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), crate::util::prng(21, 2 << 20)).unwrap();
    ok(&env, &base, &["backup", src.to_str().unwrap()]);
    fs::write(src.join("a"), crate::util::prng(22, 2 << 20)).unwrap();
    ok(&env, &base, &["backup", src.to_str().unwrap()]);
    // `forget --prune` is refused before it forgets anything.
    let err = fails(
        &env,
        &base,
        &[
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--keep-delete",
            "0s",
        ],
    );
    assert!(err.contains("nothing was forgotten"), "{err}");
    assert!(err.contains("--single-pruner"), "{err}");
    let listed = ok(&env, &base, &["snapshots"]);
    assert!(listed.contains("2 snapshots"), "{listed}");
    let err = fails(
        &env,
        &base,
        &["forget", "--keep-last", "1", "--single-pruner"],
    );
    assert!(err.contains("add --prune"), "{err}");
    ok(&env, &base, &["forget", "--keep-last", "1"]);
    let listing = || {
        let mut v: Vec<String> = s3
            .list_keys("lax")
            .unwrap()
            .into_iter()
            .filter(|k| !k.contains("/sessions/"))
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let err = fails(&env, &base, &["prune", "--keep-delete", "0s"]);
    assert!(err.contains("prune refused"), "{err}");
    assert!(err.contains("emulated with a HEAD"), "{err}");
    assert!(err.contains("--single-pruner"), "{err}");
    assert_eq!(listing(), before, "the refused prune changed nothing");
    for _ in 0..2 {
        let o = run(
            &env,
            &base,
            &["prune", "--keep-delete", "0s", "--single-pruner"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("relied on no other prune running"), "{err}");
    }
    assert!(listing().len() < before.len(), "the second prune deleted");
    let checked = ok(&env, &base, &["check", "--read-data"]);
    assert!(checked.contains("no errors were found"), "{checked}");
}

/// 3-2-1: a local repository copied to S3 (moto) and back. Both directions
/// restore byte for byte, both check clean with every byte read, and a
/// second copy adds nothing (#21).
#[test]
fn copy_from_local_to_s3_and_back_restores_identically_and_copying_twice_adds_nothing() {
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("offsite").unwrap();
    let env = Env::new();
    let local = vec![
        "--repo".to_string(),
        env.repo().to_str().unwrap().to_string(),
    ];
    let remote = s3_args(&s3, "s3://offsite/fleet");
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    ok(&env, &local, &init);
    ok(&env, &remote, &init);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/big"), crate::util::prng(9, 6 << 20)).unwrap();
    fs::write(src.join("small"), "small").unwrap();
    fs::hard_link(src.join("small"), src.join("small-link")).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::symlink("d/big", src.join("link")).unwrap();
    ok(
        &env,
        &local,
        &["backup", src.to_str().unwrap(), "--tag", "one"],
    );
    fs::write(src.join("small"), "changed").unwrap();
    ok(
        &env,
        &local,
        &["backup", src.to_str().unwrap(), "--tag", "two"],
    );
    let (repo_path, pw_path) = (env.repo(), env.path("pw"));
    let from_local = [
        "--from-repo",
        repo_path.to_str().unwrap(),
        "--from-password-file",
        pw_path.to_str().unwrap(),
    ];
    let mut copy: Vec<&str> = vec!["copy", "--json"];
    copy.extend_from_slice(&from_local);
    let first: serde_json::Value = serde_json::from_str(&ok(&env, &remote, &copy)).unwrap();
    assert_eq!(first["copied"], 2, "{first}");
    let again: serde_json::Value = serde_json::from_str(&ok(&env, &remote, &copy)).unwrap();
    assert_eq!(
        (again["copied"].clone(), again["skipped"].clone()),
        (0.into(), 2.into()),
        "{again}"
    );
    // Back from S3 into the local repository: both are copies of what it has.
    let mut from_remote = vec![
        "copy".to_string(),
        "--json".into(),
        "--from-repo".into(),
        "s3://offsite/fleet".into(),
    ];
    for (k, v) in s3.options() {
        from_remote.push("--from-option".into());
        from_remote.push(format!("{k}={v}"));
    }
    from_remote.extend([
        "--from-password-file".into(),
        env.path("pw").to_str().unwrap().to_string(),
    ]);
    let from_remote: Vec<&str> = from_remote.iter().map(String::as_str).collect();
    let back: serde_json::Value = serde_json::from_str(&ok(&env, &local, &from_remote)).unwrap();
    assert_eq!(back["copied"], 0, "{back}");
    // Each copy restores as its original.
    let snaps: serde_json::Value =
        serde_json::from_str(&ok(&env, &remote, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    for tag in ["one", "two"] {
        let (a, b) = (env.path(&format!("l-{tag}")), env.path(&format!("r-{tag}")));
        ok(
            &env,
            &local,
            &[
                "restore",
                "latest",
                "--tag",
                tag,
                "--target",
                a.to_str().unwrap(),
            ],
        );
        ok(
            &env,
            &remote,
            &[
                "restore",
                "latest",
                "--tag",
                tag,
                "--target",
                b.to_str().unwrap(),
            ],
        );
        crate::util::assert_same_tree(&a, &b);
    }
    use std::os::unix::fs::MetadataExt;
    let r = env.path("r-two").join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::metadata(r.join("small")).unwrap().ino(),
        fs::metadata(r.join("small-link")).unwrap().ino(),
        "hard links are kept"
    );
    assert!(
        fs::metadata(r.join("sparse")).unwrap().blocks() < 1024,
        "the hole stayed a hole"
    );
    ok(&env, &local, &["check", "--read-data"]);
    ok(&env, &remote, &["check", "--read-data"]);
    // Copied into a fresh local repository the S3 copies go again (they are
    // not copies of anything it has), and a second run adds nothing.
    let third = vec![
        "--repo".to_string(),
        env.path("third").to_str().unwrap().to_string(),
    ];
    ok(&env, &third, &init);
    let t1: serde_json::Value = serde_json::from_str(&ok(&env, &third, &from_remote)).unwrap();
    assert_eq!(t1["copied"], 2, "{t1}");
    let t2: serde_json::Value = serde_json::from_str(&ok(&env, &third, &from_remote)).unwrap();
    assert_eq!(t2["copied"], 0, "{t2}");
    ok(&env, &third, &["check", "--read-data"]);
}

/// Found by an outside attack on #21: a retagged source snapshot, or one
/// that reached the target through another repository, was copied again.
#[test]
fn copy_knows_a_snapshot_after_a_retag_and_through_another_repository() {
    let env = Env::new();
    let repo = |n: &str| {
        vec![
            "--repo".to_string(),
            env.path(n).to_str().unwrap().to_string(),
        ]
    };
    let mut init = vec!["init"];
    init.extend_from_slice(&CHEAP_KDF);
    for r in ["a", "b", "c"] {
        ok(&env, &repo(r), &init);
    }
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "data").unwrap();
    ok(&env, &repo("a"), &["backup", src.to_str().unwrap()]);
    let pw = env.path("pw");
    let from = |r: &str| {
        vec![
            "copy".to_string(),
            "--json".into(),
            "--from-repo".into(),
            env.path(r).to_str().unwrap().to_string(),
            "--from-password-file".into(),
            pw.to_str().unwrap().to_string(),
        ]
    };
    let copied = |to: &str, fr: &str| -> u64 {
        let args = from(fr);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v: serde_json::Value = serde_json::from_str(&ok(&env, &repo(to), &args)).unwrap();
        v["copied"].as_u64().unwrap()
    };
    assert_eq!(copied("b", "a"), 1);
    ok(&env, &repo("a"), &["tag", "latest", "--protect"]);
    assert_eq!(copied("b", "a"), 0, "a retag is the same backup");
    assert_eq!(copied("c", "b"), 1);
    assert_eq!(copied("c", "a"), 0, "already there through b");
}
