//! A journal that lost its end must never make `resume` roll back a committed run.
//!
//! The file journal's last records can be lost after they were fsynced (a disk or file
//! system that loses a tail, a copy cut short). A torn record is evidence of that; a cut
//! at a line boundary is not, which is why an outcome is also witnessed beside the run.
//! These tests cut a committed run's journal at every byte offset and resume it.

use rollback_core::journal::{Entry, FileJournal, Journal, JournalError};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{
    CancellationToken, Error, Executor, Outcome, Plan, SnapshotRetention, TailAssumption,
};
use std::collections::BTreeMap;
use std::path::Path;

const RUN: &str = "cut-run";

type State = BTreeMap<String, BTreeMap<String, String>>;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "k1", "v1");
    w.set("db", "k2", "v1");
    w
}

fn plan(w: &SimWorld) -> Plan {
    Plan::builder("lost-tail")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s1", w, "db", "k1", "v2"), &[])
        .step("db", SetKey::new("s2", w, "db", "k2", "v2"), &["s1"])
        .step("db", SetKey::new("s3", w, "db", "k3", "new"), &["s2"])
        .build()
        .unwrap()
}

/// A committed run that kept its snapshots (so a wrong rollback could restore them: the
/// dangerous case). Returns the world, its baseline and target, and the journal folder.
async fn committed_run() -> (SimWorld, Plan, State, State, tempfile::TempDir) {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = plan(&w);
    let dir = tempfile::tempdir().unwrap();
    let report = Executor::new(FileJournal::open(dir.path()).unwrap())
        .retain_snapshots(SnapshotRetention::KeepAll)
        .run_as(&plan, RUN, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    let target = w.snapshot_state();
    assert_ne!(target, baseline);
    (w, plan, baseline, target, dir)
}

fn reset(w: &SimWorld, state: &State) {
    for r in ["db"] {
        for k in w.resource_state(r).keys() {
            w.remove(r, k);
        }
        for (k, v) in &state[r] {
            w.set(r, k, v);
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    refused: usize,
    committed: usize,
    unknown_run: usize,
    silent_rollbacks: Vec<usize>,
}

/// Cut the run's file at every offset in `offsets`, resume with no assumption, and tally
/// what resume did. `witness`: keep the outcome witness beside the cut file.
async fn cut_everywhere(witness: bool, offsets: impl Iterator<Item = usize>) -> Tally {
    let (w, plan, _baseline, target, dir) = committed_run().await;
    let file = dir.path().join(format!("{RUN}.journal"));
    let bytes = std::fs::read(&file).unwrap();
    let end = std::fs::read(dir.path().join(format!("{RUN}.end"))).unwrap();
    let mut tally = Tally::default();
    for cut in offsets {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(format!("{RUN}.journal")), &bytes[..cut]).unwrap();
        if witness {
            std::fs::write(d.path().join(format!("{RUN}.end")), &end).unwrap();
        }
        reset(&w, &target);
        let journal = FileJournal::open(d.path()).unwrap();
        let res = Executor::new(journal).resume(&plan, RUN).await;
        match res {
            Err(Error::LostTail { .. }) => {
                assert_eq!(
                    w.snapshot_state(),
                    target,
                    "cut at {cut}: refused, yet changed"
                );
                tally.refused += 1;
            }
            Err(Error::UnknownRun { .. }) => {
                assert_eq!(cut_records(&bytes[..cut]), 0, "cut at {cut}");
                tally.unknown_run += 1;
            }
            Ok(r) if r.outcome == Outcome::Committed && w.snapshot_state() == target => {
                tally.committed += 1;
            }
            Ok(_) => tally.silent_rollbacks.push(cut),
            Err(e) => panic!("cut at {cut}: {e}"),
        }
    }
    tally
}

fn cut_records(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

#[tokio::test]
async fn every_truncation_of_a_committed_runs_journal_never_rolls_it_back() {
    let (_, _, _, _, dir) = committed_run().await;
    let len = std::fs::read(dir.path().join(format!("{RUN}.journal")))
        .unwrap()
        .len();
    let tally = cut_everywhere(true, 0..len).await;
    eprintln!("{len} offsets: {tally:?}");
    assert!(len > 2500, "a few thousand offsets: {len}");
    assert!(
        tally.silent_rollbacks.is_empty(),
        "silent rollbacks of a committed run at {} offsets, e.g. {:?}",
        tally.silent_rollbacks.len(),
        &tally.silent_rollbacks[..tally.silent_rollbacks.len().min(10)]
    );
    assert_eq!(tally.refused + tally.committed + tally.unknown_run, len);
    // The one cut that keeps the whole final JSON (only its newline lost) is the record.
    assert_eq!(tally.committed, 1, "{tally:?}");
}

/// Without the witness (say, it could not be written), the torn final record alone still
/// stops resume wherever the cut falls inside it; a cut that drops whole records is then
/// indistinguishable from a crash before them.
#[tokio::test]
async fn a_cut_inside_the_final_committed_record_stops_resume_even_without_the_witness() {
    let (_, _, _, _, dir) = committed_run().await;
    let bytes = std::fs::read(dir.path().join(format!("{RUN}.journal"))).unwrap();
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    assert!(String::from_utf8_lossy(&bytes[last_line..]).contains("\"committed\""));
    let tally = cut_everywhere(false, last_line + 1..bytes.len()).await;
    eprintln!(
        "{} offsets in the committed line: {tally:?}",
        bytes.len() - last_line - 1
    );
    assert!(tally.silent_rollbacks.is_empty(), "{tally:?}");
    assert_eq!(tally.committed, 1);
}

#[tokio::test]
async fn resume_after_a_lost_commit_does_what_it_is_told_and_reports_it() {
    for assumed in [
        TailAssumption::Committed,
        TailAssumption::NotCommitted,
        TailAssumption::RolledBack,
    ] {
        let (w, plan, baseline, target, dir) = committed_run().await;
        let file = dir.path().join(format!("{RUN}.journal"));
        let bytes = std::fs::read(&file).unwrap();
        let last_line = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        // The reproduction: 10 bytes into the final `committed` line.
        std::fs::write(&file, &bytes[..last_line + 10]).unwrap();
        let journal = FileJournal::open(dir.path()).unwrap();
        let err = Executor::new(journal.clone())
            .resume(&plan, RUN)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::LostTail { could_be, .. } if could_be == "committed"),
            "{msg}"
        );
        for choice in ["Committed", "NotCommitted", "RolledBack"] {
            assert!(
                msg.contains(choice),
                "the error names the choice {choice}: {msg}"
            );
        }
        assert_eq!(w.snapshot_state(), target);
        let report = Executor::new(journal.clone())
            .assume_lost_tail(assumed)
            .resume(&plan, RUN)
            .await
            .unwrap();
        let (outcome, state) = match assumed {
            TailAssumption::Committed => (Outcome::Committed, &target),
            TailAssumption::NotCommitted => (Outcome::RolledBack, &baseline),
            _ => (Outcome::RolledBack, &target),
        };
        assert_eq!(report.outcome, outcome, "{assumed}");
        assert_eq!(&w.snapshot_state(), state, "{assumed}");
        assert!(
            report
                .journal_repairs
                .iter()
                .any(|r| r.contains(&format!("assumption: {assumed}"))),
            "{assumed}: {:?}",
            report.journal_repairs
        );
        assert!(report.to_markdown().contains("journal"), "{assumed}");
        if assumed == TailAssumption::RolledBack {
            assert!(!report.parity_proven(), "nothing was checked: not proven");
        }
        // The decision is made once: resume again is a no-op on a finished run.
        let again = Executor::new(journal).resume(&plan, RUN).await.unwrap();
        assert_eq!(again.outcome, outcome);
    }
}

#[tokio::test]
async fn a_file_journal_refuses_to_extend_a_run_past_a_lost_outcome() {
    let (_, _, _, _, dir) = committed_run().await;
    let file = dir.path().join(format!("{RUN}.journal"));
    let bytes = std::fs::read(&file).unwrap();
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    // Cut at a line boundary: no torn bytes, only the witness knows.
    std::fs::write(&file, &bytes[..last_line]).unwrap();
    let j = FileJournal::open(dir.path()).unwrap();
    let lost = j.lost_tail(RUN).await.unwrap().expect("lost");
    assert_eq!(lost.torn_bytes, 0);
    assert_eq!(lost.witnessed.as_ref().unwrap().kind, "committed");
    let err = j.append(RUN, &Entry::Committed, 0).await.unwrap_err();
    assert!(
        matches!(err, Error::Journal(JournalError::TailLost { .. })),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        &bytes[..last_line],
        "nothing written"
    );
}

// ---------------------------------------------------------------------------------------
// reads never write

fn reads(dir: &Path) -> (usize, bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let j = FileJournal::open(dir).expect("open read-only");
        let recs = j.records(RUN).await.expect("records on a read-only mount");
        let lost = j
            .lost_tail(RUN)
            .await
            .expect("lost_tail on a read-only mount");
        assert_eq!(j.runs().await.expect("runs").len(), 1);
        (recs.len(), lost.is_some())
    })
}

