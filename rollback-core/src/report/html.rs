//! The report as one self-contained HTML page: the timeline as an SVG Gantt chart (a lane
//! per checkpoint, step and verifier, with RTO and RPO marked against their targets), the
//! steps, checkpoints, verdicts with their evidence, and the incident-report skeleton. No
//! script and no network: styles are inline, the chart is inline SVG.

use super::{RunReport, StepState};
use crate::Status;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Width of the lane labels and of the chart, in SVG units.
const LABEL_W: f64 = 250.0;
const CHART_W: f64 = 820.0;
const ROW_H: f64 = 22.0;
const TOP: f64 = 34.0;

/// What a bar of the chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Capture,
    Apply,
    Verify,
    Soak,
    Rollback,
    Revert,
    Restore,
    Parity,
    Rpo,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Capture => "capture",
            Phase::Apply => "apply",
            Phase::Verify => "verify",
            Phase::Soak => "soak",
            Phase::Rollback => "rollback",
            Phase::Revert => "revert",
            Phase::Restore => "restore",
            Phase::Parity => "parity",
            Phase::Rpo => "rpo window",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Phase::Capture => "#5b8def",
            Phase::Apply => "#3fa34d",
            Phase::Verify => "#8e5bd6",
            Phase::Soak => "#f0a030",
            Phase::Rollback => "#e04848",
            Phase::Revert => "#e67aa5",
            Phase::Restore => "#8d6e63",
            Phase::Parity => "#14998c",
            Phase::Rpo => "#c9b8a8",
        }
    }
}

/// One bar: `[start, end]` in ms since the run started.
#[derive(Debug, Clone)]
struct Span {
    start: u64,
    end: u64,
    phase: Phase,
    ok: bool,
    title: String,
}

/// One row of the chart.
#[derive(Debug, Default)]
struct Lane {
    label: String,
    spans: Vec<Span>,
}

/// The lanes of the chart, in order: the run, each checkpoint, each step, each verifier.
#[derive(Debug, Default)]
struct Chart {
    lanes: Vec<Lane>,
    index: BTreeMap<String, usize>,
    /// `[start, end]` of the recovery (RTO) and where its target falls.
    rto: Option<(u64, u64)>,
}

impl Chart {
    fn lane(&mut self, key: String, label: String) -> &mut Lane {
        let i = *self.index.entry(key).or_insert_with(|| {
            self.lanes.push(Lane {
                label,
                spans: Vec::new(),
            });
            self.lanes.len() - 1
        });
        &mut self.lanes[i]
    }

    fn push(&mut self, key: &str, label: &str, span: Span) {
        self.lane(key.to_string(), label.to_string())
            .spans
            .push(span);
    }
}

