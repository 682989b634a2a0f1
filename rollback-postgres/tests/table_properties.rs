//! Every property pg_dump emits for a table survives each restore method, checked by
//! `pg_dump --schema-only -t` before and after; and the fingerprint covers each of them,
//! so that parity cannot be claimed while any differs.

mod common;

use common::{TestDb, TestRole};
use rollback_core::{Checkpoint, Context};
use rollback_postgres::{RestoreMethod, Table, TableSnapshot, TableUndoLog};
use std::process::Command;

fn ctx() -> Context {
    Context::standalone(&format!("p-{}", uuid::Uuid::new_v4()))
}

/// A table with every property pg_dump emits for a table that a swap can take over
/// (nothing outside the table depends on it), owned by `owner`, granted to `reader`.
fn swappable_sql(owner: &str, reader: &str) -> String {
    format!(
        r#"
CREATE TABLE payer (id int PRIMARY KEY);
INSERT INTO payer SELECT g FROM generate_series(1, 10) g;
CREATE TABLE pay (
    id int PRIMARY KEY,
    amount numeric CONSTRAINT pay_amount_check CHECK (amount >= 0),
    note text,
    k int UNIQUE,
    payer int REFERENCES payer (id),
    created timestamptz NOT NULL DEFAULT '2024-01-01T00:00:00Z'
);
INSERT INTO pay SELECT g, g, 'note ' || g, g, 1 + g % 10 FROM generate_series(1, 100) g;
CREATE INDEX pay_amount ON pay (amount);
CREATE INDEX pay_lower ON pay (lower(note)) WHERE amount > 5;
ALTER INDEX pay_lower ALTER COLUMN 1 SET STATISTICS 300;
COMMENT ON TABLE pay IS 'payments';
COMMENT ON COLUMN pay.note IS 'free text';
COMMENT ON CONSTRAINT pay_pkey ON pay IS 'the key';
COMMENT ON CONSTRAINT pay_amount_check ON pay IS 'no negative amounts';
COMMENT ON INDEX pay_amount IS 'by amount';
ALTER TABLE pay ALTER COLUMN amount SET STATISTICS 500;
ALTER TABLE pay ALTER COLUMN note SET (n_distinct = 100);
ALTER TABLE pay ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER TABLE pay ALTER COLUMN note SET COMPRESSION pglz;
ALTER TABLE pay CLUSTER ON pay_amount;
ALTER TABLE pay SET (fillfactor = 80, autovacuum_enabled = false, toast.autovacuum_enabled = false);
ALTER TABLE pay REPLICA IDENTITY FULL;
CREATE FUNCTION pay_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER pay_trg BEFORE INSERT ON pay FOR EACH ROW EXECUTE FUNCTION pay_touch();
CREATE TRIGGER pay_off BEFORE UPDATE ON pay FOR EACH ROW EXECUTE FUNCTION pay_touch();
ALTER TABLE pay DISABLE TRIGGER pay_off;
COMMENT ON TRIGGER pay_trg ON pay IS 'touches';
ALTER TABLE pay ENABLE ROW LEVEL SECURITY;
ALTER TABLE pay FORCE ROW LEVEL SECURITY;
ALTER TABLE pay OWNER TO "{owner}";
GRANT SELECT ON pay TO "{reader}";
GRANT UPDATE (amount) ON pay TO "{reader}";
GRANT INSERT (note, k) ON pay TO "{reader}" WITH GRANT OPTION;
"#
    )
}

/// What a swap cannot take over (objects depending on the table), for the other methods.
fn dependents_sql(reader: &str) -> String {
    format!(
        r#"
CREATE POLICY pay_read ON pay AS PERMISSIVE FOR SELECT TO "{reader}" USING (amount > 0);
CREATE POLICY pay_write ON pay AS RESTRICTIVE FOR UPDATE TO PUBLIC USING (true) WITH CHECK (amount < 1000);
COMMENT ON POLICY pay_read ON pay IS 'readers see positive amounts';
CREATE RULE pay_no_negative AS ON INSERT TO pay WHERE new.amount < 0 DO INSTEAD NOTHING;
COMMENT ON RULE pay_no_negative ON pay IS 'silently dropped';
CREATE STATISTICS pay_stats (ndistinct) ON amount, k FROM pay;
ALTER STATISTICS pay_stats SET STATISTICS 50;
COMMENT ON STATISTICS pay_stats IS 'amount and k together';
SET client_min_messages = error;
CREATE PUBLICATION pay_pub FOR TABLE pay (id, amount) WHERE (amount > 10) WITH (publish = 'insert');
"#
    )
}

/// `pg_dump --schema-only -t public.pay`, owners and privileges included.
fn dump_pay(db: &TestDb) -> String {
    let out = Command::new(common::pg_bin("pg_dump"))
        .args(["--schema-only", "-t", "public.pay", "-d", &db.url])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::strip_restrict(&String::from_utf8(out.stdout).expect("utf8 dump"))
}