/// Not a test: run by `reading_a_journal_on_a_read_only_mount_works_and_changes_nothing`
/// inside a mount namespace where `ROLLBACK_RO_DIR` is a read-only bind mount.
#[test]
#[ignore = "child process of a read-only mount test"]
fn read_only_child() {
    let Ok(dir) = std::env::var("ROLLBACK_RO_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the mount is read-only"
    );
    let (n, torn) = reads(dir);
    std::fs::write(
        std::env::var("ROLLBACK_RO_OUT").unwrap(),
        format!("{n} {torn}"),
    )
    .unwrap();
}

#[tokio::test]
async fn reading_a_journal_on_a_read_only_mount_works_and_changes_nothing() {
    let (_, _, _, _, dir) = committed_run().await;
    let file = dir.path().join(format!("{RUN}.journal"));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"{\"seq\":99,\"at"); // a torn tail a reader must not drop
    std::fs::write(&file, &bytes).unwrap();
    let before: Vec<(String, Vec<u8>)> = files(dir.path());
    // Same process, writable folder: reading changes nothing.
    let (n, torn) = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || reads(&d)
    })
    .await
    .unwrap();
    assert!(torn && n >= 10);
    assert_eq!(
        files(dir.path()),
        before,
        "a read changed the journal folder"
    );

    // A read-only mount: a bind mount in a private mount namespace (root), or a folder
    // the user cannot write (others).
    let out = dir
        .path()
        .join("..")
        .join(format!("ro-out-{}", std::process::id()));
    let exe = std::env::current_exe().unwrap();
    let status = if is_root() {
        let ro = tempfile::tempdir().unwrap();
        let script = format!(
            "mount --bind -o ro '{}' '{}' && exec '{}' --exact read_only_child --ignored --nocapture",
            dir.path().display(),
            ro.path().display(),
            exe.display()
        );
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("ROLLBACK_RO_DIR", ro.path())
            .env("ROLLBACK_RO_OUT", &out)
            .status()
            .expect("unshare (util-linux) runs")
    } else {
        set_mode(dir.path(), 0o555);
        let s = std::process::Command::new(exe)
            .args(["--exact", "read_only_child", "--ignored", "--nocapture"])
            .env("ROLLBACK_RO_DIR", dir.path())
            .env("ROLLBACK_RO_OUT", &out)
            .status()
            .unwrap();
        set_mode(dir.path(), 0o755);
        s
    };
    assert!(status.success(), "read-only child: {status}");
    let said = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(said, format!("{n} true"));
    assert_eq!(files(dir.path()), before);
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}
