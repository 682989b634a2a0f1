//! rollback adapter for PostgreSQL (work in progress).

mod backfill;
mod catalog;
mod db;
mod diff;
mod error;
mod hash;
mod ident;
mod journal;
mod markers;
mod reconcile;
mod recovery;
mod schema;
mod snapshot;
mod sqlscan;
mod step;
mod verify;

pub use backfill::{Backfill, BackfillCursor, BackfillReceipt};
pub use catalog::{
    Change, ColumnModel, ConstraintModel, EnumModel, FunctionModel, IndexModel, SchemaChange,
    SchemaModel, SequenceModel, TableModel, TriggerModel, ViewModel,
};
pub use db::{Database, DEFAULT_POOL_SIZE};
pub use diff::{RangeDiff, TableDiff};
pub use hash::{ChunkDigest, KeyValue, TableHash, LEAF_ROWS};
pub use ident::{quote_ident, quote_literal, Table};
pub use journal::PgJournal;
pub use markers::DEFAULT_MARKER_SCHEMA;
pub use recovery::{RecoveryPoint, RecoveryPointInfo};
pub use schema::{SchemaSnapshot, SCHEMA_KIND};
pub use snapshot::{RestoreMethod, TableSnapshot, DEFAULT_SNAPSHOT_SCHEMA, TABLE_COPY_KIND};
pub use step::{SqlReceipt, SqlStep, TxMode, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
pub use verify::{
    ForeignKeyIntegrity, RowCountParity, SchemaMatches, SqlAssertion, TableHashParity,
};
