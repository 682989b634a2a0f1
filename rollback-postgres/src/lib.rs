//! rollback adapter for PostgreSQL (work in progress).

mod catalog;
mod db;
mod error;
mod hash;
mod ident;
mod markers;
mod reconcile;
mod recovery;
mod schema;
mod snapshot;
mod sqlscan;
mod step;

pub use catalog::{
    Change, ColumnModel, ConstraintModel, EnumModel, FunctionModel, IndexModel, SchemaChange,
    SchemaModel, SequenceModel, TableModel, TriggerModel, ViewModel,
};
pub use db::{Database, DEFAULT_POOL_SIZE};
pub use hash::{ChunkDigest, KeyValue, TableHash, LEAF_ROWS};
pub use ident::{quote_ident, quote_literal, Table};
pub use markers::DEFAULT_MARKER_SCHEMA;
pub use recovery::{RecoveryPoint, RecoveryPointInfo};
pub use schema::{SchemaSnapshot, SCHEMA_KIND};
pub use snapshot::{RestoreMethod, TableSnapshot, DEFAULT_SNAPSHOT_SCHEMA, TABLE_COPY_KIND};
pub use step::{SqlReceipt, SqlStep, TxMode, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