fn chart(r: &RunReport) -> Chart {
    let mut c = Chart::default();
    c.lane("run".into(), "run".into());
    for cp in &r.checkpoints {
        c.lane(
            format!("cp:{}", cp.resource),
            format!("checkpoint {}", cp.resource),
        );
    }
    for s in &r.steps {
        c.lane(format!("step:{}", s.id), format!("step {}", s.id));
    }
    let mut open: BTreeMap<(&'static str, String), u64> = BTreeMap::new();
    let mut used = vec![false; r.verdicts.len()];
    let mut prev = 0u64;
    let mut rollback_start = None;
    let mut soak: Option<(u64, u64)> = None;
    for t in &r.timeline {
        let at = t.offset_ms;
        let subject = t.subject.clone().unwrap_or_default();
        let mut close = |kind: &'static str| open.remove(&(kind, subject.clone())).unwrap_or(prev);
        let span = |start: u64, phase: Phase, ok: bool| Span {
            start,
            end: at,
            phase,
            ok,
            title: format!("+{at} ms: {}", t.detail),
        };
        match t.kind.as_str() {
            "capture_intent" => {
                open.insert(("capture", subject.clone()), at);
            }
            "apply_intent" => {
                open.insert(("apply", subject.clone()), at);
            }
            "revert_intent" => {
                open.insert(("revert", subject.clone()), at);
            }
            "restore_intent" => {
                open.insert(("restore", subject.clone()), at);
            }
            "captured" | "fingerprinted" => {
                let s = span(close("capture"), Phase::Capture, true);
                c.push(
                    &format!("cp:{subject}"),
                    &format!("checkpoint {subject}"),
                    s,
                );
            }
            "applied" | "apply_failed" => {
                let s = span(close("apply"), Phase::Apply, t.kind == "applied");
                c.push(&format!("step:{subject}"), &format!("step {subject}"), s);
            }
            "reverted" | "revert_failed" => {
                let s = span(close("revert"), Phase::Revert, t.kind == "reverted");
                c.push(&format!("step:{subject}"), &format!("step {subject}"), s);
            }
            "restored" | "restore_failed" => {
                let s = span(close("restore"), Phase::Restore, t.kind == "restored");
                c.push(
                    &format!("cp:{subject}"),
                    &format!("checkpoint {subject}"),
                    s,
                );
            }
            "parity" => {
                let ok = t.detail.contains(": proven");
                c.push(
                    &format!("cp:{subject}"),
                    &format!("checkpoint {subject}"),
                    span(prev, Phase::Parity, ok),
                );
            }
            "verdict" => {
                let found = r.verdicts.iter().enumerate().find(|(i, v)| {
                    !used[*i]
                        && v.verifier == subject
                        && v.at_ms.saturating_sub(r.started_at_ms) == at
                });
                let (phase, ok) = match found {
                    Some((i, v)) => {
                        used[i] = true;
                        let soaking = v.phase == "soak";
                        (
                            if soaking { Phase::Soak } else { Phase::Verify },
                            v.verdict.status == Status::Pass,
                        )
                    }
                    None => (Phase::Verify, !t.detail.contains("Fail")),
                };
                if phase == Phase::Soak {
                    let s = soak.get_or_insert((prev, at));
                    s.1 = at;
                }
                c.push(
                    &format!("verifier:{subject}"),
                    &format!("verifier {subject}"),
                    span(prev, phase, ok),
                );
            }
            "rollback_started" => {
                rollback_start.get_or_insert(at);
            }
            "rolled_back" | "rollback_failed" => {
                let start = rollback_start.unwrap_or(prev);
                c.push(
                    "run",
                    "run",
                    span(start, Phase::Rollback, t.kind == "rolled_back"),
                );
            }
            _ => {}
        }
        prev = at;
    }
    if let Some((start, end)) = soak {
        let end = rollback_start.map_or(end, |r| r.max(start));
        c.lanes[0].spans.insert(
            0,
            Span {
                start,
                end,
                phase: Phase::Soak,
                ok: rollback_start.is_none(),
                title: format!("soak window: +{start} ms to +{end} ms"),
            },
        );
    }
    // The recovery point of each restored checkpoint: capture → restore.
    for cp in &r.checkpoints {
        if let (Some(rpo), Some(captured)) = (cp.rpo_ms, cp.captured_at_ms) {
            let start = captured.saturating_sub(r.started_at_ms);
            c.push(
                &format!("cp:{}", cp.resource),
                "",
                Span {
                    start,
                    end: start + rpo,
                    phase: Phase::Rpo,
                    ok: r.rpo_met != Some(false),
                    title: format!(
                        "RPO of {}: {rpo} ms (writes since capture discarded by the restore)",
                        cp.resource
                    ),
                },
            );
        }
    }
    if let Some(rto) = r.rto_ms {
        let end = r
            .timeline
            .iter()
            .rev()
            .find(|t| t.kind == "rolled_back")
            .map_or(r.finished_at_ms.saturating_sub(r.started_at_ms), |t| {
                t.offset_ms
            });
        c.rto = Some((end.saturating_sub(rto), end));
    }
    c
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: u64) -> String {
    if v < 1000 {
        format!("{v} ms")
    } else if v < 60_000 {
        format!("{:.1} s", v as f64 / 1000.0)
    } else {
        format!("{} min {} s", v / 60_000, v % 60_000 / 1000)
    }
}

fn target(what: &str, got: Option<u64>, target: Option<u64>, met: Option<bool>) -> String {
    match (got, target) {
        (None, _) => format!("{what}: n/a"),
        (Some(g), None) => format!("{what} {} (no target)", ms(g)),
        (Some(g), Some(t)) => format!(
            "{what} {} (target {}: {})",
            ms(g),
            ms(t),
            match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            }
        ),
    }
}

