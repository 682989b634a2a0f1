//! The report rendered as Markdown, with the incident-report skeleton.

use super::{Detection, RunReport, StepState, VerdictReport};
use crate::Status;
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

impl RunReport {
    /// The report in Markdown: summary, steps, checkpoints, verdicts with evidence,
    /// timeline, and the incident-report skeleton.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Run report: {}\n", self.plan);
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(m, "| run | `{}` |", self.run_id);
        let _ = writeln!(m, "| plan digest | `{}` |", self.plan_digest.short());
        let _ = writeln!(m, "| outcome | **{}** |", self.outcome);
        if let Some(r) = &self.rollback_reason {
            let _ = writeln!(m, "| rollback reason | {} |", md(r));
        }
        if let Some(d) = &self.detection {
            let _ = writeln!(m, "| detection | {} |", md(&d.sentence()));
        }
        let _ = writeln!(
            m,
            "| duration | {} ms |",
            self.finished_at_ms.saturating_sub(self.started_at_ms)
        );
        if let Some(rto) = self.rto_ms {
            let _ = writeln!(
                m,
                "| RTO (trigger → verified restored) | {rto} ms{} |",
                target_note(self.objectives.rto_ms, self.rto_met)
            );
        }
        if let Some(rpo) = self.rpo_ms {
            let _ = writeln!(
                m,
                "| RPO (writes lost to restores) | {rpo} ms{} |",
                target_note(self.objectives.rpo_ms, self.rpo_met)
            );
        }
        if self.rolled_back_after_commit {
            let _ = writeln!(
                m,
                "| rolled back after commit | committed at {} ms; {} |",
                self.committed_at_ms.unwrap_or(0),
                match self.rpo_since_commit_ms {
                    Some(w) => format!("restores put back {w} ms of writes made since the commit"),
                    None =>
                        "no restore ran: compensations kept the writes made since the commit".into(),
                }
            );
        }
        if let Some(n) = self.items_discarded {
            let _ = writeln!(
                m,
                "| writes by others discarded by restores | {}{n} |",
                if self.discarded_exact {
                    ""
                } else {
                    "at least "
                }
            );
        }
        for (role, who) in &self.owners {
            let _ = writeln!(m, "| {} | {} |", md(role), md(who));
        }
        if self.resumes > 0 {
            let _ = writeln!(m, "| resumes | {} |", self.resumes);
        }
        for t in &self.lease_takeovers {
            let _ = writeln!(m, "| lease takeover | {} |", md(t));
        }
        for t in &self.journal_repairs {
            let _ = writeln!(m, "| **journal** | {} |", md(t));
        }
        if self.rollback_reason.is_some() {
            let _ = writeln!(
                m,
                "| parity with the baseline | {} |",
                if self.parity_proven() {
                    "proven for everything undone"
                } else {
                    "**NOT proven** (see below)"
                }
            );
        }
        if !self.unproven.is_empty() {
            let _ = writeln!(m, "\n## Not proven back at the baseline\n");
            for u in &self.unproven {
                let _ = writeln!(m, "- {}", md(u));
            }
        }
        if !self.remaining.is_empty() {
            let _ = writeln!(m, "\n## Left undone (resume to continue)\n");
            for r in &self.remaining {
                let _ = writeln!(m, "- {}", md(r));
            }
        }
        let _ = writeln!(m, "\n## Steps\n\n| step | component | reversibility | state | apply | revert | last error |\n|---|---|---|---|---|---|---|");
        for s in &self.steps {
            let state = match &s.note {
                Some(n) => format!("{:?} ({})", s.state, md(n)),
                None => format!("{:?}", s.state),
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                md(&s.id),
                md(&s.component),
                s.reversibility,
                state,
                s.apply_ms
                    .map(|v| format!("{v} ms ({}x)", s.apply_attempts))
                    .unwrap_or_else(|| "-".into()),
                s.revert_ms
                    .map(|v| format!("{v} ms ({}x)", s.revert_attempts))
                    .unwrap_or_else(|| "-".into()),
                s.last_error
                    .as_deref()
                    .map(md)
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let _ = writeln!(m, "\n## Checkpoints\n\n| resource | digest | size | capture | restore | parity | RPO | snapshot after the run |\n|---|---|---|---|---|---|---|---|");
        for c in &self.checkpoints {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md(&c.resource),
                c.digest
                    .map(|d| format!("`{}`", d.short()))
                    .unwrap_or_else(|| "-".into()),
                c.size_bytes
                    .map(|b| format!("{b} B"))
                    .unwrap_or_else(|| "-".into()),
                c.capture_ms
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "-".into()),
                match (&c.restore_method, c.restore_ms) {
                    (Some(meth), Some(ms)) => format!(
                        "{meth}, {ms} ms{}{}{}{}",
                        c.restored_items
                            .map(|n| format!(", {n} items"))
                            .unwrap_or_default(),
                        if c.restores > 1 {
                            format!(", **restored {} times**", c.restores)
                        } else {
                            String::new()
                        },
                        c.discarded_writes
                            .as_ref()
                            .map(|d| format!(
                                ", discarded {}{} write(s) of others{}",
                                if d.exact { "" } else { "at least " },
                                d.items,
                                if d.keys.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        " ({})",
                                        crate::digest::truncate(&d.keys.join(", "), 200)
                                    )
                                }
                            ))
                            .unwrap_or_default(),
                        c.kept_writes
                            .filter(|n| *n > 0)
                            .map(|n| format!(", kept {n} write(s) of others"))
                            .unwrap_or_default(),
                    ),
                    _ if c.fingerprint_only => "no snapshot (compensations undo it)".into(),
                    _ => "-".into(),
                },
                match (c.parity, &c.not_restored) {
                    (Some(true), _) => match &c.parity_proof {
                        Some(how) => format!("proven ({})", md(how)),
                        None => "proven".into(),
                    },
                    (Some(false), Some(_)) => "**not proven: differs, not restored**".into(),
                    (Some(false), None) => "**FAILED**".into(),
                    (None, _) => "-".into(),
                },
                c.rpo_ms
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "0".into()),
                match (c.discarded, &c.discard_error) {
                    (Some(true), _) => "released".to_string(),
                    (Some(false), e) => format!(
                        "**release failed**: {}",
                        md(e.as_deref().unwrap_or("unknown error"))
                    ),
                    (None, _) if c.snapshot_id.is_some() => "kept".to_string(),
                    (None, _) => "-".to_string(),
                },
            );
        }
        if !self.approvals.is_empty() {
            let _ = writeln!(m, "\n## Approved irreversible steps\n");
            for (s, why) in &self.approvals {
                let _ = writeln!(m, "- {}: {}", md(s), md(why));
            }
        }
        let _ = writeln!(m, "\n## Verdicts\n\n| verifier | phase | status | summary | evidence |\n|---|---|---|---|---|");
        for v in &self.verdicts {
            let ev = if v.verdict.evidence.is_null() {
                "-".to_string()
            } else {
                format!(
                    "`{}`",
                    crate::digest::truncate(&v.verdict.evidence.to_string(), 300)
                )
            };
            let _ = writeln!(
                m,
                "| {} | {} | {:?} | {} | {} |",
                md(&v.verifier),
                md(&v.phase),
                v.verdict.status,
                md(&v.verdict.summary),
                md(&ev)
            );
        }
        let _ = writeln!(m, "\n## Timeline\n\n| +ms | event |\n|---|---|");
        for t in &self.timeline {
            let _ = writeln!(m, "| {} | {} |", t.offset_ms, md(&t.detail));
        }
        m.push_str(&self.incident_skeleton());
        m
    }

    /// The after-action review skeleton: facts filled in, judgement left to people.
    pub fn incident_skeleton(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "\n## Incident report (after-action review skeleton)\n");
        let _ = writeln!(
            m,
            "**Summary.** Migration `{}` ended `{}`.{}",
            self.plan,
            self.outcome,
            self.rollback_reason
                .as_ref()
                .map(|r| format!(" Rollback was triggered by: {}.", md(r)))
                .unwrap_or_default()
        );
        let components: BTreeSet<&str> = self
            .steps
            .iter()
            .filter(|s| s.state != StepState::NotApplied)
            .map(|s| s.component.as_str())
            .collect();
        let _ = writeln!(
            m,
            "\n**Impact.** Components touched: {}. RTO {}; RPO {}{}.",
            if components.is_empty() {
                "none".to_string()
            } else {
                components.into_iter().collect::<Vec<_>>().join(", ")
            },
            self.rto_ms
                .map(|v| format!(
                    "{v} ms{}",
                    target_note(self.objectives.rto_ms, self.rto_met)
                ))
                .unwrap_or_else(|| "n/a".into()),
            self.rpo_ms
                .map(|v| format!(
                    "{v} ms{}",
                    target_note(self.objectives.rpo_ms, self.rpo_met)
                ))
                .unwrap_or_else(|| "n/a".into()),
            match self.items_discarded {
                Some(n) => format!(
                    " ({}{n} write(s) by others discarded by restores)",
                    if self.discarded_exact {
                        ""
                    } else {
                        "at least "
                    }
                ),
                None => String::new(),
            }
        );
        let failing: Vec<&VerdictReport> = self
            .verdicts
            .iter()
            .filter(|v| v.verdict.status != Status::Pass)
            .collect();
        let _ = writeln!(
            m,
            "\n**Detection.** {}{}",
            self.detection
                .as_ref()
                .map(|d| format!("{} ", md(&d.sentence())))
                .unwrap_or_default(),
            if failing.is_empty() {
                "No failing verdict; see the rollback reason.".to_string()
            } else {
                failing
                    .iter()
                    .map(|v| format!("{} [{}]: {}", v.verifier, v.phase, v.verdict.summary))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
        let errors: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| s.last_error.as_ref().map(|e| format!("{}: {}", s.id, e)))
            .collect();
        let _ = writeln!(
            m,
            "\n**Errors seen.** {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                md(&errors.join("; "))
            }
        );
        let _ = writeln!(
            m,
            "\n**Recovery.** Undone: {}. Kept: {}{}. Parity with baseline: {}.",
            list(self.undone()),
            list(self.kept()),
            match self.kept_verified() {
                Some(true) => " (re-verified after the rollback)",
                Some(false) => " (re-verification after the rollback FAILED)",
                None => "",
            },
            if self.parity_proven() {
                "proven".to_string()
            } else if self.unproven.is_empty() {
                "NOT proven".to_string()
            } else {
                format!("NOT proven ({})", md(&self.unproven.join("; ")))
            }
        );
        if !self.owners.is_empty() {
            let owners: Vec<String> = self
                .owners
                .iter()
                .map(|(role, who)| format!("{}: {}", md(role), md(who)))
                .collect();
            let _ = writeln!(m, "\n**Owners.** {}.", owners.join("; "));
        }
        let reviewer = self
            .owners
            .get("post-incident review")
            .or_else(|| self.owners.get(crate::ROLLBACK_LEAD))
            .map(|w| md(w))
            .unwrap_or_else(|| "the owner".into());
        let _ = writeln!(m, "\n**Root cause.** _to be written by {reviewer}_\n\n**What went well.** _…_\n\n**What went wrong.** _…_\n\n**Action items.**\n\n| action | owner | due |\n|---|---|---|\n| _…_ | _…_ | _…_ |");
        m
    }
}

