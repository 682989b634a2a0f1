//! Real process kills. A child process (this test binary, re-invoked on its ignored
//! `child_process` test) runs a plan on the [`FileJournal`] (every other child with its
//! file work inline) over resources kept in a file, and is SIGKILLed: after each journal
//! record, after each durable state change (before the executor could journal its
//! outcome), or at random moments. A fresh process then resumes the run with
//! [`Executor::resume`]; the resources must end exactly at the baseline or exactly at
//! the target, and the report must say which. A torn last record and an altered middle
//! record in the killed run's journal are detected on resume, and a resumer killed in
//! turn is resumed by a third process.
//!
//! Paused runners: a child stops itself with SIGSTOP right after a journal record, a
//! second process takes the expired lease over and finishes the run, then the first is
//! continued (SIGCONT) and must stop with `Error::Fenced`, having done nothing more; and
//! two runners race on one run while the parent pauses the first at random moments.
//!
//! The file-backed world: `state.json`, rewritten atomically (temp file, fsync, rename,
//! fsync of the folder) on every change, holding the resources, the captured snapshots
//! and the steps' idempotency markers (written in the same rename as the change). Like an
//! adapter over a real backend it fences its writes: each change checks the runner's
//! epoch against the newest one it has seen, in the same atomic update, and logs the
//! epoch that made it.

use async_trait::async_trait;
use rollback_core::journal::{Entry, FileJournal, Journal, Lease, Record};
use rollback_core::{
    Checkpoint, Context, Digest, Error, Executor, Outcome, Plan, Receipt, Restored, Result,
    ResumePolicy, Reversibility, Snapshot, Step,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RUN_ID: &str = "kill-run";
const LEASE_TTL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// the file-backed world

type Kv = BTreeMap<String, String>;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct WorldState {
    resources: BTreeMap<String, Kv>,
    snapshots: BTreeMap<String, Kv>,
    /// `run/step` → receipt, written in the same atomic rename as the step's change.
    markers: BTreeMap<String, Receipt>,
    /// Lease key → the newest fencing epoch that changed the world.
    #[serde(default)]
    fences: BTreeMap<String, u64>,
    /// Every change, with the epoch of the runner that made it, in order.
    #[serde(default)]
    actions: Vec<(u64, String)>,
}

fn load(path: &Path) -> WorldState {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).expect("state file is valid JSON"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => WorldState::default(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

fn save(path: &Path, state: &WorldState) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state).expect("state encodes"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().expect("state file has a folder"))?.sync_all()
}

fn fingerprint_of(kv: &Kv) -> Digest {
    let mut h = rollback_core::Hasher::new();
    for (k, v) in kv {
        h.field(k.as_bytes()).field(v.as_bytes());
    }
    h.finish()
}

/// Stops the process dead (until the parent's SIGKILL) after a chosen point, or pauses it
/// there with SIGSTOP (until the parent's SIGCONT).
struct Tripwire {
    dir: PathBuf,
    after: Option<u64>,
    stop: bool,
    count: AtomicU64,
}

impl Tripwire {
    fn new(dir: &Path, after: Option<u64>) -> Self {
        Tripwire {
            dir: dir.to_path_buf(),
            after,
            stop: false,
            count: AtomicU64::new(0),
        }
    }
    fn stopping(dir: &Path, after: Option<u64>) -> Self {
        Tripwire {
            stop: true,
            ..Tripwire::new(dir, after)
        }
    }
    fn tick(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.after == Some(n) {
            if self.stop {
                std::fs::write(self.dir.join("stopping"), n.to_string()).expect("marker");
                stop_self();
            } else {
                hang(&self.dir);
            }
        }
    }
}

/// SIGSTOP this process, as an operator's `kill -STOP` would, right here. The group stop
/// reaches this thread only once another thread has taken the signal, so wait for it in
/// an interruptible sleep: nothing after this call runs before the process has stopped.
fn stop_self() {
    let status = Command::new("kill")
        .args(["-STOP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
}

/// Wait for the parent's SIGKILL; never outlive a parent that is gone (a minute at most).
fn hang(dir: &Path) -> ! {
    std::fs::write(dir.join("hang"), b"").expect("write hang marker");
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3)
}

struct FileWorld {
    path: PathBuf,
    lock: Mutex<()>,
    changes: Tripwire,
    action_delay: Duration,
}

impl FileWorld {
    fn read(&self) -> WorldState {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _f = self.file_lock();
        load(&self.path)
    }
    /// Runners in two processes may change the world at once (the race tests): each
    /// read-modify-write holds this file lock, as a database serializes transactions.
    fn file_lock(&self) -> std::fs::File {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .expect("world lock file");
        f.lock().expect("lock the world");
        f
    }
    /// Apply `f` to the state; when it reports a change, persist it atomically. The
    /// runner's fence is checked in the same update: an older epoch than the newest that
    /// wrote is refused with `Error::Fenced` before `f` runs.
    fn update<T>(
        &self,
        ctx: &Context,
        what: &str,
        f: impl FnOnce(&mut WorldState) -> Result<(T, bool)>,
    ) -> Result<T> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _f = self.file_lock();
        let mut state = load(&self.path);
        let (epoch, raised) = match ctx.fence() {
            Some(fence) => {
                let seen = state.fences.get(&fence.key).copied().unwrap_or(0);
                if fence.epoch < seen {
                    return Err(fence.stale(seen));
                }
                state.fences.insert(fence.key.clone(), fence.epoch);
                (fence.epoch, fence.epoch > seen)
            }
            None => (0, false),
        };
        let (out, changed) = f(&mut state)?;
        if changed {
            state.actions.push((epoch, what.to_string()));
        }
        // A raised fence is kept even when nothing else changed (a revert of a step that
        // never applied): an older runner's write must not land after it.
        if changed || raised {
            save(&self.path, &state).map_err(|e| Error::backend("file-world", e))?;
        }
        if changed {
            self.changes.tick();
        }
        Ok(out)
    }
    async fn pause(&self) {
        if !self.action_delay.is_zero() {
            tokio::time::sleep(self.action_delay).await;
        }
    }
}

struct FileCheckpoint {
    world: Arc<FileWorld>,
    resource: String,
}

#[async_trait]
impl Checkpoint for FileCheckpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        self.world.pause().await;
        let id = format!("{}@{}", self.resource, ctx.run_id());
        let kv = self
            .world
            .update(ctx, &format!("capture {}", self.resource), |s| {
                let kv = s.resources.get(&self.resource).cloned().unwrap_or_default();
                s.snapshots.insert(id.clone(), kv.clone());
                Ok((kv, true))
            })?;
        let digest = fingerprint_of(&kv);
        Ok(Snapshot::new(
            id.clone(),
            self.resource.clone(),
            "file.kv",
            digest,
            digest,
            serde_json::json!({ "stored_as": id }),
        ))
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        snapshot.ensure_resource(&self.resource)?;
        self.world.pause().await;
        let key = snapshot.descriptor["stored_as"]
            .as_str()
            .ok_or_else(|| Error::invalid("snapshot descriptor has no stored_as"))?
            .to_string();
        self.world
            .update(ctx, &format!("restore {}", self.resource), |s| {
                let stored = s
                    .snapshots
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| Error::invalid(format!("no stored snapshot {key}")))?;
                snapshot.ensure_digest(fingerprint_of(&stored))?;
                s.resources.insert(self.resource.clone(), stored);
                Ok(((), true))
            })?;
        Ok(Restored::by("copy"))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let s = self.world.read();
        Ok(fingerprint_of(
            &s.resources.get(&self.resource).cloned().unwrap_or_default(),
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct Previous {
    previous: Option<String>,
}

/// Sets (compensable) or deletes (restore-only) one key; `fail` makes every apply fail
/// before changing anything.
struct FileStep {
    world: Arc<FileWorld>,
    id: String,
    resource: String,
    key: String,
    value: Option<String>,
    fail: bool,
}

#[async_trait]
impl Step for FileStep {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        match self.value {
            Some(_) => Reversibility::Compensable,
            None => Reversibility::RestoreOnly,
        }
    }
    fn touches(&self) -> Vec<String> {
        vec![self.resource.clone()]
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": self.resource, "key": self.key, "value": self.value, "fail": self.fail
        })
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.world.pause().await;
        if self.fail {
            return Err(Error::conflict(format!("{} always fails", self.id)));
        }
        let marker = format!("{}/{}", ctx.run_id(), self.id);
        let receipt = self.world.update(ctx, &format!("apply {}", self.id), |s| {
            if let Some(r) = s.markers.get(&marker) {
                return Ok((r.clone(), false)); // applied already: idempotent
            }
            let res = s.resources.entry(self.resource.clone()).or_default();
            let previous = match &self.value {
                Some(v) => res.insert(self.key.clone(), v.clone()),
                None => res.remove(&self.key),
            };
            let r = Receipt::new(&Previous { previous });
            s.markers.insert(marker.clone(), r.clone());
            Ok((r, true))
        })?;
        self.world.pause().await;
        Ok(receipt)
    }

    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        if self.reversibility() != Reversibility::Compensable {
            return Ok(()); // the checkpoint restores it
        }
        self.world.pause().await;
        let marker = format!("{}/{}", ctx.run_id(), self.id);
        self.world.update(ctx, &format!("revert {}", self.id), |s| {
            let receipt = match (s.markers.get(&marker), receipt) {
                (Some(m), _) => m.clone(),
                (None, Some(r)) => r.clone(),
                (None, None) => return Ok(((), false)), // never applied
            };
            let prev: Previous = receipt.parse()?;
            let res = s.resources.entry(self.resource.clone()).or_default();
            match prev.previous {
                Some(v) => res.insert(self.key.clone(), v),
                None => res.remove(&self.key),
            };
            if res.is_empty() {
                s.resources.remove(&self.resource);
            }
            s.markers.remove(&marker);
            Ok(((), true))
        })
    }
}

