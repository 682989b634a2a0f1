//! Property tests over hostile input: arbitrary bytes, arbitrary JSON shaped like the real
//! thing, and valid inputs with random byte flips, truncations, insertions and line
//! shuffles. No input may panic: each parser returns a typed error or `Ok`, and what it
//! accepts is consistent (a journal read back is a prefix of what was written; a parsed
//! value round-trips).
//!
//! Inputs: the file journal's reader ([`FileJournal::records`] over a `<run>.journal`
//! file), [`Snapshot::from_json`], [`SimPlanSpec::from_json`] then
//! [`SimPlanSpec::build`] and [`SimPlanSpec::target`], `serde_json::from_slice::<Record>`
//! then [`Record::verify`], and [`Digest::from_hex`].
#![cfg(feature = "sim")]

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rollback_core::journal::{verify_chain, Entry, FileJournal, Journal, Record};
use rollback_core::sim::{SimPlanSpec, SimStepSpec, SimWorld};
use rollback_core::{Digest, Error, Receipt, RunPolicy, Snapshot, Verdict};
use std::path::Path;

// ---------------------------------------------------------------------------------------
// harness

/// Run `cases` cases of `strategy` through `test`; panics with proptest's minimal failing
/// input. Panics inside `test` are caught and reported as failures.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    });
    let start = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    eprintln!("{name}: {cases} cases passed in {:?}", start.elapsed());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bytes of any kind: raw, JSON-ish text, or text over the journal's own alphabet.
fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        prop::string::string_regex(&format!("[{{}}\\[\\]\":,0-9a-z_\\-. \\n\\\\]{{0,{max}}}"))
            .unwrap()
            .prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
    ]
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    DropLine(Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<Index>(), prop_oneof![any::<u8>(), Just(b'\n'), Just(b'"'), Just(0u8)])
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), arb_bytes(16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::SwapLines(i, j)),
        1 => any::<Index>().prop_map(Mutation::DropLine),
    ]
}

fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::DuplicateLine(i) | Mutation::DropLine(i) => {
                let mut lines = split_lines(&bytes);
                if lines.is_empty() {
                    continue;
                }
                let k = i.index(lines.len());
                if matches!(m, Mutation::DropLine(_)) {
                    lines.remove(k);
                } else {
                    lines.insert(k, lines[k].clone());
                }
                bytes = lines.concat();
            }
            Mutation::SwapLines(i, j) => {
                let mut lines = split_lines(&bytes);
                if lines.is_empty() {
                    continue;
                }
                let (a, b) = (i.index(lines.len()), j.index(lines.len()));
                lines.swap(a, b);
                bytes = lines.concat();
            }
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// valid inputs

const RUN: &str = "fuzz-run";

fn entry_pool() -> Vec<Entry> {
    vec![
        Entry::RunStarted {
            plan: "upgrade \"quoted\" \\ ünïcode ✓".into(),
            plan_digest: Digest::of(b"plan"),
            holder: "holder-a".into(),
            policy: RunPolicy::default(),
        },
        Entry::LeaseTaken {
            holder: "holder-b".into(),
            taken_over_from: Some("holder-a".into()),
            epoch: 2,
        },
        Entry::Captured {
            checkpoint: "db".into(),
            snapshot: valid_snapshot(),
            duration_ms: 3,
        },
        Entry::ApplyIntent {
            step: "bump".into(),
            attempt: 2,
        },
        Entry::Applied {
            step: "bump".into(),
            receipt: Receipt(serde_json::json!({ "previous": null, "rows": [1, 2, 3] })),
            duration_ms: u64::MAX,
        },
        Entry::ApplyFailed {
            step: "bump".into(),
            attempt: 1,
            error: "timeout\nwith a newline".into(),
            maybe_applied: true,
            transient: true,
        },
        Entry::Verdict {
            verifier: "rate".into(),
            phase: "soak".into(),
            verdict: Verdict::fail("5% errors").with_value(0.05),
        },
        Entry::RollbackStarted {
            reason: "verifier failed".into(),
            steps: vec!["bump".into(), "backfill".into()],
            checkpoints: vec!["db".into()],
        },
        Entry::Parity {
            checkpoint: "db".into(),
            expected: Digest::of(b"a"),
            actual: Digest::of(b"b"),
        },
        Entry::RolledBack { partial: false },
    ]
}

fn valid_records(picks: &[Index]) -> Vec<Record> {
    let pool = entry_pool();
    let mut out: Vec<Record> = Vec::new();
    for (i, p) in picks.iter().enumerate() {
        let prev = out.last().map(|r| r.hash).unwrap_or_default();
        out.push(Record::seal(
            RUN,
            i as u64,
            1_700_000_000_000 + i as u64,
            prev,
            0,
            pool[p.index(pool.len())].clone(),
        ));
    }
    out
}