/// The rows change (and only the rows).
async fn change_rows(db: &TestDb) {
    db.exec(
        "UPDATE public.pay SET amount = amount + 1 WHERE id % 3 = 0;
         DELETE FROM public.pay WHERE id > 90;
         INSERT INTO public.pay (id, amount, note, k, payer) VALUES (1000, 7, 'new', 1000, 2);",
    )
    .await;
}

#[track_caller]
fn assert_same(before: &str, after: &str, what: &str) {
    if before != after {
        let la: Vec<&str> = before.lines().collect();
        let lb: Vec<&str> = after.lines().collect();
        let only_a: Vec<&&str> = la.iter().filter(|l| !lb.contains(l)).collect();
        let only_b: Vec<&&str> = lb.iter().filter(|l| !la.contains(l)).collect();
        panic!("{what}: pg_dump -t pay differs\nonly before: {only_a:#?}\nonly after: {only_b:#?}");
    }
}

async fn column_privilege(db: &TestDb, reader: &str) -> bool {
    db.scalar(&format!(
        "SELECT has_column_privilege('{reader}', 'public.pay', 'amount', 'UPDATE')"
    ))
    .await
    .as_deref()
        == Some("t")
}

async fn restore_keeps_every_property(
    label: &str,
    method: Option<RestoreMethod>,
    dependents: bool,
    expected: &str,
) {
    let owner = TestRole::new("owner", "").await;
    let reader = TestRole::new("reader", "").await;
    let db = TestDb::new(label).await;
    db.exec(&swappable_sql(&owner.name, &reader.name)).await;
    if dependents {
        db.exec(&dependents_sql(&reader.name)).await;
    }
    let before = dump_pay(&db);
    assert!(column_privilege(&db, &reader.name).await);
    let c = ctx();
    let t = Table::public("pay");
    let cp: Box<dyn Checkpoint> = match method {
        Some(m) => Box::new(TableSnapshot::new(&db.db, t.clone()).restore_method(m)),
        None => Box::new(TableUndoLog::new(&db.db, t.clone())),
    };
    let snap = cp.capture(&c).await.unwrap();
    change_rows(&db).await;
    assert_ne!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, expected, "{label}: {how:?}");
    assert_eq!(
        cp.fingerprint(&c).await.unwrap(),
        snap.fingerprint,
        "{label}: parity"
    );
    cp.discard(&snap, &c).await.unwrap();
    assert_same(&before, &dump_pay(&db), label);
    assert!(
        column_privilege(&db, &reader.name).await,
        "{label}: the column grant is gone"
    );
    drop(db);
}

#[tokio::test]
async fn a_swap_restore_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_swap", Some(RestoreMethod::Swap), false, "swap").await;
}

#[tokio::test]
async fn an_auto_restore_of_changed_rows_is_a_delta_and_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_auto", Some(RestoreMethod::Auto), false, "delta").await;
}

#[tokio::test]
async fn a_delta_restore_beside_dependents_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_delta", Some(RestoreMethod::Delta), true, "delta").await;
}

#[tokio::test]
async fn a_copy_restore_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_copy", Some(RestoreMethod::Copy), true, "copy").await;
}

#[tokio::test]
async fn a_merge_restore_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_merge", Some(RestoreMethod::Merge), true, "merge").await;
}

#[tokio::test]
async fn an_undo_log_restore_keeps_every_property_pg_dump_emits() {
    restore_keeps_every_property("prop_undo", None, true, "undo-log").await;
}

