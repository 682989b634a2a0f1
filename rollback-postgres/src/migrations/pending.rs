//! [`Pending`]: the migrations a folder has not applied yet, and the plan that applies
//! them reversibly.

use super::scan;
use super::verifier::ScriptVerifier;
use crate::checkpoint::copy::TableSnapshot;
use crate::checkpoint::schema::SchemaSnapshot;
use crate::checkpoint::undo_log::TableUndoLog;
use crate::db::Database;
use crate::ident::Table;
use crate::sqlscan;
use crate::steps::sql::SqlStep;
use rollback_core::{Plan, Reversibility, Step};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::steps::{LedgerStep, Scanned};
use super::{CheckpointKind, Migration, MigrationError, Migrations};

/// How a rollback undoes one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revert {
    /// By its down.
    Down,
    /// By restoring these checkpoints (resource ids).
    Checkpoint(Vec<String>),
    /// It cannot be undone: it needs a down (or an approval to stay).
    NeedsApproval(String),
    /// It cannot be undone and [`Migrations::approve_irreversible`] let it run: a rollback
    /// leaves it applied (the approval's reason).
    Approved(String),
}

/// The pending migrations of a folder (see [`Migrations::pending`]).
#[derive(Debug)]
pub struct Pending {
    pub(super) db: Database,
    pub(super) migrations: Migrations,
    pub(super) applied: usize,
    pub(super) pending: Vec<usize>,
    pub(super) before: Option<String>,
    pub(super) existing: BTreeSet<Table>,
    /// The migrations' search path, which resolves their unqualified names.
    pub(super) path: scan::SearchPath,
}

struct Built {
    steps: Vec<SqlStep>,
    reverts: Vec<(String, Revert)>,
    /// Tables to checkpoint, and whether they need a copy (dropped, truncated, or
    /// altered during the run: an undo log's triggers follow the columns they were made
    /// for).
    data: BTreeMap<Table, bool>,
    schemas: BTreeSet<String>,
    problems: Vec<MigrationError>,
    /// Approved irreversible migrations: step id → reason.
    approved: BTreeMap<String, String>,
    /// Verify scripts: step id → verifier.
    verifiers: Vec<(String, ScriptVerifier)>,
}

impl Pending {
    /// The migrations to apply, in order.
    pub fn migrations(&self) -> Vec<&Migration> {
        self.pending
            .iter()
            .map(|&i| &self.migrations.all[i])
            .collect()
    }

    /// How many migrations the ledger lists as applied.
    pub fn applied_count(&self) -> usize {
        self.applied
    }

    /// Per pending migration (by step id), how a rollback undoes it.
    ///
    /// # Errors
    /// Files that cannot run (see [`Pending::plan`]).
    pub fn reverts(&self) -> Result<Vec<(String, Revert)>, MigrationError> {
        Ok(self.build()?.reverts)
    }

