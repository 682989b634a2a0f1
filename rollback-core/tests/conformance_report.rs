//! The conformance suite reports every clause (`conformance::check`, `Suite`), and its
//! clauses catch what the single-step suite missed: deliberately broken variants of the
//! sim's implementations — a step whose `touches()` names the wrong resource, a restore
//! that leaves items added after capture, a verifier that always passes — each fail the
//! clause written for them, while the correct sim implementations pass every clause.
#![cfg(feature = "conformance")]

use async_trait::async_trait;
use rollback_core::conformance::{self, Change, ClauseStatus, ConformanceReport, Subject, Suite};
use rollback_core::journal::MemoryJournal;
use rollback_core::sim::{KeyEquals, SetKey, SimCheckpoint, SimWorld};
use rollback_core::{
    Checkpoint, Context, Digest, Receipt, Restored, Result, Reversibility, Snapshot, Step, Verdict,
    Verifier,
};
use std::sync::Arc;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("t", "a", "1");
    w.set("t", "b", "kept");
    w.set("u", "z", "other resource");
    w
}

fn subject(w: &SimWorld, checkpoint: Arc<dyn Checkpoint>, step: Arc<dyn Step>) -> Subject {
    Subject {
        checkpoint,
        other_checkpoint: Arc::new(w.checkpoint("u")),
        step,
        journal: Arc::new(MemoryJournal::new()),
    }
}

fn modify(w: &SimWorld) -> Arc<dyn Step> {
    Arc::new(SetKey::new("set-a", w, "t", "a", "2"))
}

/// The suite with one change of each kind and a verifier of `a`.
fn full(w: &SimWorld, s: Subject, verifier: impl Verifier + 'static) -> Suite {
    Suite::new(s)
        .change(Change::Add, SetKey::new("add-c", w, "t", "c", "new"))
        .change(Change::Modify, SetKey::new("set-b", w, "t", "b", "changed"))
        .change(Change::Delete, SetKey::delete("drop-a", w, "t", "a"))
        .verifier(verifier, SetKey::new("break-a", w, "t", "a", "broken"))
}

fn a_is_1(w: &SimWorld) -> KeyEquals {
    KeyEquals::new("a-is-1", w, "t", "a", Some("1"))
}

fn status(r: &ConformanceReport, id: &str) -> ClauseStatus {
    r.get(id)
        .unwrap_or_else(|| panic!("no clause {id} in\n{r}"))
        .status
}

fn message<'r>(r: &'r ConformanceReport, id: &str) -> &'r str {
    &r.get(id)
        .unwrap_or_else(|| panic!("no clause {id}"))
        .message
}

/// A step that changes `t` but names `u` in `touches()`.
struct WrongTouches(SetKey);

#[async_trait]
impl Step for WrongTouches {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn reversibility(&self) -> Reversibility {
        self.0.reversibility()
    }
    fn touches(&self) -> Vec<String> {
        vec!["u".into()]
    }
    fn spec(&self) -> serde_json::Value {
        self.0.spec()
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.0.apply(ctx).await
    }
    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.0.revert(receipt, ctx).await
    }
}

/// A checkpoint whose restore rewrites the captured items but leaves items added since.
struct LeavesAddedItems {
    inner: SimCheckpoint,
    world: SimWorld,
}

#[async_trait]
impl Checkpoint for LeavesAddedItems {
    fn resource(&self) -> &str {
        self.inner.resource()
    }
    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        self.inner.capture(ctx).await
    }
    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        let now = self.world.resource_state("t");
        let restored = self.inner.restore(snapshot, ctx).await?;
        let back = self.world.resource_state("t");
        for (k, v) in now {
            if !back.contains_key(&k) {
                self.world.set("t", &k, &v);
            }
        }
        Ok(restored)
    }
    async fn fingerprint(&self, ctx: &Context) -> Result<Digest> {
        self.inner.fingerprint(ctx).await
    }
    async fn discard(&self, snapshot: &Snapshot, ctx: &Context) -> Result<()> {
        self.inner.discard(snapshot, ctx).await
    }
}

/// A verifier that passes whatever the state.
struct AlwaysPasses;

#[async_trait]
impl Verifier for AlwaysPasses {
    fn id(&self) -> &str {
        "always-passes"
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        Ok(Verdict::pass("looks fine"))
    }
}

