//! Section 2: finding the differing rows — `TableHashParity` against one fingerprint of
//! the same table, and against reladiff.

use super::*;

impl Bench {
    /// The keys changed in the copy: spread over the table.
    pub(super) fn changed_keys(ds: &Dataset) -> Vec<i64> {
        let n = ds.rows.max(DIFF_CHANGES) as i64;
        (0..DIFF_CHANGES as i64)
            .map(|i| {
                1 + (i * n) / DIFF_CHANGES as i64
                    + (n / 37 + i * 7919) % (n / DIFF_CHANGES as i64).max(1)
            })
            .collect()
    }

    /// 2. Listing the differing keys: the bisecting table-hash verifier against reladiff.
    pub(crate) async fn diff(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let (table, changed) = (ds.table, ds.changed);
        let t = Instant::now();
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {changed}; \
                 CREATE TABLE {changed} (LIKE {table} INCLUDING ALL); \
                 INSERT INTO {changed} SELECT * FROM {table}"
            ))
            .await?;
        self.client
            .batch_execute(&format!("VACUUM ANALYZE {changed}"))
            .await?;
        // A snapshot of the copy before it changes: the baseline a run's verifier has.
        let ctx = Context::detached();
        let cp = TableSnapshot::new(&self.db, Table::public(changed));
        let baseline = cp.capture(&ctx).await?;
        // And an undo log of it, whose diff reads only the log.
        let undo = TableUndoLog::new(&self.db, Table::public(changed));
        let undo_snap = undo.capture(&ctx).await?;
        let keys = Self::changed_keys(ds);
        for (i, k) in keys.iter().enumerate() {
            self.client
                .execute(
                    &format!(
                        "UPDATE {changed} SET {c} = {c} + $1::int WHERE {key} = $2::bigint",
                        c = ds.touch,
                        key = ds.key
                    ),
                    &[&(1000 + i as i32), k],
                )
                .await?;
        }
        eprintln!(
            "compare: {}: copy with {DIFF_CHANGES} changed rows made in {}",
            ds.label,
            fmt_secs(secs(t))
        );
        let expected: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        let between =
            TableHashParity::between(&self.db, Table::public(table), Table::public(changed));
        let against = TableHashParity::new(&self.db, Table::public(changed));
        let run_ctx = Context::detached().with_baseline([baseline.clone()]);
        let (mut two, mut base, mut fps) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ok_two, mut ok_base) = (true, true);
        let mut evidence_line = String::new();
        for _ in 0..args.reps {
            // The limit of a check against the stored chunk digests: one fingerprint of
            // the same (changed) table, in the same repetition.
            let m = Meter::start(&self.client).await;
            cp.fingerprint(&ctx).await?;
            fps.push(m.stop().await);
            for (v, c, costs, ok) in [
                (&between, &ctx, &mut two, &mut ok_two),
                (&against, &run_ctx, &mut base, &mut ok_base),
            ] {
                let m = Meter::start(&self.client).await;
                let verdict = v.verify(c).await?;
                costs.push(m.stop().await);
                let list = |k: &str| -> BTreeSet<String> {
                    verdict.evidence[k]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let changed = list("changed");
                *ok &= verdict.status == Status::Fail
                    && changed == expected
                    && list("added").is_empty()
                    && list("removed").is_empty()
                    && verdict.evidence["truncated"] != serde_json::json!(true);
                evidence_line = format!(
                    "verdict {:?}: \"{}\"; changed keys {:?}",
                    verdict.status, verdict.summary, changed
                );
            }
        }
        cp.discard(&baseline, &ctx).await?;
        // The undo log's diff: the earliest logged image of each key against the row now.
        let (mut logged, mut ok_logged) = (Vec::new(), true);
        let mut logged_line = String::new();
        for _ in 0..args.reps {
            let m = Meter::start(&self.client).await;
            let changes = undo.changes(&undo_snap).await?;
            logged.push(m.stop().await);
            let c = &changes[0];
            let changed: BTreeSet<String> = c.changed.iter().cloned().collect();
            ok_logged &= changed == expected && c.added.is_empty() && c.removed.is_empty();
            logged_line = format!(
                "{} changed, {} added, {} removed from {} log entries; changed keys {:?}",
                c.changed.len(),
                c.added.len(),
                c.removed.len(),
                c.log_entries,
                changed
            );
        }
        undo.discard(&undo_snap, &ctx).await?;
        let logged = med(&logged);
        let (two, base, fp) = (med(&two), med(&base), med(&fps));
        let mut r = Report::default();
        r.note(format!(
            "{}: differences from the undo log (last run): {logged_line}",
            ds.label
        ));
        let exact = |ok: bool| if ok { "exact keys" } else { "WRONG keys" };
        r.note(format!(
            "{}: differences: expected changed keys {:?}; rollback's evidence (last run): {evidence_line} — two tables: {}, against the baseline snapshot: {}",
            ds.label,
            expected,
            exact(ok_two),
            exact(ok_base)
        ));
        r.note(format!(
            "{}: differences breakdown (medians): {}; {}; {}",
            ds.label,
            breakdown("two tables", two),
            breakdown("against the baseline snapshot", base),
            breakdown("fingerprint of the changed table", fp)
        ));
        r.note(format!(
            "{}: differences breakdown (medians): {}",
            ds.label,
            breakdown("from the undo log", logged)
        ));
        let mut rows = vec![
            Row::new(
                "2. finding the differences",
                ds.says(format!(
                    "{DIFF_CHANGES} changed rows among {}: two tables (`TableHashParity::between`)",
                    fmt_count(ds.rows)
                )),
            )
            .rollback(format!("{} ({})", fmt_secs(two.wall), exact(ok_two))),
            Row::new(
                "",
                ds.says("the same against the run's baseline snapshot (`TableHashParity::new`, chunk digests stored at capture)"),
            )
            .rollback(format!("{} ({})", fmt_secs(base.wall), exact(ok_base))),
            Row::new(
                "",
                ds.says("the same from the run's undo log (`TableUndoLog::changes`: logged keys only, O(changes))"),
            )
            .rollback(format!("{} ({})", fmt_secs(logged.wall), exact(ok_logged))),
        ];
        let reladiff_url = self.url.replacen("postgres://", "postgresql://", 1);
        let mut peers = Vec::new();
        match ensure_reladiff().await {
            Err(e) => r.note(format!("reladiff not run: {e}")),
            Ok(()) => {
                for algo in ["auto", "hashdiff"] {
                    match reladiff(&reladiff_url, ds, algo).await {
                        Ok((s, found)) => {
                            if found != expected {
                                r.note(format!("reladiff {algo} found keys {found:?}"));
                            }
                            peers.push((algo, s, found == expected));
                        }
                        Err(e) => r.note(format!("reladiff {algo} failed: {e}")),
                    }
                }
            }
        }
        // Compare with the fastest reladiff run.
        let best = peers.iter().min_by(|a, b| a.1.total_cmp(&b.1)).copied();
        for (row, (ours, ok)) in rows.iter_mut().zip([
            (two.wall, ok_two),
            (base.wall, ok_base),
            (logged.wall, ok_logged),
        ]) {
            if let Some((algo, s, peer_ok)) = best {
                let ratio = s / ours;
                *row = std::mem::take(row)
                    .reference(format!(
                        "reladiff `diff_tables` ({algo}): {}{}",
                        fmt_secs(s),
                        if peer_ok { "" } else { ", wrong keys" }
                    ))
                    .ratio(format!("{} faster", fmt_ratio(ratio)))
                    .target(
                        "≥ 10× faster, exactly the changed keys",
                        Some(ratio >= 10.0 && ok),
                    );
            } else {
                *row = std::mem::take(row).target("exactly the changed keys", Some(ok));
            }
        }
        for row in rows {
            r.push(row);
        }
        let vs_fp = base.wall / fp.wall;
        r.push(
            Row::new(
                "",
                ds.says("against the baseline snapshot, beside one fingerprint of the same table (the read it cannot avoid)"),
            )
            .rollback(format!("{} ({})", fmt_secs(base.wall), exact(ok_base)))
            .reference(format!("`TableSnapshot::fingerprint`: {}", fmt_secs(fp.wall)))
            .ratio(format!("{} the fingerprint's time", fmt_ratio(vs_fp)))
            .target(
                "≤ 1.2× the fingerprint, exactly the changed keys",
                Some(vs_fp <= 1.2 && ok_base),
            ),
        );
        if peers.len() > 1 {
            r.note(format!(
                "{}: reladiff runs: {}",
                ds.label,
                peers
                    .iter()
                    .map(|(a, s, ok)| format!(
                        "{a} {}{}",
                        fmt_secs(*s),
                        if *ok {
                            " (exact keys)"
                        } else {
                            " (wrong keys)"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {changed}"))
            .await?;
        Ok(r)
    }
}

/// Make sure reladiff is importable, installing it with pip when it is not.
async fn ensure_reladiff() -> Res<()> {
    let ok = |o: std::process::Output| o.status.success();
    let probe = || {
        tokio::process::Command::new("python3")
            .args(["-c", "import reladiff"])
            .output()
    };
    if probe().await.map(ok).unwrap_or(false) {
        return Ok(());
    }
    eprintln!("compare: installing reladiff[postgresql] with pip");
    let status = tokio::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "reladiff[postgresql]"])
        .status()
        .await?;
    if !status.success() || !probe().await.map(ok).unwrap_or(false) {
        return Err(
            "reladiff is missing and `python3 -m pip install 'reladiff[postgresql]'` failed".into(),
        );
    }
    Ok(())
}

const RELADIFF_PY: &str = r#"
import sys, time, json
from reladiff import connect_to_table, diff_tables, Algorithm
url, t1, t2, algo = sys.argv[1:5]
t0 = time.perf_counter()
key, extra = sys.argv[5], tuple(sys.argv[6].split(","))
a = connect_to_table(url, t1, key)
b = connect_to_table(url, t2, key)
diff = list(diff_tables(a, b, extra_columns=extra, algorithm=Algorithm(algo)))
el = time.perf_counter() - t0
print(json.dumps({"secs": el, "keys": sorted({str(row[0]) for sign, row in diff}), "rows": len(diff)}))
"#;

/// Time reladiff's `diff_tables` (inside the Python process, so interpreter start-up is
/// not counted); returns (seconds, keys found).
async fn reladiff(url: &str, ds: &Dataset, algo: &str) -> Res<(f64, BTreeSet<String>)> {
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            RELADIFF_PY,
            url,
            ds.table,
            ds.changed,
            algo,
            ds.key,
            &ds.columns.join(","),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!("python exited {}: {}", out.status, tail.join(" / ")).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("no result line")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let keys = v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((v["secs"].as_f64().unwrap_or(f64::NAN), keys))
}
