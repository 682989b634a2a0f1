//! The SaaS cutover's plan: what runs, in which order, what checks each step, and what
//! a rollback restores. Read this file first; the rest of the example is fixtures,
//! backends and printing.
//!
//! ```text
//! database  add-name-columns → backfill-names → add-name-constraint
//!                                   │                 │
//! flags                             └─► rollout-new-name-fields (10% → 50% → 100%)
//! storage   move-attachments-v1-v2
//!                 │
//! flags           └─► rollout-use-v2-storage (10% → 50% → 100%)
//! ```
//!
//! - Every resource has a checkpoint, captured before the first step: the `customers`
//!   table (`TableSnapshot`), every object of the store (`S3Checkpoint`), each flag
//!   (`FlagCheckpoint`, one per flag so a partial rollback can keep one).
//! - The database change is expand → backfill → constrain; the add and the constraint have
//!   downs, the backfill is undone by dropping the columns it fills.
//! - The flags are the kill switch: each rollout depends on the change it exposes, so a
//!   rollback turns it off before that change is undone.
//! - Verifiers check each step's result (names filled, row counts equal, the constraint
//!   validated, the flags at 100%, objects moved intact and resolvable from their rows),
//!   and the whole plan at the end (foreign keys, the application's read path).
//! - A health trigger watches the soak window: the team's Prometheus when given, else the
//!   application's error rate from a probe.
//!
//! This file is both part of the `saas_cutover` example and, through the `examples`
//! library, the plan the DR drill and the tests run (`examples::cutover::cutover_plan`).

use examples::cutover::{
    layout_parity, move_step, steps, storage_checkpoint, AttachmentsResolve, Backends, Chaos,
    FailAt, Options, RTO_TARGET, SOAK_DRILL_WINDOW, TO,
};
use rollback_core::{Plan, Result, StepOptions, Trigger, Verifier};
use rollback_flags::{Expect, FlagCheckpoint, FlagsMatch, StagedRollout};
use rollback_postgres::{
    quote_ident, quote_literal, Backfill, ForeignKeyIntegrity, RowCountParity, SqlAssertion,
    SqlStep, TableSnapshot,
};
use rollback_probes::{Analysis, Condition, PrometheusProbe};
use std::sync::Arc;

