//! Quickstart: a small migration on the embedded default (a file journal and simulated
//! resources — no server needed). It shows the dry run, runs the plan with progress,
//! forces a failure, rolls back automatically, proves parity and prints the report.
//!
//! ```text
//! cargo run --example quickstart            # forced failure → automatic rollback
//! cargo run --example quickstart -- --ok    # the same plan, committed
//! ```

use rollback_core::events::{Notice, Notifier};
use rollback_core::journal::FileJournal;
use rollback_core::sim::{HealthProbe, KeyEquals, SetKey, SimWorld};
use rollback_core::{ConsoleProgress, Executor, Plan, Trigger, ROLLBACK_LEAD};
use std::time::Duration;

/// Prints what a status page would show.
struct StatusPage;

#[async_trait::async_trait]
impl Notifier for StatusPage {
    async fn notify(&self, notice: &Notice) -> Result<(), String> {
        println!("\n  [status page] {}\n", notice.message);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let succeed = std::env::args().any(|a| a == "--ok");

    // The resources a real plan would touch: a customers table, an object prefix, a flag.
    let world = SimWorld::new();
    world.set("customers", "42.name", "Ada Lovelace");
    world.set("attachments", "v1/42/invoice.pdf", "%PDF-1.7");
    world.set("flags", "new_name_fields", "off");
    let baseline = world.snapshot_state();

    let plan = Plan::builder("split-customer-names")
        .checkpoint("database", world.checkpoint("customers"))
        .checkpoint("storage", world.checkpoint("attachments"))
        .checkpoint("flags", world.checkpoint("flags"))
        .step(
            "database",
            SetKey::new("add-first-name", &world, "customers", "42.first", "Ada"),
            &[],
        )
        .step(
            "database",
            SetKey::new("add-last-name", &world, "customers", "42.last", "Lovelace"),
            &["add-first-name"],
        )
        .verify_after(
            "add-last-name",
            KeyEquals::new(
                "last-name-backfilled",
                &world,
                "customers",
                "42.last",
                Some("Lovelace"),
            ),
        )
        .step(
            "storage",
            SetKey::new(
                "copy-attachments-v2",
                &world,
                "attachments",
                "v2/42/invoice.pdf",
                "%PDF-1.7",
            ),
            &[],
        )
        .step(
            "flags",
            SetKey::new(
                "enable-new-name-fields",
                &world,
                "flags",
                "new_name_fields",
                "on",
            ),
            &["add-last-name", "copy-attachments-v2"],
        )
        .trigger(
            Trigger::new(HealthProbe::new(
                "checkout-error-rate",
                &world,
                if succeed {
                    &[0.0, 0.01, 0.0]
                } else {
                    &[0.0, 0.02, 0.09, 0.12]
                },
            ))
            .every(Duration::from_millis(100))
            .threshold(2, 3),
        )
        .soak(Duration::from_millis(600))
        .rto_target(Duration::from_secs(5)) // the report says whether a rollback met it
        .rpo_target(Duration::ZERO) // every change here has its own compensation
        .owner(ROLLBACK_LEAD, "on-call database engineer")
        .owner("customer communication", "support lead")
        .build()?;

    println!("== dry run ==\n{}", plan.dry_run());

    let dir = std::env::temp_dir().join("rollback-quickstart");
    let journal = FileJournal::open(&dir)?;
    println!("journal: {}\n", dir.display());
    let executor = Executor::new(journal).notifier(StatusPage);
    // A run of this plan that was interrupted (Ctrl-C, a kill) is finished first.
    for run_id in executor.unfinished(&plan).await? {
        let report = executor.resume(&plan, &run_id).await?;
        println!("finished interrupted run {run_id}: {}", report.outcome);
    }

    // Progress, as it happens: one line per step, verdict, restore and proof.
    let printer = ConsoleProgress::stdout()
        .without_run_ids()
        .follow(executor.subscribe());

    let report = executor.run(&plan).await?;
    printer.await?;

    println!("\n{}", report.to_markdown());
    if succeed {
        assert!(report.is_committed());
    } else {
        assert_eq!(
            world.snapshot_state(),
            baseline,
            "every resource is back at its baseline"
        );
        println!(
            "every resource is back at its baseline: {:?}",
            world.snapshot_state()
        );
    }
    Ok(())
}
