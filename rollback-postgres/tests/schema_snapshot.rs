//! SchemaSnapshot (catalog model, diff, DDL restore) and RecoveryPoint on the real server.

mod common;

use common::TestDb;
use rollback_core::conformance::Subject;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, Verifier};
use rollback_postgres::{RecoveryPoint, SchemaSnapshot, SqlStep};
use std::sync::Arc;

async fn schema(db: &TestDb) {
    db.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE SEQUENCE invoice_no START 1000;
         CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL, mood mood DEFAULT 'ok', note text);
         CREATE TABLE payments (id serial PRIMARY KEY, account_id int REFERENCES accounts(id), amount int CHECK (amount > 0));
         CREATE INDEX payments_account ON payments (account_id);
         CREATE FUNCTION total(a int) RETURNS bigint LANGUAGE sql AS 'SELECT sum(amount) FROM payments WHERE account_id = a';
         CREATE VIEW big_payments AS SELECT * FROM payments WHERE amount > 100;
         INSERT INTO accounts (email) SELECT 'a' || g FROM generate_series(1, 20) g;
         INSERT INTO payments (account_id, amount) SELECT g, g * 10 FROM generate_series(1, 20) g;
         SELECT nextval('invoice_no');",
    )
    .await;
}

#[tokio::test]
async fn schema_snapshot_and_ddl_step_pass_the_conformance_suite() {
    let db = TestDb::new("schema_conf").await;
    schema(&db).await;
    db.exec("CREATE SCHEMA other; CREATE TABLE other.t (x int);")
        .await;
    let step = SqlStep::new(
        &db.db,
        "add-index",
        "ALTER TABLE accounts ADD COLUMN phone text; CREATE INDEX accounts_email ON accounts (email)",
    )
    .down("DROP INDEX IF EXISTS accounts_email; ALTER TABLE accounts DROP COLUMN IF EXISTS phone");
    let cp = SchemaSnapshot::new(&db.db, ["public"]);
    let step = step.touching(rollback_core::Checkpoint::resource(&cp));
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(cp),
        other_checkpoint: Arc::new(SchemaSnapshot::new(&db.db, ["other"])),
        step: Arc::new(step),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
}

#[tokio::test]
async fn schema_diff_lists_each_change_readably() {
    let db = TestDb::new("schema_diff").await;
    schema(&db).await;
    let cp = SchemaSnapshot::new(&db.db, ["public"]);
    let before = cp.model().await.unwrap();
    db.exec(
        "ALTER TABLE accounts ADD COLUMN first_name text;
         ALTER TABLE accounts ALTER COLUMN note SET DEFAULT 'n/a';
         DROP INDEX payments_account;
         ALTER TABLE payments ADD CONSTRAINT small CHECK (amount < 1000000) NOT VALID;
         CREATE VIEW v2 AS SELECT 1 AS one;
         SELECT nextval('invoice_no');",
    )
    .await;
    let after = cp.model().await.unwrap();
    assert_ne!(before.fingerprint(), after.fingerprint());
    let lines: Vec<String> = before.diff(&after).iter().map(|c| c.to_string()).collect();
    let text = lines.join("\n");
    for want in [
        "column public.accounts.first_name added: text",
        "column public.accounts.note modified: default None -> Some(\"'n/a'::text\")",
        "index public.payments.payments_account removed: CREATE INDEX payments_account ON public.payments USING btree (account_id)",
        "constraint public.payments.small added: CHECK ((amount < 1000000)) NOT VALID",
        "view public.v2 added",
        "sequence public.invoice_no modified: value 1000 -> 1001",
    ] {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in\n{text}");
    }
    assert_eq!(lines.len(), 6, "{text}");
}

