//! Table hashing: a blake3 digest over every row in key order, streamed with binary
//! `COPY … TO STDOUT`, in leaves of [`LEAF_ROWS`] rows grouped into key-range chunks.
//!
//! The canonical encoding of a row is its binary COPY tuple (field count, then each field's
//! length and its `send` bytes), which is also what a binary-format query returns column
//! by column — so a full-table COPY and a key-range query hash identically. Rows are never
//! decoded into Rust values: the hasher only walks the length prefixes to find row
//! boundaries and feeds whole spans of the network buffers to blake3. Memory use is
//! constant whatever the table size.
//!
//! - leaf digest `L` = blake3(concatenated tuples of up to [`LEAF_ROWS`] rows);
//! - chunk digest = blake3(`L`… of its leaves, row count) — a chunk is a key range;
//! - root = blake3(domain, every `L` in order, total rows), independent of the chunking.

use crate::error::{backend_msg, PgResultExt};
use crate::ident::quote_ident;
use bytes::BytesMut;
use futures::{pin_mut, StreamExt, TryStreamExt};
use rollback_core::{Digest, Result};
use serde::{Deserialize, Serialize};
use std::error::Error as StdError;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
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
        }
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

    /// Hash one complete row given as a COPY tuple (used by the query path).
    pub(crate) fn push_row(&mut self, tuple: &[u8], key: impl FnOnce() -> Option<KeyValue>) {
        if self.leaf_full() {
            self.finish_leaf();
        }
        if self.at_chunk_start() && self.rows > 0 {
            self.chunk_start = key();
        }
        self.leaf.update(tuple);
        self.leaf_rows += 1;
        self.rows += 1;
        self.bytes += tuple.len() as u64;
    }

    pub(crate) fn finish(mut self) -> TableHash {
        self.finish_leaf();
        self.finish_chunk();
        self.root.update(&self.rows.to_le_bytes());
        TableHash {
            rows: self.rows,
            bytes: self.bytes,
            root: Digest(*self.root.finalize().as_bytes()),
            chunks: self.chunks,
        }
    }
}

/// Parses a binary COPY stream and hashes it span by span.
struct CopyParser {
    h: RowHasher,
    key_idx: Vec<usize>,
    header_done: bool,
    done: bool,
    pending: Vec<u8>,
    /// Rows still to be set aside before the first leaf starts (see [`PartHash::head`]).
    head_left: u64,
    head: Vec<u8>,
    head_rows: u64,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Bytes gathered before they are hashed.
const FEED_BATCH: usize = 256 * 1024;

#[inline]
fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}
#[inline]
fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

enum Parsed {
    /// A row ending at this offset; key fields' (start, len) when asked.
    Row(usize),
    Trailer(usize),
    Incomplete,
}

impl CopyParser {
    fn new(chunk_leaves: u64, key_idx: Vec<usize>) -> Self {
        CopyParser {
            h: RowHasher::new(chunk_leaves),
            key_idx,
            header_done: false,
            done: false,
            pending: Vec::with_capacity(FEED_BATCH + 64 * 1024),
            head_left: 0,
            head: Vec::new(),
            head_rows: 0,
        }
    }