impl Detection {
    /// The detection in one sentence, as the Markdown report shows it:
    /// `Breach detected at <T> by <verifier> (<summary>); rollback started at T+<x> ms.`
    ///
    /// ```
    /// use rollback_core::report::Detection;
    /// let d = Detection {
    ///     verifier: "error-rate".into(),
    ///     phase: "soak".into(),
    ///     detected_at_ms: 1_796_632_450_123,
    ///     rollback_started_at_ms: 1_796_632_450_135,
    ///     latency_ms: 12,
    ///     summary: "error rate 30.0%".into(),
    /// };
    /// assert_eq!(
    ///     d.sentence(),
    ///     "Breach detected at 2026-12-07 08:34:10.123 UTC by error-rate (error rate 30.0%); \
    ///      rollback started at T+12 ms."
    /// );
    /// ```
    pub fn sentence(&self) -> String {
        format!(
            "Breach detected at {} by {} ({}); rollback started at T+{} ms.",
            utc(self.detected_at_ms),
            self.verifier,
            self.summary,
            self.latency_ms
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` of an epoch-ms time.
pub(super) fn utc(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// " (target X ms: met)" / " (target X ms: **missed**)", or nothing without a target.
fn target_note(target: Option<u64>, met: Option<bool>) -> String {
    match (target, met) {
        (Some(t), Some(true)) => format!(" (target {t} ms: met)"),
        (Some(t), Some(false)) => format!(" (target {t} ms: **missed**)"),
        _ => String::new(),
    }
}

fn list(v: Vec<&str>) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_renders_epoch_milliseconds_as_a_calendar_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        // 2000-02-29 23:59:59.999 (a leap day)
        assert_eq!(utc(951_868_799_999), "2000-02-29 23:59:59.999 UTC");
        // 2026-12-07 08:34:10.123
        assert_eq!(utc(1_796_632_450_123), "2026-12-07 08:34:10.123 UTC");
    }
}
