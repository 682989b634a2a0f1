//! Table hashing: a blake3 digest over every row in key order, streamed with binary
//! `COPY … TO STDOUT`, in leaves of [`LEAF_ROWS`] rows grouped into key-range chunks.
//!
//! The canonical encoding of a row is its binary COPY tuple (field count, then each field's
//! length and its `send` bytes) — so a full-table COPY and COPYs of its key ranges hash
//! identically, and the server's `record_send` of a row compares the same bytes. Rows are never
//! decoded into Rust values: the hasher only walks the length prefixes to find row
//! boundaries and feeds whole spans of the network buffers to blake3. Memory use is
//! constant whatever the table size.
//!
//! - leaf digest `L` = blake3(concatenated tuples of up to [`LEAF_ROWS`] rows);
//! - chunk digest = blake3(`L`… of its leaves, row count) — a chunk is a key range;
//! - root = blake3(domain, every `L` in order, total rows), independent of the chunking.

mod copy;
mod split;

use copy::CopyParser;
pub(crate) use copy::{from_hex, RawParam};
pub(crate) use split::{
    choose_splits, hash_chosen_ranges, hash_dense_chunks, hash_ranges, hash_relation_split,
    key_range_sql, range_plans, Split, PARALLEL_MIN_ROWS,
};

use crate::error::{backend_msg, PgResultExt};
use crate::ident::quote_ident;
use futures::{pin_mut, StreamExt};
use rollback_core::{Digest, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// Rows per leaf.
pub const LEAF_ROWS: u64 = 4096;

const ROOT_DOMAIN: &[u8] = b"rollback-postgres/table-hash/v1";

/// A key value: the binary (`send`) encoding of each key column, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue(pub Vec<String>);

impl KeyValue {
    pub(crate) fn params(&self) -> Result<Vec<RawParam>> {
        self.0.iter().map(|h| from_hex(h).map(RawParam)).collect()
    }
}

/// The digest of one key range of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDigest {
    /// Key of the chunk's first row (`None` for the first chunk: from the start).
    pub start: Option<KeyValue>,
    /// Rows in the chunk.
    pub rows: u64,
    /// Digest of the chunk.
    pub digest: Digest,
}

/// The hash of a whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableHash {
    /// Rows hashed.
    pub rows: u64,
    /// Bytes of COPY data hashed.
    pub bytes: u64,
    /// The root digest.
    pub root: Digest,
    /// Key-range chunks (chunk `i` spans from its start key to the next chunk's).
    pub chunks: Vec<ChunkDigest>,
}

/// What to hash: a relation, its columns in order, and its ordering key.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// Quoted relation name.
    pub rel: String,
    /// Column names, in table order.
    pub columns: Vec<String>,
    /// Key column names (empty: order by the whole row's text).
    pub key: Vec<String>,
}

impl Shape {
    /// Whether `rel` names a relation (not a query standing in for one).
    pub(crate) fn is_relation(&self) -> bool {
        !self.rel.trim_start().starts_with('(')
    }