/// The file journal, stopping the process dead after its n-th append.
///
/// A runner stopped while its lease renewal holds the lease file's lock would block every
/// other runner until it is continued (a liveness matter, not a safety one: nothing is
/// written meanwhile). The tests stop a runner *between* journal operations, as an
/// operator's SIGSTOP at a record boundary would: the tripwire waits for any lease
/// operation in flight to finish first.
struct TrippingJournal {
    inner: FileJournal,
    appends: Tripwire,
    lease_ops: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Journal for TrippingJournal {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        let rec = self.inner.append(run_id, entry, epoch).await?;
        let _no_lease_op = self.lease_ops.lock().await;
        self.appends.tick();
        Ok(rec)
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<rollback_core::journal::LostTail>> {
        self.inner.lost_tail(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let _op = self.lease_ops.lock().await;
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        let _op = self.lease_ops.lock().await;
        self.inner.release_lease(key, holder).await
    }
}

// ---------------------------------------------------------------------------------------
// the plans

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanKind {
    /// Six steps over three resources (one without a checkpoint: compensation only).
    Commit,
    /// The same, plus a last step that always fails: the run rolls back.
    Fail,
    /// Three steps over two resources (the paused-runner tests).
    Three,
}

fn baseline() -> BTreeMap<String, Kv> {
    let kv = |pairs: &[(&str, &str)]| -> Kv {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    BTreeMap::from([
        ("a".to_string(), kv(&[("k1", "v1"), ("k2", "keep-me")])),
        ("b".to_string(), kv(&[("k1", "b1")])),
        ("c".to_string(), kv(&[("k1", "c1")])),
    ])
}

fn target() -> BTreeMap<String, Kv> {
    let mut t = baseline();
    let a = t.get_mut("a").unwrap();
    a.insert("k1".into(), "v3".into());
    a.remove("k2");
    t.get_mut("b").unwrap().insert("k1".into(), "b2".into());
    let c = t.get_mut("c").unwrap();
    c.insert("k1".into(), "x".into());
    c.insert("k2".into(), "new".into());
    t
}

fn target_of(kind: PlanKind) -> BTreeMap<String, Kv> {
    match kind {
        PlanKind::Three => {
            let mut t = baseline();
            t.get_mut("a").unwrap().insert("k1".into(), "v2".into());
            t.get_mut("a").unwrap().remove("k2");
            t.get_mut("b").unwrap().insert("k1".into(), "b2".into());
            t
        }
        _ => target(),
    }
}

fn build_plan(world: &Arc<FileWorld>, kind: PlanKind) -> Plan {
    let step = |id: &str, resource: &str, key: &str, value: Option<&str>, fail: bool| FileStep {
        world: world.clone(),
        id: id.into(),
        resource: resource.into(),
        key: key.into(),
        value: value.map(Into::into),
        fail,
    };
    let cp = |resource: &str| FileCheckpoint {
        world: world.clone(),
        resource: resource.into(),
    };
    if kind == PlanKind::Three {
        return Plan::builder("kill-Three")
            .checkpoint("a", cp("a"))
            .checkpoint("b", cp("b"))
            .step("a", step("s1", "a", "k1", Some("v2"), false), &[])
            .step("a", step("s2", "a", "k2", None, false), &["s1"])
            .step("b", step("s3", "b", "k1", Some("b2"), false), &["s2"])
            .build()
            .expect("plan builds");
    }
    let mut b = Plan::builder(format!("kill-{kind:?}"))
        .checkpoint("a", cp("a"))
        .checkpoint("b", cp("b"))
        .step("a", step("s1", "a", "k1", Some("v2"), false), &[])
        .step("c", step("s2", "c", "k1", Some("x"), false), &["s1"])
        .step("a", step("s3", "a", "k2", None, false), &["s1"])
        .step("a", step("s4", "a", "k1", Some("v3"), false), &["s3"])
        .step("c", step("s5", "c", "k2", Some("new"), false), &["s2"])
        .step("b", step("s6", "b", "k1", Some("b2"), false), &[]);
    if kind == PlanKind::Fail {
        b = b.step("b", step("s7", "b", "k2", Some("never"), true), &["s6"]);
    }
    b.build().expect("plan builds")
}

// ---------------------------------------------------------------------------------------
// the child process

#[derive(Debug, Serialize, Deserialize)]
struct ChildResult {
    outcome: Option<Outcome>,
    parity_proven: bool,
    /// What the report says is not proven back at the baseline.
    #[serde(default)]
    unproven: Vec<String>,
    resumes: u32,
    lease_takeovers: Vec<String>,
    /// `unknown_run`, `tampered:<seq>`, `malformed:<line>`, `out_of_order:<expected>`,
    /// `other`.
    error_kind: Option<String>,
    error: Option<String>,
    changes: u64,
    appends: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Not a test: the body of the child processes the kill tests start (it does nothing
/// unless `ROLLBACK_KILL_DIR` is set).
#[test]
#[ignore = "child process of the kill tests, started by them"]
fn child_process() {
    let Some(dir) = env("ROLLBACK_KILL_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mode = env("ROLLBACK_KILL_MODE").expect("mode");
    let kind = match env("ROLLBACK_KILL_PLAN").as_deref() {
        Some("Commit") => PlanKind::Commit,
        Some("Fail") => PlanKind::Fail,
        Some("Three") => PlanKind::Three,
        other => panic!("plan {other:?}"),
    };
    let policy = match env("ROLLBACK_KILL_POLICY").as_deref() {
        Some("RollBack") => ResumePolicy::RollBack,
        Some("RollForward") => ResumePolicy::RollForward,
        other => panic!("policy {other:?}"),
    };
    let holder = env("ROLLBACK_KILL_HOLDER").expect("holder");
    let after = |name: &str| env(name).map(|v| v.parse::<u64>().expect("a number"));
    let after_records = after("ROLLBACK_KILL_AFTER_RECORDS");
    if after_records == Some(0) {
        hang(&dir);
    }
    let world = Arc::new(FileWorld {
        path: dir.join("state.json"),
        lock: Mutex::new(()),
        changes: Tripwire::new(&dir, after("ROLLBACK_KILL_AFTER_CHANGES")),
        action_delay: Duration::from_millis(after("ROLLBACK_KILL_ACTION_MS").unwrap_or(0)),
    });
    let plan = build_plan(&world, kind);
    let stop_after = after("ROLLBACK_KILL_STOP_AFTER_RECORDS");
    let journal = Arc::new(TrippingJournal {
        inner: FileJournal::open(dir.join("journal"))
            .expect("journal opens")
            .inline_io(env("ROLLBACK_KILL_INLINE_IO").as_deref() == Some("1")),
        appends: match stop_after {
            Some(n) => Tripwire::stopping(&dir, Some(n)),
            None => Tripwire::new(&dir, after_records),
        },
        lease_ops: tokio::sync::Mutex::new(()),
    });
    let wait_for_run = env("ROLLBACK_KILL_WAIT_RUN").is_some();
    let ex = Executor::with_journal(journal.clone())
        .holder(holder)
        .lease_ttl(LEASE_TTL)
        .on_resume(policy);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let res = rt.block_on(async {
        if mode == "run" {
            return ex
                .run_as(&plan, RUN_ID, tokio_util::sync::CancellationToken::new())
                .await;
        }
        let mut tries = 0;
        loop {
            match ex.resume(&plan, RUN_ID).await {
                Err(Error::LeaseHeld { remaining_ms, .. }) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(remaining_ms + 5)).await;
                }
                // Racing a runner that has not journaled its first record yet.
                Err(Error::UnknownRun { .. }) if wait_for_run && tries < 500 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    });
    let mut out = ChildResult {
        outcome: None,
        parity_proven: false,
        unproven: Vec::new(),
        resumes: 0,
        lease_takeovers: Vec::new(),
        error_kind: None,
        error: None,
        changes: world.changes.count.load(Ordering::SeqCst),
        appends: journal.appends.count.load(Ordering::SeqCst),
    };
    match res {
        Ok(report) => {
            out.outcome = Some(report.outcome);
            out.parity_proven = report.parity_proven();
            out.unproven = report.unproven.clone();
            out.resumes = report.resumes;
            out.lease_takeovers = report.lease_takeovers.clone();
        }
        Err(e) => {
            use rollback_core::journal::JournalError as J;
            out.error_kind = Some(match &e {
                Error::UnknownRun { .. } => "unknown_run".to_string(),
                Error::Fenced { .. } => "fenced".to_string(),
                Error::Journal(J::Tampered { seq, .. }) => format!("tampered:{seq}"),
                Error::Journal(J::Malformed { line, .. }) => format!("malformed:{line}"),
                Error::Journal(J::OutOfOrder { expected_seq, .. }) => {
                    format!("out_of_order:{expected_seq}")
                }
                _ => "other".to_string(),
            });
            out.error = Some(e.to_string());
        }
    }
    std::fs::write(
        dir.join(format!("{mode}-result.json")),
        serde_json::to_vec_pretty(&out).expect("result encodes"),
    )
    .expect("write result");
}

// ---------------------------------------------------------------------------------------
// the parent side

#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Kill once the run has journaled this many records (0: before it starts).
    AfterRecords(u64),
    /// Kill once this many changes are durable in the state file (before the executor
    /// journals the outcome of the action that made the last one).
    AfterChanges(u64),
    /// Kill this long after the run's journal appears, wherever the run is then.
    AfterDelay(Duration),
    /// Do not kill.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    None,
    /// Append half of the next record (a write the kill cut short).
    TornTail,
    /// Change a digit of a middle record's timestamp.
    FlipMiddle,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    plan: PlanKind,
    policy: ResumePolicy,
    kill: Kill,
    tamper: Tamper,
    /// Resume as another holder (taking the expired lease over) instead of the same one.
    takeover: bool,
    /// Kill the resumer as well, after it journaled this many records.
    kill_resumer_after: Option<u64>,
    action_ms: u64,
}

impl Scenario {
    fn new(plan: PlanKind, policy: ResumePolicy, kill: Kill) -> Self {
        Scenario {
            plan,
            policy,
            kill,
            tamper: Tamper::None,
            takeover: false,
            kill_resumer_after: None,
            action_ms: 0,
        }
    }
}

#[derive(Debug)]
struct Observed {
    /// The child was killed (rather than finishing first).
    killed: bool,
    records_at_kill: usize,
    /// The kinds of the records journaled before the kill.
    kinds_at_kill: Vec<String>,
    state_at_kill: WorldState,
    final_state: WorldState,
    /// The kinds of the final journal's records, read through the verifying reader.
    final_kinds: std::result::Result<Vec<String>, String>,
    result: Option<ChildResult>,
}

/// Children spawned so far: every other one does its journal's file work inline
/// (`FileJournal::inline_io`), so killed runners and their resumers mix both ways.
static SPAWNED: AtomicUsize = AtomicUsize::new(0);

fn spawn_child(
    dir: &Path,
    s: &Scenario,
    mode: &str,
    holder: &str,
    kill: &[(&str, String)],
) -> Child {
    let inline = SPAWNED.fetch_add(1, Ordering::Relaxed) % 2;
    let exe = std::env::current_exe().expect("current exe");
    let log = std::fs::File::create(dir.join(format!("{mode}-stderr.log"))).expect("stderr log");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("ROLLBACK_KILL_DIR", dir)
    .env("ROLLBACK_KILL_MODE", mode)
    .env("ROLLBACK_KILL_PLAN", format!("{:?}", s.plan))
    .env("ROLLBACK_KILL_POLICY", format!("{:?}", s.policy))
    .env("ROLLBACK_KILL_HOLDER", holder)
    .env("ROLLBACK_KILL_ACTION_MS", s.action_ms.to_string())
    .env("ROLLBACK_KILL_INLINE_IO", inline.to_string())
    .env_remove("ROLLBACK_KILL_AFTER_RECORDS")
    .env_remove("ROLLBACK_KILL_AFTER_CHANGES")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in kill {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// Wait until the child hangs at its tripwire, or `delay` passes after its journal
/// appears (whatever its start-up time), then SIGKILL it; or let it finish. Returns
/// whether it was killed.
fn kill_when(dir: &Path, child: &mut Child, delay: Option<Duration>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut run_started: Option<Instant> = None;
    let hang = dir.join("hang");
    loop {
        if run_started.is_none() && journal_path(dir).exists() {
            run_started = Some(Instant::now());
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(
                status.success(),
                "child failed: {status}: {}",
                std::fs::read_to_string(dir.join("run-stderr.log")).unwrap_or_default()
                    + &std::fs::read_to_string(dir.join("resume-stderr.log")).unwrap_or_default()
            );
            return false;
        }
        let due = matches!((delay, run_started), (Some(d), Some(t)) if t.elapsed() >= d);
        if hang.exists() || due {
            child.kill().expect("SIGKILL the child");
            let status = child.wait().expect("wait");
            let _ = std::fs::remove_file(&hang);
            if status.success() {
                return false; // it finished just before the signal
            }
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
            return true;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child neither finished nor reached its kill point in a minute");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal").join(format!("{RUN_ID}.journal"))
}

fn complete_records(dir: &Path) -> Vec<Record> {
    let bytes = std::fs::read(journal_path(dir)).unwrap_or_default();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

fn verified_records(dir: &Path) -> Result<Vec<Record>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        FileJournal::open(dir.join("journal"))?
            .records(RUN_ID)
            .await
    })
}

fn read_result(dir: &Path, mode: &str) -> Option<ChildResult> {
    let bytes = std::fs::read(dir.join(format!("{mode}-result.json"))).ok()?;
    Some(serde_json::from_slice(&bytes).expect("result decodes"))
}

fn tamper(dir: &Path, how: Tamper) {
    let path = journal_path(dir);
    let mut bytes = std::fs::read(&path).expect("journal exists");
    match how {
        Tamper::None => {}
        Tamper::TornTail => {
            let last = complete_records(dir).pop().expect("a record");
            let next = Record::seal(
                RUN_ID,
                last.seq + 1,
                last.at_ms + 1,
                last.hash,
                0,
                Entry::ApplyIntent {
                    step: "never-journaled".into(),
                    attempt: 1,
                },
            );
            let line = serde_json::to_vec(&next).unwrap();
            bytes.extend_from_slice(&line[..line.len() / 2]);
        }
        Tamper::FlipMiddle => {
            // record 1's timestamp: `"at_ms":1…` → `"at_ms":2…`
            let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
            let at = find(&bytes[second..], b"\"at_ms\":").unwrap() + second + 8;
            bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
        }
    }
    std::fs::write(&path, bytes).unwrap();
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Run one scenario end to end: seed, run and kill, tamper, resume (and kill and resume
/// again), and return what was observed.
fn run_scenario(s: &Scenario) -> Observed {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    save(
        &dir.join("state.json"),
        &WorldState {
            resources: baseline(),
            ..Default::default()
        },
    )
    .unwrap();
    let (kill_env, delay): (Vec<(&str, String)>, Option<Duration>) = match s.kill {
        Kill::AfterRecords(n) => (vec![("ROLLBACK_KILL_AFTER_RECORDS", n.to_string())], None),
        Kill::AfterChanges(n) => (vec![("ROLLBACK_KILL_AFTER_CHANGES", n.to_string())], None),
        Kill::AfterDelay(d) => (vec![], Some(d)),
        Kill::Never => (vec![], None),
    };
    let mut child = spawn_child(dir, s, "run", "runner", &kill_env);
    let killed = kill_when(dir, &mut child, delay);
    let at_kill = complete_records(dir);
    let records_at_kill = at_kill.len();
    let kinds_at_kill: Vec<String> = at_kill.iter().map(|r| r.entry.kind().to_string()).collect();
    let state_at_kill = load(&dir.join("state.json"));
    let final_kinds = || {
        verified_records(dir)
            .map(|rs| rs.iter().map(|r| r.entry.kind().to_string()).collect())
            .map_err(|e| e.to_string())
    };
    if !killed {
        return Observed {
            killed,
            records_at_kill,
            kinds_at_kill,
            final_state: state_at_kill.clone(),
            state_at_kill,
            final_kinds: final_kinds(),
            result: read_result(dir, "run"),
        };
    }

    if s.tamper != Tamper::None {
        tamper(dir, s.tamper);
    }
    let journal_before = std::fs::read(journal_path(dir)).ok();
    let holder = if s.takeover { "resumer" } else { "runner" };
    if s.tamper == Tamper::FlipMiddle {
        // Resume must refuse the altered journal with a typed error, changing nothing.
        let mut r = spawn_child(dir, s, "resume", holder, &[]);
        assert!(!kill_when(dir, &mut r, None));
        let res = read_result(dir, "resume").expect("resume result");
        assert_eq!(
            res.error_kind.as_deref(),
            Some("tampered:1"),
            "altered record 1 is reported: {res:?}"
        );
        assert_eq!(
            load(&dir.join("state.json")),
            state_at_kill,
            "nothing changed"
        );
        assert_eq!(std::fs::read(journal_path(dir)).ok(), journal_before);
        // Put the byte back: the run then resumes to a consistent end.
        tamper(dir, Tamper::FlipMiddle);
    }
    if let Some(n) = s.kill_resumer_after {
        let mut r = spawn_child(
            dir,
            s,
            "resume",
            "second-runner",
            &[("ROLLBACK_KILL_AFTER_RECORDS", n.to_string())],
        );
        kill_when(dir, &mut r, None);
    }
    let mut r = spawn_child(dir, s, "resume", holder, &[]);
    assert!(!kill_when(dir, &mut r, None), "the resumer finishes");
    let result = read_result(dir, "resume");
    if s.tamper == Tamper::TornTail {
        let after = std::fs::read(journal_path(dir)).unwrap();
        let before = journal_before.expect("journal");
        let cut = before.iter().rposition(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(
            &after[..cut],
            &before[..cut],
            "records before the torn tail kept"
        );
        assert!(
            !String::from_utf8_lossy(&after).contains("never-journaled"),
            "the torn record is gone"
        );
    }
    Observed {
        killed,
        records_at_kill,
        kinds_at_kill,
        state_at_kill,
        final_state: load(&dir.join("state.json")),
        final_kinds: final_kinds(),
        result,
    }
}

/// The invariant: killed anywhere, the resumed run ends exactly at the baseline or exactly
/// at the target, and its report says which. Returns the outcome.
fn check(s: &Scenario, o: &Observed) -> Outcome {
    let what = format!("{s:?}, {} records at kill", o.records_at_kill);
    let res = o
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no result"));
    if res.error_kind.as_deref() == Some("unknown_run") {
        assert_eq!(o.records_at_kill, 0, "{what}: {res:?}");
        assert_eq!(o.state_at_kill.resources, baseline(), "{what}");
        assert_eq!(o.final_state.resources, baseline(), "{what}");
        return Outcome::RolledBack;
    }
    let outcome = res
        .outcome
        .unwrap_or_else(|| panic!("{what}: resume failed: {res:?}"));
    let before = |kind: &str| o.kinds_at_kill.iter().any(|k| k == kind);
    let committed_before = before("committed");
    let rollback_before = before("rollback_started");
    let finished_before = committed_before || before("rolled_back");
    // The journal after resume verifies and ends in a final record.
    let kinds = o
        .final_kinds
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: final journal does not verify: {e}"));
    assert_eq!(
        &kinds[..o.records_at_kill.min(kinds.len())],
        &o.kinds_at_kill[..],
        "{what}: resume kept the records before the kill"
    );
    // It ends in its outcome, then one release per captured snapshot, each once (a
    // resume after the outcome adds its own resume and lease records before them).
    let after = kinds
        .iter()
        .rev()
        .take_while(|k| matches!(k.as_str(), "discarded" | "resumed" | "lease_taken"))
        .count();
    let last = kinds[..kinds.len() - after].last().map(String::as_str);
    let released = kinds.iter().filter(|k| *k == "discarded").count();
    assert!(
        matches!(last, Some("committed" | "rolled_back")),
        "{what}: journal ends in {last:?}"
    );
    let captured = kinds.iter().filter(|k| *k == "captured").count();
    assert_eq!(
        released, captured,
        "{what}: every captured snapshot released once after the outcome: {kinds:?}"
    );
    if o.killed && !finished_before {
        assert!(
            res.resumes >= 1,
            "{what}: the report counts the resume: {res:?}"
        );
        if s.takeover {
            assert!(
                !res.lease_takeovers.is_empty(),
                "{what}: the expired lease was taken over, and the report says so: {res:?}"
            );
        }
    }
    match outcome {
        Outcome::Committed => {
            assert_eq!(
                o.final_state.resources,
                target(),
                "{what}: committed ≠ target"
            );
            assert_eq!(s.plan, PlanKind::Commit, "{what}: a failing plan committed");
            assert!(
                s.policy == ResumePolicy::RollForward || committed_before || !o.killed,
                "{what}: rolled forward against the RollBack policy"
            );
        }
        Outcome::RolledBack => {
            assert_eq!(
                o.final_state.resources,
                baseline(),
                "{what}: rolled back ≠ baseline"
            );
            // Every checkpointed resource is proven; `c` has no checkpoint (compensation
            // only), and the report names it — and nothing else — whenever a step on it
            // was undone.
            assert!(
                res.unproven.iter().all(|u| u.starts_with("c:")),
                "{what}: unproven: {res:?}"
            );
            assert_eq!(
                res.parity_proven,
                res.unproven.is_empty(),
                "{what}: parity proven exactly when nothing is unproven: {res:?}"
            );
            assert!(
                !(s.plan == PlanKind::Commit && s.policy == ResumePolicy::RollForward),
                "{what}: a committing plan under RollForward rolled back"
            );
        }
        other => panic!("{what}: outcome {other:?}: {res:?}"),
    }
    assert!(!committed_before || outcome == Outcome::Committed, "{what}");
    assert!(!rollback_before || outcome == Outcome::RolledBack, "{what}");
    outcome
}

/// Run scenarios on a few threads; returns (scenario, observed) in order.
fn run_many(scenarios: Vec<Scenario>) -> Vec<(Scenario, Observed)> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(s) = scenarios.get(i) else { break };
                let o = run_scenario(s);
                out.lock().unwrap().push((i, *s, o));
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|(i, _, _)| *i);
    v.into_iter().map(|(_, s, o)| (s, o)).collect()
}

/// An uninterrupted run of `plan`: how many records and state changes it makes.
fn clean_run(plan: PlanKind) -> (u64, u64) {
    let s = Scenario::new(plan, ResumePolicy::RollBack, Kill::Never);
    let o = run_scenario(&s);
    assert!(!o.killed);
    let res = o.result.expect("run result");
    let expected = match plan {
        PlanKind::Commit | PlanKind::Three => (Outcome::Committed, target_of(plan)),
        PlanKind::Fail => (Outcome::RolledBack, baseline()),
    };
    assert_eq!(res.outcome, Some(expected.0), "{res:?}");
    assert_eq!(o.final_state.resources, expected.1);
    (res.appends, res.changes)
}

fn summarize(name: &str, results: &[(Scenario, Observed)]) {
    let mut outcomes = BTreeMap::new();
    for (s, o) in results {
        *outcomes.entry(format!("{:?}", check(s, o))).or_insert(0) += 1;
    }
    let killed = results.iter().filter(|(_, o)| o.killed).count();
    let mut points: Vec<_> = results
        .iter()
        .filter(|(_, o)| o.killed)
        .map(|(s, o)| (format!("{:?}", s.plan), o.records_at_kill))
        .collect();
    points.sort();
    points.dedup();
    eprintln!(
        "{name}: {} scenarios, {killed} kills at {} distinct (plan, records) points; \
         outcomes {outcomes:?}",
        results.len(),
        points.len()
    );
}

// ---------------------------------------------------------------------------------------
// the tests

#[test]
fn killed_after_every_journal_record_a_committing_run_resumes_to_baseline_or_target() {
    let (records, _) = clean_run(PlanKind::Commit);
    assert_eq!(
        records, 20,
        "run_started, plan_described, lease, a captured (a restore-only step), b fingerprinted (compensations \
         alone undo it), 6 applies, committed, a's snapshot released"
    );
    let mut scenarios = Vec::new();
    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        for n in 0..=records {
            let mut s = Scenario::new(PlanKind::Commit, policy, Kill::AfterRecords(n));
            s.takeover = n % 2 == 1;
            scenarios.push(s);
        }
    }
    let results = run_many(scenarios);
    for (s, o) in &results {
        if let Kill::AfterRecords(n) = s.kill {
            assert!(o.killed, "{s:?}");
            assert_eq!(o.records_at_kill as u64, n, "killed right after record {n}");
        }
    }
    summarize("commit plan, kill after each record", &results);
}

#[test]
fn killed_after_every_journal_record_a_failing_run_resumes_to_the_baseline() {
    let (records, _) = clean_run(PlanKind::Fail);
    assert!(records > 30, "{records}");
    let mut scenarios = Vec::new();
    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        for n in 0..=records {
            let mut s = Scenario::new(PlanKind::Fail, policy, Kill::AfterRecords(n));
            s.takeover = n % 2 == 0;
            scenarios.push(s);
        }
    }
    let results = run_many(scenarios);
    for (s, o) in &results {
        if let Kill::AfterRecords(n) = s.kill {
            assert!(o.killed, "{s:?}");
            assert_eq!(o.records_at_kill as u64, n);
        }
    }
    summarize("failing plan, kill after each record", &results);
}

/// The most dangerous instant: the change is durable but its outcome is not journaled
/// (an uncertain apply, revert, capture or restore).
#[test]
fn killed_after_every_state_change_before_its_outcome_is_journaled_the_run_resumes() {
    let mut scenarios = Vec::new();
    for plan in [PlanKind::Commit, PlanKind::Fail] {
        let (_, changes) = clean_run(plan);
        for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
            for k in 1..=changes {
                let mut s = Scenario::new(plan, policy, Kill::AfterChanges(k));
                s.takeover = k % 2 == 0;
                scenarios.push(s);
            }
        }
    }
    let results = run_many(scenarios);
    for (s, o) in &results {
        assert!(o.killed, "{s:?}");
    }
    summarize("kill after each durable change", &results);
}

#[test]
fn killed_at_random_moments_a_run_resumes_to_baseline_or_target() {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut scenarios = Vec::new();
    for i in 0..60u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let plan = if i % 3 == 0 {
            PlanKind::Fail
        } else {
            PlanKind::Commit
        };
        let policy = if i % 2 == 0 {
            ResumePolicy::RollBack
        } else {
            ResumePolicy::RollForward
        };
        // each action pauses 2×5 ms: a run lasts about 100–250 ms
        let mut s = Scenario::new(
            plan,
            policy,
            Kill::AfterDelay(Duration::from_millis(rng % 120)),
        );
        s.action_ms = 5;
        s.takeover = i % 4 < 2;
        scenarios.push(s);
    }
    let results = run_many(scenarios);
    summarize("kill at random moments", &results);
    assert!(
        results
            .iter()
            .filter(|(_, o)| o.killed && o.records_at_kill > 0)
            .count()
            >= 25,
        "most random kills land inside the run"
    );
}

#[test]
fn a_resumer_killed_in_turn_is_resumed_by_a_third_process() {
    let mut scenarios = Vec::new();
    for (plan, policy, first, second) in [
        (PlanKind::Commit, ResumePolicy::RollBack, 9, 3),
        (PlanKind::Commit, ResumePolicy::RollBack, 13, 5),
        (PlanKind::Commit, ResumePolicy::RollForward, 8, 4),
        (PlanKind::Commit, ResumePolicy::RollForward, 11, 2),
        (PlanKind::Fail, ResumePolicy::RollBack, 22, 3),
        (PlanKind::Fail, ResumePolicy::RollForward, 7, 6),
    ] {
        let mut s = Scenario::new(plan, policy, Kill::AfterRecords(first));
        s.kill_resumer_after = Some(second);
        s.takeover = true;
        scenarios.push(s);
    }
    let results = run_many(scenarios);
    for (s, o) in &results {
        let res = o.result.as_ref().unwrap();
        assert!(res.resumes >= 2, "{s:?}: two resumes counted: {res:?}");
    }
    summarize("resumer killed too", &results);
}

#[test]
fn a_torn_last_record_in_a_killed_runs_journal_is_dropped_on_resume() {
    let mut scenarios = Vec::new();
    for (plan, policy, n) in [
        (PlanKind::Commit, ResumePolicy::RollBack, 7),
        (PlanKind::Commit, ResumePolicy::RollForward, 12),
        (PlanKind::Fail, ResumePolicy::RollBack, 25),
    ] {
        let mut s = Scenario::new(plan, policy, Kill::AfterRecords(n));
        s.tamper = Tamper::TornTail;
        scenarios.push(s);
    }
    let results = run_many(scenarios);
    summarize("torn tail after kill", &results);
}

#[test]
fn an_altered_record_in_a_killed_runs_journal_stops_resume_with_a_typed_error() {
    let mut scenarios = Vec::new();
    for (plan, policy, n) in [
        (PlanKind::Commit, ResumePolicy::RollBack, 9),
        (PlanKind::Commit, ResumePolicy::RollForward, 14),
        (PlanKind::Fail, ResumePolicy::RollBack, 27),
    ] {
        let mut s = Scenario::new(plan, policy, Kill::AfterRecords(n));
        s.tamper = Tamper::FlipMiddle;
        scenarios.push(s);
    }
    let results = run_many(scenarios);
    summarize("altered record after kill", &results);
}

// ---------------------------------------------------------------------------------------
// paused runners (SIGSTOP): fencing

/// Whether every thread of process `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        // tid (comm) S ...: the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        if state != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

/// Wait until every thread of `child` is stopped, or it has exited (`false`).
fn wait_stopped(child: &mut Child) -> bool {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        if all_threads_stopped(child.id()) {
            return true;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child neither stopped nor finished in a minute"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

fn wait_exit(child: &mut Child, dir: &Path, mode: &str) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(
                status.success(),
                "{mode} child failed: {status}: {}",
                std::fs::read_to_string(dir.join(format!("{mode}-stderr.log"))).unwrap_or_default()
            );
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let leases: Vec<String> = std::fs::read_dir(dir.join("journal"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| {
                            format!(
                                "{:?}: {}",
                                e.file_name(),
                                std::fs::read_to_string(e.path())
                                    .unwrap_or_default()
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "{mode} child did not finish in a minute; its stderr: {}\njournal folder: {leases:#?}",
                std::fs::read_to_string(dir.join(format!("{mode}-stderr.log"))).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a run's journal and world must read as, whoever was paused when: epochs never go
/// back and each new epoch starts with its runner's `resumed`; the world was changed by
/// epochs in order (no older runner after a newer one); it ends at the baseline or the
/// target, as the journal's outcome says. Returns that outcome and the epochs that wrote.
fn check_fenced_history(dir: &Path, plan: PlanKind, what: &str) -> (Outcome, Vec<u64>) {
    let records = verified_records(dir)
        .unwrap_or_else(|e| panic!("{what}: the journal does not verify: {e}"));
    let mut epochs = Vec::new();
    for r in &records {
        if epochs.last() != Some(&r.epoch) {
            if !epochs.is_empty() {
                assert!(
                    matches!(r.entry, Entry::Resumed { .. }),
                    "{what}: epoch {} starts with {} at seq {}",
                    r.epoch,
                    r.entry.kind(),
                    r.seq
                );
            }
            epochs.push(r.epoch);
        }
    }
    let state = load(&dir.join("state.json"));
    let mut last = 0;
    for (epoch, action) in &state.actions {
        assert!(
            *epoch >= last,
            "{what}: {action} by epoch {epoch} after a change by epoch {last}"
        );
        last = *epoch;
    }
    if std::env::var("KILL_DEBUG").is_ok() {
        eprintln!(
            "{what}: actions {:?}\nrecords {:?}",
            state.actions,
            records
                .iter()
                .map(|r| (r.epoch, r.entry.kind()))
                .collect::<Vec<_>>()
        );
    }
    let outcome = if records.iter().any(|r| matches!(r.entry, Entry::Committed)) {
        assert_eq!(
            state.resources,
            target_of(plan),
            "{what}: committed ≠ target"
        );
        Outcome::Committed
    } else if records
        .iter()
        .any(|r| matches!(r.entry, Entry::RolledBack { .. }))
    {
        assert_eq!(
            state.resources,
            baseline(),
            "{what}: rolled back ≠ baseline"
        );
        Outcome::RolledBack
    } else {
        panic!(
            "{what}: the run did not finish: {:?}",
            records.last().map(|r| r.entry.kind())
        );
    };
    (outcome, epochs)
}

fn seed_world(dir: &Path) {
    save(
        &dir.join("state.json"),
        &WorldState {
            resources: baseline(),
            ..Default::default()
        },
    )
    .unwrap();
}

/// The reproduction, at every record boundary: runner A stops (SIGSTOP) right
/// after journaling record n; once its lease expired, runner B resumes the run (taking
/// the lease over) and finishes it; A is continued and must stop with `Error::Fenced`,
/// writing nothing to the journal or the world after B.
#[test]
fn paused_after_every_journal_record_a_runner_is_fenced_after_a_takeover() {
    let (records, _) = clean_run(PlanKind::Three);
    assert!(records >= 10, "{records}");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let next = AtomicUsize::new(1);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst) as u64;
                if let Ok(only) = std::env::var("KILL_ONLY") {
                    if n.to_string() != only {
                        if n > records {
                            break;
                        }
                        continue;
                    }
                }
                if n > records {
                    break;
                }
                let what = format!("A stopped after record {n} of {records}");
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path();
                seed_world(dir);
                let mut s = Scenario::new(PlanKind::Three, ResumePolicy::RollBack, Kill::Never);
                s.takeover = true;
                let mut a = spawn_child(
                    dir,
                    &s,
                    "run",
                    "runner-a",
                    &[("ROLLBACK_KILL_STOP_AFTER_RECORDS", n.to_string())],
                );
                assert!(wait_stopped(&mut a), "{what}: A finished without stopping");
                let before_b = complete_records(dir).len();
                assert_eq!(before_b as u64, n, "{what}");
                // Let A's lease expire (by the journal's clock), then B resumes.
                std::thread::sleep(LEASE_TTL * 2);
                let mut b = spawn_child(dir, &s, "resume", "runner-b", &[]);
                wait_exit(&mut b, dir, "resume");
                let after_b = std::fs::read(journal_path(dir)).unwrap();
                let world_after_b = load(&dir.join("state.json"));
                signal(&a, "-CONT");
                wait_exit(&mut a, dir, "run");
                let ra = read_result(dir, "run").expect("A's result");
                let rb = read_result(dir, "resume").expect("B's result");
                let (outcome, epochs) = check_fenced_history(dir, PlanKind::Three, &what);
                assert_eq!(rb.outcome, Some(outcome), "{what}: B's report: {rb:?}");
                let took_over = epochs.len() > 1;
                let verdict = match (ra.error_kind.as_deref(), took_over) {
                    (Some("fenced"), true) => "fenced",
                    (None, false) => "A had finished",
                    other => panic!("{what}: A ended {other:?}: {ra:?}; epochs {epochs:?}"),
                };
                // Nothing of A's reached the journal or the world after B finished.
                assert_eq!(std::fs::read(journal_path(dir)).unwrap(), after_b, "{what}");
                assert_eq!(load(&dir.join("state.json")), world_after_b, "{what}");
                results
                    .lock()
                    .unwrap()
                    .push(format!("{verdict}, {outcome:?}"));
            });
        }
    });
    for r in results.into_inner().unwrap() {
        *tally.entry(r).or_default() += 1;
    }
    eprintln!("paused at each of {records} records: {tally:?}");
    let fenced: usize = tally
        .iter()
        .filter(|(k, _)| k.starts_with("fenced"))
        .map(|(_, v)| v)
        .sum();
    assert!(fenced as u64 >= records - 2, "{tally:?}");
}

/// Two runners race on one run for 200 iterations: A runs the plan, B keeps trying to
/// resume it, and the parent pauses A at a random moment for a random time around the
/// lease TTL. Whoever finishes, the history reads as one runner per epoch, the world was
/// changed by epochs in order, and it ends at the baseline or the target.
#[test]
fn two_runners_racing_with_random_pauses_never_act_after_a_newer_epoch() {
    let iterations = 200u64;
    let next = AtomicU64::new(0);
    let tally = Mutex::new(BTreeMap::<String, usize>::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= iterations {
                    break;
                }
                let mut rng =
                    0x9e37_79b9_7f4a_7c15u64 ^ (i + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                let mut rand = move |n: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % n
                };
                let what = format!("race {i}");
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path();
                seed_world(dir);
                let mut s = Scenario::new(PlanKind::Three, ResumePolicy::RollBack, Kill::Never);
                s.action_ms = 5;
                let mut a = spawn_child(dir, &s, "run", "runner-a", &[]);
                let mut b = spawn_child(
                    dir,
                    &s,
                    "resume",
                    "runner-b",
                    &[("ROLLBACK_KILL_WAIT_RUN", "1".to_string())],
                );
                // Pause A somewhere in its run, for 0.5–3 TTLs.
                let until_journal = Instant::now();
                while !journal_path(dir).exists()
                    && until_journal.elapsed() < Duration::from_secs(30)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(rand(60)));
                let paused = a.try_wait().expect("try_wait").is_none();
                if paused {
                    signal(&a, "-STOP");
                    std::thread::sleep(
                        LEASE_TTL / 2
                            + Duration::from_millis(rand(LEASE_TTL.as_millis() as u64 * 5 / 2)),
                    );
                    signal(&a, "-CONT");
                }
                wait_exit(&mut a, dir, "run");
                wait_exit(&mut b, dir, "resume");
                let ra = read_result(dir, "run").expect("A's result");
                let rb = read_result(dir, "resume").expect("B's result");
                let (outcome, epochs) = check_fenced_history(dir, PlanKind::Three, &what);
                for (who, r) in [("A", &ra), ("B", &rb)] {
                    match (&r.outcome, r.error_kind.as_deref()) {
                        (Some(o), None) => assert_eq!(*o, outcome, "{what}: {who} says {o:?}"),
                        (None, Some("fenced")) => {}
                        other => panic!("{what}: {who} ended {other:?}: {r:?}"),
                    }
                }
                let a_fenced = ra.error_kind.as_deref() == Some("fenced");
                assert_eq!(
                    a_fenced,
                    epochs.len() > 1 && ra.outcome.is_none(),
                    "{what}: {ra:?} {epochs:?}"
                );
                let key = format!(
                    "{}{}, {outcome:?}",
                    if paused { "paused" } else { "not paused" },
                    if epochs.len() > 1 { ", taken over" } else { "" }
                );
                *tally.lock().unwrap().entry(key).or_default() += 1;
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    eprintln!("{iterations} races: {tally:?}");
    let taken_over: usize = tally
        .iter()
        .filter(|(k, _)| k.contains("taken over"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        taken_over >= 20,
        "enough races end in a takeover: {tally:?}"
    );
}
