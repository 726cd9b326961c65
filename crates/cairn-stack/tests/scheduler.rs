//! The stack scheduler over a `FakeDatastore` (no servers): dependency
//! order, parallel branches, skipped dependents, invariant gating, resume,
//! rollbacks without invariants. The fake is registered as a datastore kind
//! of its own, the way a new adapter is: one type, one `register` call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_format::config::Config;
use cairn_format::snapshot::Snapshot;
use cairn_repo::{BackupOptions, BackupResult, IndexedRepository, Progress, Repository};
use cairn_stack::StackError;
use cairn_stack::catalog::{Catalog, Service};
use cairn_stack::datastore::Datastore;
use cairn_stack::registry::register;
use cairn_stack::run::{
    self, FingerprintReport, RestoreKind, RestoreReport, RestoreRequest, ServiceRestore,
};
use cairn_stack::target::Target;
use cairn_testkit::repo::KDF;

/// A datastore that records what the scheduler asks of it.
struct Fake {
    name: &'static str,
    /// Services whose restore fails.
    fail: Mutex<BTreeSet<String>>,
    /// How long a restore takes.
    delay: Duration,
    /// (service, start, end) of every restore.
    log: Mutex<Vec<(String, Instant, Instant)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Datastore for Fake {
    fn name(&self) -> &'static str {
        self.name
    }
    fn fields(&self) -> &'static [&'static str] {
        &[]
    }
    fn backup(
        &self,
        svc: &Service,
        repo: &IndexedRepository,
        opts: BackupOptions,
    ) -> Result<BackupResult, StackError> {
        Ok(repo.backup_stream(
            svc.name.as_bytes(),
            "dump",
            &opts,
            &Progress::default(),
            || Ok(()),
        )?)
    }
    fn restore(
        &self,
        svc: &Service,
        _repo: &IndexedRepository,
        _snap: &Snapshot,
    ) -> Result<(u64, Option<String>), StackError> {
        let t0 = Instant::now();
        let n = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .push((svc.name.clone(), t0, Instant::now()));
        if self.fail.lock().unwrap().contains(&svc.name) {
            return Err(StackError::Service {
                service: svc.name.clone(),
                detail: "fake failure".into(),
            });
        }
        Ok((svc.name.len() as u64, None))
    }
    fn verify(
        &self,
        _svc: &Service,
        _repo: &IndexedRepository,
        _snap: &Snapshot,
    ) -> Result<FingerprintReport, StackError> {
        Ok(FingerprintReport {
            method: "fake".into(),
            verified: Some(true),
            ..Default::default()
        })
    }
    fn holds_data(&self, _svc: &Service) -> Result<bool, StackError> {
        Ok(false)
    }
    fn teardown(&self, _svc: &Service) -> Result<String, StackError> {
        Ok("nothing".into())
    }
    fn target(&self, svc: &Service) -> Target {
        Target::Command {
            restore: svc.name.clone(),
            workdir: "/".into(),
        }
    }
    fn describe(&self, svc: &Service) -> String {
        format!("fake {}", svc.name)
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fake registered under a name of its own.
fn fake(delay_ms: u64) -> &'static Fake {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let f: &'static Fake = Box::leak(Box::new(Fake {
        name: Box::leak(format!("fake-{}-{n}", std::process::id()).into_boxed_str()),
        fail: Mutex::new(BTreeSet::new()),
        delay: Duration::from_millis(delay_ms),
        log: Mutex::new(Vec::new()),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
    }));
    register(f).unwrap();
    f
}

struct World {
    _dir: tempfile::TempDir,
    repo: IndexedRepository,
    cat: Catalog,
}

/// A repository with one group backup of the catalog `body` (services of
/// kind `KIND`, replaced by the fake's name).
fn world(f: &Fake, body: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("repo");
    let b = cairn_repo::backend::open(loc.to_str().unwrap(), true, &Default::default()).unwrap();
    Repository::init_store(b.into_store(), b"pw", Config::new_default(0), KDF).unwrap();
    let b = cairn_repo::backend::open(loc.to_str().unwrap(), false, &Default::default()).unwrap();
    let repo = Repository::open_store(b.into_store(), b"pw")
        .unwrap()
        .load_index()
        .unwrap();
    let cat = Catalog::parse(
        &dir.path().join("cairn.toml"),
        &body.replace("KIND", f.name),
        None,
    )
    .unwrap();
    let all: BTreeSet<String> = cat.services.keys().cloned().collect();
    let b = run::stack_backup(&cat, &repo, &all, 4, "host", "user");
    assert!(b.services.iter().all(|s| s.ok), "{b:?}");
    World {
        _dir: dir,
        repo,
        cat,
    }
}

fn restore(w: &World, kind: RestoreKind, group: &str, jobs: usize) -> RestoreReport {
    run::stack_restore(
        &w.cat,
        &w.repo,
        RestoreRequest {
            kind,
            group: group.into(),
            selected: w.cat.services.keys().cloned().collect(),
            jobs,
            safety: false,
            resume: None,
            undoes: None,
            restart: Default::default(),
        },
        &|_| {},
    )
    .unwrap()
}