    /// Take stream bytes. PostgreSQL sends one COPY message per row, a hundred bytes or
    /// so: they are gathered into a large buffer first, so that blake3 and the row walk
    /// run over long spans instead of paying per-call overhead per row.
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.pending.is_empty() && data.len() >= FEED_BATCH {
            let used = self.process(data)?;
            self.pending.extend_from_slice(&data[used..]);
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= FEED_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hash every complete row gathered so far.
    fn flush(&mut self) -> Result<()> {
        let mut buf = std::mem::take(&mut self.pending);
        let used = self.process(&buf)?;
        buf.drain(..used);
        self.pending = buf;
        Ok(())
    }

    #[inline]
    fn row_end(buf: &[u8], p: usize) -> Result<Parsed> {
        if buf.len() < p + 2 {
            return Ok(Parsed::Incomplete);
        }
        let n = be_i16(&buf[p..]);
        if n == -1 {
            return Ok(Parsed::Trailer(p + 2));
        }
        if n < 0 {
            return Err(backend_msg("malformed COPY data: negative field count"));
        }
        let mut q = p + 2;
        for _ in 0..n {
            if buf.len() < q + 4 {
                return Ok(Parsed::Incomplete);
            }
            let len = be_i32(&buf[q..]);
            q += 4;
            if len > 0 {
                q += len as usize;
            } else if len < -1 {
                return Err(backend_msg("malformed COPY data: bad field length"));
            }
            if buf.len() < q {
                return Ok(Parsed::Incomplete);
            }
        }
        Ok(Parsed::Row(q))
    }

    fn key_of(&self, row: &[u8]) -> Option<KeyValue> {
        if self.key_idx.is_empty() {
            return None;
        }
        let fields = tuple_fields(row);
        Some(KeyValue(
            self.key_idx
                .iter()
                .map(|i| {
                    fields
                        .get(*i)
                        .copied()
                        .flatten()
                        .map(to_hex)
                        .unwrap_or_default()
                })
                .collect(),
        ))
    }

    /// Hash complete rows of `buf`; returns the bytes consumed.
    fn process(&mut self, buf: &[u8]) -> Result<usize> {
        let mut p = 0;
        if !self.header_done {
            if buf.len() < 19 {
                return Ok(0);
            }
            if &buf[..11] != SIGNATURE {
                return Err(backend_msg("malformed COPY data: bad signature"));
            }
            let ext = be_i32(&buf[15..]).max(0) as usize;
            if buf.len() < 19 + ext {
                return Ok(0);
            }
            p = 19 + ext;
            self.header_done = true;
        }
        let mut span = p;
        while !self.done {
            match Self::row_end(buf, p)? {
                Parsed::Incomplete => break,
                Parsed::Trailer(end) => {
                    self.done = true;
                    self.h.leaf.update(&buf[span..p]);
                    span = end;
                    p = end;
                }
                Parsed::Row(end) if self.head_left > 0 => {
                    // Head rows come before any leaf row: nothing is pending in `span`.
                    self.head.extend_from_slice(&buf[p..end]);
                    self.head_left -= 1;
                    self.head_rows += 1;
                    p = end;
                    span = end;
                }
                Parsed::Row(end) => {
                    let h = &mut self.h;
                    if h.leaf_full() {
                        h.leaf.update(&buf[span..p]);
                        span = p;
                        h.finish_leaf();
                    }
                    if self.h.at_chunk_start() && self.h.rows > 0 {
                        self.h.chunk_start = self.key_of(&buf[p..end]);
                    }
                    let h = &mut self.h;
                    h.leaf_rows += 1;
                    h.rows += 1;
                    h.bytes += (end - p) as u64;
                    p = end;
                }
            }
        }
        if !self.done {
            self.h.leaf.update(&buf[span..p]);
        }
        Ok(p)
    }
}

/// The fields of one tuple: `None` for NULL.
pub(crate) fn tuple_fields(row: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    if row.len() < 2 {
        return out;
    }
    let n = be_i16(row).max(0) as usize;
    let mut q = 2;
    for _ in 0..n {
        if row.len() < q + 4 {
            break;
        }
        let len = be_i32(&row[q..]);
        q += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = (q + len as usize).min(row.len());
            out.push(Some(&row[q..end]));
            q = end;
        }
    }
    out
}

pub(crate) fn to_hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

pub(crate) fn from_hex(s: &str) -> Result<Vec<u8>> {
    let bad = || rollback_core::Error::invalid("malformed key in snapshot descriptor");
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// A parameter sent as raw binary (`send` format) bytes of whatever type the server expects.
#[derive(Debug, Clone)]
pub(crate) struct RawParam(pub Vec<u8>);

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// A column value as the raw bytes the server sent, whatever its type.
pub(crate) struct Raw<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(raw))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Chunk size in leaves for a table of about `rows` rows: at most ~256 chunks.
pub(crate) fn chunk_leaves_for(rows: u64) -> u64 {
    let leaves = rows / LEAF_ROWS + 1;
    let mut c = 1u64;
    while leaves / c > 256 {
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
    .map(|(h, _)| h)
}

async fn copy_hash(
    c: &Client,
    shape: &Shape,
    pred: &str,
    mut parser: CopyParser,
) -> Result<(TableHash, Vec<[u8; 32]>)> {
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
    Ok((parser.h.finish(), leaves))
}

/// Rows from which a relation is hashed in parallel parts.
pub(crate) const PARALLEL_MIN_ROWS: u64 = 200_000;

/// Where a parallel hash splits a relation: the first key of a part, as typed SQL literals
/// of the key columns (the key need not exist as a row), and, when known, how many rows
/// come before it.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// One `'…'::type` literal per key column.
    pub lits: Vec<String>,
    /// Rows with a smaller key (`None`: counted by the part's session before it hashes).
    pub rank: Option<u64>,
}

