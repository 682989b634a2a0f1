//! The adapter run by a role with exactly the privileges the crate documents (no
//! superuser, no CREATE on the database, bookkeeping schemas created by a DBA), and a
//! missing privilege reported as a clear permanent error.

mod common;

use common::{TestDb, TestRole};
use rollback_core::journal::{Entry, Journal};
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, Step, Verifier};
use rollback_postgres::{
    Backfill, Database, ForeignKeyIntegrity, PgJournal, RecoveryPoint, RestoreMethod,
    RowCountParity, SchemaSnapshot, SqlAssertion, SqlStep, Table, TableHashParity, TableSnapshot,
    TableUndoLog, UndoLogParity,
};
use std::time::Duration;

fn ctx() -> Context {
    Context::standalone(&format!("lp-{}", uuid::Uuid::new_v4()))
}

/// As the DBA (superuser): the bookkeeping schemas exist and `app` may use and create in
/// them; `app` owns schema `shop` and its tables; nothing else is granted (PostgreSQL 15
/// gives PUBLIC no CREATE on the database or on schema public).
async fn provision(db: &TestDb, app: &str) {
    db.exec(&format!(
        r#"
CREATE SCHEMA _rollback;
CREATE SCHEMA _rollback_snapshots;
GRANT USAGE, CREATE ON SCHEMA _rollback, _rollback_snapshots TO "{app}";
CREATE SCHEMA shop AUTHORIZATION "{app}";
SET ROLE "{app}";
CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL, first_name text);
INSERT INTO shop.customers SELECT g, 'First' || g || ' Last' || g FROM generate_series(1, 300) g;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES shop.customers (id), amount int NOT NULL);
INSERT INTO shop.orders SELECT g, 1 + g % 300, g FROM generate_series(1, 500) g;
CREATE TABLE shop.audit (id int PRIMARY KEY, what text);
INSERT INTO shop.audit SELECT g, 'a' || g FROM generate_series(1, 50) g;
COMMENT ON TABLE shop.customers IS 'customers';
RESET ROLE;
"#
    ))
    .await;
}

async fn rows(db: &TestDb) -> String {
    db.scalar(
        "SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) || md5(string_agg(o::text, ',' ORDER BY o.id)) \
         FROM shop.customers c FULL JOIN shop.orders o ON false",
    )
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn a_role_with_exactly_the_documented_privileges_runs_every_type() {
    let app = TestRole::new("app", "").await;
    let db = TestDb::new("least_priv").await;
    provision(&db, &app.name).await;
    let before = db.dump();
    let rows_before = rows(&db).await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let c = ctx();

    // PgJournal: append, read, lease.
    let journal = PgJournal::new(&as_app);
    journal.ensure().await.unwrap();
    let rec = journal
        .append(
            "lp-run",
            &Entry::ApplyIntent {
                step: "hello".into(),
                attempt: 1,
            },
            0,
        )
        .await
        .unwrap();
    assert_eq!(journal.records("lp-run").await.unwrap(), vec![rec]);
    let lease = journal
        .acquire_lease("lp", "me", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lease.holder, "me");
    journal.release_lease("lp", "me").await.unwrap();

    // Each table checkpoint and restore method: capture, change, restore, parity.
    for (label, cp) in [
        (
            "delta",
            Box::new(TableSnapshot::new(&as_app, Table::new("shop", "audit")))
                as Box<dyn Checkpoint>,
        ),
        (
            "swap",
            Box::new(
                TableSnapshot::new(&as_app, Table::new("shop", "audit"))
                    .restore_method(RestoreMethod::Swap),
            ),
        ),
        (
            "copy",
            Box::new(
                TableSnapshot::new(&as_app, Table::new("shop", "audit"))
                    .restore_method(RestoreMethod::Copy),
            ),
        ),
        (
            "merge",
            Box::new(
                TableSnapshot::new(&as_app, Table::new("shop", "customers"))
                    .restore_method(RestoreMethod::Merge),
            ),
        ),
        (
            "undo-log",
            Box::new(TableUndoLog::new(&as_app, Table::new("shop", "customers"))),
        ),
    ] {
        let snap = cp
            .capture(&c)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        db.exec(if cp.resource().ends_with("audit") {
            "UPDATE shop.audit SET what = 'x' WHERE id < 10; DELETE FROM shop.audit WHERE id > 45"
        } else {
            "UPDATE shop.customers SET name = 'changed' WHERE id < 10"
        })
        .await;
        let how = cp
            .restore(&snap, &c)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(how.method, label);
        assert_eq!(
            cp.fingerprint(&c).await.unwrap(),
            snap.fingerprint,
            "{label}"
        );
        cp.discard(&snap, &c).await.unwrap();
    }

    // SchemaSnapshot of the role's own schema.
    let schema = SchemaSnapshot::new(&as_app, ["shop"]);
    let snap = schema.capture(&c).await.unwrap();
    as_app
        .execute_batch("CREATE INDEX customers_name ON shop.customers (name)")
        .await
        .unwrap();
    schema.restore(&snap, &c).await.unwrap();
    assert_eq!(schema.fingerprint(&c).await.unwrap(), snap.fingerprint);

    // A whole run as the role: recovery point, both table checkpoints, SqlStep, Backfill,
    // every verifier, the Postgres journal; the final check fails and it rolls back.
    let customers = TableUndoLog::new(&as_app, Table::new("shop", "customers"));
    let orders = TableSnapshot::new(&as_app, Table::new("shop", "orders"));
    let plan = Plan::builder("least-privilege")
        .precondition(RecoveryPoint::new(&as_app, "lp").lsn_is_enough())
        .checkpoint("db", customers.clone())
        .checkpoint("db", orders.clone())
        .step(
            "db",
            SqlStep::new(
                &as_app,
                "bump",
                "UPDATE shop.orders SET amount = amount + 1",
            )
            .down("UPDATE shop.orders SET amount = amount - 1")
            .touching(orders.resource()),
            &[],
        )
        .step(
            "db",
            Backfill::new(
                &as_app,
                "split",
                Table::new("shop", "customers"),
                "id",
                "first_name = split_part(name, ' ', 1)",
            )
            .touching(customers.resource())
            .batch_size(64),
            &[],
        )
        .verify_final(RowCountParity::new(&as_app, Table::new("shop", "orders")))
        .verify_final(TableHashParity::new(&as_app, Table::new("shop", "orders")))
        .verify_final(UndoLogParity::new(&customers))
        .verify_final(ForeignKeyIntegrity::new(&as_app).schemas(["shop"]))
        .verify_final(SqlAssertion::is_true(
            &as_app,
            "names-split",
            "SELECT bool_and(first_name IS NULL) FROM shop.customers",
        ))
        .build()
        .unwrap();
    let report = Executor::new(PgJournal::new(&as_app))
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());
    assert_eq!(rows(&db).await, rows_before);
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after the run as a least-privilege role",
    );
    // Restore points need superuser or a grant: the verdict says which it got.
    let rp = report
        .verdicts
        .iter()
        .find(|v| v.verifier == "lp")
        .expect("recovery point verdict");
    assert!(rp.verdict.passed());
    assert!(
        rp.verdict.summary.contains("permission denied"),
        "{}",
        rp.verdict.summary
    );
}

