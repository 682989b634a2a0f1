//! The journal's contract ([`Journal`]'s `# Contract`) as checks any implementation runs:
//! the in-memory and file journals here, the PostgreSQL journal of `rollback-postgres`,
//! and a third-party journal on etcd or DynamoDB alike. Each check panics naming the
//! clause it found broken (`Journal contract 6: …`); [`check`] runs them all to the end
//! and returns a [`ConformanceReport`], which [`run_all`] prints before it panics.
//!
//! Checks use fresh, random run ids and lease keys, so they can run against a journal
//! that holds other runs.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use rollback_core::conformance;
//! use rollback_core::journal::MemoryJournal;
//! conformance::journal::run_all(Arc::new(MemoryJournal::new())).await;
//! # });
//! ```

use super::suite::Runner;
use super::ConformanceReport;
use crate::journal::{verify_chain, Entry, Journal, MAX_LEASE_EXPIRY_MS};
use crate::Error;
use std::sync::Arc;
use std::time::Duration;

fn unique(label: &str) -> String {
    format!(
        "conformance-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn progress(step: &str, i: u64) -> Entry {
    Entry::Progress {
        step: step.into(),
        cursor: serde_json::json!(i),
    }
}

/// Clauses 1–3 and 7: appends get consecutive seqs chained by hash; reads verify, are
/// stable, and never change what they read; an unknown run has no records; `runs` lists
/// the run; a clean run has no lost tail.
pub async fn chain_and_reads(j: &dyn Journal) {
    let run = unique("chain");
    assert!(
        j.records(&run).await.expect("records").is_empty(),
        "Journal contract 3: an unknown run must have no records"
    );
    let mut written = Vec::new();
    for i in 0..6 {
        let rec = j.append(&run, &progress("s", i), 0).await.expect("append");
        written.push(rec);
    }
    let read = j.records(&run).await.expect("records");
    assert_eq!(
        read, written,
        "Journal contract 2: records read back differ from what append returned"
    );
    for (i, r) in read.iter().enumerate() {
        assert_eq!(
            r.seq, i as u64,
            "Journal contract 2: seqs must be consecutive from 0"
        );
    }
    verify_chain(&run, &read).expect("Journal contract 2: the chain does not verify");
    assert_eq!(
        j.records(&run).await.expect("records"),
        read,
        "Journal contract 7: a second read differs from the first"
    );
    assert!(
        j.runs().await.expect("runs").contains(&run),
        "Journal contract 3: runs() does not list a run that has records"
    );
    assert_eq!(
        j.lost_tail(&run).await.expect("lost_tail"),
        None,
        "Journal contract 8: a run written cleanly reports a lost tail"
    );
}

/// Clauses 4 and 5: free → granted (epoch ≥ 1); held → refused naming the holder; a
/// renewal keeps the epoch; releasing another's lease does nothing; a released key's next
/// grant has a newer epoch; an expired lease is taken over naming its holder, with a
/// newer epoch; an empty holder is refused.
pub async fn leases_and_epochs(j: &dyn Journal) {
    let key = unique("lease");
    let ttl = Duration::from_millis(300);
    let a = j.acquire_lease(&key, "alice", ttl).await.expect("acquire");
    assert!(
        a.epoch >= 1,
        "Journal contract 5: a grant must have an epoch ≥ 1"
    );
    assert_eq!(a.taken_over_from, None);
    match j.acquire_lease(&key, "bob", ttl).await {
        Err(Error::LeaseHeld {
            holder,
            remaining_ms,
            ..
        }) => {
            assert_eq!(
                holder, "alice",
                "Journal contract 4: LeaseHeld must name the holder"
            );
            assert!(
                remaining_ms <= 300,
                "Journal contract 4: remaining {remaining_ms} ms > ttl"
            );
        }
        other => panic!("Journal contract 4: a held lease was granted to another: {other:?}"),
    }
    // Other keys are independent.
    let other = unique("lease-other");
    j.acquire_lease(&other, "bob", ttl)
        .await
        .expect("another key");
    j.release_lease(&other, "bob").await.expect("release");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = j.acquire_lease(&key, "alice", ttl).await.expect("renew");
    assert_eq!(
        renewed.epoch, a.epoch,
        "Journal contract 5: a renewal must keep the epoch"
    );
    assert!(
        renewed.expires_at_ms > a.expires_at_ms,
        "Journal contract 4: a renewal must extend the expiry"
    );
    assert_eq!(renewed.taken_over_from, None, "a renewal is not a takeover");
    j.release_lease(&key, "bob").await.expect("release");
    assert!(
        matches!(
            j.acquire_lease(&key, "bob", ttl).await,
            Err(Error::LeaseHeld { .. })
        ),
        "Journal contract 4: releasing another holder's lease freed it"
    );
    j.release_lease(&key, "alice").await.expect("release");
    let b = j
        .acquire_lease(&key, "bob", ttl)
        .await
        .expect("acquire after release");
    assert!(
        b.epoch > a.epoch,
        "Journal contract 5: a grant after release must have a newer epoch ({} after {})",
        b.epoch,
        a.epoch
    );
    assert_eq!(
        b.taken_over_from, None,
        "a released lease is not a takeover"
    );
    tokio::time::sleep(Duration::from_millis(
        b.expires_at_ms.saturating_sub(crate::now_ms()) + 50,
    ))
    .await;
    let c = j
        .acquire_lease(&key, "carol", ttl)
        .await
        .expect("take over");
    assert_eq!(
        c.taken_over_from.as_deref(),
        Some("bob"),
        "Journal contract 4: a takeover must name the expired holder"
    );
    assert!(
        c.epoch > b.epoch,
        "Journal contract 5: a takeover must have a newer epoch"
    );
    // The expired holder cannot come back as a renewal of its old epoch.
    match j.acquire_lease(&key, "bob", ttl).await {
        Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "carol"),
        other => panic!("Journal contract 4: the expired holder got the key back: {other:?}"),
    }
    assert!(
        matches!(
            j.acquire_lease(&key, "", ttl).await,
            Err(Error::Invalid { .. })
        ),
        "Journal contract 4: an empty holder must be refused"
    );
    j.release_lease(&key, "carol").await.expect("release");
}