    fn key_idx(&self) -> Vec<usize> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| c == k))
            .collect()
    }

    pub(crate) fn order_by(&self, alias: &str) -> String {
        if self.key.is_empty() {
            format!("({alias}.*)::text COLLATE \"C\"")
        } else {
            self.key
                .iter()
                .map(|k| format!("{alias}.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn select_list(&self, alias: &str) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        self.columns
            .iter()
            .map(|c| format!("{alias}.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `WHERE` predicate for `lo <= key < hi` with parameters from `$first`.
    pub(crate) fn range_pred(
        &self,
        alias: &str,
        lo: Option<&KeyValue>,
        hi: Option<&KeyValue>,
        first: usize,
    ) -> (String, Vec<RawParam>, usize) {
        let mut preds = Vec::new();
        let mut params = Vec::new();
        let mut n = first;
        let key = if self.key.len() == 1 {
            format!("{alias}.{}", quote_ident(&self.key[0]))
        } else {
            format!("({})", {
                self.key
                    .iter()
                    .map(|k| format!("{alias}.{}", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        };
        let mut bound = |op: &str, kv: &KeyValue, params: &mut Vec<RawParam>| {
            let ps: Vec<String> = (0..kv.0.len()).map(|i| format!("${}", n + i)).collect();
            n += kv.0.len();
            let rhs = if ps.len() == 1 {
                ps[0].clone()
            } else {
                format!("({})", ps.join(", "))
            };
            preds.push(format!("{key} {op} {rhs}"));
            if let Ok(p) = kv.params() {
                params.extend(p);
            }
        };
        if let Some(lo) = lo {
            bound(">=", lo, &mut params);
        }
        if let Some(hi) = hi {
            bound("<", hi, &mut params);
        }
        let pred = if preds.is_empty() {
            "TRUE".to_string()
        } else {
            preds.join(" AND ")
        };
        (pred, params, n)
    }
}

/// Accumulates leaves, chunks and the root from row bytes.
pub(crate) struct RowHasher {
    chunk_leaves: u64,
    leaf: blake3::Hasher,
    leaf_rows: u64,
    chunk: blake3::Hasher,
    chunk_rows: u64,
    chunk_leaf_count: u64,
    chunk_start: Option<KeyValue>,
    root: blake3::Hasher,
    rows: u64,
    bytes: u64,
    chunks: Vec<ChunkDigest>,
    /// Leaf digests, kept when a relation is hashed in parts (32 bytes per 4096 rows).
    leaves: Option<Vec<[u8; 32]>>,
    /// Digests of runs of fewer rows than a leaf, when asked for (see [`Fine`]).
    pub(super) fine: Option<Fine>,
}

/// Digests of consecutive runs of `every` rows (fewer than [`LEAF_ROWS`]), each with its
/// first row's key: each run's digest is what its key range hashes to as one chunk on its
/// own (blake3 of the run's one leaf digest and its row count), so that a proof can
/// re-hash a few hundred rows around a changed key instead of a whole leaf. Kept beside
/// the leaves (the rows are hashed twice), so the root does not change.
pub(super) struct Fine {
    every: u64,
    h: blake3::Hasher,
    rows: u64,
    pub(super) start: Option<KeyValue>,
    out: Vec<ChunkDigest>,
}

impl Fine {
    fn new(every: u64) -> Self {
        Fine {
            every: every.clamp(1, LEAF_ROWS),
            h: blake3::Hasher::new(),
            rows: 0,
            start: None,
            out: Vec::new(),
        }
    }

    /// Whether the next row starts a run (the caller feeds the pending span and calls
    /// [`Fine::finish_run`] first when one is full, then records the row's key).
    #[inline]
    pub(super) fn full(&self) -> bool {
        self.rows == self.every
    }

    #[inline]
    pub(super) fn at_start(&self) -> bool {
        self.rows == 0
    }

    #[inline]
    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.h.update(bytes);
    }

    #[inline]
    pub(super) fn count_row(&mut self) {
        self.rows += 1;
    }

    pub(super) fn finish_run(&mut self) {
        if self.rows == 0 {
            return;
        }
        if self.out.len() > FINE_MOST_RUNS {
            // Too many to keep (see [`FINE_MOST_RUNS`]): the leaves will do.
            self.h.reset();
            self.rows = 0;
            self.start = None;
            return;
        }
        let leaf = self.h.finalize();
        self.h.reset();
        let mut c = blake3::Hasher::new();
        c.update(leaf.as_bytes());
        c.update(&self.rows.to_le_bytes());
        self.out.push(ChunkDigest {
            start: self.start.take(),
            rows: self.rows,
            digest: Digest(*c.finalize().as_bytes()),
        });
        self.rows = 0;
    }

    /// The runs, in key order (the first run's start is its first row's key).
    pub(super) fn finish(mut self) -> Vec<ChunkDigest> {
        self.finish_run();
        self.out
    }
}

impl RowHasher {
    pub(crate) fn new(chunk_leaves: u64) -> Self {
        let mut root = blake3::Hasher::new();
        root.update(ROOT_DOMAIN);
        RowHasher {
            chunk_leaves: chunk_leaves.max(1),
            leaf: blake3::Hasher::new(),
            leaf_rows: 0,
            chunk: blake3::Hasher::new(),
            chunk_rows: 0,
            chunk_leaf_count: 0,
            chunk_start: None,
            root,
            rows: 0,
            bytes: 0,
            chunks: Vec::new(),
            leaves: None,
            fine: None,
        }
    }

    /// A hasher that also keeps digests of runs of `every` rows (see [`Fine`]); with
    /// `every` of a leaf or more it keeps none.
    pub(super) fn with_fine(mut self, every: u64) -> Self {
        if every < LEAF_ROWS {
            self.fine = Some(Fine::new(every));
        }
        self
    }

    /// A hasher that also keeps its leaf digests (to combine parts into one root).
    fn recording() -> Self {
        let mut h = Self::new(u64::MAX);
        h.leaves = Some(Vec::new());
        h
    }

    /// Whether the next row starts a new leaf (the caller flushes its pending span
    /// first with [`RowHasher::finish_leaf`]).
    #[inline]
    fn leaf_full(&self) -> bool {
        self.leaf_rows == LEAF_ROWS
    }

    fn finish_leaf(&mut self) {
        if self.leaf_rows == 0 {
            return;
        }
        let d = self.leaf.finalize();
        self.leaf.reset();
        if let Some(l) = self.leaves.as_mut() {
            l.push(*d.as_bytes());
        }
        self.root.update(d.as_bytes());
        self.chunk.update(d.as_bytes());
        self.chunk_rows += self.leaf_rows;
        self.leaf_rows = 0;
        self.chunk_leaf_count += 1;
        if self.chunk_leaf_count == self.chunk_leaves {
            self.finish_chunk();
        }
    }

    fn finish_chunk(&mut self) {
        if self.chunk_rows == 0 {
            return;
        }
        self.chunk.update(&self.chunk_rows.to_le_bytes());
        let d = Digest(*self.chunk.finalize().as_bytes());
        self.chunk.reset();
        self.chunks.push(ChunkDigest {
            start: self.chunk_start.take(),
            rows: self.chunk_rows,
            digest: d,
        });
        self.chunk_rows = 0;
        self.chunk_leaf_count = 0;
    }

    /// Whether the next row is the first of a chunk (its key is recorded).
    #[inline]
    fn at_chunk_start(&self) -> bool {
        self.leaf_rows == 0 && self.chunk_leaf_count == 0
    }

    /// Hash one complete row given as a COPY tuple.
    #[cfg(test)]
    pub(crate) fn push_row(&mut self, tuple: &[u8], key: impl Fn() -> Option<KeyValue>) {
        if self.leaf_full() {
            self.finish_leaf();
        }
        if self.at_chunk_start() && self.rows > 0 {
            self.chunk_start = key();
        }
        self.leaf.update(tuple);
        if let Some(f) = self.fine.as_mut() {
            if f.full() {
                f.finish_run();
            }
            if f.at_start() {
                f.start = key();
            }
            f.update(tuple);
            f.count_row();
        }
        self.leaf_rows += 1;
        self.rows += 1;
        self.bytes += tuple.len() as u64;
    }

    /// The table's hash; with fine runs kept, its chunks are those runs (the first
    /// starting from the start of the key order).
    pub(crate) fn finish(self) -> TableHash {
        let (mut h, runs) = self.finish_with_runs();
        if let Some(mut runs) = runs.filter(|r| r.len() <= FINE_MOST_RUNS) {
            if let Some(first) = runs.first_mut() {
                first.start = None;
            }
            h.chunks = runs;
        }
        h
    }

    /// The hash with its chunks, and the fine runs when kept (each with its first row's
    /// key, the first run's included).
    pub(crate) fn finish_with_runs(mut self) -> (TableHash, Option<Vec<ChunkDigest>>) {
        self.finish_leaf();
        self.finish_chunk();
        self.root.update(&self.rows.to_le_bytes());
        let runs = self.fine.take().map(Fine::finish);
        (
            TableHash {
                rows: self.rows,
                bytes: self.bytes,
                root: Digest(*self.root.finalize().as_bytes()),
                chunks: self.chunks,
            },
            runs,
        )
    }
}

/// Chunk size in leaves for a table of about `rows` rows: at most ~1,024 chunks. A diff
/// against stored chunk digests re-reads each differing chunk on both sides, so small
/// chunks keep it close to one read of the table (8,192 rows per chunk at 5M rows); the
/// chunk digests come from the leaves, so more chunks cost no extra hashing.
pub(crate) fn chunk_leaves_for(rows: u64) -> u64 {
    chunk_leaves_within(rows, 1024)
}

/// Chunk size in rows for a table of about `rows` rows, for a proof that re-hashes only
/// the chunks holding changed keys: runs of [`FINE_MIN_ROWS`] rows up to ~16,384 chunks,
/// then twice, four times… as many, up to a leaf ([`LEAF_ROWS`] rows), then whole leaves
/// (as few per chunk as keep it at ~16,384).
pub(crate) fn fine_chunk_rows(rows: u64) -> u64 {
    let mut c = FINE_MIN_ROWS;
    while c < LEAF_ROWS && rows / c > FINE_MOST_CHUNKS {
        c *= 2;
    }
    if c < LEAF_ROWS {
        c
    } else {
        chunk_leaves_within(rows, FINE_MOST_CHUNKS) * LEAF_ROWS
    }
}

/// The smallest chunk [`fine_chunk_rows`] makes.
pub(crate) const FINE_MIN_ROWS: u64 = 256;

/// About the most chunks [`fine_chunk_rows`] makes of a table.
const FINE_MOST_CHUNKS: u64 = 16384;

/// The most runs kept of one table: with more (the row estimate they were sized by was
/// far too low), the chunks are whole leaves instead.
pub(crate) const FINE_MOST_RUNS: usize = 4 * FINE_MOST_CHUNKS as usize;

fn chunk_leaves_within(rows: u64, most: u64) -> u64 {
    let leaves = rows / LEAF_ROWS + 1;
    let mut c = 1u64;
    while leaves / c > most {
        c *= 2;
    }
    c
}

/// Hash a whole relation with one binary COPY, in key order.
pub(crate) async fn hash_relation(
    c: &Client,
    shape: &Shape,
    chunk_leaves: u64,
) -> Result<TableHash> {
    copy_hash(
        c,
        shape,
        "TRUE",
        CopyParser::new(chunk_leaves, shape.key_idx()),
    )
    .await
    .map(|(h, _)| h.finish())
}

/// Hash a whole relation with one binary COPY, in key order, as one chunk, keeping runs
/// of `every` rows (below [`LEAF_ROWS`]; see [`Fine`]) with their first keys: the
/// relation's rows, its digest as one chunk, and the runs.
pub(crate) async fn hash_relation_runs(
    c: &Client,
    shape: &Shape,
    every: u64,
) -> Result<(u64, Digest, Vec<ChunkDigest>)> {
    let mut parser = CopyParser::new(u64::MAX, shape.key_idx());
    parser.h = RowHasher::new(u64::MAX).with_fine(every);
    let (h, _) = copy_hash(c, shape, "TRUE", parser).await?;
    let (h, runs) = h.finish_with_runs();
    let digest = h.chunks.first().map_or(Digest::default(), |c| c.digest);
    Ok((h.rows, digest, runs.unwrap_or_default()))
}

/// Hash a whole relation with one binary COPY, in key order, in chunks of `chunk_rows`
/// rows: of whole leaves from [`LEAF_ROWS`] rows up, else runs of that many rows (see
/// [`Fine`]).
pub(crate) async fn hash_relation_in_chunks(
    c: &Client,
    shape: &Shape,
    chunk_rows: u64,
) -> Result<TableHash> {
    let leaves = (chunk_rows / LEAF_ROWS).max(1);
    let mut parser = CopyParser::new(leaves, shape.key_idx());
    parser.h = RowHasher::new(leaves).with_fine(chunk_rows);
    copy_hash(c, shape, "TRUE", parser)
        .await
        .map(|(h, _)| h.finish())
}

async fn copy_hash(
    c: &Client,
    shape: &Shape,
    pred: &str,
    mut parser: CopyParser,
) -> Result<(RowHasher, Vec<[u8; 32]>)> {
    let sql = format!(
        "COPY (SELECT {} FROM {} t WHERE {pred} ORDER BY {}) TO STDOUT (FORMAT binary)",
        shape.select_list("t"),
        shape.rel,
        shape.order_by("t")
    );
    let stream = c.copy_out(sql.as_str()).await.ctx("hashing table (COPY)")?;
    pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ctx("hashing table (COPY stream)")?;
        parser.feed(&chunk)?;
    }
    parser.flush()?;
    if !parser.done {
        return Err(backend_msg("COPY stream ended without its trailer"));
    }
    parser.h.finish_leaf();
    let leaves = parser.h.leaves.take().unwrap_or_default();
    Ok((parser.h, leaves))
}

#[cfg(test)]
mod tests {
    use super::copy::tests::tuple;
    use super::*;

    #[test]
    fn root_does_not_depend_on_chunk_size() {
        let rows: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| tuple(&[Some(&i.to_be_bytes())]))
            .collect();
        let roots: Vec<Digest> = [1u64, 2, 64]
            .iter()
            .map(|c| {
                let mut h = RowHasher::new(*c);
                for r in &rows {
                    h.push_row(r, || None);
                }
                h.finish().root
            })
            .collect();
        assert_eq!(roots[0], roots[1]);
        assert_eq!(roots[0], roots[2]);
    }

    /// Each fine run's digest is what its rows hashed alone as one chunk give (what a
    /// proof re-hashing that key range computes), its start is its first key, and keeping
    /// runs changes neither the root nor the row count.
    #[test]
    fn fine_runs_are_the_chunks_of_their_rows_hashed_alone() {
        let rows: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| tuple(&[Some(&i.to_be_bytes()), Some(format!("v{i}").as_bytes())]))
            .collect();
        let key = |i: usize| Some(KeyValue(vec![super::copy::to_hex(&rows[i][6..10])]));
        let mut plain = RowHasher::new(1);
        let mut fine = RowHasher::new(u64::MAX).with_fine(256);
        for (i, r) in rows.iter().enumerate() {
            plain.push_row(r, || key(i));
            fine.push_row(r, || key(i));
        }
        let (plain, fine) = (plain.finish(), fine.finish());
        assert_eq!(fine.root, plain.root);
        assert_eq!(fine.rows, plain.rows);
        assert_eq!(fine.chunks.len(), 40);
        for (j, run) in fine.chunks.iter().enumerate() {
            let range = j * 256..((j + 1) * 256).min(rows.len());
            let mut alone = RowHasher::new(u64::MAX);
            for i in range.clone() {
                alone.push_row(&rows[i], || None);
            }
            let alone = alone.finish();
            assert_eq!(run.rows, range.len() as u64);
            assert_eq!(run.digest, alone.chunks[0].digest, "run {j}");
            let start = if j == 0 { None } else { key(range.start) };
            assert_eq!(run.start, start, "run {j}");
        }
        // Runs of 256 rows up to ~8192 of them, then longer runs, then whole leaves.
        assert_eq!(fine_chunk_rows(50_000), 256);
        assert_eq!(fine_chunk_rows(5_000_000), 512);
        assert_eq!(fine_chunk_rows(10_000_000), 1024);
        assert_eq!(fine_chunk_rows(40_000_000), LEAF_ROWS);
        assert_eq!(fine_chunk_rows(200_000_000), 4 * LEAF_ROWS);
        // From a leaf up, no runs are kept: the chunks are whole leaves.
        assert!(RowHasher::new(1).with_fine(LEAF_ROWS).fine.is_none());
    }

    /// A snapshot's chunks: one leaf each up to ~1,024 chunks, then as few leaves each
    /// as keep the count there (a diff re-reads only the differing chunks).
    #[test]
    fn snapshot_chunks_stay_small_and_bounded() {
        assert_eq!(chunk_leaves_for(0), 1);
        assert_eq!(chunk_leaves_for(500_000), 1);
        assert_eq!(chunk_leaves_for(5_000_000), 2);
        assert_eq!(chunk_leaves_for(50_000_000), 16);
        for rows in [1u64, 4_000_000, 5_000_000, 80_000_000, 3_000_000_000] {
            let chunks = (rows / LEAF_ROWS + 1).div_ceil(chunk_leaves_for(rows));
            assert!(chunks <= 1024, "{rows} rows: {chunks} chunks");
        }
    }
}