#[tokio::test]
async fn schema_restore_undoes_ddl_and_pg_dump_schema_matches() {
    let db = TestDb::new("schema_restore").await;
    schema(&db).await;
    let before = db.dump();
    let cp = SchemaSnapshot::new(&db.db, ["public"]);
    let ctx = Context::standalone("schema-restore");
    let snap = cp.capture(&ctx).await.unwrap();
    db.exec(
        "DROP VIEW big_payments;
         ALTER TABLE accounts ADD COLUMN first_name text NOT NULL DEFAULT '';
         ALTER TABLE accounts ALTER COLUMN mood DROP DEFAULT;
         ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL;
         DROP INDEX payments_account;
         ALTER TABLE payments DROP CONSTRAINT payments_amount_check;
         CREATE TABLE newer (x int);
         CREATE TYPE color AS ENUM ('red');
         CREATE OR REPLACE FUNCTION total(a int) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';
         CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1';
         SELECT nextval('invoice_no'); SELECT nextval('accounts_id_seq');
         CREATE VIEW big_payments AS SELECT id FROM payments;
         CREATE SCHEMA IF NOT EXISTS public;",
    )
    .await;
    let how = cp.restore(&snap, &ctx).await.unwrap();
    assert_eq!(how.method, "ddl");
    assert_eq!(cp.fingerprint(&ctx).await.unwrap(), snap.fingerprint);
    common::assert_same_dump(&before, &db.dump(), "schema restore");
    assert_eq!(cp.restore(&snap, &ctx).await.unwrap().method, "noop");
}

#[tokio::test]
async fn schema_restore_refuses_a_dropped_table_and_changes_nothing() {
    let db = TestDb::new("schema_refuse").await;
    schema(&db).await;
    let cp = SchemaSnapshot::new(&db.db, ["public"]);
    let ctx = Context::standalone("schema-refuse");
    let snap = cp.capture(&ctx).await.unwrap();
    db.exec("DROP VIEW big_payments; DROP TABLE payments; CREATE TABLE t2 (x int);")
        .await;
    let changed = cp.fingerprint(&ctx).await.unwrap();
    let r = cp.restore(&snap, &ctx).await;
    assert!(
        matches!(&r, Err(Error::Conflict { message }) if message.contains("payments")),
        "{r:?}"
    );
    assert_eq!(cp.fingerprint(&ctx).await.unwrap(), changed);
    // A tampered model is refused by digest.
    let mut bad = snap.clone();
    bad.descriptor["model"]["schemas"] = serde_json::json!(["public", "sneaky"]);
    assert!(matches!(
        cp.restore(&bad, &ctx).await,
        Err(Error::DigestMismatch { .. })
    ));
}

#[tokio::test]
async fn recovery_point_records_lsn_and_restore_point_in_the_run_report() {
    let db = TestDb::new("recovery").await;
    schema(&db).await;
    let rp = RecoveryPoint::new(&db.db, "before-migration");
    let v = rp.verify(&Context::standalone("rp-1")).await.unwrap();
    assert!(v.passed(), "{v:?}");
    let lsn = v.evidence["lsn"].as_str().unwrap().to_string();
    assert!(lsn.contains('/'), "{lsn}");
    assert_eq!(v.evidence["restore_point"], "before-migration-rp-1");
    assert!(v.evidence["recovery_settings"]
        .as_str()
        .unwrap()
        .contains("recovery_target_name = 'before-migration-rp-1'"));

    let plan = Plan::builder("with-recovery-point")
        .precondition(RecoveryPoint::new(&db.db, "pitr"))
        .checkpoint("db", SchemaSnapshot::new(&db.db, ["public"]))
        .step(
            "db",
            SqlStep::new(&db.db, "add-col", "ALTER TABLE accounts ADD COLUMN x int")
                .down("ALTER TABLE accounts DROP COLUMN IF EXISTS x"),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    let json = report.to_json();
    assert!(json.contains("pitr-") && json.contains("\"lsn\""), "{json}");
    assert!(report.to_markdown().contains("restore point pitr-"));
}