/// One key range hashed on its own: its first `head_rows` rows set aside as bytes (they end
/// the previous part's last leaf), then whole leaves, then a partial leaf.
struct PartHash {
    head: Vec<u8>,
    head_rows: u64,
    leaves: Vec<[u8; 32]>,
    tail: blake3::Hasher,
    tail_rows: u64,
    rows: u64,
}

/// `lo <= key < hi`; a split with fewer literals than key columns bounds a key prefix (in
/// key order, every row below the prefix comes before every row at or above it).
fn range_sql(shape: &Shape, lo: Option<&Split>, hi: Option<&Split>) -> String {
    let side = |s: &Split, op: &str| {
        let n = s.lits.len().min(shape.key.len()).max(1);
        let cols: Vec<String> = shape.key[..n]
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect();
        if n == 1 {
            format!("{} {op} {}", cols[0], s.lits[0])
        } else {
            format!(
                "ROW({}) {op} ROW({})",
                cols.join(", "),
                s.lits[..n].join(", ")
            )
        }
    };
    match (lo, hi) {
        (Some(a), Some(b)) => format!("{} AND {}", side(a, ">="), side(b, "<")),
        (Some(a), None) => side(a, ">="),
        (None, Some(b)) => side(b, "<"),
        (None, None) => "TRUE".into(),
    }
}

/// A typed SQL literal.
fn typed_literal(text: &str, ty: &str) -> String {
    format!("{}::{ty}", crate::ident::quote_literal(text))
}

/// Split keys for hashing a table of about `estimate` rows in `parts` parallel parts,
/// found without reading the table: for a single integer key, evenly spaced values between
/// its minimum and maximum (two index probes; when the key range matches the row estimate
/// the keys are taken as dense, which gives each split's rank); otherwise the leading key
/// column's `pg_stats` histogram bounds (ranks counted by the parts); without statistics,
/// the key at row offsets `estimate / parts`… found by walking the key order.
/// `(schema, name)` names the table for `pg_stats` (`None`: statistics are not used);
/// `key_types` are the key columns' types.
pub(crate) async fn choose_splits(
    c: &Client,
    table: Option<(&str, &str)>,
    shape: &Shape,
    key_types: &[String],
    estimate: u64,
    parts: usize,
) -> Result<Vec<Split>> {
    let parts = parts as u64;
    if parts < 2 || shape.key.is_empty() || estimate < PARALLEL_MIN_ROWS {
        return Ok(Vec::new());
    }
    let k0 = format!("t.{}", quote_ident(&shape.key[0]));
    let ty0 = key_types.first().map(String::as_str).unwrap_or("text");
    if shape.key.len() == 1 && matches!(ty0, "smallint" | "integer" | "bigint") {
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT min({k0}) FROM {rel} t)::bigint, (SELECT max({k0}) FROM {rel} t)::bigint",
                    rel = shape.rel
                ),
                &[],
            )
            .await
            .ctx("reading key bounds")?;
        let (Some(lo), Some(hi)): (Option<i64>, Option<i64>) = (row.get(0), row.get(1)) else {
            return Ok(Vec::new());
        };
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let est = estimate as u128;
        let dense = span >= est - est / 50 && span <= est + est / 50;
        let mut out = Vec::new();
        for i in 1..parts as u128 {
            let mut off = span * i / parts as u128;
            if dense {
                off -= off % LEAF_ROWS as u128;
            }
            if off == 0 || off >= span {
                continue;
            }
            let v = lo as i128 + off as i128;
            out.push(Split {
                lits: vec![typed_literal(&v.to_string(), ty0)],
                rank: dense.then_some(off as u64),
            });
        }
        out.dedup_by(|a, b| a.lits == b.lits);
        return Ok(out);
    }
    let bounds: Option<Vec<String>> = match table {
        Some((schema, name)) => c
            .query_opt(
                "SELECT histogram_bounds::text::text[] FROM pg_catalog.pg_stats \
                 WHERE schemaname = $1 AND tablename = $2 AND attname = $3 AND histogram_bounds IS NOT NULL",
                &[&schema, &name, &shape.key[0]],
            )
            .await
            .ctx("reading key statistics")?
            .and_then(|r| r.get(0)),
        None => None,
    };
    if let Some(b) = bounds.filter(|b| b.len() >= 3) {
        let mut out: Vec<Split> = (1..parts)
            .map(|i| Split {
                lits: vec![typed_literal(
                    &b[(b.len() as u64 * i / parts) as usize],
                    ty0,
                )],
                rank: None,
            })
            .collect();
        out.dedup_by(|a, b| a.lits == b.lits);
        return Ok(out);
    }
    // No statistics: walk the key order to the split rows (exact ranks).
    let key_text: Vec<String> = shape
        .key
        .iter()
        .map(|k| format!("t.{}::text", quote_ident(k)))
        .collect();
    let per = (estimate / parts / LEAF_ROWS) * LEAF_ROWS;
    let mut out = Vec::new();
    for i in 1..parts {
        if per == 0 {
            break;
        }
        let row = c
            .query_opt(
                &format!(
                    "SELECT {} FROM {} t ORDER BY {} OFFSET $1 LIMIT 1",
                    key_text.join(", "),
                    shape.rel,
                    shape.order_by("t")
                ),
                &[&((i * per) as i64)],
            )
            .await
            .ctx("finding split keys")?;
        let Some(row) = row else { break };
        let lits = (0..shape.key.len())
            .map(|j| {
                typed_literal(
                    &row.get::<_, String>(j),
                    key_types.get(j).map(String::as_str).unwrap_or("text"),
                )
            })
            .collect();
        out.push(Split {
            lits,
            rank: Some(i * per),
        });
    }
    Ok(out)
}