/// Clause 5: a `ttl` too large to represent (`Duration::MAX`) saturates; the lease stays
/// held against other holders.
pub async fn huge_ttl_saturates(j: &dyn Journal) {
    let key = unique("max-ttl");
    let l = j
        .acquire_lease(&key, "forever", Duration::MAX)
        .await
        .expect("acquire with Duration::MAX");
    assert!(
        l.expires_at_ms > crate::now_ms() + 365 * 24 * 3600 * 1000,
        "Journal contract 5: Duration::MAX wrapped into an expiry of {}",
        l.expires_at_ms
    );
    assert!(l.expires_at_ms <= MAX_LEASE_EXPIRY_MS);
    assert!(
        matches!(
            j.acquire_lease(&key, "other", Duration::from_secs(1)).await,
            Err(Error::LeaseHeld { .. })
        ),
        "Journal contract 5: a Duration::MAX lease was taken over at once"
    );
    let renewed = j
        .acquire_lease(&key, "forever", Duration::MAX)
        .await
        .expect("renew");
    assert_eq!(renewed.epoch, l.epoch);
    j.release_lease(&key, "forever").await.expect("release");
}

/// Clause 6: an append whose epoch is older than the run's last record is refused with
/// [`Error::Fenced`] and writes nothing; equal and newer epochs are accepted.
pub async fn fenced_appends(j: &dyn Journal) {
    let run = unique("fence");
    j.append(&run, &progress("a", 0), 3)
        .await
        .expect("append epoch 3");
    j.append(&run, &progress("a", 1), 3)
        .await
        .expect("append epoch 3 again");
    j.append(&run, &progress("b", 0), 5)
        .await
        .expect("append epoch 5");
    let before = j.records(&run).await.expect("records");
    for stale in [0, 3, 4] {
        match j.append(&run, &progress("a", 2), stale).await {
            Err(Error::Fenced { epoch, current, .. }) => {
                assert_eq!(epoch, stale);
                assert_eq!(current, 5, "Journal contract 6: Fenced must name the newer epoch");
            }
            other => panic!(
                "Journal contract 6: an append of epoch {stale} after epoch 5 was not refused: {other:?}"
            ),
        }
    }
    assert_eq!(
        j.records(&run).await.expect("records"),
        before,
        "Journal contract 6: a refused append wrote something"
    );
    let rec = j
        .append(&run, &progress("b", 1), 6)
        .await
        .expect("append epoch 6");
    assert_eq!((rec.seq, rec.epoch), (3, 6));
}

