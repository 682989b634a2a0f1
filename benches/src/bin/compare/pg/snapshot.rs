//! Section 3: table snapshots against pg_dump / pg_restore, and the undo log's writers'
//! cost.

use super::*;

impl Bench {
    /// 3. Table snapshot capture and restore against pg_dump -Fc and pg_restore --clean.
    pub(crate) async fn snapshot(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let dump = self.dir.path().join(format!("{}.dump", ds.table));
        let dump_s = dump.to_string_lossy().to_string();
        let ctx = Context::detached();
        let cp = self.snapshot_of(ds);
        let (mut dumps, mut captures, mut ctas) = (Vec::new(), Vec::new(), Vec::new());
        let mut snap = None;
        for _ in 0..args.reps {
            dumps.push(
                run_tool(
                    &self.bin("pg_dump"),
                    &[
                        "-Fc",
                        "-t",
                        &format!("public.{}", ds.table),
                        "-f",
                        &dump_s,
                        &self.url,
                    ],
                )
                .await?,
            );
            if let Some(s) = snap.take() {
                cp.discard(&s, &ctx).await?;
            }
            let t = Instant::now();
            snap = Some(cp.capture(&ctx).await?);
            captures.push(secs(t));
            let t = Instant::now();
            self.client
                .batch_execute(&format!(
                    "CREATE TABLE rb_ctas AS SELECT * FROM {}",
                    ds.table
                ))
                .await?;
            ctas.push(secs(t));
            self.client.batch_execute("DROP TABLE rb_ctas").await?;
        }
        let snap = snap.ok_or("no snapshot")?;
        let dump_size = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
        let (dump_t, cap_t, ctas_t) = (median(&dumps), median(&captures), median(&ctas));
        let mut r = Report::default();
        let n = fmt_count(ds.rows);
        r.push(
            Row::new(
                "3. snapshot capture",
                ds.says(format!("`{}`, {n} rows", ds.table)),
            )
            .rollback(fmt_secs(cap_t))
            .reference(format!(
                "`pg_dump -Fc -t`: {} ({} file)",
                fmt_secs(dump_t),
                fmt_bytes(dump_size)
            ))
            .ratio(format!("{} pg_dump's speed", fmt_ratio(dump_t / cap_t)))
            .target("no slower than pg_dump (≥ 1×)", Some(cap_t <= dump_t)),
        );
        r.push(
            Row::new(
                "",
                ds.says("in-database copy limit: `CREATE TABLE … AS SELECT` (no index, no hash)"),
            )
            .rollback(fmt_secs(cap_t))
            .reference(fmt_secs(ctas_t))
            .ratio(format!("{} its speed", fmt_ratio(ctas_t / cap_t))),
        );
        // Restore: change 10 rows, then put the table back.
        let damage = format!(
            "UPDATE {} SET {c} = {c} - 1 WHERE {} IN ({})",
            ds.table,
            ds.key,
            Self::changed_keys(ds)
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c = ds.touch
        );
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut methods = BTreeSet::new();
        let mut parity = true;
        for _ in 0..args.reps {
            self.client.batch_execute(&damage).await?;
            theirs.push(
                run_tool(
                    &self.bin("pg_restore"),
                    &["--clean", "--if-exists", "-d", &self.url, &dump_s],
                )
                .await?,
            );
            // As an operator does after pg_restore (untimed): without it, autovacuum
            // takes the table for its first ANALYZE while the next restore waits.
            self.client
                .batch_execute(&format!("ANALYZE {}", ds.table))
                .await?;
            self.client.batch_execute(&damage).await?;
            let t = Instant::now();
            let restored = cp.restore(&snap, &ctx).await?;
            ours.push(secs(t));
            methods.insert(restored.method.clone());
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
        }
        // The swap that keeps the snapshot (the default before the delta restore): the
        // copy is re-hashed whole and duplicated.
        self.client.batch_execute(&damage).await?;
        let swap = self.snapshot_of(ds).restore_method(RestoreMethod::Swap);
        let t = Instant::now();
        let restored_swap = swap.restore(&snap, &ctx).await?;
        let swap_t = secs(t);
        parity &= swap.fingerprint(&ctx).await? == snap.fingerprint;
        // The one-shot swap: the copy is consumed (no second restore from it).
        self.client.batch_execute(&damage).await?;
        let once = self
            .snapshot_of(ds)
            .restore_method(RestoreMethod::Swap)
            .keep_snapshot_after_swap(false);
        let t = Instant::now();
        let restored_once = once.restore(&snap, &ctx).await?;
        let once_t = secs(t);
        parity &= once.fingerprint(&ctx).await? == snap.fingerprint;
        let _ = once.discard(&snap, &ctx).await;
        // Restore by copy (TRUNCATE + INSERT … SELECT), for comparison.
        let snap2 = cp.capture(&ctx).await?;
        self.client.batch_execute(&damage).await?;
        let by_copy = self.snapshot_of(ds).restore_method(RestoreMethod::Copy);
        let t = Instant::now();
        by_copy.restore(&snap2, &ctx).await?;
        let copy_t = secs(t);
        parity &= by_copy.fingerprint(&ctx).await? == snap2.fingerprint;
        cp.discard(&snap2, &ctx).await?;
        // The swaps and the copy left a table without statistics: analyzed now (untimed),
        // as an operator would, so that the plans below are those of an analyzed table
        // (an autovacuum worker in a restore's way is cancelled after 10 ms).
        self.client
            .batch_execute(&format!("ANALYZE {}", ds.table))
            .await?;

        let (ours_t, theirs_t) = (median(&ours), median(&theirs));
        let ratio = theirs_t / ours_t;
        r.push(
            Row::new(
                "3. snapshot restore",
                ds.says(format!(
                    "after 10 rows changed; default restore (method {}, keeps the snapshot restorable)",
                    methods.into_iter().collect::<Vec<_>>().join("/")
                )),
            )
            .rollback(fmt_secs(ours_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(ratio)))
            .target("≥ 2× faster than pg_restore", Some(ratio >= 2.0)),
        );
        r.push(
            Row::new(
                "",
                ds.says(format!(
                    "swap keeping the snapshot (`RestoreMethod::Swap`: whole re-hash + duplicate of the copy, method {})",
                    restored_swap.method
                )),
            )
            .rollback(fmt_secs(swap_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(theirs_t / swap_t))),
        );
        r.push(
            Row::new(
                "",
                ds.says(format!(
                    "one-shot swap (`RestoreMethod::Swap`, `keep_snapshot_after_swap(false)`, method {})",
                    restored_once.method
                )),
            )
            .rollback(fmt_secs(once_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(theirs_t / once_t))),
        );
        r.push(
            Row::new(
                "",
                ds.says("restore by copy (`RestoreMethod::Copy`: TRUNCATE + INSERT … SELECT)"),
            )
            .rollback(fmt_secs(copy_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(theirs_t / copy_t))),
        );
        r.note(format!(
            "{}: snapshot: every restore left the table equal to the snapshot's fingerprint: {}",
            ds.label,
            if parity { "yes" } else { "**no**" }
        ));
        self.undo_log(args, ds, &mut r, &damage, dump_t, theirs_t)
            .await?;
        Ok(r)
    }