/// The chart as inline SVG.
fn svg(r: &RunReport) -> String {
    let c = chart(r);
    let lanes: Vec<&Lane> = c.lanes.iter().collect();
    let total = lanes
        .iter()
        .flat_map(|l| l.spans.iter().map(|s| s.end))
        .chain([r.finished_at_ms.saturating_sub(r.started_at_ms), 1])
        .max()
        .unwrap_or(1);
    let x = |t: u64| LABEL_W + (t.min(total) as f64 / total as f64) * CHART_W;
    let height = TOP + ROW_H * (lanes.len() as f64 + 1.0) + 40.0;
    let width = LABEL_W + CHART_W + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="gantt" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="system-ui, sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        "<title>Timeline of run {}: {} over {}</title>",
        esc(&r.run_id),
        r.outcome,
        ms(total)
    );
    // Time axis.
    for i in 0..=5u64 {
        let t = total * i / 5;
        let tx = x(t);
        let anchor = match i {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{}" text-anchor="{anchor}" fill="#555">+{}</text>"##,
            TOP - 6.0,
            TOP + ROW_H * lanes.len() as f64,
            TOP - 10.0,
            esc(&ms(t))
        );
    }
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        if i % 2 == 0 {
            let _ = write!(
                s,
                r##"<rect x="0" y="{y}" width="{width}" height="{ROW_H}" fill="#f6f7f9"/>"##
            );
        }
        let _ = write!(
            s,
            r##"<text x="6" y="{:.1}" fill="#222" class="lane">{}</text>"##,
            y + 15.0,
            esc(&lane.label)
        );
        for sp in &lane.spans {
            let (x0, x1) = (x(sp.start), x(sp.end));
            let w = (x1 - x0).max(2.0);
            let (yy, h) = if sp.phase == Phase::Rpo {
                (y + ROW_H - 6.0, 4.0)
            } else {
                (y + 4.0, ROW_H - 10.0)
            };
            let stroke = if sp.ok {
                String::new()
            } else {
                r##" stroke="#8b0000" stroke-width="2""##.to_string()
            };
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{yy:.1}" width="{w:.1}" height="{h:.1}" rx="2" fill="{}"{stroke} class="bar {}"><title>{}</title></rect>"#,
                sp.phase.color(),
                sp.phase.name().replace(' ', "-"),
                esc(&sp.title)
            );
        }
    }
    let bottom = TOP + ROW_H * lanes.len() as f64;
    // RTO: the recovery, and its target where it falls inside the chart.
    if let Some((start, end)) = c.rto {
        let (x0, x1) = (x(start), x(end));
        let y = bottom + 8.0;
        let _ = write!(
            s,
            r##"<line x1="{x0:.1}" y1="{y}" x2="{x1:.1}" y2="{y}" stroke="#e04848" stroke-width="3"/><line x1="{x0:.1}" y1="{TOP}" x2="{x0:.1}" y2="{y}" stroke="#e04848" stroke-dasharray="4 3"/><line x1="{x1:.1}" y1="{TOP}" x2="{x1:.1}" y2="{y}" stroke="#e04848" stroke-dasharray="4 3"/>"##
        );
        let mut label = target("RTO", r.rto_ms, r.objectives.rto_ms, r.rto_met);
        if let Some(t) = r.objectives.rto_ms {
            let at = start.saturating_add(t);
            if at <= total {
                let tx = x(at);
                let _ = write!(
                    s,
                    r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#b00020" stroke-width="2"/><text x="{tx:.1}" y="{:.1}" fill="#b00020" text-anchor="middle">RTO target</text>"##,
                    y + 4.0,
                    y + 30.0
                );
            } else {
                label.push_str(", the target lies beyond the chart");
            }
        }
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#b00020" class="rto">{}</text>"##,
            x0.clamp(LABEL_W, LABEL_W + CHART_W - 360.0),
            y + 16.0,
            esc(&label)
        );
    }
    if r.rpo_ms.is_some() {
        let _ = write!(
            s,
            r##"<text x="6" y="{:.1}" fill="#6d4c41" class="rpo">{}</text>"##,
            bottom + 34.0,
            esc(&target("RPO", r.rpo_ms, r.objectives.rpo_ms, r.rpo_met))
        );
    }
    s.push_str("</svg>");
    s
}