    fn build(&self) -> Result<Built, MigrationError> {
        let ms = &self.migrations;
        let ledger = ms.ledger();
        let db = &self.db;
        let mut out = Built {
            steps: Vec::new(),
            reverts: Vec::new(),
            data: BTreeMap::new(),
            schemas: BTreeSet::new(),
            problems: Vec::new(),
            approved: BTreeMap::new(),
            verifiers: Vec::new(),
        };
        // First pass: what each migration does and whether it needs a cover.
        let mut per: Vec<(SqlStep, scan::Touch, bool, usize)> = Vec::new();
        for &i in &self.pending {
            let m = &ms.all[i];
            let up = scan::unwrap_transaction(&m.file, &m.up, m.up_line)?;
            refuse_session_state(&m.file, &up, m.up_line)?;
            // A down section with no statement (dbmate's empty `-- migrate:down`) is none.
            let down = match m.down.as_ref().filter(|d| !sqlscan::split(d).is_empty()) {
                Some(d) => {
                    let f = m.down_file.as_deref().unwrap_or(&m.file);
                    let d = scan::unwrap_transaction(f, d, m.down_line)?;
                    refuse_session_state(f, &d, m.down_line)?;
                    Some(d)
                }
                None => None,
            };
            let mut touch = scan::Touch::default();
            let mut opaque_line = None;
            for l in scan::locate(&up, m.up_line) {
                let t = scan::touch(&l.st.text).resolve(&self.path, &|t| self.existing.contains(t));
                if t.opaque && opaque_line.is_none() {
                    opaque_line = Some(l.line);
                }
                touch.merge(t);
            }
            let previous = (i > 0).then(|| &ms.all[i - 1]);
            // The ledger's write follows `up` (its removal `down`) in the step's transaction.
            let mut step = SqlStep::new(db, m.id(), up.clone())
                .bookkeeping(ledger.record_sql(m), ledger.erase_sql(m, previous))
                .guard(
                    ledger.guard_sql(m),
                    ledger.session_lock_sql(true),
                    ledger.session_lock_sql(false),
                );
            if let Some(d) = &down {
                step = step.down(d.clone());
            }
            if !m.transaction {
                step = step.non_transactional();
            }
            if let Some(d) = ms.lock_timeout {
                step = step.lock_timeout(d);
            }
            if let Some(d) = ms
                .timeouts
                .get(&m.version)
                .or(ms.statement_timeout.as_ref())
            {
                step = step.statement_timeout(*d);
            }
            if let Some((file, text)) = &m.verify {
                out.verifiers.push((
                    m.id(),
                    ScriptVerifier::new(db, format!("verify:{}", m.id()), file, text)?,
                ));
            }
            let covered = step.reversibility() == Reversibility::RestoreOnly;
            if covered {
                if let (Some(_), Some(reason)) = (opaque_line, ms.approval(m)) {
                    out.approved.insert(m.id(), reason.to_string());
                } else if let Some(line) = opaque_line {
                    out.problems.push(MigrationError::NotReversible {
                        file: m.file.clone(),
                        line,
                        reason: "no down, and a statement the scanner cannot see into \
                                 (what it changes is unknown, so no checkpoint can cover it)"
                            .into(),
                    });
                }
            }
            per.push((step, touch, covered, i));
        }
        // Tables created by the plan are not there to checkpoint: their removal is the
        // structure's.
        let mut created: BTreeSet<Table> = BTreeSet::new();
        let altered: BTreeSet<Table> = per
            .iter()
            .flat_map(|(_, t, _, _)| t.altered.iter().chain(t.emptied.iter()).cloned())
            .collect();
        let mut covers: Vec<(BTreeSet<Table>, bool)> = Vec::new();
        for (_, touch, covered, _) in &per {
            let mut tables = BTreeSet::new();
            let mut structure = !touch.structure.is_empty();
            if *covered {
                for t in touch.data.iter().chain(touch.emptied.iter()) {
                    if self.existing.contains(t) && !created.contains(t) {
                        let copy = altered.contains(t);
                        let e = out.data.entry(t.clone()).or_insert(false);
                        *e |= copy;
                        tables.insert(t.clone());
                    } else {
                        // Rows of a table the plan creates: gone with the structure.
                        out.schemas.insert(t.schema.clone());
                        structure = true;
                    }
                }
                out.schemas.extend(touch.structure.iter().cloned());
            }
            created.extend(touch.created.iter().cloned());
            covers.push((tables, structure));
        }
        let schema_resource = db.schema_resource(&out.schemas.iter().cloned().collect::<Vec<_>>());
        for ((step, _, covered, i), (tables, structure)) in per.into_iter().zip(covers) {
            let m = &ms.all[i];
            if !covered {
                out.reverts.push((m.id(), Revert::Down));
                out.steps.push(step);
                continue;
            }
            if let Some(reason) = out.approved.get(&m.id()) {
                // Nothing can undo it: it touches nothing a checkpoint restores.
                out.reverts.push((m.id(), Revert::Approved(reason.clone())));
                out.steps.push(step);
                continue;
            }
            let mut step = step;
            let mut resources = Vec::new();
            for t in &tables {
                step = step.touches_table(t);
                resources.push(db.table_resource(t));
            }
            if structure {
                step = step.touching(schema_resource.clone());
                resources.push(schema_resource.clone());
            }
            let revert =
                if out.problems.iter().any(
                    |p| matches!(p, MigrationError::NotReversible { file, .. } if *file == m.file),
                ) {
                    Revert::NeedsApproval("no down and an opaque statement".into())
                } else {
                    Revert::Checkpoint(resources)
                };
            out.reverts.push((m.id(), revert));
            out.steps.push(step);
        }
        Ok(out)
    }