/// Clauses 2 and 6 under contention: appenders of one epoch racing one append of a newer
/// epoch leave one unbroken chain with no older epoch after the newer one, and every
/// append either landed (its seq returned) or was refused as fenced.
pub async fn concurrent_appenders(j: Arc<dyn Journal>) {
    let run = unique("race");
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (j, run) = (j.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut landed = 0u64;
            let mut fenced = 0u64;
            for i in 0..15 {
                // Writer 3 moves to epoch 2 half way: later epoch-1 appends must fail.
                let epoch = if w == 3 && i >= 7 { 2 } else { 1 };
                match j.append(&run, &progress(&format!("w{w}"), i), epoch).await {
                    Ok(_) => landed += 1,
                    Err(Error::Fenced { .. }) => fenced += 1,
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, Error>((landed, fenced))
        }));
    }
    let mut landed = 0;
    for t in tasks {
        let (l, _f) = t
            .await
            .expect("appender task")
            .expect("Journal contract 2: a concurrent append failed other than by fencing");
        landed += l;
    }
    let read = j.records(&run).await.expect("records");
    assert_eq!(
        read.len() as u64,
        landed,
        "Journal contract 2: every landed append is read back, and nothing else"
    );
    verify_chain(&run, &read)
        .expect("Journal contract 6: concurrent appends broke the chain or let an older epoch follow a newer one");
    let first_new = read
        .iter()
        .position(|r| r.epoch == 2)
        .expect("epoch 2 landed");
    assert!(
        read[first_new..].iter().all(|r| r.epoch == 2),
        "Journal contract 6: an epoch-1 record after the first epoch-2 record"
    );
}

/// Clauses 2 and 6 for [`Journal::append_all`]: a batch gets consecutive seqs after the
/// run's last record, in the given order, chained like single appends, and read back as
/// returned; a batch of an older epoch is refused as [`Error::Fenced`] and writes nothing.
pub async fn batched_appends(j: &dyn Journal) {
    let run = unique("batch");
    let first = j.append(&run, &progress("a", 0), 2).await.expect("append");
    let batch: Vec<Entry> = (1..4).map(|i| progress("a", i)).collect();
    let recs = j.append_all(&run, &batch, 2).await.expect("append_all");
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "Journal contract 2: a batch must take the next consecutive seqs"
    );
    assert_eq!(
        recs.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        batch,
        "Journal contract 2: a batch must keep its order"
    );
    let read = j.records(&run).await.expect("records");
    let mut expected = vec![first];
    expected.extend(recs);
    assert_eq!(
        read, expected,
        "Journal contract 2: records read back differ from what append_all returned"
    );
    verify_chain(&run, &read).expect("Journal contract 2: a batch breaks the chain");
    match j
        .append_all(&run, &[progress("b", 0), progress("b", 1)], 1)
        .await
    {
        Err(Error::Fenced { .. }) => {}
        other => panic!(
            "Journal contract 6: a batch of epoch 1 after epoch 2 was not refused: {other:?}"
        ),
    }
    assert_eq!(
        j.records(&run).await.expect("records"),
        read,
        "Journal contract 6: a refused batch wrote something"
    );
    let after = j
        .append_all(&run, &[progress("c", 0)], 2)
        .await
        .expect("append_all of one");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, 4);
}

/// [`Journal::runs_of_plan`]: it lists every run whose first record starts the plan, and
/// no other (a run of another plan, a run whose first record is something else). Not in
/// [`check`] yet; call it beside [`run_all`].
pub async fn runs_of_plan(j: &dyn Journal) {
    let plan = unique("plan");
    let other = unique("other-plan");
    let start = |name: &str| Entry::RunStarted {
        plan: name.to_string(),
        plan_digest: crate::Digest::default(),
        holder: "conformance".into(),
        policy: crate::executor::RunPolicy::default(),
    };
    let (a, b, c, d) = (unique("a"), unique("b"), unique("c"), unique("d"));
    j.append(&a, &start(&plan), 0).await.expect("append");
    j.append(&a, &Entry::Committed, 0).await.expect("append");
    j.append(&b, &start(&plan), 0).await.expect("append");
    j.append(&c, &start(&other), 0).await.expect("append");
    j.append(&d, &progress("s", 0), 0).await.expect("append");
    j.append(&d, &start(&plan), 0).await.expect("append");
    let mut got = j.runs_of_plan(&plan).await.expect("runs_of_plan");
    got.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(
        got, want,
        "runs_of_plan must list exactly the runs whose first record starts the plan"
    );
}