/// Rows set aside at the start of a part whose first row has `rank` rows before it.
fn head_for(rank: u64) -> u64 {
    (LEAF_ROWS - rank % LEAF_ROWS) % LEAF_ROWS
}

async fn hash_part(c: &Client, shape: &Shape, pred: &str, head: u64) -> Result<PartHash> {
    let sql = format!(
        "COPY (SELECT {} FROM {} t WHERE {pred} ORDER BY {}) TO STDOUT (FORMAT binary)",
        shape.select_list("t"),
        shape.rel,
        shape.order_by("t")
    );
    let mut parser = CopyParser::new(u64::MAX, Vec::new());
    parser.h = RowHasher::recording();
    parser.head_left = head;
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
    Ok(PartHash {
        head: std::mem::take(&mut parser.head),
        head_rows: parser.head_rows,
        leaves: parser.h.leaves.take().unwrap_or_default(),
        tail: parser.h.leaf.clone(),
        tail_rows: parser.h.leaf_rows,
        rows: parser.head_rows + parser.h.rows,
    })
}

/// The root of a relation hashed as key ranges in parallel, one binary COPY per client
/// (`splits.len() + 1` parts, at most `clients.len()`); every client must see the same rows
/// (one exported snapshot, or the relation locked against writes). The root is exactly that
/// of a single pass whatever the splits: a part starting in the middle of a leaf sets its
/// first rows aside and they complete the previous part's last leaf. A part's offset within
/// its leaf comes from its split's rank; when the rank is unknown the part's session counts
/// the rows before the split first, and when a rank proves wrong (the previous parts hold
/// another number of rows) the part is hashed again with the right offset — slower, never a
/// different root.
pub(crate) async fn hash_relation_split(
    clients: &[&Client],
    shape: &Shape,
    mut splits: Vec<Split>,
) -> Result<Digest> {
    splits.truncate(clients.len().saturating_sub(1));
    if splits.is_empty() || shape.key.is_empty() {
        return Ok(hash_relation(clients[0], shape, u64::MAX).await?.root);
    }
    let preds: Vec<String> = (0..=splits.len())
        .map(|i| range_sql(shape, i.checked_sub(1).map(|j| &splits[j]), splits.get(i)))
        .collect();
    let jobs = preds.iter().enumerate().map(|(i, pred)| {
        let c = clients[i];
        let split = i.checked_sub(1).map(|j| &splits[j]);
        async move {
            let rank = match split {
                None => 0,
                Some(Split { rank: Some(r), .. }) => *r,
                Some(s) => {
                    let n: i64 = c
                        .query_one(
                            &format!(
                                "SELECT count(*) FROM {} t WHERE {}",
                                shape.rel,
                                range_sql(shape, None, Some(s))
                            ),
                            &[],
                        )
                        .await
                        .ctx("counting rows before a split key")?
                        .get(0);
                    n.max(0) as u64
                }
            };
            hash_part(c, shape, pred, head_for(rank)).await
        }
    });
    let parts = futures::future::try_join_all(jobs).await?;
    let mut root = blake3::Hasher::new();
    root.update(ROOT_DOMAIN);
    let mut cur = blake3::Hasher::new();
    let mut cur_rows = 0u64;
    let mut rows = 0u64;
    for (i, mut part) in parts.into_iter().enumerate() {
        if cur_rows == LEAF_ROWS {
            root.update(cur.finalize().as_bytes());
            cur.reset();
            cur_rows = 0;
        }
        let head = head_for(cur_rows);
        let aligned =
            part.head_rows == head || (part.head_rows < head && part.rows == part.head_rows);
        if !aligned {
            tracing::debug!(part = i, "split rank was off; hashing the part again");
            part = hash_part(clients[i], shape, &preds[i], head).await?;
        }
        cur.update(&part.head);
        cur_rows += part.head_rows;
        rows += part.rows;
        if part.rows > part.head_rows {
            if cur_rows > 0 {
                root.update(cur.finalize().as_bytes());
            }
            for l in &part.leaves {
                root.update(l);
            }
            cur = part.tail;
            cur_rows = part.tail_rows;
        }
    }
    if cur_rows > 0 {
        root.update(cur.finalize().as_bytes());
    }
    root.update(&rows.to_le_bytes());
    Ok(Digest(*root.finalize().as_bytes()))
}

