//! `cairn check` on deliberately damaged repositories.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{Env, prng, walk};

/// A repository with three snapshots over several packs (pack size 1 MiB).
fn fixture() -> Env {
    let env = Env::new();
    env.init(&[
        "--pack-size",
        "1M",
        "--chunk-min",
        "64K",
        "--chunk-avg",
        "256K",
        "--chunk-max",
        "1M",
    ]);
    let shared = prng(70, 1 << 20);
    for i in 0..3u64 {
        let src = env.path(&format!("src{i}"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("shared.bin"), &shared).unwrap();
        fs::write(src.join("sub/own.bin"), prng(71 + i, 600_000)).unwrap();
        env.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--service",
            &format!("s{i}"),
        ]);
    }
    env
}

fn objects(repo: &Path, dir: &str) -> Vec<PathBuf> {
    walk(&repo.join(dir))
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

fn check(env: &Env) -> (i32, serde_json::Value) {
    let o = env.run(&["check", "--read-data", "--json"]);
    (
        o.status.code().unwrap(),
        serde_json::from_slice(&o.stdout).unwrap(),
    )
}

/// The latest snapshot of fixture service `s{i}` restores byte-identical to `src{i}`.
fn assert_service_restores(env: &Env, i: u64) {
    let t = env.path(&format!("t{i}"));
    let svc = format!("s{i}");
    env.ok(&[
        "restore",
        "latest",
        "--service",
        &svc,
        "--target",
        t.to_str().unwrap(),
    ]);
    let src = env.path(&format!("src{i}"));
    crate::util::assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
}

fn restore_copy(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    crate::copy_dir(from, to);
}

#[test]
fn check_passes_on_a_healthy_repository_and_keyless_mode_needs_no_password() {
    let env = fixture();
    let (code, r) = check(&env);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["snapshots"], 3);
    assert!(r["blobs_read"].as_u64().unwrap() > 3);
    let o = env
        .cmd()
        .env_remove("CAIRN_PASSWORD_FILE")
        .args(["check", "--no-password"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.run(&["check", "--read-data-subset", "1/2", "--json"]);
    assert!(o.status.success());
}

#[test]
fn damaged_fixtures_are_named_with_their_snapshots() {
    let env = fixture();
    let pristine = env.path("pristine");
    crate::copy_dir(&env.repo(), &pristine);
    let packs = objects(&env.repo(), "data");
    let biggest = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    type Damage = Box<dyn Fn(&Env)>;
    let b1 = biggest.clone();
    let b2 = biggest.clone();
    let b3 = biggest.clone();
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "missing pack",
            Box::new(move |_| fs::remove_file(&b1).unwrap()),
            name(&biggest),
        ),
        (
            "flipped byte in a blob",
            Box::new(move |_| {
                let mut b = fs::read(&b2).unwrap();
                let n = b.len();
                b[n - 100] ^= 0x04;
                fs::write(&b2, b).unwrap();
            }),
            name(&biggest),
        ),
        (
            "truncated pack",
            Box::new(move |_| {
                let b = fs::read(&b3).unwrap();
                fs::write(&b3, &b[..b.len() * 2 / 3]).unwrap();
            }),
            name(&biggest),
        ),
        (
            "missing index",
            Box::new(|e: &Env| {
                for i in objects(&e.repo(), "index") {
                    fs::remove_file(i).unwrap();
                }
            }),
            "not in any index".to_string(),
        ),
        (
            "deleted tree blobs (tree pack)",
            Box::new(|e: &Env| {
                // The smallest packs hold the trees.
                let p = objects(&e.repo(), "data")
                    .into_iter()
                    .min_by_key(|p| fs::metadata(p).unwrap().len())
                    .unwrap();
                fs::remove_file(p).unwrap();
            }),
            String::new(),
        ),
    ];
    for (what, damage, expect) in cases {
        restore_copy(&pristine, &env.repo());
        damage(&env);
        let (code, r) = check(&env);
        assert_eq!(code, 1, "{what}: {r}");
        let problems = r["problems"].to_string();
        assert!(
            problems.contains(&expect),
            "{what}: problems do not name {expect:?}: {problems}"
        );
        assert!(
            !r["affected_snapshots"].as_array().unwrap().is_empty(),
            "{what}: no affected snapshot named: {r}"
        );
    }
}