#[tokio::test]
async fn the_journal_and_step_markers_use_schemas_a_dba_created_without_create_on_the_database() {
    let app = TestRole::new("app", "").await;
    let db = TestDb::new("lp_journal").await;
    db.exec(&format!(
        "CREATE SCHEMA _rollback; GRANT USAGE, CREATE ON SCHEMA _rollback TO \"{}\";",
        app.name
    ))
    .await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let journal = PgJournal::new(&as_app);
    journal
        .append(
            "run",
            &Entry::ApplyIntent {
                step: "x".into(),
                attempt: 1,
            },
            0,
        )
        .await
        .expect("the journal needs no CREATE on the database when its schema exists");
    SqlStep::new(&as_app, "noop", "SELECT 1")
        .down("SELECT 1")
        .apply(&ctx())
        .await
        .expect("step markers need no CREATE on the database when their schema exists");
    // And once the tables exist, not even CREATE on the schema.
    db.exec(&format!(
        "REVOKE CREATE ON SCHEMA _rollback FROM \"{}\"",
        app.name
    ))
    .await;
    let again = PgJournal::new(&Database::connect(&db.url_as(&app.name)).unwrap());
    again
        .append(
            "run",
            &Entry::ApplyIntent {
                step: "y".into(),
                attempt: 1,
            },
            0,
        )
        .await
        .unwrap();
    drop(db);
}

#[tokio::test]
async fn a_missing_privilege_is_a_clear_permanent_error() {
    let app = TestRole::new("app", "").await;
    let replica = TestRole::new("replica", "").await;
    let db = TestDb::new("lp_missing").await;
    provision(&db, &app.name).await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let c = ctx();
    let permanent = |e: &Error, needle: &str| {
        assert!(!e.is_transient(), "{e}");
        assert!(!e.maybe_applied(), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    };

    // No CREATE on the snapshot schema.
    db.exec(&format!(
        "REVOKE CREATE ON SCHEMA _rollback_snapshots FROM \"{}\"",
        app.name
    ))
    .await;
    let err = TableSnapshot::new(&as_app, Table::new("shop", "audit"))
        .capture(&c)
        .await
        .unwrap_err();
    permanent(&err, "permission denied for schema _rollback_snapshots");

    // Not the owner of a table (an undo log installs triggers on it).
    db.exec(
        "CREATE TABLE public.theirs (id int PRIMARY KEY); GRANT SELECT ON public.theirs TO PUBLIC",
    )
    .await;
    let err = TableUndoLog::new(&as_app, Table::public("theirs"))
        .capture(&c)
        .await
        .unwrap_err();
    permanent(&err, "public.theirs is not owned by this role");

    // No bookkeeping schema, and no CREATE on the database to make one.
    db.exec("DROP SCHEMA _rollback CASCADE").await;
    let err = PgJournal::new(&as_app)
        .append(
            "run",
            &Entry::ApplyIntent {
                step: "x".into(),
                attempt: 1,
            },
            0,
        )
        .await
        .unwrap_err();
    permanent(&err, "permission denied for database");

    // A role whose sessions default to replica mode and may not set it back.
    let as_replica = Database::connect(&db.url_as(&replica.name)).unwrap();
    db.exec(&format!(
        "ALTER ROLE \"{}\" IN DATABASE \"{}\" SET session_replication_role = replica",
        replica.name, db.name
    ))
    .await;
    let err = SqlStep::new(&as_replica, "s", "SELECT 1")
        .apply(&c)
        .await
        .unwrap_err();
    permanent(&err, "session_replication_role");
    drop(db);
}

#[tokio::test]
async fn a_verifier_reading_a_table_it_may_not_read_fails_clearly() {
    let app = TestRole::new("app", "").await;
    let db = TestDb::new("lp_verify").await;
    db.exec("CREATE TABLE public.secret (id int PRIMARY KEY)")
        .await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let err = RowCountParity::between(&as_app, Table::public("secret"), Table::public("secret"))
        .verify(&ctx())
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .contains("permission denied for table secret"),
        "{err}"
    );
    drop(db);
}