    /// Section 3 for the undo-log checkpoint: capture (triggers + one fingerprint) against
    /// pg_dump, restore after 10 changed rows against pg_restore, the writers' trigger cost.
    async fn undo_log(
        &self,
        args: &Args,
        ds: &Dataset,
        r: &mut Report,
        damage: &str,
        dump_t: f64,
        pg_restore_t: f64,
    ) -> Res<()> {
        let ctx = Context::detached();
        let cp = TableUndoLog::new(&self.db, Table::public(ds.table));
        let (mut captures, mut discards) = (Vec::new(), Vec::new());
        let mut snap = None;
        for _ in 0..args.reps {
            if let Some(s) = snap.take() {
                let t = Instant::now();
                cp.discard(&s, &ctx).await?;
                discards.push(secs(t));
            }
            let t = Instant::now();
            snap = Some(cp.capture(&ctx).await?);
            captures.push(secs(t));
        }
        let snap = snap.ok_or("no snapshot")?;
        let cap_t = median(&captures);
        let n = fmt_count(ds.rows);
        r.push(
            Row::new(
                "3. snapshot capture",
                ds.says(format!(
                    "undo log (`TableUndoLog`: triggers + one fingerprint, no copy), {n} rows"
                )),
            )
            .rollback(fmt_secs(cap_t))
            .reference(format!("`pg_dump -Fc -t`: {}", fmt_secs(dump_t)))
            .ratio(format!("{} pg_dump's speed", fmt_ratio(dump_t / cap_t)))
            .target("no slower than pg_dump (≥ 1×)", Some(cap_t <= dump_t)),
        );
        // The restore with its parity proof (from the changed chunks, by default), then the
        // same damage restored with the proof reading the whole table, then the independent
        // fingerprint: every restore must have left the table at the snapshot's.
        let full = cp.clone().full_proof(true);
        let (mut restores, mut fulls, mut fps) = (Vec::new(), Vec::new(), Vec::new());
        let (mut items, mut hows) = (BTreeSet::new(), BTreeSet::new());
        let mut parity = true;
        for _ in 0..args.reps {
            self.client.batch_execute(damage).await?;
            let t = Instant::now();
            let restored = cp.restore(&snap, &ctx).await?;
            restores.push(secs(t));
            items.insert(restored.items_changed.unwrap_or(0));
            let proof = restored
                .proof
                .ok_or("the undo log's restore returned no proof")?;
            parity &= proof.fingerprint == snap.fingerprint;
            hows.insert(proof.method.unwrap_or_else(|| "full re-read".into()));
            self.client.batch_execute(damage).await?;
            let t = Instant::now();
            let restored = full.restore(&snap, &ctx).await?;
            fulls.push(secs(t));
            parity &= restored.proof.map(|p| p.fingerprint) == Some(snap.fingerprint);
            let t = Instant::now();
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
            fps.push(secs(t));
        }
        let (rest_t, full_t, fp_t) = (median(&restores), median(&fulls), median(&fps));
        let ratio = pg_restore_t / rest_t;
        r.push(
            Row::new(
                "3. snapshot restore",
                ds.says(format!(
                    "undo log, after 10 rows changed among {n}: restored and proven (the proof re-hashes the chunks holding the logged keys; all a rollback reads)"
                )),
            )
            .rollback(fmt_secs(rest_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(pg_restore_t)))
            .ratio(format!("{} faster", fmt_ratio(ratio)))
            .target("≥ 5× faster than pg_restore", Some(ratio >= 5.0)),
        );
        // Before the changed-chunk proof a rollback fingerprinted the table, restored, and
        // proved by a full re-read: what the full proof and one fingerprint cost now.
        r.push(
            Row::new(
                "",
                ds.says(
                    "RTO ∝ what changed: the same restore and proof against one proven by re-reading the table (`full_proof(true)`) after the fingerprint the executor took before restoring",
                ),
            )
            .rollback(fmt_secs(rest_t))
            .reference(format!(
                "{} ({} + {})",
                fmt_secs(full_t + fp_t),
                fmt_secs(fp_t),
                fmt_secs(full_t)
            ))
            .ratio(format!("{} faster", fmt_ratio((full_t + fp_t) / rest_t)))
            .target(
                format!("< 100 ms restored and proven (10 rows of 5,000,000; here {n})"),
                Some(rest_t < 0.1),
            ),
        );
        r.note(format!(
            "{}: undo log: how the restores proved parity: {}",
            ds.label,
            hows.into_iter().collect::<Vec<_>>().join(" | ")
        ));
        // As a user runs it: a plan whose step changes the 10 rows and whose next step
        // fails, rolled back by the executor (memory journal); its report's RTO.
        let run_cp = TableUndoLog::new(&self.db, Table::public(ds.table));
        let plan = rollback_core::Plan::builder("undo-log-rollback")
            .checkpoint("db", run_cp.clone())
            .step(
                "db",
                rollback_postgres::SqlStep::new(&self.db, "change-10-rows", damage)
                    .touching(run_cp.resource()),
                &[],
            )
            .step(
                "db",
                rollback_postgres::SqlStep::new(&self.db, "fail", "SELECT 1/0").down("SELECT 1"),
                &["change-10-rows"],
            )
            .build()?;
        let report = rollback_core::Executor::new(rollback_core::journal::MemoryJournal::new())
            .run(&plan)
            .await?;
        let cpr = report
            .checkpoints
            .first()
            .ok_or("no checkpoint in the report")?;
        let rto = report.rto_ms.unwrap_or(0) as f64 / 1000.0;
        r.push(
            Row::new(
                "",
                ds.says("the same 10-row rollback run by the executor (a plan whose next step fails; memory journal): the report's RTO"),
            )
            .rollback(fmt_secs(rto))
            .reference(format!(
                "outcome {:?}, parity {}, restore {} ms",
                report.outcome,
                if report.parity_proven() { "proven" } else { "**not proven**" },
                cpr.restore_ms.unwrap_or(0)
            ))
            .target(
                format!("< 100 ms restored and proven (10 rows of 5,000,000; here {n})"),
                Some(rto < 0.1 && report.parity_proven()),
            ),
        );
        r.note(format!(
            "{}: undo log: the executor's rollback proved parity by: {}",
            ds.label,
            cpr.parity_proof.as_deref().unwrap_or("full re-read")
        ));
        if ds.table != ACCOUNTS {
            // The writers' costs below are measured on pgbench alone (the trigger before
            // it recorded writers is re-created for pgbench's columns).
            cp.discard(&snap, &ctx).await?;
            r.note(format!(
                "{}: undo log: rows written back per 10-row restore {items:?}; every restore left the table equal to the snapshot's fingerprint: {}",
                ds.label,
                if parity { "yes" } else { "**no**" }
            ));
            return Ok(());
        }
        // What writers pay: the same 1% update without and with the log (alternating),
        // and the restore that undoes it.
        let pct = format!("UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid % 100 = 7");
        let t = Instant::now();
        cp.discard(&snap, &ctx).await?;
        discards.push(secs(t));
        let (mut plain, mut logged, mut bigs, mut written) =
            (Vec::new(), Vec::new(), Vec::new(), BTreeSet::new());
        for _ in 0..args.reps {
            let t = Instant::now();
            self.client.batch_execute(&pct).await?;
            plain.push(secs(t));
            let snap = cp.capture(&ctx).await?;
            let t = Instant::now();
            self.client.batch_execute(&pct).await?;
            logged.push(secs(t));
            let t = Instant::now();
            let big = cp.restore(&snap, &ctx).await?;
            bigs.push(secs(t));
            written.insert(big.items_changed.unwrap_or(0));
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
            cp.discard(&snap, &ctx).await?;
        }
        let (plain_t, logged_t, big_t) = (median(&plain), median(&logged), median(&bigs));
        let updated = ds.rows / 100;
        r.push(
            Row::new(
                "",
                format!(
                    "writers' cost: `UPDATE` of 1% of the rows ({}) with the undo log's trigger",
                    fmt_count(updated)
                ),
            )
            .rollback(fmt_secs(logged_t))
            .reference(format!("without the trigger: {}", fmt_secs(plain_t)))
            .ratio(format!("{} the time", fmt_ratio(logged_t / plain_t))),
        );
        // What recording the writer costs (the log's `_rollback_writer` and `_rollback_op`
        // columns, the setting read): the same update, marked as the run's, under the
        // library's trigger (per statement) and under the undo log's trigger as it was
        // before it recorded writers (per row, re-created here as the baseline).
        // 10% of the rows per update, each variant first in every other repetition, so
        // that noise and the table's growth weigh on both alike.
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let marked = format!(
            "BEGIN; SELECT set_config('rollback.writer', '{}', true); \
             UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid % 10 = 7; COMMIT",
            uuid::Uuid::new_v4()
        );
        for rep in 0..args.reps.max(5) {
            for legacy in [rep % 2 == 0, rep % 2 == 1] {
                if legacy {
                    self.client.batch_execute(LEGACY_UNDO_LOG).await?;
                    let t = Instant::now();
                    self.client.batch_execute(&marked).await?;
                    without.push(secs(t));
                    self.client.batch_execute(LEGACY_UNDO_LOG_DROP).await?;
                } else {
                    let snap = cp.capture(&ctx).await?;
                    let t = Instant::now();
                    self.client.batch_execute(&marked).await?;
                    with.push(secs(t));
                    cp.discard(&snap, &ctx).await?;
                }
            }
        }
        let (without_t, with_t) = (median(&without), median(&with));
        let over = with_t / without_t - 1.0;
        r.push(
            Row::new(
                "",
                format!(
                    "writers' cost of recording who wrote (a run id): `UPDATE` of 10% of the rows ({}) under the undo log's trigger",
                    fmt_count(ds.rows / 10)
                ),
            )
            .rollback(fmt_secs(with_t))
            .reference(format!(
                "the trigger before it recorded writers (per row): {}",
                fmt_secs(without_t)
            ))
            .ratio(format!("{:+.1}%", over * 100.0))
            .target("< 10% over the trigger before it", Some(over < 0.10)),
        );
        // An application's writes are mostly one row per statement: 1,000 single-row
        // updates, one statement each, under each trigger and under none.
        const SINGLE: i32 = 1_000;
        let stmt = self
            .client
            .prepare(&format!(
                "UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid = $1"
            ))
            .await?;
        let (mut none1, mut old1, mut new1) = (Vec::new(), Vec::new(), Vec::new());
        let step = ((ds.rows as i32) / SINGLE).max(1);
        for rep in 0..args.reps.max(5) {
            for variant in [rep % 3, (rep + 1) % 3, (rep + 2) % 3] {
                let snap = match variant {
                    1 => {
                        self.client.batch_execute(LEGACY_UNDO_LOG).await?;
                        None
                    }
                    2 => Some(cp.capture(&ctx).await?),
                    _ => None,
                };
                let t = Instant::now();
                for i in 0..SINGLE {
                    self.client.execute(&stmt, &[&(i * step + 1)]).await?;
                }
                let took = secs(t);
                match variant {
                    1 => {
                        old1.push(took);
                        self.client.batch_execute(LEGACY_UNDO_LOG_DROP).await?;
                    }
                    2 => {
                        new1.push(took);
                        if let Some(snap) = snap {
                            cp.discard(&snap, &ctx).await?;
                        }
                    }
                    _ => none1.push(took),
                }
            }
        }
        let (none_t, old_t, new_t) = (median(&none1), median(&old1), median(&new1));
        r.push(
            Row::new(
                "",
                format!("writers' cost, one row per statement: {SINGLE} single-row `UPDATE`s under the undo log's trigger"),
            )
            .rollback(fmt_secs(new_t))
            .reference(format!(
                "the trigger before it recorded writers: {}; no trigger: {}",
                fmt_secs(old_t),
                fmt_secs(none_t)
            ))
            .ratio(format!("{:+.1}% over the trigger before it", (new_t / old_t - 1.0) * 100.0))
            .target("< 10% over the trigger before it", Some(new_t / old_t - 1.0 < 0.10)),
        );
        r.push(
            Row::new(
                "",
                format!(
                    "undo log restore after that 1% update ({} rows written back)",
                    written
                        .iter()
                        .map(|n| fmt_count(*n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .rollback(fmt_secs(big_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(pg_restore_t)))
            .ratio(format!("{} faster", fmt_ratio(pg_restore_t / big_t))),
        );
        r.note(format!(
            "undo log: rows written back per 10-row restore {items:?}; every restore left the table equal to the snapshot's fingerprint: {}; discard (drop triggers, function, log) median {}",
            if parity { "yes" } else { "**no**" },
            fmt_secs(median(&discards))
        ));
        Ok(())
    }
}