    /// The plan: a ledger step, then each pending migration after the one before it, with
    /// the covering checkpoints.
    ///
    /// # Errors
    /// [`MigrationError::TransactionControl`], [`MigrationError::SessionState`],
    /// [`MigrationError::NotReversible`], [`MigrationError::Plan`].
    pub fn plan(&self) -> Result<Plan, MigrationError> {
        let ms = &self.migrations;
        let mut built = self.build()?;
        if !built.problems.is_empty() {
            return Err(built.problems.remove(0));
        }
        let tool = ms.format.tool();
        let name = match (self.migrations().first(), self.migrations().last()) {
            (Some(a), Some(b)) => {
                format!("{tool}:{}:{}..{}", ms.dir.display(), a.version, b.version)
            }
            _ => format!("{tool}:{}:nothing-pending", ms.dir.display()),
        };
        let mut b = Plan::builder(name);
        for (t, copy) in &built.data {
            b = if *copy || ms.kind == CheckpointKind::Snapshot {
                b.checkpoint("db", TableSnapshot::new(&self.db, t.clone()))
            } else {
                b.checkpoint("db", TableUndoLog::new(&self.db, t.clone()))
            };
        }
        if !built.schemas.is_empty() {
            b = b.checkpoint(
                "db",
                SchemaSnapshot::new(&self.db, built.schemas.iter().cloned()),
            );
        }
        let ledger = ms.ledger();
        let ledger_id = format!("{tool}-ledger");
        // The ledger's tables are checked like any other resource: a rollback proves them
        // back at their baseline (a fingerprint; the ledger step's own revert undoes them,
        // so nothing is copied). Not when an approved irreversible migration keeps its row:
        // the ledger then rightly differs from its baseline.
        let ledger_tables = if built.approved.is_empty() {
            ledger.tables()
        } else {
            Vec::new()
        };
        for t in &ledger_tables {
            b = b.checkpoint("db", TableSnapshot::new(&self.db, t.clone()));
        }
        // Approved irreversible migrations stay applied, and so does their ledger row.
        let versions: Vec<&Migration> = self
            .migrations()
            .into_iter()
            .filter(|m| !built.approved.contains_key(&m.id()))
            .collect();
        let before = self
            .migrations()
            .into_iter()
            .rfind(|m| built.approved.contains_key(&m.id()))
            .map(|m| m.version.clone())
            .or_else(|| self.before.clone());
        b = b.step(
            "db",
            LedgerStep {
                id: ledger_id.clone(),
                touches: ledger_tables
                    .iter()
                    .map(|t| self.db.table_resource(t))
                    .collect(),
                db: self.db.clone(),
                restore: ledger.restore_sql(&versions, before.as_deref()),
                migrations: versions.iter().map(|m| (*m).clone()).collect(),
                before: before.clone(),
                ledger,
            },
            &[],
        );
        let mut prev = ledger_id;
        for step in built.steps.drain(..) {
            let id = step.id().to_string();
            let mut scanned = Scanned::new(step);
            if let Some(reason) = built.approved.get(&id) {
                scanned.reversibility = Reversibility::Irreversible;
                b = b.approve_irreversible(&id, reason);
            }
            b = b.step("db", scanned, &[prev.as_str()]);
            prev = id;
        }
        for (step, v) in built.verifiers.drain(..) {
            b = b.verify_after(&step, v);
        }
        Ok(b.build()?)
    }
}

fn refuse_session_state(file: &Path, sql: &str, first_line: usize) -> Result<(), MigrationError> {
    for l in scan::locate(sql, first_line) {
        if let Some(why) = sqlscan::session_state(&l.st) {
            return Err(MigrationError::SessionState {
                file: file.to_path_buf(),
                line: l.line,
                statement: scan::short(&l.st.text),
                why,
            });
        }
    }
    Ok(())
}