#[tokio::test]
async fn the_sim_implementations_pass_every_clause_with_each_kind_of_change_and_a_verifier() {
    let w = world();
    let before = w.snapshot_state();
    let s = subject(&w, Arc::new(w.checkpoint("t")), modify(&w));
    let report = full(&w, s, a_is_1(&w)).check().await;
    assert!(report.passed(), "{report}");
    assert!(
        report
            .clauses
            .iter()
            .all(|c| c.status == ClauseStatus::Passed),
        "every clause was checked: {report}"
    );
    for id in [
        "checkpoint.capture_mutate_restore",
        "checkpoint.refuses_tampered_digest",
        "checkpoint.refuses_other_resource",
        "step.touches_what_it_changes/set-a",
        "step.touches_what_it_changes/add-c",
        "step.touches_what_it_changes/drop-a",
        "checkpoint.restore_undoes_add/add-c",
        "checkpoint.restore_undoes_modify/set-b",
        "checkpoint.restore_undoes_delete/drop-a",
        "step.idempotent_apply_and_revert",
        "step.revert_without_receipt",
        "verifier.is_read_only/a-is-1",
        "verifier.passes_at_baseline/a-is-1",
        "verifier.fails_after_breaking_change/a-is-1",
        "executor.interrupted_step_resumes",
    ] {
        assert_eq!(status(&report, id), ClauseStatus::Passed, "{id}: {report}");
    }
    assert_eq!(
        w.snapshot_state(),
        before,
        "the suite leaves the resources as found"
    );
}

#[tokio::test]
async fn check_on_a_subject_alone_says_what_it_was_not_given() {
    let w = world();
    let report = conformance::check(subject(&w, Arc::new(w.checkpoint("t")), modify(&w))).await;
    assert!(report.passed(), "{report}");
    for id in [
        "checkpoint.restore_undoes_add",
        "checkpoint.restore_undoes_modify",
        "checkpoint.restore_undoes_delete",
        "verifier",
    ] {
        assert_eq!(status(&report, id), ClauseStatus::NotChecked, "{id}");
        assert!(message(&report, id).contains("was given"), "{id}");
    }
    assert_eq!(
        status(&report, "step.touches_what_it_changes/set-a"),
        ClauseStatus::Passed
    );
    assert!(report.to_string().contains("not checked"));
}

#[tokio::test]
async fn a_restore_only_step_is_not_checked_for_revert_without_receipt() {
    let w = world();
    let step: Arc<dyn Step> = Arc::new(SetKey::delete("drop-a", &w, "t", "a"));
    let report = conformance::check(subject(&w, Arc::new(w.checkpoint("t")), step)).await;
    assert!(report.passed(), "{report}");
    assert_eq!(
        status(&report, "step.revert_without_receipt"),
        ClauseStatus::NotChecked
    );
    assert!(message(&report, "step.revert_without_receipt").contains("restore-only"));
}

