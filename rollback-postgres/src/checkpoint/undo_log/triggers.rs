//! The undo log's own triggers: the per-statement trigger function that writes prior
//! images into a log table, its installation at capture, the check that it is still in
//! place before the log is trusted, and its removal at discard.

use super::{
    model_without_logs, Descriptor, Entry, TableUndoLog, OP, PRESENT, RESERVED_PREFIX,
    RESTORE_WRITER, SEQ, TRIGGER_PREFIX, WRITER, WRITER_SETTING, XID,
};
use crate::catalog::{self, TableModel};
use crate::error::PgResultExt;
use crate::ident::{column_list, column_list_with, dollar_quote, quote_ident, Table};
use rollback_core::{Digest, Error, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

impl TableUndoLog {
    /// Refuse when a log table, trigger or function of `d` is missing or a trigger is
    /// disabled.
    pub(super) async fn check_tracking<C: GenericClient>(
        &self,
        c: &C,
        d: &Descriptor,
    ) -> Result<()> {
        for e in &d.tables {
            if catalog::table_oid(c, &e.log).await?.is_none() {
                return Err(Error::invalid(format!(
                    "the undo log {} of {} is gone (the snapshot was discarded?); cannot use it",
                    e.log, e.table
                )));
            }
            let rows = c
                .query(
                    &format!(
                        "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                         WHERE tgrelid = {}::regclass AND tgname = ANY($1)",
                        e.table.regclass_literal()
                    ),
                    &[&trigger_names(e)],
                )
                .await
                .ctx("reading the undo log's triggers")?;
            let enabled = rows.iter().filter(|r| r.get::<_, String>(1) != "D").count();
            if enabled != trigger_names(e).len() {
                return Err(Error::conflict(format!(
                    "the triggers logging changes of {} are missing or disabled: changes may have escaped the undo log; restore from another checkpoint",
                    e.table
                )));
            }
        }
        Ok(())
    }
}

/// The start of a trigger function body of the undo log: the writer, and an early return
/// for the restore's own writes (the writer whose md5 is `restore_md5`).
fn restore_exempt(restore_md5: &str) -> String {
    format!(
        "\n\
         DECLARE writer text := NULLIF(pg_catalog.current_setting('{setting}', true), '');\n\
         BEGIN\n\
           IF writer LIKE '{prefix}%' AND pg_catalog.md5(writer) = '{restore_md5}' THEN\n\
             RETURN NULL;\n\
           END IF;\n",
        setting = WRITER_SETTING,
        prefix = RESTORE_WRITER,
        restore_md5 = restore_md5.replace(|c: char| !c.is_ascii_hexdigit(), ""),
    )
}

/// The trigger function of one tracked table: log old images (and new keys). It runs
/// once per statement, over the statement's transition tables (`o`: the rows as they
/// were, `n`: as they are), not once per row — so a writer pays one `INSERT … SELECT`
/// per statement into the log.
fn function_sql(
    schema: &str,
    function: &str,
    t: &Table,
    log: &Table,
    def: &TableModel,
    key: &[String],
    restore_md5: &str,
) -> String {
    let cols = def.column_names();
    let into = format!(
        "INSERT INTO {} ({}, {}, {}, {})",
        log.quoted(),
        quote_ident(PRESENT),
        quote_ident(WRITER),
        quote_ident(OP),
        column_list(&cols)
    );
    let from = |rel: &str, present: bool, op: &str, filter: &str| {
        format!(
            "{into} SELECT {present}, writer, {op}, {} FROM {rel} r{filter};",
            column_list_with("r", &cols)
        )
    };
    let keys = |rel: &str| format!("SELECT {} FROM {rel} r", column_list_with("r", key));
    let in_other = |other: &str| {
        format!(
            "EXISTS (SELECT 1 FROM {other} x WHERE {})",
            key.iter()
                .map(|k| format!("x.{q} = r.{q}", q = quote_ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        )
    };
    // The body names the table, its log and its columns (double-quoted); it is
    // dollar-quoted with a tag that occurs nowhere in it, so no name can end it.
    let body = format!(
        "{restore_exempt}\
           IF TG_OP = 'UPDATE' THEN\n\
             IF NOT EXISTS ({new_keys} EXCEPT {old_keys}) THEN\n\
               {upd}\n\
             ELSE\n\
               {upd_moved_old}\n\
               {upd_moved_new}\n\
             END IF;\n\
           ELSIF TG_OP = 'DELETE' THEN\n\
             {del}\n\
           ELSIF TG_OP = 'INSERT' THEN\n\
             {ins}\n\
           ELSIF TG_OP = 'TRUNCATE' THEN\n\
             {into} SELECT true, writer, 't', {cols} FROM ONLY {t};\n\
           END IF;\n\
           RETURN NULL;\n\
         END\n",
        new_keys = keys("n"),
        old_keys = keys("o"),
        upd = from("o", true, "'u'", ""),
        upd_moved_old = from(
            "o",
            true,
            &format!("CASE WHEN {} THEN 'u' ELSE 'k' END", in_other("n")),
            ""
        ),
        upd_moved_new = from("n", false, "'k'", &format!(" WHERE NOT {}", in_other("o"))),
        del = from("o", true, "'d'", ""),
        ins = from("n", false, "'i'", ""),
        cols = column_list(&cols),
        t = t.quoted(),
        restore_exempt = restore_exempt(restore_md5),
    );
    format!(
        "CREATE FUNCTION {schema}.{function}() RETURNS trigger LANGUAGE plpgsql \
         SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}",
        schema = quote_ident(schema),
        function = quote_ident(function),
        body = dollar_quote(&body),
    )
}

/// The names of the triggers of one tracked table: per statement, after updates (the
/// entry's `row_trigger`), inserts and deletes (with their transition tables), and
/// before `TRUNCATE`.
fn trigger_names(e: &Entry) -> Vec<String> {
    vec![
        e.row_trigger.clone(),
        format!("{}_ins", e.row_trigger),
        format!("{}_del", e.row_trigger),
        e.truncate_trigger.clone(),
    ]
}

/// The guard of a log table (a trigger of the log, and its function): only the restore
/// may update, delete or truncate log entries.
fn guard_name(e: &Entry) -> String {
    format!("{}_guard", e.function)
}

/// The guard function: every `UPDATE`, `DELETE` or `TRUNCATE` of the log fails unless
/// it is the restore's (which knows the secret whose md5 the guard holds).
fn guard_sql(schema: &str, function: &str, restore_md5: &str) -> String {
    let body = format!(
        "{restore_exempt}\
           RAISE EXCEPTION 'the undo log %.% is append-only: only its restore removes entries', TG_TABLE_SCHEMA, TG_TABLE_NAME\n\
             USING ERRCODE = 'insufficient_privilege';\n\
         END\n",
        restore_exempt = restore_exempt(restore_md5),
    );
    format!(
        "CREATE FUNCTION {schema}.{function}() RETURNS trigger LANGUAGE plpgsql \
         SET search_path = pg_catalog, pg_temp AS {body}",
        schema = quote_ident(schema),
        function = quote_ident(function),
        body = dollar_quote(&body),
    )
}

/// What the catalog says of one table's undo log machinery, recorded at capture and
/// compared at restore: while it is unchanged, every write since capture went through the
/// log, so a proof may re-read only the rows the log names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marks {
    /// `pg_class.relfilenode` of the tracked table: a rewrite that fires no trigger
    /// (`ALTER COLUMN … TYPE`, `VACUUM FULL`, `CLUSTER`) and `TRUNCATE` change it.
    filenode: u32,
    /// `xmin` of the trigger function's and the guard function's `pg_proc` rows: `CREATE
    /// OR REPLACE` changes them.
    functions: Vec<String>,
    /// `name:tgenabled:xmin` of each trigger of the table's and of its log's: enabling,
    /// disabling or re-creating one changes it.
    triggers: Vec<String>,
}

impl Marks {
    /// What differs from `then`, in words (`None`: nothing).
    pub(super) fn changed_since(&self, then: &Marks) -> Option<String> {
        if self.filenode != then.filenode {
            Some("the table was rewritten or truncated since capture (its storage changed), which no row trigger sees".into())
        } else if self.functions != then.functions {
            Some("the undo log's trigger function was replaced since capture".into())
        } else if self.triggers != then.triggers {
            Some(
                "a trigger of the undo log was disabled, re-enabled or re-created since capture"
                    .into(),
            )
        } else {
            None
        }
    }
}

/// The table's [`Marks`] now; `Err(why)` when the log cannot be trusted to have seen every
/// write whatever happened since: a trigger missing or not `ENABLE ALWAYS` (so a session
/// with `session_replication_role = replica` bypasses it), the table fed by a logical
/// replication subscription (its apply worker fires no statement trigger), or the table
/// having inheritance children (written without the parent's triggers).
pub(super) async fn read_marks<C: GenericClient>(
    c: &C,
    e: &Entry,
) -> Result<std::result::Result<Marks, String>> {
    let mut names = trigger_names(e);
    names.push(guard_name(e));
    let functions = vec![
        format!(
            "{}.{}()",
            quote_ident(&e.log.schema),
            quote_ident(&e.function)
        ),
        format!(
            "{}.{}()",
            quote_ident(&e.log.schema),
            quote_ident(&guard_name(e))
        ),
    ];
    let row = c
        .query_opt(
            "SELECT c.relfilenode, \
               array(SELECT coalesce((SELECT p.xmin::text FROM pg_catalog.pg_proc p \
                                      WHERE p.oid = pg_catalog.to_regprocedure(f)), '') \
                     FROM unnest($2::text[]) WITH ORDINALITY u(f, o) ORDER BY o), \
               array(SELECT g.tgname::text || ':' || g.tgenabled::text || ':' || g.xmin::text \
                     FROM pg_catalog.pg_trigger g \
                     WHERE g.tgrelid IN (c.oid, pg_catalog.to_regclass($3)) AND g.tgname = ANY($4) \
                     ORDER BY g.tgname), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r WHERE r.srrelid = c.oid), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) \
             FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&e.table.quoted(), &functions, &e.log.quoted(), &names],
        )
        .await
        .ctx("reading the undo log's triggers and storage")?;
    let Some(row) = row else {
        return Ok(Err(format!("{} no longer exists", e.table)));
    };
    let marks = Marks {
        filenode: row.get(0),
        functions: row.get(1),
        triggers: row.get(2),
    };
    if marks.functions.iter().any(String::is_empty) || marks.triggers.len() != names.len() {
        return Ok(Err(
            "a trigger or function of the undo log is missing (the snapshot predates the log's guard, or they were dropped)".into(),
        ));
    }
    if marks
        .triggers
        .iter()
        .any(|t| t.split(':').nth(1) != Some("A"))
    {
        return Ok(Err(
            "a trigger of the undo log is not ENABLE ALWAYS (a session with session_replication_role = replica would bypass it)".into(),
        ));
    }
    if row.get::<_, bool>(3) {
        return Ok(Err(format!(
            "{} is fed by a logical replication subscription, whose apply worker fires no statement trigger",
            e.table
        )));
    }
    if row.get::<_, bool>(4) {
        return Ok(Err(format!(
            "{} has inheritance children, written without its triggers",
            e.table
        )));
    }
    Ok(Ok(marks))
}

impl TableUndoLog {
    /// Create the logs, function and triggers (committed), returning the entries without
    /// definitions and fingerprints.
    pub(super) async fn install(&self, id: &str, restore_tag: &str) -> Result<Vec<Entry>> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting capture")?;
        crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
        let restore_md5: String = tx
            .query_one("SELECT pg_catalog.md5($1)", &[&restore_tag])
            .await
            .ctx("hashing the restore tag")?
            .get(0);
        let mut entries = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let Some(oid) = catalog::table_oid(&tx, t).await? else {
                return Err(Error::invalid(format!(
                    "{t} does not exist: an undo log tracks existing tables (use TableSnapshot for a table the migration creates)"
                )));
            };
            let def = model_without_logs(&tx, oid).await?;
            if def.kind != "r" {
                return Err(Error::invalid(format!(
                    "{t} is partitioned: an undo log tracks plain tables (use TableSnapshot)"
                )));
            }
            // The TRIGGER privilege creates triggers, but only the owner drops them or
            // sets them ENABLE ALWAYS: without it the log could never be removed.
            let owner: bool = tx
                .query_one(
                    "SELECT pg_catalog.pg_has_role(relowner, 'USAGE') FROM pg_catalog.pg_class WHERE oid = $1",
                    &[&oid],
                )
                .await
                .ctx("reading the table's owner")?
                .get(0);
            if !owner {
                return Err(Error::invalid(format!(
                    "{t} is not owned by this role (or a role it belongs to): only the owner may drop the undo log's triggers and make them fire for replica sessions (use TableSnapshot, or connect as the owner)"
                )));
            }
            let key = catalog::order_key(&tx, oid).await?;
            if key.is_empty() {
                return Err(Error::invalid(format!(
                    "{t} has no primary key or NOT NULL unique key to log changes by (use TableSnapshot)"
                )));
            }
            let cols = def.column_names();
            if let Some(c) = cols.iter().find(|c| c.starts_with(RESERVED_PREFIX)) {
                return Err(Error::invalid(format!(
                    "{t} has a column named {c}: names starting with {RESERVED_PREFIX} are the undo log's own (use TableSnapshot)"
                )));
            }
            // A deferred key may be held by two rows at once inside a transaction (a key
            // swap): the log, which names rows by key, would mix them up.
            let immediate: Option<bool> = tx
                .query_one(
                    "SELECT bool_or(i.indimmediate) FROM pg_catalog.pg_index i \
                     WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
                       AND array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                                 ORDER BY k.ord) = $2::text[]",
                    &[&oid, &key],
                )
                .await
                .ctx("reading whether the key is deferrable")?
                .get(0);
            if immediate != Some(true) {
                return Err(Error::invalid(format!(
                    "the key of {t} ({}) is DEFERRABLE: two rows may hold one key inside a transaction, which an undo log cannot tell apart (use TableSnapshot, or make the key NOT DEFERRABLE)",
                    key.join(", ")
                )));
            }
            let log = Table::new(&self.schema, format!("undo_{id}_{i}"));
            let function = format!("undo_{id}_{i}");
            let row_trigger = format!("{TRIGGER_PREFIX}{id}");
            let truncate_trigger = format!("{TRIGGER_PREFIX}{id}_truncate");
            let s = quote_ident(&self.schema);
            tx.batch_execute(&format!(
                "CREATE TABLE {log} ({seq} bigserial, {xid} pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), \
                   {present} boolean NOT NULL, {writer} text, {op} \"char\" NOT NULL, LIKE {t}); \
                 {function_sql}; \
                 REVOKE ALL ON FUNCTION {s}.{f}() FROM PUBLIC; \
                 CREATE TRIGGER {rt} AFTER UPDATE ON {t} REFERENCING OLD TABLE AS o NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {rti} AFTER INSERT ON {t} REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {rtd} AFTER DELETE ON {t} REFERENCING OLD TABLE AS o FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {tt} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 {guard_sql}; \
                 REVOKE ALL ON FUNCTION {s}.{g}() FROM PUBLIC; \
                 CREATE TRIGGER {g} BEFORE UPDATE OR DELETE OR TRUNCATE ON {log} FOR EACH STATEMENT EXECUTE FUNCTION {s}.{g}(); \
                 ALTER TABLE {log} ENABLE ALWAYS TRIGGER {g};",
                log = log.quoted(),
                seq = quote_ident(SEQ),
                xid = quote_ident(XID),
                present = quote_ident(PRESENT),
                writer = quote_ident(WRITER),
                op = quote_ident(OP),
                t = t.quoted(),
                function_sql =
                    function_sql(&self.schema, &function, t, &log, &def, &key, &restore_md5),
                f = quote_ident(&function),
                rt = quote_ident(&row_trigger),
                rti = quote_ident(&format!("{row_trigger}_ins")),
                rtd = quote_ident(&format!("{row_trigger}_del")),
                tt = quote_ident(&truncate_trigger),
                guard_sql = guard_sql(&self.schema, &format!("{function}_guard"), &restore_md5),
                g = quote_ident(&format!("{function}_guard")),
            ))
            .await
            .ctx(&format!("installing the undo log of {t}"))?;
            // Fire for sessions with session_replication_role = replica too.
            let always = format!(
                "ALTER TABLE {t} ENABLE ALWAYS TRIGGER {}, ENABLE ALWAYS TRIGGER {}, \
                   ENABLE ALWAYS TRIGGER {}, ENABLE ALWAYS TRIGGER {}",
                quote_ident(&row_trigger),
                quote_ident(&format!("{row_trigger}_ins")),
                quote_ident(&format!("{row_trigger}_del")),
                quote_ident(&truncate_trigger),
                t = t.quoted(),
            );
            tx.batch_execute(&always).await.ctx(&format!(
                "making the undo log triggers of {t} ENABLE ALWAYS"
            ))?;
            entries.push(Entry {
                table: t.clone(),
                log,
                function,
                row_trigger,
                truncate_trigger,
                key,
                attnums: vec![],
                definition: def,
                fingerprint: Digest::of(b""),
                root: None,
                chunks: Vec::new(),
                marks: None,
            });
        }
        tx.commit().await.ctx("committing the undo log triggers")?;
        Ok(entries)
    }

    pub(super) async fn uninstall(&self, entries: &[Entry]) -> Result<()> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting discard")?;
        crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
        for e in entries {
            if catalog::table_oid(&tx, &e.table).await?.is_some() {
                tx.batch_execute(
                    &trigger_names(e)
                        .iter()
                        .map(|n| {
                            format!(
                                "DROP TRIGGER IF EXISTS {} ON {};",
                                quote_ident(n),
                                e.table.quoted()
                            )
                        })
                        .collect::<String>(),
                )
                .await
                .ctx(&format!("dropping the undo log triggers of {}", e.table))?;
            }
            tx.batch_execute(&format!(
                "DROP FUNCTION IF EXISTS {s}.{}() CASCADE; DROP FUNCTION IF EXISTS {s}.{}() CASCADE; \
                 DROP TABLE IF EXISTS {}",
                quote_ident(&e.function),
                quote_ident(&guard_name(e)),
                e.log.quoted(),
                s = quote_ident(&e.log.schema),
            ))
            .await
            .ctx(&format!("dropping the undo log of {}", e.table))?;
        }
        tx.commit().await.ctx("committing discard")
    }
}