fn journal_bytes(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend(serde_json::to_vec(r).unwrap());
        out.push(b'\n');
    }
    out
}

fn valid_snapshot() -> Snapshot {
    Snapshot::new(
        "snap-1",
        "postgres:public.customers",
        "pg.table-copy",
        Digest::of(b"content"),
        Digest::of(b"fingerprint"),
        serde_json::json!({ "schema": "rollback_snap", "rows": 12, "tables": ["a"] }),
    )
    .with_size(4096)
    .captured_at(1_700_000_000_000)
}

/// JSON trees whose keys and values come from the vocabulary of the real formats, so that
/// they get past the first field more often than random bytes do.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let keys = prop::sample::select(vec![
        "seq",
        "at_ms",
        "prev",
        "entry",
        "hash",
        "type",
        "step",
        "attempt",
        "receipt",
        "snapshot",
        "id",
        "resource",
        "kind",
        "digest",
        "fingerprint",
        "captured_at_ms",
        "size_bytes",
        "descriptor",
        "resources",
        "initial_keys",
        "steps",
        "key",
        "value",
        "deps",
        "verdict",
        "status",
        "summary",
        "plan",
        "plan_digest",
        "holder",
        "policy",
        "scope",
        "on_resume",
        "checkpoint",
        "duration_ms",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "applied",
            "apply_intent",
            "committed",
            "run_started",
            "pass",
            "fail",
            "roll_back",
            "plan",
            "component",
            "s0",
            "r0",
        ])
        .prop_map(Value::from),
        "[0-9a-f]{64}".prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// the file journal's reader

fn read_run(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    run: &str,
    bytes: &[u8],
) -> rollback_core::Result<Vec<Record>> {
    std::fs::write(dir.join(format!("{run}.journal")), bytes).unwrap();
    rt.block_on(async { FileJournal::open(dir)?.records(run).await })
}

fn is_journal_error(e: &Error) -> bool {
    matches!(e, Error::Journal(_))
}

#[test]
fn the_file_journal_reader_survives_arbitrary_bytes() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    check(
        "journal reader, arbitrary bytes",
        2000,
        arb_bytes(1024),
        |bytes| {
            match read_run(&rt, dir.path(), "arbitrary", &bytes) {
                Ok(recs) => {
                    verify_chain("arbitrary", &recs)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    // Only a torn tail (after the last newline) may have been cut.
                    let now = std::fs::read(dir.path().join("arbitrary.journal")).unwrap();
                    prop_assert!(bytes.starts_with(&now));
                    prop_assert!(!bytes[now.len()..].contains(&b'\n'));
                }
                Err(e) => prop_assert!(is_journal_error(&e), "untyped error {e:?}"),
            }
            Ok(())
        },
    );
}

#[test]
fn the_file_journal_reader_accepts_only_a_prefix_of_a_mutated_journal() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let strategy = (
        prop::collection::vec(any::<Index>(), 1..10),
        prop::collection::vec(arb_mutation(), 1..4),
    );
    check(
        "journal reader, mutated journals",
        3000,
        strategy,
        |(picks, mutations)| {
            let records = valid_records(&picks);
            let bytes = mutate(journal_bytes(&records), &mutations);
            match read_run(&rt, dir.path(), RUN, &bytes) {
                Ok(recs) => {
                    // Whatever is accepted is what was written (a prefix: truncation is
                    // undetectable), never an altered record.
                    prop_assert!(recs.len() <= records.len());
                    prop_assert_eq!(&recs[..], &records[..recs.len()]);
                }
                Err(e) => prop_assert!(is_journal_error(&e), "untyped error {e:?}"),
            }
            Ok(())
        },
    );
}