/// Each statement removes or changes one property; the second puts it back.
fn property_changes(reader: &str) -> Vec<(String, String)> {
    let r = format!("\"{reader}\"");
    [
        ("COMMENT ON TABLE pay IS NULL", "COMMENT ON TABLE pay IS 'payments'"),
        ("COMMENT ON COLUMN pay.note IS 'other'", "COMMENT ON COLUMN pay.note IS 'free text'"),
        ("COMMENT ON CONSTRAINT pay_pkey ON pay IS NULL", "COMMENT ON CONSTRAINT pay_pkey ON pay IS 'the key'"),
        ("COMMENT ON INDEX pay_amount IS NULL", "COMMENT ON INDEX pay_amount IS 'by amount'"),
        ("COMMENT ON TRIGGER pay_trg ON pay IS NULL", "COMMENT ON TRIGGER pay_trg ON pay IS 'touches'"),
        ("COMMENT ON POLICY pay_read ON pay IS NULL", "COMMENT ON POLICY pay_read ON pay IS 'readers see positive amounts'"),
        ("COMMENT ON RULE pay_no_negative ON pay IS NULL", "COMMENT ON RULE pay_no_negative ON pay IS 'silently dropped'"),
        ("COMMENT ON STATISTICS pay_stats IS NULL", "COMMENT ON STATISTICS pay_stats IS 'amount and k together'"),
        ("REVOKE UPDATE (amount) ON pay FROM {r}", "GRANT UPDATE (amount) ON pay TO {r}"),
        ("GRANT DELETE ON pay TO {r}", "REVOKE DELETE ON pay FROM {r}"),
        ("ALTER TABLE pay ALTER COLUMN amount SET STATISTICS -1", "ALTER TABLE pay ALTER COLUMN amount SET STATISTICS 500"),
        ("ALTER TABLE pay ALTER COLUMN note RESET (n_distinct)", "ALTER TABLE pay ALTER COLUMN note SET (n_distinct = 100)"),
        ("ALTER TABLE pay ALTER COLUMN note SET STORAGE EXTENDED", "ALTER TABLE pay ALTER COLUMN note SET STORAGE EXTERNAL"),
        ("ALTER TABLE pay ALTER COLUMN note SET COMPRESSION default", "ALTER TABLE pay ALTER COLUMN note SET COMPRESSION pglz"),
        ("ALTER TABLE pay SET WITHOUT CLUSTER", "ALTER TABLE pay CLUSTER ON pay_amount"),
        ("ALTER INDEX pay_lower ALTER COLUMN 1 SET STATISTICS -1", "ALTER INDEX pay_lower ALTER COLUMN 1 SET STATISTICS 300"),
        ("ALTER TABLE pay OWNER TO CURRENT_USER", "ALTER TABLE pay OWNER TO {owner}"),
        ("ALTER TABLE pay RESET (fillfactor)", "ALTER TABLE pay RESET (autovacuum_enabled); ALTER TABLE pay SET (fillfactor = 80, autovacuum_enabled = false)"),
        ("ALTER TABLE pay RESET (toast.autovacuum_enabled)", "ALTER TABLE pay SET (toast.autovacuum_enabled = false)"),
        ("ALTER TABLE pay REPLICA IDENTITY DEFAULT", "ALTER TABLE pay REPLICA IDENTITY FULL"),
        ("ALTER TABLE pay NO FORCE ROW LEVEL SECURITY", "ALTER TABLE pay FORCE ROW LEVEL SECURITY"),
        ("ALTER TABLE pay ENABLE TRIGGER pay_off", "ALTER TABLE pay DISABLE TRIGGER pay_off"),
        ("DROP POLICY pay_write ON pay", "CREATE POLICY pay_write ON pay AS RESTRICTIVE FOR UPDATE TO PUBLIC USING (true) WITH CHECK (amount < 1000)"),
        ("ALTER TABLE pay DISABLE RULE pay_no_negative", "ALTER TABLE pay ENABLE RULE pay_no_negative"),
        ("ALTER STATISTICS pay_stats SET STATISTICS -1", "ALTER STATISTICS pay_stats SET STATISTICS 50"),
        ("ALTER PUBLICATION pay_pub SET TABLE pay (id, amount)", "ALTER PUBLICATION pay_pub SET TABLE pay (id, amount) WHERE (amount > 10)"),
    ]
    .iter()
    .map(|(a, b)| (a.replace("{r}", &r), b.to_string().replace("{r}", &r)))
    .collect()
}

#[tokio::test]
async fn the_fingerprint_differs_when_any_one_property_differs() {
    let owner = TestRole::new("owner", "").await;
    let reader = TestRole::new("reader", "").await;
    let db = TestDb::new("prop_fp").await;
    db.exec(&swappable_sql(&owner.name, &reader.name)).await;
    db.exec(&dependents_sql(&reader.name)).await;
    let c = ctx();
    let snapshot = TableSnapshot::new(&db.db, Table::public("pay"));
    let undo = TableUndoLog::new(&db.db, Table::public("pay"));
    let baseline = snapshot.fingerprint(&c).await.unwrap();
    let dump = dump_pay(&db);
    let snap = undo.capture(&c).await.unwrap();
    assert_eq!(
        snap.fingerprint, baseline,
        "one fingerprint for both checkpoints"
    );
    // While the undo log is live, the table snapshot sees its triggers (the undo log's
    // own fingerprint leaves them out).
    let with_log = snapshot.fingerprint(&c).await.unwrap();
    for (change, back) in property_changes(&reader.name) {
        let back = back.replace("{owner}", &format!("\"{}\"", owner.name));
        db.exec(&change).await;
        assert_ne!(
            snapshot.fingerprint(&c).await.unwrap(),
            with_log,
            "the table snapshot's fingerprint does not see `{change}`"
        );
        assert_ne!(
            undo.fingerprint(&c).await.unwrap(),
            baseline,
            "the undo log's fingerprint does not see `{change}`"
        );
        db.exec(&back).await;
        assert_eq!(
            undo.fingerprint(&c).await.unwrap(),
            baseline,
            "`{back}` did not put the table back"
        );
        assert_eq!(snapshot.fingerprint(&c).await.unwrap(), with_log);
    }
    // A property changed during a run is put back by the undo log's restore too.
    db.exec("COMMENT ON TABLE pay IS 'changed'; GRANT SELECT (k) ON pay TO PUBLIC")
        .await;
    change_rows(&db).await;
    undo.restore(&snap, &c).await.unwrap();
    assert_eq!(undo.fingerprint(&c).await.unwrap(), baseline);
    undo.discard(&snap, &c).await.unwrap();
    assert_same(&dump, &dump_pay(&db), "undo log after a comment change");
    drop(db);
}