#[tokio::test]
async fn a_step_whose_touches_names_the_wrong_resource_fails_step_clause_2() {
    let w = world();
    let before = w.snapshot_state();
    let step: Arc<dyn Step> = Arc::new(WrongTouches(SetKey::new("set-a", &w, "t", "a", "2")));
    let report = conformance::check(subject(&w, Arc::new(w.checkpoint("t")), step)).await;
    assert!(!report.passed());
    let id = "step.touches_what_it_changes/set-a";
    assert_eq!(status(&report, id), ClauseStatus::Failed, "{report}");
    let m = message(&report, id);
    assert!(
        m.contains("Step contract 2") && m.contains("changed t"),
        "{m}"
    );
    assert!(m.contains(r#"["u"]"#), "{m}");
    // The suite went on after the broken clause: the checkpoint clauses still passed.
    assert_eq!(
        status(&report, "checkpoint.capture_mutate_restore"),
        ClauseStatus::Passed
    );
    assert_eq!(
        status(&report, "checkpoint.refuses_tampered_digest"),
        ClauseStatus::Passed
    );
    assert_eq!(
        report.clauses.last().unwrap().id,
        "executor.interrupted_step_resumes",
        "every clause ran: {report}"
    );
    assert_eq!(w.snapshot_state(), before);
}

#[tokio::test]
async fn a_step_naming_no_resource_fails_step_clause_2() {
    struct NamesNothing(SetKey);
    #[async_trait]
    impl Step for NamesNothing {
        fn id(&self) -> &str {
            self.0.id()
        }
        fn reversibility(&self) -> Reversibility {
            self.0.reversibility()
        }
        async fn apply(&self, ctx: &Context) -> Result<Receipt> {
            self.0.apply(ctx).await
        }
        async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
            self.0.revert(receipt, ctx).await
        }
    }
    let w = world();
    let s = subject(&w, Arc::new(w.checkpoint("t")), modify(&w));
    let report = Suite::new(s)
        .change(
            Change::Add,
            NamesNothing(SetKey::new("add-c", &w, "t", "c", "new")),
        )
        .check()
        .await;
    assert_eq!(
        status(&report, "step.touches_what_it_changes/add-c"),
        ClauseStatus::Failed,
        "{report}"
    );
    assert!(message(&report, "step.touches_what_it_changes/add-c").contains("touches() names []"));
    // The restore itself undoes the add.
    assert_eq!(
        status(&report, "checkpoint.restore_undoes_add/add-c"),
        ClauseStatus::Passed
    );
}

#[tokio::test]
async fn a_restore_that_leaves_added_items_passes_a_modification_but_fails_an_add() {
    let w = world();
    let before = w.snapshot_state();
    let broken = || -> Arc<dyn Checkpoint> {
        Arc::new(LeavesAddedItems {
            inner: w.checkpoint("t"),
            world: w.clone(),
        })
    };
    // What the single-step suite saw: a modification only, and every clause held.
    let alone = conformance::check(subject(&w, broken(), modify(&w))).await;
    assert!(alone.passed(), "{alone}");
    assert_eq!(
        status(&alone, "checkpoint.restore_undoes_add"),
        ClauseStatus::NotChecked
    );

    let report = full(&w, subject(&w, broken(), modify(&w)), a_is_1(&w))
        .check()
        .await;
    let id = "checkpoint.restore_undoes_add/add-c";
    assert_eq!(status(&report, id), ClauseStatus::Failed, "{report}");
    assert!(message(&report, id).contains("Checkpoint contract 5"));
    assert_eq!(
        status(&report, "checkpoint.restore_undoes_modify/set-b"),
        ClauseStatus::Passed
    );
    assert_eq!(
        status(&report, "checkpoint.restore_undoes_delete/drop-a"),
        ClauseStatus::Passed
    );
    assert_eq!(report.failures().count(), 1, "{report}");
    assert_eq!(w.snapshot_state(), before);
}

#[tokio::test]
async fn a_verifier_that_always_passes_fails_verifier_clause_4() {
    let w = world();
    let s = subject(&w, Arc::new(w.checkpoint("t")), modify(&w));
    let report = full(&w, s, AlwaysPasses).check().await;
    let id = "verifier.fails_after_breaking_change/always-passes";
    assert_eq!(status(&report, id), ClauseStatus::Failed, "{report}");
    assert!(message(&report, id).contains("still passes after `break-a`"));
    assert_eq!(
        status(&report, "verifier.is_read_only/always-passes"),
        ClauseStatus::Passed
    );
    assert_eq!(
        status(&report, "verifier.passes_at_baseline/always-passes"),
        ClauseStatus::Passed
    );
    assert_eq!(report.failures().count(), 1, "{report}");
}

#[tokio::test]
async fn a_verifier_that_never_passes_fails_at_the_baseline() {
    let w = world();
    let s = subject(&w, Arc::new(w.checkpoint("t")), modify(&w));
    let never = KeyEquals::new("a-is-9", &w, "t", "a", Some("9"));
    let report = full(&w, s, never).check().await;
    assert_eq!(
        status(&report, "verifier.passes_at_baseline/a-is-9"),
        ClauseStatus::Failed
    );
    assert_eq!(
        status(&report, "verifier.fails_after_breaking_change/a-is-9"),
        ClauseStatus::Failed,
        "it does not pass again after the restore either"
    );
}

#[tokio::test]
async fn run_all_runs_every_clause_then_panics_naming_the_failed_ones() {
    let w = world();
    let step: Arc<dyn Step> = Arc::new(WrongTouches(SetKey::new("set-a", &w, "t", "a", "2")));
    let s = subject(&w, Arc::new(w.checkpoint("t")), step);
    let panic = tokio::spawn(conformance::run_all(s))
        .await
        .expect_err("run_all panics when a clause failed")
        .into_panic();
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("step.touches_what_it_changes/set-a: Step contract 2"),
        "{msg}"
    );
    // The whole report follows, every clause included.
    assert!(
        msg.contains("PASS checkpoint.capture_mutate_restore"),
        "{msg}"
    );
    assert!(msg.contains("executor.interrupted_step_resumes"), "{msg}");
}

/// A journal that drops the writer's epoch from every append: it cannot fence.
struct IgnoresEpochs(MemoryJournal);

#[async_trait]
impl rollback_core::journal::Journal for IgnoresEpochs {
    async fn append(
        &self,
        run_id: &str,
        entry: &rollback_core::journal::Entry,
        _epoch: u64,
    ) -> Result<rollback_core::journal::Record> {
        self.0.append(run_id, entry, 0).await
    }
    async fn records(&self, run_id: &str) -> Result<Vec<rollback_core::journal::Record>> {
        self.0.records(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.0.runs().await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<rollback_core::journal::Lease> {
        self.0.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.0.release_lease(key, holder).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_suite_reports_every_clause() {
    let good = conformance::journal::check(Arc::new(MemoryJournal::new())).await;
    assert_eq!(good.clauses.len(), 6, "{good}");
    assert!(
        good.clauses
            .iter()
            .all(|c| c.status == ClauseStatus::Passed),
        "{good}"
    );

    let bad = conformance::journal::check(Arc::new(IgnoresEpochs(MemoryJournal::new()))).await;
    assert_eq!(bad.clauses.len(), 6, "every clause ran: {bad}");
    assert_eq!(
        status(&bad, "journal.fenced_appends"),
        ClauseStatus::Failed,
        "{bad}"
    );
    assert!(message(&bad, "journal.fenced_appends").contains("Journal contract 6"));
    // Its batches go through the same appends: an old epoch's batch is not refused either.
    assert_eq!(
        status(&bad, "journal.batched_appends"),
        ClauseStatus::Failed,
        "{bad}"
    );
    assert_eq!(
        status(&bad, "journal.chain_and_reads"),
        ClauseStatus::Passed,
        "{bad}"
    );
}