/// After reading a damaged-but-accepted journal, the run can go on: appends extend the
/// accepted prefix with a valid chain.
#[test]
fn the_file_journal_appends_after_any_accepted_damage() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let strategy = (
        prop::collection::vec(any::<Index>(), 1..6),
        prop::collection::vec(arb_mutation(), 1..3),
    );
    check(
        "journal append after damage",
        300,
        strategy,
        |(picks, mutations)| {
            let records = valid_records(&picks);
            let bytes = mutate(journal_bytes(&records), &mutations);
            let path = dir.path().join(format!("{RUN}.journal"));
            std::fs::write(&path, &bytes).unwrap();
            // A fresh run each case: no outcome witness left by the previous one.
            let _ = std::fs::remove_file(path.with_extension("end"));
            rt.block_on(async {
                let j = FileJournal::open(dir.path()).unwrap();
                let appended = j.append(RUN, &Entry::Committed, 0).await;
                let read = FileJournal::open(dir.path()).unwrap().records(RUN).await;
                match (appended, read) {
                    (Ok(rec), Ok(recs)) => {
                        prop_assert_eq!(recs.len() as u64, rec.seq + 1);
                        prop_assert_eq!(recs.last(), Some(&rec));
                        // The accepted prefix, then (when bytes were dropped) the record of
                        // that truncation, then the new record.
                        let mut kept = &recs[..recs.len() - 1];
                        if let Some(Record {
                            entry: Entry::TailTruncated { .. },
                            ..
                        }) = kept.last()
                        {
                            kept = &kept[..kept.len() - 1];
                        }
                        prop_assert_eq!(kept, &records[..kept.len()]);
                    }
                    (Err(e), Err(_)) => prop_assert!(is_journal_error(&e), "untyped error {e:?}"),
                    (a, r) => prop_assert!(false, "append {a:?} but read {r:?}"),
                }
                Ok(())
            })
        },
    );
}

// ---------------------------------------------------------------------------------------
// records

fn record_checks(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(rec) = serde_json::from_slice::<Record>(bytes) {
        let _ = rec.entry.kind();
        // verify is total: Ok or a typed error, against any predecessor
        let _ = rec.verify(RUN, None);
        let _ = rec.verify(RUN, Some(&rec));
        // and what parses re-encodes and parses to the same record
        let again: Record = serde_json::from_slice(&serde_json::to_vec(&rec).unwrap())
            .map_err(|e| TestCaseError::fail(format!("re-encoded record does not parse: {e}")))?;
        prop_assert_eq!(again.seq, rec.seq);
        prop_assert_eq!(again.hash, rec.hash);
    }
    Ok(())
}

