//! `rollback verify`: every run's hash chain, and the plans' leases against the epochs
//! the runs' records carry.

use crate::output::{self, table};
use crate::{code, Failure};
use rollback_core::journal::{Entry, Journal, JournalError, Record};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The verdict on one run's records.
#[derive(Debug, Serialize)]
struct RunCheck {
    run_id: String,
    ok: bool,
    records: usize,
    /// The first bad record's seq (or line, for a record that cannot be decoded).
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    /// What the journal lost at the end of the run to a crash (not damage: the next append
    /// repairs it and records that it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    torn_tail: Option<String>,
}

/// The verdict on one plan's lease.
#[derive(Debug, Serialize)]
struct LeaseCheck {
    plan: String,
    ok: bool,
    /// The stored lease's epoch, holder and expiry (epoch ms).
    epoch: Option<u64>,
    holder: Option<String>,
    expires_at_ms: Option<u64>,
    /// The newest epoch any of the plan's runs' records carry.
    newest_recorded_epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct Verification {
    ok: bool,
    runs: Vec<RunCheck>,
    leases: Vec<LeaseCheck>,
}

fn bad_record(e: &JournalError) -> Option<u64> {
    match e {
        JournalError::Tampered { seq, .. }
        | JournalError::OutOfOrder { seq, .. }
        | JournalError::EpochRegressed { seq, .. } => Some(*seq),
        JournalError::Malformed { line, .. } => Some(line.saturating_sub(1)),
        _ => None,
    }
}

/// Within a run: every epoch its records carry was granted by a `lease_taken` of that
/// epoch in the run (a record of an epoch never journaled as granted was written by a
/// writer the journal did not fence).
fn epoch_problems(records: &[Record]) -> (Vec<String>, Option<u64>) {
    let granted: BTreeSet<u64> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::LeaseTaken { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    let mut first = None;
    for r in records {
        if let Entry::LeaseTaken { epoch, .. } = &r.entry {
            if *epoch != r.epoch {
                problems.push(format!(
                    "record {}: lease_taken of epoch {epoch} written under epoch {}",
                    r.seq, r.epoch
                ));
                first = first.or(Some(r.seq));
            }
        }
        if r.epoch > 0 && !granted.contains(&r.epoch) {
            problems.push(format!(
                "record {}: written under epoch {}, which no lease_taken of the run grants",
                r.seq, r.epoch
            ));
            first = first.or(Some(r.seq));
            break;
        }
    }
    (problems, first)
}

/// `rollback verify [RUN...]`.
pub(crate) async fn verify(
    journal: &dyn Journal,
    only: &[String],
    json: bool,
) -> Result<u8, Failure> {
    let all = journal.runs().await?;
    for r in only {
        if !all.contains(r) {
            return Err(Failure::new(
                code::NOT_FOUND,
                format!("no run {r} in the journal"),
            ));
        }
    }
    let ids: Vec<&String> = all
        .iter()
        .filter(|r| only.is_empty() || only.contains(r))
        .collect();
    let mut runs = Vec::new();
    // Per plan, the newest epoch its runs' records carry.
    let mut plans: BTreeMap<String, u64> = BTreeMap::new();
    for run_id in ids {
        let mut check = RunCheck {
            run_id: run_id.clone(),
            ok: true,
            records: 0,
            record: None,
            problems: Vec::new(),
            torn_tail: None,
        };
        match journal.records(run_id).await {
            Ok(records) => {
                check.records = records.len();
                let (problems, first) = epoch_problems(&records);
                check.record = first;
                check.problems = problems;
                if let Some(Entry::RunStarted { plan, .. }) = records.first().map(|r| &r.entry) {
                    let newest = records.iter().map(|r| r.epoch).max().unwrap_or(0);
                    let e = plans.entry(plan.clone()).or_default();
                    *e = (*e).max(newest);
                } else if !records.is_empty() {
                    check.problems.push("record 0 is not run_started".into());
                    check.record = Some(0);
                }
            }
            Err(rollback_core::Error::Journal(e)) if crate::journal::is_damage(&e) => {
                check.record = bad_record(&e);
                check.problems.push(e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
        if check.problems.is_empty() {
            match journal.lost_tail(run_id).await {
                Ok(Some(lost)) if lost.witnessed.is_some() => check.problems.push(format!(
                    "journal of run {run_id}: records were lost: {lost}"
                )),
                Ok(Some(lost)) => check.torn_tail = Some(lost.to_string()),
                Ok(None) => {}
                Err(rollback_core::Error::Journal(e)) if crate::journal::is_damage(&e) => {
                    check.record = bad_record(&e);
                    check.problems.push(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        check.ok = check.problems.is_empty();
        runs.push(check);
    }
    let mut leases = Vec::new();
    for (plan, newest) in plans {
        let lease = journal.lease(&plan).await?;
        let problem = match &lease {
            Some(l) if l.epoch < newest => Some(format!(
                "lease of plan {plan} is at epoch {}, older than epoch {newest} in its runs' records: the next grant could reuse an epoch",
                l.epoch
            )),
            None if newest > 0 => Some(format!(
                "no lease stored for plan {plan}, yet its runs' records carry epoch {newest}: the next grant could reuse an epoch"
            )),
            _ => None,
        };
        leases.push(LeaseCheck {
            ok: problem.is_none(),
            epoch: lease.as_ref().map(|l| l.epoch),
            holder: lease
                .as_ref()
                .map(|l| l.holder.clone())
                .filter(|h| !h.is_empty()),
            expires_at_ms: lease.as_ref().map(|l| l.expires_at_ms).filter(|e| *e > 0),
            newest_recorded_epoch: newest,
            problem,
            plan,
        });
    }
    let ok = runs.iter().all(|r| r.ok) && leases.iter().all(|l| l.ok);
    let v = Verification { ok, runs, leases };
    if json {
        output::print_json(&v);
    } else {
        output::print(&text(&v));
    }
    Ok(if ok { code::OK } else { code::DAMAGED })
}

fn text(v: &Verification) -> String {
    let mut out = Vec::new();
    let mut t = table(&["run", "records", "chain", "problem"]);
    for r in &v.runs {
        let chain = if r.ok {
            console::style("ok").green().to_string()
        } else {
            match r.record {
                Some(seq) => console::style(format!("BAD at record {seq}"))
                    .red()
                    .bold()
                    .to_string(),
                None => console::style("BAD").red().bold().to_string(),
            }
        };
        let mut problem = r.problems.join("; ");
        if let Some(torn) = &r.torn_tail {
            if !problem.is_empty() {
                problem.push_str("; ");
            }
            problem.push_str(&format!(
                "torn tail after a crash ({torn}): the next append repairs it"
            ));
        }
        t.add_row(vec![
            r.run_id.clone(),
            r.records.to_string(),
            chain,
            if problem.is_empty() {
                "-".into()
            } else {
                problem
            },
        ]);
    }
    out.push(output::render(&t));
    if !v.leases.is_empty() {
        out.push(String::new());
        let mut t = table(&["plan", "lease epoch", "newest in records", "lease"]);
        for l in &v.leases {
            t.add_row(vec![
                l.plan.clone(),
                l.epoch.map_or_else(|| "-".into(), |e| e.to_string()),
                l.newest_recorded_epoch.to_string(),
                match &l.problem {
                    None => console::style("ok").green().to_string(),
                    Some(p) => console::style(format!("BAD: {p}")).red().to_string(),
                },
            ]);
        }
        out.push(output::render(&t));
    }
    out.push(String::new());
    let bad_runs = v.runs.iter().filter(|r| !r.ok).count();
    let bad_leases = v.leases.iter().filter(|l| !l.ok).count();
    out.push(if v.ok {
        format!(
            "verified {} run(s) and {} lease(s): every hash chain and lease is consistent",
            v.runs.len(),
            v.leases.len()
        )
    } else {
        format!(
            "verification FAILED: {bad_runs} of {} run(s) and {bad_leases} of {} lease(s) are damaged",
            v.runs.len(),
            v.leases.len()
        )
    });
    out.join("\n")
}
