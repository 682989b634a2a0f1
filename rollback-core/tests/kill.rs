//! Real process kills. A child process (this test binary, re-invoked on its ignored
//! `child_process` test) runs a plan on the [`FileJournal`] over resources kept in a
//! file, and is SIGKILLed: after each journal record, after each durable state change
//! (before the executor could journal its outcome), or at random moments. A fresh
//! process then resumes the run with [`Executor::resume`]; the resources must end exactly
//! at the baseline or exactly at the target, and the report must say which. A torn last
//! record and an altered middle record in the killed run's journal are detected on
//! resume, and a resumer killed in turn is resumed by a third process.
//!
//! The file-backed world: `state.json`, rewritten atomically (temp file, fsync, rename,
//! fsync of the folder) on every change, holding the resources, the captured snapshots
//! and the steps' idempotency markers (written in the same rename as the change).

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

/// Stops the process dead (until the parent's SIGKILL) after a chosen point.
struct Tripwire {
    dir: PathBuf,
    after: Option<u64>,
    count: AtomicU64,
}

impl Tripwire {
    fn new(dir: &Path, after: Option<u64>) -> Self {
        Tripwire {
            dir: dir.to_path_buf(),
            after,
            count: AtomicU64::new(0),
        }
    }
    fn tick(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.after == Some(n) {
            hang(&self.dir);
        }
    }
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
        load(&self.path)
    }
    /// Apply `f` to the state; when it reports a change, persist it atomically.
    fn update<T>(&self, f: impl FnOnce(&mut WorldState) -> Result<(T, bool)>) -> Result<T> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = load(&self.path);
        let (out, changed) = f(&mut state)?;
        if changed {
            save(&self.path, &state).map_err(|e| Error::backend("file-world", e))?;
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
        let kv = self.world.update(|s| {
            let kv = s.resources.get(&self.resource).cloned().unwrap_or_default();
            s.snapshots.insert(id.clone(), kv.clone());
            Ok((kv, true))
        })?;
        let digest = fingerprint_of(&kv);
        Ok(Snapshot {
            id: id.clone(),
            resource: self.resource.clone(),
            kind: "file.kv".into(),
            digest,
            fingerprint: digest,
            captured_at_ms: rollback_core::now_ms(),
            size_bytes: None,
            descriptor: serde_json::json!({ "stored_as": id }),
        })
    }

    async fn restore(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<Restored> {
        snapshot.ensure_resource(&self.resource)?;
        self.world.pause().await;
        let key = snapshot.descriptor["stored_as"]
            .as_str()
            .ok_or_else(|| Error::invalid("snapshot descriptor has no stored_as"))?
            .to_string();
        self.world.update(|s| {
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
        let receipt = self.world.update(|s| {
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
        self.world.update(|s| {
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
struct TrippingJournal {
    inner: FileJournal,
    appends: Tripwire,
}

#[async_trait]
impl Journal for TrippingJournal {
    async fn append(&self, run_id: &str, entry: &Entry) -> Result<Record> {
        let rec = self.inner.append(run_id, entry).await?;
        self.appends.tick();
        Ok(rec)
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
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
    let journal = Arc::new(TrippingJournal {
        inner: FileJournal::open(dir.join("journal")).expect("journal opens"),
        appends: Tripwire::new(&dir, after_records),
    });
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
                other => return other,
            }
        }
    });
    let mut out = ChildResult {
        outcome: None,
        parity_proven: false,
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
            out.resumes = report.resumes;
            out.lease_takeovers = report.lease_takeovers.clone();
        }
        Err(e) => {
            use rollback_core::journal::JournalError as J;
            out.error_kind = Some(match &e {
                Error::UnknownRun { .. } => "unknown_run".to_string(),
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

fn spawn_child(
    dir: &Path,
    s: &Scenario,
    mode: &str,
    holder: &str,
    kill: &[(&str, String)],
) -> Child {
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
            assert!(res.parity_proven, "{what}: parity not proven: {res:?}");
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
        PlanKind::Commit => (Outcome::Committed, target()),
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
        records, 21,
        "run_started, lease, 2 captures, 6 applies, committed, 2 snapshot releases"
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