#[test]
fn record_decoding_survives_arbitrary_and_mutated_input() {
    check("record, arbitrary bytes", 3000, arb_bytes(512), |b| {
        record_checks(&b)
    });
    check("record, arbitrary JSON", 3000, arb_json(), |v| {
        record_checks(&serde_json::to_vec(&v).unwrap())
    });
    let strategy = (any::<Index>(), prop::collection::vec(arb_mutation(), 1..4));
    check("record, mutated", 5000, strategy, |(pick, mutations)| {
        let rec = valid_records(&[pick]).remove(0);
        let bytes = mutate(serde_json::to_vec(&rec).unwrap(), &mutations);
        record_checks(&bytes)?;
        // A mutated record that still decodes either verifies as the same record or not
        // at all.
        if let Ok(m) = serde_json::from_slice::<Record>(&bytes) {
            if m.verify(RUN, None).is_ok() {
                prop_assert_eq!(m, rec);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// snapshots

fn snapshot_checks(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Snapshot::from_json(bytes) {
        Ok(s) => {
            let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap())
                .map_err(|e| TestCaseError::fail(format!("re-encoded snapshot: {e}")))?;
            prop_assert_eq!(&again.id, &s.id);
            prop_assert_eq!(again.digest, s.digest);
            let _ = s.ensure_resource("r");
            let _ = s.ensure_digest(Digest::default());
        }
        Err(e) => prop_assert!(matches!(e, Error::Invalid { .. }), "untyped error {e:?}"),
    }
    Ok(())
}

#[test]
fn snapshot_parsing_survives_arbitrary_and_mutated_input() {
    check("snapshot, arbitrary bytes", 3000, arb_bytes(512), |b| {
        snapshot_checks(&b)
    });
    check("snapshot, arbitrary JSON", 2000, arb_json(), |v| {
        snapshot_checks(&serde_json::to_vec(&v).unwrap())
    });
    let good = serde_json::to_vec(&valid_snapshot()).unwrap();
    check(
        "snapshot, mutated",
        4000,
        prop::collection::vec(arb_mutation(), 1..4),
        |m| snapshot_checks(&mutate(good.clone(), &m)),
    );
}

// ---------------------------------------------------------------------------------------
// simulated plan specs

fn spec_checks(spec: &SimPlanSpec) -> Result<(), TestCaseError> {
    let world = SimWorld::new();
    match spec.build(&world) {
        Ok(plan) => {
            prop_assert_eq!(plan.steps().len(), spec.steps.len());
            let _ = spec.target(&plan, &world.snapshot_state());
        }
        Err(e) => prop_assert!(matches!(e, Error::Plan(_)), "untyped error {e:?}"),
    }
    Ok(())
}

fn spec_bytes_checks(bytes: &[u8]) -> Result<(), TestCaseError> {
    match SimPlanSpec::from_json(bytes) {
        // keep build affordable: a spec of thousands of steps is valid but slow to fuzz
        Ok(spec) if spec.steps.len() <= 64 => spec_checks(&spec),
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(matches!(e, Error::Invalid { .. }), "untyped error {e:?}");
            Ok(())
        }
    }
}

/// Any spec, including out-of-range resources and dependencies, self- and forward
/// dependencies, duplicates and cycles.
fn arb_spec() -> impl Strategy<Value = SimPlanSpec> {
    let dep = prop_oneof![
        4 => 0usize..12,
        1 => any::<usize>(),
        1 => Just(usize::MAX),
    ];
    let step = (
        prop_oneof![0u8..4, any::<u8>()],
        any::<u8>(),
        prop::option::of(any::<u8>()),
        prop::collection::vec(dep, 0..4),
    )
        .prop_map(|(resource, key, value, deps)| SimStepSpec {
            resource,
            key,
            value,
            deps,
        });
    (
        prop_oneof![0u8..4, any::<u8>()],
        0u8..4,
        prop::collection::vec(step, 0..12),
    )
        .prop_map(|(resources, initial_keys, steps)| SimPlanSpec {
            resources,
            initial_keys,
            steps,
        })
}

#[test]
fn sim_plan_specs_parse_and_build_without_panicking() {
    check("plan spec, arbitrary spec", 4000, arb_spec(), |s| {
        spec_checks(&s)
    });
    check("plan spec, arbitrary bytes", 2000, arb_bytes(512), |b| {
        spec_bytes_checks(&b)
    });
    check("plan spec, arbitrary JSON", 2000, arb_json(), |v| {
        spec_bytes_checks(&serde_json::to_vec(&v).unwrap())
    });
    let good = serde_json::to_vec(&SimPlanSpec::example()).unwrap();
    check(
        "plan spec, mutated",
        3000,
        prop::collection::vec(arb_mutation(), 1..4),
        |m| spec_bytes_checks(&mutate(good.clone(), &m)),
    );
}

#[test]
fn sim_plan_build_names_the_bad_dependency() {
    let world = SimWorld::new();
    let mut spec = SimPlanSpec::example();
    spec.steps[1].deps = vec![usize::MAX];
    assert!(matches!(
        spec.build(&world),
        Err(Error::Plan(
            rollback_core::PlanError::UnknownDependency { .. }
        ))
    ));
    spec.steps[1].deps = vec![1];
    assert!(matches!(
        spec.build(&world),
        Err(Error::Plan(rollback_core::PlanError::Cycle { .. }))
    ));
}

// ---------------------------------------------------------------------------------------
// digests

#[test]
fn digest_from_hex_survives_arbitrary_strings() {
    let check_hex = |s: String| -> Result<(), TestCaseError> {
        match Digest::from_hex(&s) {
            Ok(d) => {
                prop_assert_eq!(s.len(), 64);
                prop_assert_eq!(Digest::from_hex(&d.to_hex()).ok(), Some(d));
            }
            Err(e) => prop_assert!(matches!(e, Error::Invalid { .. }), "untyped error {e:?}"),
        }
        Ok(())
    };
    check("digest, any string", 5000, any::<String>(), check_hex);
    check(
        "digest, hex-like strings",
        5000,
        prop::string::string_regex("[0-9a-fA-F+\\-_ xé]{60,68}").unwrap(),
        check_hex,
    );
    let good = Digest::of(b"x").to_hex().into_bytes();
    check(
        "digest, mutated",
        3000,
        prop::collection::vec(arb_mutation(), 1..3),
        |m| match String::from_utf8(mutate(good.clone(), &m)) {
            Ok(s) => check_hex(s),
            Err(_) => Ok(()),
        },
    );
}

/// `from_hex` promises "64 hex characters", but `u8::from_str_radix` also takes a leading
/// `+`, so `"+f+f…"` parses: a non-canonical spelling of a digest is accepted. Harmless for
/// integrity (the value is the same), but not what the documentation says.
#[test]
fn digest_from_hex_accepts_only_hex_digits() {
    let plus = "+f".repeat(32);
    assert!(Digest::from_hex(&plus).is_err(), "{plus} was accepted");
    check(
        "digest, canonical only",
        10_000,
        prop::string::string_regex("[0-9a-fA-F+]{64}").unwrap(),
        |s| {
            if let Ok(d) = Digest::from_hex(&s) {
                prop_assert_eq!(d.to_hex(), s.to_ascii_lowercase());
            }
            Ok(())
        },
    );
}