/// A restore of `selected` that restarts their dependents.
fn restore_with_dependents(w: &World, selected: &[&str]) -> RestoreReport {
    let selected: BTreeSet<String> = selected.iter().map(|s| s.to_string()).collect();
    let restart = w.cat.dependents_of(&selected);
    run::stack_restore(
        &w.cat,
        &w.repo,
        RestoreRequest {
            kind: RestoreKind::Restore,
            group: "latest".into(),
            selected,
            jobs: 4,
            safety: false,
            resume: None,
            undoes: None,
            restart,
        },
        &|_| {},
    )
    .unwrap()
}

fn by_name(r: &RestoreReport) -> BTreeMap<String, ServiceRestore> {
    r.services
        .iter()
        .map(|s| (s.service.clone(), s.clone()))
        .collect()
}

const FLEET: &str = "
[service.a]
kind = \"KIND\"
[service.b]
kind = \"KIND\"
depends_on = [\"a\"]
[service.c]
kind = \"KIND\"
[service.d]
kind = \"KIND\"
depends_on = [\"b\", \"c\"]
";

#[test]
fn services_start_after_their_dependencies_and_independent_ones_run_in_parallel() {
    let f = fake(150);
    let w = world(f, FLEET);
    let r = restore(&w, RestoreKind::Restore, "latest", 4);
    assert!(r.ok(), "{r:?}");
    let log = f.log.lock().unwrap().clone();
    let at: BTreeMap<&str, (Instant, Instant)> =
        log.iter().map(|(s, a, b)| (s.as_str(), (*a, *b))).collect();
    for (svc, deps) in [("b", vec!["a"]), ("d", vec!["b", "c"])] {
        for d in deps {
            assert!(at[svc].0 >= at[d].1, "{svc} started before {d} ended");
        }
    }
    assert!(
        f.max_running.load(Ordering::SeqCst) >= 2,
        "a and c are independent and should overlap"
    );
    // Wall time follows the critical path (a -> b -> d), not the sum.
    assert_eq!(r.critical_path.len(), 3, "{:?}", r.critical_path);
    assert!(r.wall_seconds < r.sum_service_seconds);
}

#[test]
fn jobs_bound_how_many_services_run_at_once() {
    let f = fake(100);
    let w = world(
        f,
        "[service.a]\nkind = \"KIND\"\n[service.b]\nkind = \"KIND\"\n[service.c]\nkind = \"KIND\"\n[service.e]\nkind = \"KIND\"\n",
    );
    let r = restore(&w, RestoreKind::Restore, "latest", 1);
    assert!(r.ok());
    assert_eq!(f.max_running.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_service_skips_its_dependents_and_spares_the_other_branch() {
    let f = fake(20);
    let w = world(f, FLEET);
    f.fail.lock().unwrap().insert("a".into());
    let r = restore(&w, RestoreKind::Restore, "latest", 4);
    assert!(!r.ok());
    let s = by_name(&r);
    assert_eq!(s["a"].status, "failed");
    assert_eq!(s["b"].status, "skipped");
    assert_eq!(s["b"].error.as_deref(), Some("dependency a did not pass"));
    assert_eq!(s["d"].status, "skipped");
    assert_eq!(s["c"].status, "passed");
    let restored: BTreeSet<String> = f.log.lock().unwrap().iter().map(|x| x.0.clone()).collect();
    assert_eq!(
        restored,
        ["a", "c"].iter().map(|x| x.to_string()).collect(),
        "a skipped service was restored"
    );
}

#[test]
fn a_failing_invariant_gates_the_dependents_of_its_services_unless_gate_is_false() {
    for gate in [true, false] {
        let f = fake(10);
        let w = world(
            f,
            &format!(
                "{FLEET}[[invariant]]\nname = \"a and c agree\"\nservices = [\"a\", \"c\"]\ncommand = \"echo 1\"\nequals = 0\ngate = {gate}\n"
            ),
        );
        let r = restore(&w, RestoreKind::Restore, "latest", 4);
        assert!(!r.ok());
        assert_eq!(r.invariants[0].status, "failed");
        let s = by_name(&r);
        assert_eq!(s["a"].status, "passed");
        assert_eq!(s["c"].status, "passed");
        if gate {
            // b depends on a, d on b and c: neither starts on unchecked data.
            assert_eq!(s["b"].status, "skipped", "{:?}", s["b"]);
            assert_eq!(
                s["b"].error.as_deref(),
                Some("invariant \"a and c agree\" did not pass")
            );
            assert_eq!(s["d"].status, "skipped");
            assert_eq!(f.log.lock().unwrap().len(), 2);
        } else {
            assert_eq!(s["b"].status, "passed");
            assert_eq!(s["d"].status, "passed");
        }
    }
}

#[test]
fn an_interrupted_restore_resumes_without_redoing_what_passed() {
    let f = fake(10);
    let w = world(f, FLEET);
    f.fail.lock().unwrap().insert("d".into());
    let first = restore(&w, RestoreKind::Restore, "latest", 4);
    assert!(!first.ok());
    f.fail.lock().unwrap().clear();
    f.log.lock().unwrap().clear();
    let j = cairn_stack::trail::read_journal(w.repo.repo(), &first.restore_id).unwrap();
    let r = run::stack_restore(
        &w.cat,
        &w.repo,
        RestoreRequest {
            kind: RestoreKind::Restore,
            group: j.begin.group.clone(),
            selected: j.begin.services.iter().cloned().collect(),
            jobs: 4,
            safety: false,
            resume: Some(j),
            undoes: None,
            restart: Default::default(),
        },
        &|_| {},
    )
    .unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.resumed);
    let s = by_name(&r);
    for x in ["a", "b", "c"] {
        assert!(s[x].resumed, "{x} was redone");
        let stages: Vec<&str> = s[x].stages.iter().map(|st| st.name.as_str()).collect();
        assert_eq!(stages, ["verify (resumed)"], "{x}");
    }
    let redone: Vec<String> = f.log.lock().unwrap().iter().map(|x| x.0.clone()).collect();
    assert_eq!(redone, ["d"]);
}

#[test]
fn a_rollback_runs_no_invariants() {
    let f = fake(5);
    let w = world(
        f,
        &format!(
            "{FLEET}[[service.a.invariant]]\nname = \"never\"\ncommand = \"echo no\"\nequals = \"yes\"\n[[invariant]]\nname = \"nor this\"\nservices = [\"a\", \"c\"]\ncommand = \"echo 1\"\nequals = 0\n"
        ),
    );
    let group = run::group_snapshots(&w.repo, "latest").unwrap().0;
    let r = restore(
        &w,
        RestoreKind::Rollback,
        &cairn_format::id::to_hex(&group),
        4,
    );
    assert!(r.ok(), "{r:?}");
    assert!(r.invariants.is_empty());
    assert!(r.services.iter().all(|s| s.invariants.is_empty()));
    // A restore of the same group runs both, and both fail.
    let r = restore(&w, RestoreKind::Restore, "latest", 4);
    assert!(!r.ok());
    assert_eq!(by_name(&r)["a"].status, "failed");
}

#[test]
fn the_fake_is_a_kind_like_the_built_in_ones() {
    // Registered once; its name in a catalog resolves; a second registration
    // of the same name is refused; its fields are checked like others'.
    let f = fake(0);
    assert!(cairn_stack::registry::lookup(f.name).is_some());
    assert!(register(f).is_err());
    let e = Catalog::parse(
        Path::new("c.toml"),
        &format!("[service.x]\nkind = \"{}\"\nhost = \"h\"\n", f.name),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("c.toml:3: service x"), "{e}");
    assert!(e.contains("host is not a field of this kind"), "{e}");
}

#[test]
fn with_dependents_stops_them_before_the_restore_and_starts_them_after_without_restoring_them() {
    let f = fake(100);
    let w = world(
        f,
        "[service.db]\nkind = \"KIND\"\n[service.api]\nkind = \"KIND\"\ndepends_on = [\"db\"]\nstop = \"echo stop >> events\"\nstart = \"echo start >> events\"\n[service.web]\nkind = \"KIND\"\ndepends_on = [\"api\"]\nstop = \"echo stop-web >> events\"\n",
    );
    let events = w.cat.services["api"].workdir.join("events");
    let selected: BTreeSet<String> = ["db".to_string()].into();
    assert_eq!(
        w.cat.dependents_of(&selected),
        ["api".to_string(), "web".to_string()].into()
    );
    let before = Instant::now();
    let r = restore_with_dependents(&w, &["db"]);
    assert!(r.ok(), "{r:?}");
    let s = by_name(&r);
    assert!(s["api"].restarted && s["web"].restarted && !s["db"].restarted);
    // Dependents stopped first (web before api), started after db passed.
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "stop-web\nstop\nstart\n"
    );
    let log = f.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "only db is restored: {log:?}");
    assert!(log[0].1 >= before);
    assert!(
        s["api"].start >= s["db"].end,
        "api started before db passed"
    );
    let stages: Vec<&str> = s["api"].stages.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(stages, ["stop", "start"]);
}

#[test]
fn with_dependents_says_which_dependents_are_left_stopped_when_a_restore_fails() {
    let f = fake(10);
    let w = world(
        f,
        "[service.db]\nkind = \"KIND\"\n[service.api]\nkind = \"KIND\"\ndepends_on = [\"db\"]\nstop = \"true\"\nstart = \"echo started >> events\"\n",
    );
    f.fail.lock().unwrap().insert("db".into());
    let r = restore_with_dependents(&w, &["db"]);
    let api = &by_name(&r)["api"];
    assert_eq!(api.status, "skipped");
    assert!(api.restarted);
    assert_eq!(
        api.error.as_deref(),
        Some("left stopped: dependency db did not pass")
    );
    let stages: Vec<&str> = api.stages.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(stages, ["stop"]);
    assert!(!w.cat.services["api"].workdir.join("events").exists());
}