fn legend() -> String {
    let mut s = String::from(r#"<p class="legend">"#);
    for p in [
        Phase::Capture,
        Phase::Apply,
        Phase::Verify,
        Phase::Soak,
        Phase::Rollback,
        Phase::Revert,
        Phase::Restore,
        Phase::Parity,
        Phase::Rpo,
    ] {
        let _ = write!(
            s,
            r#"<span><i style="background:{}"></i>{}</span> "#,
            p.color(),
            p.name()
        );
    }
    s.push_str(r#"<span><i class="failed"></i>failed (outlined)</span></p>"#);
    s
}

/// Inline Markdown of the skeleton (`**strong**`, `_em_`, `` `code` ``) as HTML.
fn inline(md: &str) -> String {
    let mut out = String::new();
    for (i, part) in md.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
            continue;
        }
        let mut strong = false;
        for (j, piece) in part.split("**").enumerate() {
            if j > 0 {
                out.push_str(if strong { "</strong>" } else { "<strong>" });
                strong = !strong;
            }
            let escaped = esc(piece);
            // `_…_` at word edges is emphasis; underscores inside words are kept.
            let chars: Vec<char> = escaped.chars().collect();
            let mut em = false;
            for (k, ch) in chars.iter().enumerate() {
                let before = k == 0 || !chars[k - 1].is_alphanumeric();
                let after = k + 1 == chars.len() || !chars[k + 1].is_alphanumeric();
                if *ch == '_' && ((!em && before) || (em && after)) {
                    out.push_str(if em { "</em>" } else { "<em>" });
                    em = !em;
                } else {
                    out.push(*ch);
                }
            }
            if em {
                out.push_str("</em>");
            }
        }
        if strong {
            out.push_str("</strong>");
        }
    }
    out
}