#[test]
fn two_hundred_random_corruptions_are_all_detected() {
    let env = fixture();
    let pristine = env.path("pristine");
    crate::copy_dir(&env.repo(), &pristine);
    let mut seed = 0x5eed_u64;
    let mut next = |n: usize| -> usize {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut detected = 0;
    let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
    for round in 0..200 {
        restore_copy(&pristine, &env.repo());
        let mut candidates = objects(&env.repo(), "data");
        candidates.extend(objects(&env.repo(), "index"));
        candidates.extend(objects(&env.repo(), "snapshots"));
        let target = candidates[next(candidates.len())].clone();
        let is_snapshot = target.to_str().unwrap().contains("/snapshots/");
        // A deleted snapshot cannot be told from a forgotten one; snapshots get flips and truncations.
        let kind = match next(if is_snapshot { 2 } else { 3 }) {
            0 => "flip",
            1 => "truncate",
            _ => "delete",
        };
        let mut b = fs::read(&target).unwrap();
        match kind {
            "flip" => {
                let i = next(b.len());
                b[i] ^= 1 << next(8);
                fs::write(&target, b).unwrap();
            }
            "truncate" => {
                let n = next(b.len());
                fs::write(&target, &b[..n]).unwrap();
            }
            _ => fs::remove_file(&target).unwrap(),
        }
        *by_kind.entry(kind).or_default() += 1;
        let (code, r) = check(&env);
        let affected = !r["affected_snapshots"].as_array().unwrap().is_empty();
        let named = r["problems"]
            .to_string()
            .contains(target.file_name().unwrap().to_str().unwrap());
        assert_eq!(
            code, 1,
            "round {round}: {kind} of {target:?} not detected: {r}"
        );
        assert!(
            affected || named,
            "round {round}: {kind} of {target:?}: neither object nor snapshot named: {r}"
        );
        if !is_snapshot {
            assert!(
                affected,
                "round {round}: {kind} of {target:?}: affected snapshots not named: {r}"
            );
        }
        detected += 1;
    }
    eprintln!("corruptions detected: {detected}/200 ({by_kind:?})");
    assert_eq!(detected, 200);
}

#[test]
fn repair_index_rebuilds_a_lost_or_damaged_index() {
    let env = fixture();
    let idx = objects(&env.repo(), "index");
    // Damage one index object, delete the others.
    let mut b = fs::read(&idx[0]).unwrap();
    b.truncate(b.len() / 2);
    fs::write(&idx[0], b).unwrap();
    for i in &idx[1..] {
        fs::remove_file(i).unwrap();
    }
    assert_eq!(check(&env).0, 1);
    let dry = env.json(&["repair", "index", "--dry-run"]);
    assert!(dry["packs_indexed"].as_u64().unwrap() >= 2, "{dry}");
    env.ok(&["repair", "index"]);
    let (code, r) = check(&env);
    assert_eq!(code, 0, "{r}");
    for i in 0..3 {
        assert_service_restores(&env, i);
    }
}

#[test]
fn repair_snapshots_recovers_every_snapshot_the_damage_does_not_touch() {
    let env = fixture();
    // Damage the data of s1 only: its own file lives in packs no other snapshot uses.
    let snaps = env.json(&["snapshots"]);
    let s1 = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "s1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = format!("{}/sub/own.bin", env.path("src1").display());
    // Find a pack holding s1's own.bin chunks: flip a byte in each pack and keep
    // the first flip that affects only s1.
    let pristine = env.path("pristine");
    crate::copy_dir(&env.repo(), &pristine);
    let mut chosen = None;
    for p in objects(&env.repo(), "data") {
        restore_copy(&pristine, &env.repo());
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 50] ^= 0x01;
        fs::write(&p, b).unwrap();
        let (_, r) = check(&env);
        let affected: Vec<String> = r["affected_snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["snapshot"].as_str().unwrap().to_string())
            .collect();
        if affected == vec![s1.clone()]
            && r["affected_snapshots"][0]["paths"]
                .to_string()
                .contains("own.bin")
        {
            chosen = Some(p);
            break;
        }
    }
    assert!(chosen.is_some(), "no pack holds only s1's data");
    let rep = env.json(&["repair", "snapshots"]);
    assert_eq!(rep["untouched"], 2, "{rep}");
    assert_eq!(rep["repaired"].as_array().unwrap().len(), 1);
    assert!(
        rep["removed"][0]["paths"].to_string().contains("own.bin"),
        "{rep}"
    );
    // The repaired snapshot restores, without the damaged file; the others are intact.
    let t = env.path("t1");
    // The copy keeps the original's time, so name it by id rather than `latest`.
    let repaired = rep["repaired"][0]["repaired"].as_str().unwrap();
    let o = env.run(&["restore", repaired, "--target", t.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = t.join(env.path("src1").strip_prefix("/").unwrap());
    assert!(out.join("shared.bin").exists());
    assert!(!Path::new(&format!("{}{}", t.display(), own)).exists());
    for i in [0, 2] {
        assert_service_restores(&env, i);
    }
    // The original stays until forgotten; afterwards check is clean apart from the damaged pack's unused data.
    env.ok(&["forget", &s1]);
    let (_, r) = check(&env);
    assert!(
        r["affected_snapshots"].as_array().unwrap().is_empty(),
        "{r}"
    );
}

/// The objects outside packs, index and snapshots: a damaged config or key
/// file, or a damaged deletion marker, is named and nothing is changed.
#[test]
fn damaged_config_key_and_marker_are_named() {
    let env = fixture();
    let pristine = env.path("pristine");
    crate::copy_dir(&env.repo(), &pristine);
    let flip = |p: &Path| {
        let mut b = fs::read(p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x08;
        fs::write(p, b).unwrap();
    };
    flip(&env.repo().join("config"));
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("object config is corrupted"), "{err}");

    restore_copy(&pristine, &env.repo());
    let key = objects(&env.repo(), "keys").remove(0);
    flip(&key);
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let name = key.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("corrupted"), "{err}");

    // A deletion marker (forget + prune writes one), then damage it.
    restore_copy(&pristine, &env.repo());
    let snaps = env.json(&["snapshots"]);
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    env.ok(&["forget", &first]);
    env.ok(&["prune"]);
    let markers = objects(&env.repo(), "deletions");
    assert_eq!(markers.len(), 1, "prune wrote no marker");
    flip(&markers[0]);
    let (code, r) = check(&env);
    assert_eq!(code, 1, "{r}");
    let name = markers[0].file_name().unwrap().to_str().unwrap();
    assert!(r["problems"].to_string().contains(name), "{r}");
    // Prune refuses to act on a marker it cannot read.
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(name));
}

#[test]
fn keyless_check_says_what_it_cannot_see_after_a_deleted_pack_and_a_flipped_config_byte() {
    let env = fixture();
    let packs = objects(&env.repo(), "data");
    fs::remove_file(&packs[0]).unwrap();
    let cfg = env.repo().join("config");
    let mut b = fs::read(&cfg).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(&cfg, b).unwrap();
    let o = env
        .cmd()
        .env_remove("CAIRN_PASSWORD_FILE")
        .args(["check", "--no-password"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("no errors were found"), "{out}");
    assert!(
        out.contains("hash-named objects compared with their names: all match")
            && out.contains("not judged without the password: the config object")
            && out.contains("a deleted pack is not seen")
            && out.contains("run `cairn check` with the password"),
        "{out}"
    );
    // With the password both are found.
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
}