/// The cutover plan over `b` for `opts` (the failure to inject is part of the plan: a
/// poisoned backfill, a move that stops midway, or a breaching health probe).
///
/// # Errors
/// [`rollback_core::PlanError`] (as [`rollback_core::Error::Plan`]) when the plan does
/// not validate.
pub fn cutover_plan(b: &Backends, opts: &Options) -> Result<Plan> {
    let db = &b.db;
    let n = &b.names;
    let customers = n.customers();
    let c = customers.quoted();
    let s = quote_ident(&n.schema);
    let fail = opts.fail_at;

    let customers_cp = TableSnapshot::new(db, customers.clone());
    let storage_cp = storage_checkpoint(&b.storage);
    let names_flag_cp = FlagCheckpoint::flag(b.flags.clone(), &n.new_name_fields);
    let storage_flag_cp = FlagCheckpoint::flag(b.flags.clone(), &n.use_v2_storage);

    let last_name = if fail == FailAt::Backfill {
        // A poisoned row in a middle batch: the cast fails for it alone, after the
        // earlier batches committed.
        format!(
            "CASE WHEN id = {} THEN ('drill: poisoned row ' || id)::integer::text ELSE split_part(name, ' ', 2) END",
            opts.poisoned_customer()
        )
    } else {
        "split_part(name, ' ', 2)".to_string()
    };
    let health: Arc<dyn Verifier> = Arc::new(b.probe("read-path-health", opts));
    let mut error_rate = b.probe("app-error-rate", opts);
    if fail == FailAt::Soak {
        // The drill's incident: from the 2nd poll on, 12% of the reads fail.
        error_rate = error_rate.with_chaos(Chaos {
            from_poll: 2,
            error_rate: 0.12,
        });
    }

    let plan = Plan::builder(&n.plan)
        .checkpoint("database", customers_cp)
        .checkpoint("storage", storage_cp)
        .checkpoint("flags", names_flag_cp)
        .checkpoint("flags", storage_flag_cp)
        // database: expand, backfill, constrain
        .step(
            "database",
            SqlStep::new(
                db,
                steps::ADD_COLUMNS,
                format!("ALTER TABLE {c} ADD COLUMN first_name text, ADD COLUMN last_name text"),
            )
            .down(format!(
                "ALTER TABLE {c} DROP COLUMN IF EXISTS first_name, DROP COLUMN IF EXISTS last_name"
            ))
            .touches_table(&customers),
            &[],
        )
        .step(
            "database",
            Backfill::new(
                db,
                steps::BACKFILL,
                customers.clone(),
                "id",
                format!("first_name = split_part(name, ' ', 1), last_name = {last_name}"),
            )
            .batch_size(opts.batch)
            .throttle(opts.throttle),
            &[steps::ADD_COLUMNS],
        )
        .verify_after(
            steps::BACKFILL,
            SqlAssertion::no_rows(
                db,
                "names-backfilled",
                format!(
                    "SELECT id, name, first_name, last_name FROM {c} \
                     WHERE first_name IS NULL OR last_name IS NULL OR first_name || ' ' || last_name <> name"
                ),
            ),
        )
        .verify_after(
            steps::BACKFILL,
            RowCountParity::new(db, customers.clone()).id("customers-row-count"),
        )
        .step(
            "database",
            SqlStep::new(
                db,
                steps::CONSTRAINT,
                format!(
                    "ALTER TABLE {c} ADD CONSTRAINT customers_name_split \
                       CHECK (first_name IS NOT NULL AND last_name IS NOT NULL AND first_name || ' ' || last_name = name) NOT VALID; \
                     ALTER TABLE {c} VALIDATE CONSTRAINT customers_name_split"
                ),
            )
            .down(format!("ALTER TABLE {c} DROP CONSTRAINT IF EXISTS customers_name_split"))
            .touches_table(&customers),
            &[steps::BACKFILL],
        )
        .verify_after(
            steps::CONSTRAINT,
            SqlAssertion::is_true(
                db,
                "name-constraint-validated",
                format!(
                    "SELECT coalesce(bool_and(convalidated), false) FROM pg_catalog.pg_constraint \
                     WHERE conname = 'customers_name_split' AND conrelid = {}::regclass",
                    quote_literal(&format!("{s}.customers"))
                ),
            ),
        )
        // flags: the new name fields, once the data is there
        .step(
            "flags",
            StagedRollout::new(
                steps::ROLLOUT_NAMES,
                b.flags.clone(),
                &n.new_name_fields,
                &opts.stages,
            )
            .health_check(health.clone())
            .pause(opts.stage_pause),
            &[steps::BACKFILL, steps::CONSTRAINT],
        )
        .verify_after(
            steps::ROLLOUT_NAMES,
            FlagsMatch::new("new-name-fields-at-100", b.flags.clone())
                .flag(&n.new_name_fields, Expect::rollout(100)),
        )
        // storage: the re-layout
        .step(
            "storage",
            move_step(
                &b.storage,
                (fail == FailAt::Relayout).then(|| opts.relayout_fail_after()),
            ),
            &[],
        )
        .verify_after(
            steps::MOVE,
            layout_parity(&b.storage, "attachments-moved-intact"),
        )
        .verify_after(
            steps::MOVE,
            AttachmentsResolve::new("attachments-resolve-v2", b, TO),
        )
        // flags: the new layout, once the objects are there
        .step(
            "flags",
            StagedRollout::new(
                steps::ROLLOUT_STORAGE,
                b.flags.clone(),
                &n.use_v2_storage,
                &opts.stages,
            )
            .health_check(health)
            .pause(opts.stage_pause),
            &[steps::MOVE],
        )
        .verify_after(
            steps::ROLLOUT_STORAGE,
            FlagsMatch::new("use-v2-storage-at-100", b.flags.clone())
                .flag(&n.use_v2_storage, Expect::rollout(100)),
        )
        .verify_final(
            ForeignKeyIntegrity::new(db)
                .schemas([n.schema.clone()])
                .id("foreign-keys"),
        )
        .verify_final(b.probe("read-path-final", opts))
        .trigger(match &opts.prometheus {
            // The team's own monitoring: two bad measurements in a row breach.
            Some((url, query)) => Analysis::new(
                PrometheusProbe::new(
                    url,
                    "prometheus-error-rate",
                    query.clone(),
                    Condition::lt(opts.max_error_rate),
                )?,
            )
            .interval(opts.poll)
            .failure_limit(1)
            .trigger(),
            None => Trigger::new(error_rate)
                .every(opts.poll)
                .threshold(2, 3)
                .max_value(opts.max_error_rate),
        })
        .soak(if fail == FailAt::Soak {
            // The breach ends the window early; a long window only makes sure it
            // comes however slow each poll is on a loaded machine.
            opts.soak.max(SOAK_DRILL_WINDOW)
        } else {
            opts.soak
        })
        .default_step_options(StepOptions::default().retries(3))
        .rto_target(RTO_TARGET)
        .owner(rollback_core::ROLLBACK_LEAD, "platform on-call")
        .owner("data verification", "database team")
        .owner("customer communication", "support lead")
        .owner("post-incident review", "platform team")
        .build()?;
    Ok(plan)
}