/// Hash the rows of `lo <= key < hi` with a binary query (same digest as the chunk of a
/// COPY-hashed table spanning that range). Returns (rows, chunk digest).
pub(crate) async fn hash_range(
    c: &Client,
    shape: &Shape,
    lo: Option<&KeyValue>,
    hi: Option<&KeyValue>,
) -> Result<(u64, Digest)> {
    let (pred, params, _) = shape.range_pred("t", lo, hi, 1);
    let sql = format!(
        "SELECT {} FROM {} t WHERE {pred} ORDER BY {}",
        shape.select_list("t"),
        shape.rel,
        shape.order_by("t")
    );
    let stream = c
        .query_raw(sql.as_str(), params.iter())
        .await
        .ctx("hashing key range")?;
    pin_mut!(stream);
    let mut h = RowHasher::new(u64::MAX);
    let mut tuple = Vec::with_capacity(256);
    while let Some(row) = stream.try_next().await.ctx("hashing key range")? {
        encode_tuple(&row, &mut tuple)?;
        h.push_row(&tuple, || None);
    }
    let t = h.finish();
    Ok((
        t.rows,
        t.chunks.first().map(|c| c.digest).unwrap_or_default(),
    ))
}

/// Encode a result row as a binary COPY tuple.
pub(crate) fn encode_tuple(row: &tokio_postgres::Row, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let n = row.len();
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for i in 0..n {
        let v: Option<Raw<'_>> = row
            .try_get(i)
            .map_err(|e| backend_msg(format!("reading column {i}: {e}")))?;
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(Raw(b)) => {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    fn copy_stream(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        for r in rows {
            v.extend_from_slice(r);
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn copy_parsing_matches_row_by_row_hashing_whatever_the_message_boundaries() {
        let rows: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| {
                let k = i.to_be_bytes();
                let s = format!("row {i}");
                tuple(&[Some(&k), if i % 7 == 0 { None } else { Some(s.as_bytes()) }])
            })
            .collect();
        let mut by_row = RowHasher::new(1);
        for r in &rows {
            let key = KeyValue(vec![to_hex(&r[6..10])]);
            by_row.push_row(r, || Some(key));
        }
        let expected = by_row.finish();
        assert_eq!(expected.rows, 10_000);
        assert_eq!(expected.chunks.len(), 3);
        let stream = copy_stream(&rows);
        for split in [1usize, 7, 100, 4096, stream.len()] {
            let mut p = CopyParser::new(1, vec![0]);
            for piece in stream.chunks(split) {
                p.feed(piece).unwrap();
            }
            p.flush().unwrap();
            assert!(p.done);
            assert_eq!(p.h.finish(), expected, "split {split}");
        }
    }

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

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(from_hex("abc").is_err());
    }
}