/// The incident skeleton's Markdown (headings, paragraphs, one table) as HTML.
fn skeleton(md: &str) -> String {
    let mut out = String::new();
    for block in md.split("\n\n") {
        let block = block.trim();
        if block.is_empty() {
            continue;
        }
        if let Some(h) = block.strip_prefix("## ") {
            let _ = write!(out, "<h2>{}</h2>", inline(h));
        } else if block.starts_with('|') {
            out.push_str("<table>");
            for (i, row) in block.lines().filter(|l| !l.starts_with("|---")).enumerate() {
                let tag = if i == 0 { "th" } else { "td" };
                out.push_str("<tr>");
                for cell in row.trim_matches('|').split('|') {
                    let _ = write!(out, "<{tag}>{}</{tag}>", inline(cell.trim()));
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>");
        } else {
            let _ = write!(out, "<p>{}</p>", inline(&block.replace('\n', " ")));
        }
    }
    out
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1120px;color:#1d1d1f;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}.facts th{width:260px}
.outcome{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.committed{background:#3fa34d}.rolled_back,.partially_rolled_back{background:#f0a030}.rollback_failed{background:#c62828}.in_progress{background:#5b8def}
.bad{color:#b00020;font-weight:600}.ok{color:#2e7d32}
pre{background:#f6f7f9;padding:6px;margin:0;max-width:520px;white-space:pre-wrap;word-break:break-all;font-size:12px}
.legend span{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:12px;height:10px;margin-right:4px;border-radius:2px}
.legend i.failed{border:2px solid #8b0000;width:8px;height:6px}
svg.gantt{max-width:100%;height:auto;border:1px solid #e3e3e3;background:#fff}
"#;

impl RunReport {
    /// The report as one self-contained HTML page (no script, no network): the facts, the
    /// timeline as an SVG Gantt chart — a lane per checkpoint (capture, restore, parity,
    /// the RPO window), per step (apply, revert) and per verifier (checks, soak polls),
    /// the run's soak window and rollback, and the RTO against its target — every record
    /// of the timeline, the steps, checkpoints, verdicts with their evidence, and the
    /// incident-report skeleton.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> rollback_core::Result<()> {
    /// use rollback_core::journal::MemoryJournal;
    /// use rollback_core::sim::{SetKey, SimWorld};
    /// use rollback_core::{Executor, Plan};
    /// let w = SimWorld::new();
    /// let plan = Plan::builder("demo")
    ///     .step("db", SetKey::new("s1", &w, "db", "k", "v"), &[])
    ///     .build()?;
    /// let report = Executor::new(MemoryJournal::new()).run(&plan).await?;
    /// let html = report.to_html();
    /// assert!(html.starts_with("<!DOCTYPE html>"));
    /// assert!(html.contains("<svg") && html.contains("step s1"));
    /// assert!(!html.contains("<script"));
    /// # Ok(()) }
    /// ```
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Run report: {plan}</title><style>{STYLE}</style></head><body>
<h1>Run report: {plan}</h1><p><span class="outcome {outcome}">{outcome}</span> run <code>{run}</code>, plan digest <code>{digest}</code></p>
"#,
            plan = esc(&self.plan),
            outcome = self.outcome,
            run = esc(&self.run_id),
            digest = self.plan_digest.short()
        );
        // Facts.
        h.push_str(r#"<section id="summary"><table class="facts">"#);
        let mut fact = |k: &str, v: String| {
            let _ = write!(h, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
        };
        fact("started", esc(&super::markdown::utc(self.started_at_ms)));
        fact(
            "duration",
            esc(&ms(self.finished_at_ms.saturating_sub(self.started_at_ms))),
        );
        if let Some(reason) = &self.rollback_reason {
            fact("rollback reason", esc(reason));
        }
        if let Some(d) = &self.detection {
            fact("detection", esc(&d.sentence()));
        }
        let flag = |met: Option<bool>, text: String| match met {
            Some(false) => format!(r#"<span class="bad">{}</span>"#, esc(&text)),
            Some(true) => format!(r#"<span class="ok">{}</span>"#, esc(&text)),
            None => esc(&text),
        };
        fact(
            "RTO (trigger → verified restored)",
            flag(
                self.rto_met,
                target("RTO", self.rto_ms, self.objectives.rto_ms, self.rto_met),
            ),
        );
        fact(
            "RPO (writes lost to restores)",
            flag(
                self.rpo_met,
                target("RPO", self.rpo_ms, self.objectives.rpo_ms, self.rpo_met),
            ),
        );
        if let Some(n) = self.items_discarded {
            fact(
                "writes by others discarded by restores",
                format!(
                    "{}{n}",
                    if self.discarded_exact {
                        ""
                    } else {
                        "at least "
                    }
                ),
            );
        }
        if self.rollback_reason.is_some() {
            fact(
                "parity with the baseline",
                if self.parity_proven() {
                    r#"<span class="ok">proven for everything undone</span>"#.into()
                } else {
                    r#"<span class="bad">NOT proven</span> (see below)"#.into()
                },
            );
        }
        for (role, who) in &self.owners {
            fact(role, esc(who));
        }
        if self.resumes > 0 {
            fact("resumes", self.resumes.to_string());
        }
        for t in &self.lease_takeovers {
            fact("lease takeover", esc(t));
        }
        for t in &self.journal_repairs {
            fact("journal", format!(r#"<span class="bad">{}</span>"#, esc(t)));
        }
        h.push_str("</table>");
        for (title, items) in [
            ("Not proven back at the baseline", &self.unproven),
            ("Left undone (resume to continue)", &self.remaining),
        ] {
            if !items.is_empty() {
                let _ = write!(h, "<h2>{}</h2><ul>", esc(title));
                for u in items {
                    let _ = write!(h, r#"<li class="bad">{}</li>"#, esc(u));
                }
                h.push_str("</ul>");
            }
        }
        h.push_str("</section>\n");
        // Timeline.
        let _ = write!(
            h,
            r#"<section id="timeline"><h2>Timeline</h2>{}{}<details><summary>Every record ({})</summary><table><tr><th>+ms</th><th>record</th><th>what happened</th></tr>"#,
            legend(),
            svg(self),
            self.timeline.len()
        );
        for t in &self.timeline {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                t.offset_ms,
                esc(&t.kind),
                esc(&t.detail)
            );
        }
        h.push_str("</table></details></section>\n");
        // Steps.
        h.push_str(r#"<section id="steps"><h2>Steps</h2><table><tr><th>step</th><th>component</th><th>reversibility</th><th>state</th><th>apply</th><th>revert</th><th>last error</th></tr>"#);
        for s in &self.steps {
            let state = format!("{:?}", s.state);
            let state = match (&s.note, s.state) {
                (_, StepState::NotUndone) => format!(r#"<span class="bad">{state}</span>"#),
                (Some(n), _) => format!("{state} ({})", esc(n)),
                (None, _) => state,
            };
            let dur = |v: Option<u64>, n: u32| {
                v.map_or_else(|| "-".into(), |v| format!("{} ({n}x)", ms(v)))
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.id),
                esc(&s.component),
                s.reversibility,
                dur(s.apply_ms, s.apply_attempts),
                dur(s.revert_ms, s.revert_attempts),
                esc(s.last_error.as_deref().unwrap_or("-"))
            );
        }
        h.push_str("</table></section>\n");
        // Checkpoints.
        h.push_str(r#"<section id="checkpoints"><h2>Checkpoints</h2><table><tr><th>resource</th><th>component</th><th>baseline</th><th>capture</th><th>restore</th><th>parity</th><th>RPO</th></tr>"#);
        for c in &self.checkpoints {
            let baseline = match (&c.digest, c.fingerprint_only) {
                (Some(d), _) => format!("snapshot <code>{}</code>", d.short()),
                (None, true) => "fingerprint only".into(),
                _ => "-".into(),
            };
            let restore = match (&c.restore_method, c.restore_ms) {
                (Some(m), Some(d)) => format!(
                    "{} in {}{}",
                    esc(m),
                    ms(d),
                    c.discarded_writes
                        .as_ref()
                        .map_or(String::new(), |d| format!(
                            ", discarded {}{} write(s) of others",
                            if d.exact { "" } else { "at least " },
                            d.items
                        ))
                ),
                _ => "-".into(),
            };
            let parity = match (c.parity, &c.not_restored) {
                (Some(true), _) => match &c.parity_proof {
                    Some(how) => format!(r#"<span class="ok">proven</span> ({})"#, esc(how)),
                    None => r#"<span class="ok">proven</span>"#.to_string(),
                },
                (Some(false), Some(why)) => {
                    format!(r#"<span class="bad">not proven: {}</span>"#, esc(why))
                }
                (Some(false), None) => r#"<span class="bad">FAILED</span>"#.into(),
                (None, _) => "-".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{baseline}</td><td>{}</td><td>{restore}</td><td>{parity}</td><td>{}</td></tr>",
                esc(&c.resource),
                esc(&c.component),
                c.capture_ms.map_or_else(|| "-".into(), ms),
                c.rpo_ms.map_or_else(|| "-".into(), ms)
            );
        }
        h.push_str("</table></section>\n");
        if !self.approvals.is_empty() {
            h.push_str(r#"<section id="approvals"><h2>Approved irreversible steps</h2><ul>"#);
            for (s, why) in &self.approvals {
                let _ = write!(h, "<li><code>{}</code>: {}</li>", esc(s), esc(why));
            }
            h.push_str("</ul></section>\n");
        }
        // Verdicts with evidence.
        h.push_str(r#"<section id="verdicts"><h2>Verdicts</h2><table><tr><th>+ms</th><th>verifier</th><th>phase</th><th>status</th><th>summary</th><th>evidence</th></tr>"#);
        for v in &self.verdicts {
            let status = format!("{:?}", v.verdict.status);
            let status = if v.verdict.status == Status::Pass {
                format!(r#"<span class="ok">{status}</span>"#)
            } else {
                format!(r#"<span class="bad">{status}</span>"#)
            };
            let evidence = if v.verdict.evidence.is_null() {
                "-".to_string()
            } else {
                format!(
                    "<pre>{}</pre>",
                    esc(&serde_json::to_string_pretty(&v.verdict.evidence).unwrap_or_default())
                )
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{status}</td><td>{}</td><td>{evidence}</td></tr>",
                v.at_ms.saturating_sub(self.started_at_ms),
                esc(&v.verifier),
                esc(&v.phase),
                esc(&v.verdict.summary)
            );
        }
        h.push_str("</table></section>\n");
        let _ = write!(
            h,
            r#"<section id="incident">{}</section>"#,
            skeleton(&self.incident_skeleton())
        );
        h.push_str("\n</body></html>\n");
        h
    }
}

#[cfg(test)]
mod tests {
    use super::{esc, inline};

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc(r#"<b a="1">&'"#), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn the_skeletons_inline_markdown_becomes_html() {
        assert_eq!(
            inline("**Root cause.** _to be written by ops_ `rolled_back`"),
            "<strong>Root cause.</strong> <em>to be written by ops</em> <code>rolled_back</code>"
        );
        assert_eq!(inline("a_b stays"), "a_b stays");
    }
}