/// [`Journal::open_runs_of_plan`] (clause 10): it lists exactly the runs of the plan that
/// have not ended — no outcome yet, or a commit revoked by `rollback_after_commit` — and
/// follows appends made after it was asked (an index must not answer from before them).
/// Not in [`check`] yet; call it beside [`run_all`].
pub async fn open_runs_of_plan(j: &dyn Journal) {
    let plan = unique("plan");
    let other = unique("other-plan");
    let start = |name: &str| Entry::RunStarted {
        plan: name.to_string(),
        plan_digest: crate::Digest::default(),
        holder: "conformance".into(),
        policy: crate::executor::RunPolicy::default(),
    };
    let reopen = || Entry::RollbackAfterCommit {
        reason: "conformance".into(),
        holder: "conformance".into(),
        steps: Vec::new(),
        checkpoints: Vec::new(),
    };
    let rolled_back = || Entry::RolledBack { partial: false };
    let [committed, open, reopened, reopened_then_ended, rolled, of_other, not_started] = [
        "committed",
        "open",
        "reopened",
        "reended",
        "rolled",
        "other",
        "unstarted",
    ]
    .map(unique);
    let write = |run: String, entries: Vec<Entry>| async move {
        for e in &entries {
            j.append(&run, e, 0).await.expect("append");
        }
    };
    write(committed.clone(), vec![start(&plan), Entry::Committed]).await;
    write(open.clone(), vec![start(&plan), progress("s", 0)]).await;
    write(
        reopened.clone(),
        vec![start(&plan), Entry::Committed, reopen()],
    )
    .await;
    write(
        reopened_then_ended.clone(),
        vec![start(&plan), Entry::Committed, reopen(), rolled_back()],
    )
    .await;
    write(
        rolled.clone(),
        vec![start(&plan), rolled_back(), progress("s", 1)],
    )
    .await;
    write(of_other.clone(), vec![start(&other)]).await;
    write(not_started.clone(), vec![progress("s", 0), start(&plan)]).await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let got = sorted(j.open_runs_of_plan(&plan).await.expect("open_runs_of_plan"));
    assert_eq!(
        got,
        sorted(vec![open.clone(), reopened.clone()]),
        "Journal contract 10: open_runs_of_plan must list exactly the runs of the plan that have not ended"
    );
    // Asked again after appends: the answer follows them.
    write(open.clone(), vec![Entry::Committed]).await;
    write(committed.clone(), vec![reopen()]).await;
    let got = sorted(j.open_runs_of_plan(&plan).await.expect("open_runs_of_plan"));
    assert_eq!(
        got,
        sorted(vec![committed, reopened]),
        "Journal contract 10: open_runs_of_plan must follow the appends made since it was last asked"
    );
}

/// Every journal check, each to the end: prints the [`ConformanceReport`] and panics
/// naming the failed clauses, if any.
pub async fn run_all(j: Arc<dyn Journal>) {
    check(j).await.print_or_panic()
}

/// Every journal check, each to the end, as a [`ConformanceReport`] (nothing panics).
pub async fn check(j: Arc<dyn Journal>) -> ConformanceReport {
    let mut run = Runner::new(None).await;
    run.clause(
        "journal.chain_and_reads",
        "Journal 1-3, 7: appends chained by hash with consecutive seqs; reads verify, are stable and write nothing; runs lists the run; a clean run has no lost tail",
        chain_and_reads(j.as_ref()),
    )
    .await;
    run.clause(
        "journal.batched_appends",
        "Journal 2, 6 for append_all: a batch takes the next consecutive seqs in order, chained like single appends; a batch of an older epoch is refused with Fenced and writes nothing",
        batched_appends(j.as_ref()),
    )
    .await;
    run.clause(
        "journal.leases_and_epochs",
        "Journal 4, 5: leases granted, refused, renewed, released and taken over from expired holders, each grant with a newer epoch",
        leases_and_epochs(j.as_ref()),
    )
    .await;
    run.clause(
        "journal.huge_ttl_saturates",
        "Journal 5: a lease duration too large to represent saturates and the lease stays held",
        huge_ttl_saturates(j.as_ref()),
    )
    .await;
    run.clause(
        "journal.fenced_appends",
        "Journal 6: an append of an older epoch is refused with Fenced and writes nothing",
        fenced_appends(j.as_ref()),
    )
    .await;
    run.clause(
        "journal.concurrent_appenders",
        "Journal 2, 6 under contention: one unbroken chain, no older epoch after a newer one",
        concurrent_appenders(j),
    )
    .await;
    run.finish().await
}
