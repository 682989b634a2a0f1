//! What changed since capture, read from the undo logs alone ([`TableUndoLog::changes`]),
//! and the verifier that proves parity by them ([`UndoLogParity`]).

use super::{
    earliest_sql, key_match, Descriptor, Entry, TableUndoLog, PRESENT, UNDO_LOG_KIND, XID,
};
use crate::error::PgResultExt;
use crate::ident::{column_list_with, quote_ident, Table};
use crate::reads::read_tx;
use async_trait::async_trait;
use rollback_core::{Context, Digest, Result, Snapshot, Verdict, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::GenericClient;

/// What changed in one table since capture, from its undo log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedChanges {
    /// The table.
    pub table: Table,
    /// Keys (text, columns joined by `, `) present now but not at capture.
    pub added: Vec<String>,
    /// Keys present at capture but not now.
    pub removed: Vec<String>,
    /// Keys present in both whose rows differ (by binary image).
    pub changed: Vec<String>,
    /// Log entries written since capture (≥ the keys above: a row may change many times).
    pub log_entries: u64,
}

impl LoggedChanges {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl TableUndoLog {
    /// The keys that differ from the capture, per table, read from the undo logs alone
    /// (O(rows changed since capture), whatever the table size): for each logged key, the
    /// earliest entry after capture is compared with the current row.
    ///
    /// This trusts the triggers (see the type's docs for what bypasses them); the
    /// fingerprint compared with the snapshot's is the proof.
    ///
    /// # Errors
    /// As for a restore: [`Error::WrongResource`](rollback_core::Error::WrongResource), [`Error::DigestMismatch`](rollback_core::Error::DigestMismatch),
    /// [`Error::Invalid`](rollback_core::Error::Invalid) when the logs are gone; backend errors.
    pub async fn changes(&self, snap: &Snapshot) -> Result<Vec<LoggedChanges>> {
        let d = self.descriptor(snap)?;
        snap.ensure_digest(Digest::of_json(&d))?;
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting diff").await?;
        self.check_tracking(&tx, &d).await?;
        let mut out = Vec::new();
        for e in &d.tables {
            out.push(logged_changes(&tx, &d, e).await?);
        }
        tx.commit().await.ctx("ending diff")?;
        Ok(out)
    }
}

async fn logged_changes<C: GenericClient>(
    c: &C,
    d: &Descriptor,
    e: &Entry,
) -> Result<LoggedChanges> {
    let cols = e.definition.column_names();
    let key_text = e.key_text("e");
    let sql = format!(
        "WITH e AS MATERIALIZED ({earliest}) \
         SELECT concat_ws(', ', {key_text}), e.{present}, x.ctid IS NOT NULL, \
                x.ctid IS NOT NULL AND pg_catalog.record_image_ne(ROW({xc}), ROW({ec})) \
         FROM e LEFT JOIN {t} x ON {m} ORDER BY {ek}",
        earliest = earliest_sql(e),
        present = quote_ident(PRESENT),
        xc = column_list_with("x", &cols),
        ec = column_list_with("e", &cols),
        t = e.table.quoted(),
        m = key_match(e, "x", "e"),
        ek = column_list_with("e", &e.key),
    );
    let rows = c
        .query(sql.as_str(), &[&d.mvcc_snapshot])
        .await
        .ctx(&format!("reading the undo log of {}", e.table))?;
    let mut out = LoggedChanges {
        table: e.table.clone(),
        added: vec![],
        removed: vec![],
        changed: vec![],
        log_entries: 0,
    };
    for r in &rows {
        let key: String = r.get(0);
        let was: bool = r.get(1);
        let is: bool = r.get(2);
        let differs: bool = r.get(3);
        match (was, is) {
            (false, true) => out.added.push(key),
            (true, false) => out.removed.push(key),
            (true, true) if differs => out.changed.push(key),
            _ => {}
        }
    }
    out.log_entries = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {} l WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{}, $1::text::pg_catalog.pg_snapshot)",
                e.log.quoted(),
                quote_ident(XID)
            ),
            &[&d.mvcc_snapshot],
        )
        .await
        .ctx("counting undo log entries")?
        .get::<_, i64>(0) as u64;
    Ok(out)
}

/// The table's rows equal the run's baseline by the undo log of a [`TableUndoLog`]
/// checkpoint: O(rows changed), listing exactly the added, removed and changed keys in its
/// evidence. It trusts the triggers (see [`TableUndoLog`]); the executor's parity proof
/// after a restore is the full fingerprint.
///
/// ```no_run
/// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
/// use rollback_postgres::{Table, TableUndoLog, UndoLogParity};
/// let cp = TableUndoLog::new(&db, Table::public("customers"));
/// let v = UndoLogParity::new(&cp);
/// ```
#[derive(Debug, Clone)]
pub struct UndoLogParity {
    id: String,
    checkpoint: TableUndoLog,
}

impl UndoLogParity {
    /// Compare the checkpoint's tables with the run's baseline snapshot of it.
    pub fn new(checkpoint: &TableUndoLog) -> Self {
        UndoLogParity {
            id: format!("undo-log:{}", checkpoint.resource),
            checkpoint: checkpoint.clone(),
        }
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for UndoLogParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        vec![self.checkpoint.resource.clone()]
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let Some(snap) = ctx.baseline(&self.checkpoint.resource) else {
            return Ok(Verdict::inconclusive(format!(
                "no baseline snapshot of {} in this run",
                self.checkpoint.resource
            )));
        };
        if snap.kind != UNDO_LOG_KIND {
            return Ok(Verdict::inconclusive(format!(
                "the baseline of {} is not an undo log",
                self.checkpoint.resource
            )));
        }
        let changes = self.checkpoint.changes(snap).await?;
        let n: usize = changes
            .iter()
            .map(|c| c.added.len() + c.removed.len() + c.changed.len())
            .sum();
        let summary = changes
            .iter()
            .map(|c| {
                format!(
                    "{}: {} added, {} removed, {} changed",
                    c.table,
                    c.added.len(),
                    c.removed.len(),
                    c.changed.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(
            Verdict::check(n == 0, format!("{summary} since the baseline (undo log)"))
                .with_evidence(json!({ "tables": changes }))
                .with_value(n as f64),
        )
    }
}
