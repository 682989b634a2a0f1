//! Hashing a big table in parallel: split keys chosen from a sample of the key, each key
//! range hashed by a binary COPY on its own session in one exported snapshot, and the
//! parts stitched into the same root a single pass gives.

use super::copy::CopyParser;
use super::{hash_relation, RowHasher, Shape, TableHash, LEAF_ROWS, ROOT_DOMAIN};
use crate::error::{backend_msg, PgResultExt};
use crate::ident::quote_ident;
use futures::{pin_mut, StreamExt};
use rollback_core::{Digest, Result};
use tokio_postgres::Client;

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
    /// Bytes of COPY data hashed.
    bytes: u64,
    /// The part's runs of fewer rows than a leaf, when asked for (see [`super::Fine`]).
    fine: Vec<super::ChunkDigest>,
}

impl PartHash {
    /// The digest of the part as one chunk: what [`RowHasher`] gives a key range hashed
    /// from its first row (valid for a part hashed with no head).
    fn chunk_digest(&self) -> Digest {
        if self.rows == 0 {
            return Digest::default();
        }
        let mut h = blake3::Hasher::new();
        for l in &self.leaves {
            h.update(l);
        }
        if self.tail_rows > 0 {
            h.update(self.tail.finalize().as_bytes());
        }
        h.update(&self.rows.to_le_bytes());
        Digest(*h.finalize().as_bytes())
    }
}

/// `lo <= key < hi`; a split with fewer literals than key columns bounds a key prefix (in
/// key order, every row below the prefix comes before every row at or above it).
fn range_sql(shape: &Shape, lo: Option<&Split>, hi: Option<&Split>) -> String {
    key_range_sql(&shape.key, "t", lo, hi)
}

/// [`range_sql`] for the key columns `key` of the row alias `alias`.
pub(crate) fn key_range_sql(
    key: &[String],
    alias: &str,
    lo: Option<&Split>,
    hi: Option<&Split>,
) -> String {
    let side = |s: &Split, op: &str| {
        let n = s.lits.len().min(key.len()).max(1);
        let cols: Vec<String> = key[..n]
            .iter()
            .map(|k| format!("{alias}.{}", quote_ident(k)))
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

/// The minimum and maximum of a single integer key of `shape`, and whether they span
/// within 2% of `estimate` values (the key is then taken as dense: rows at known ranks).
async fn integer_key_bounds(
    c: &Client,
    shape: &Shape,
    estimate: u64,
) -> Result<Option<(i64, i64, bool)>> {
    let k0 = format!("t.{}", quote_ident(&shape.key[0]));
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
        return Ok(None);
    };
    let span = (hi as i128 - lo as i128 + 1) as u128;
    let est = estimate as u128;
    Ok(Some((
        lo,
        hi,
        span >= est - est / 50 && span <= est + est / 50,
    )))
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
    let ty0 = key_types.first().map(String::as_str).unwrap_or("text");
    if shape.key.len() == 1 && matches!(ty0, "smallint" | "integer" | "bigint") {
        let Some((lo, hi, dense)) = integer_key_bounds(c, shape, estimate).await? else {
            return Ok(Vec::new());
        };
        let span = (hi as i128 - lo as i128 + 1) as u128;
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

/// Set (`on`) or reset the planner settings for hashing key ranges, in the transaction of
/// each of `clients`: no parallel workers per range (the ranges are already spread over
/// sessions) and, with `index_order` (a plain relation), every range read in key order by the
/// key's unique index — never sorted after a bitmap scan, which spills a range of wide rows
/// to disk. Without statistics (a table just restored or loaded) the planner picks both,
/// at up to twice the cost. A query standing in for the relation (rows set aside by a
/// selective restore) keeps its sort: it may need one.
pub(crate) async fn range_plans(clients: &[&Client], index_order: bool, on: bool) -> Result<()> {
    let sql = match (on, index_order) {
        (true, true) => {
            "SET LOCAL enable_sort = off; SET LOCAL max_parallel_workers_per_gather = 0"
        }
        (true, false) => "SET LOCAL max_parallel_workers_per_gather = 0",
        (false, _) => {
            "SET LOCAL enable_sort TO DEFAULT; SET LOCAL max_parallel_workers_per_gather TO DEFAULT"
        }
    };
    futures::future::try_join_all(clients.iter().map(|c| c.batch_execute(sql)))
        .await
        .ctx("setting the plans for hashing key ranges")?;
    Ok(())
}

/// Rows set aside at the start of a part whose first row has `rank` rows before it.
fn head_for(rank: u64) -> u64 {
    (LEAF_ROWS - rank % LEAF_ROWS) % LEAF_ROWS
}

fn part_sql(shape: &Shape, pred: &str) -> String {
    format!(
        "COPY (SELECT {} FROM {} t WHERE {pred} ORDER BY {}) TO STDOUT (FORMAT binary)",
        shape.select_list("t"),
        shape.rel,
        shape.order_by("t")
    )
}

async fn hash_part(c: &Client, shape: &Shape, pred: &str, head: u64) -> Result<PartHash> {
    let stream = c
        .copy_out(part_sql(shape, pred).as_str())
        .await
        .ctx("hashing table (COPY)")?;
    read_part(stream, head, NO_RUNS).await
}

/// No runs below a leaf (see [`super::Fine`]).
const NO_RUNS: Runs<'static> = Runs {
    every: u64::MAX,
    key_idx: &[],
};

/// Runs of `every` rows kept while a part is hashed (none from [`LEAF_ROWS`] up), each
/// with its first row's key (`key_idx`: the key columns' positions).
#[derive(Clone, Copy)]
struct Runs<'a> {
    every: u64,
    key_idx: &'a [usize],
}

/// Hash one part's COPY stream.
async fn read_part(
    stream: tokio_postgres::CopyOutStream,
    head: u64,
    runs: Runs<'_>,
) -> Result<PartHash> {
    let mut parser = CopyParser::new(u64::MAX, runs.key_idx.to_vec());
    parser.h = RowHasher::recording().with_fine(runs.every);
    parser.head_left = head;
    pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ctx("hashing table (COPY stream)")?;
        parser.feed(&chunk)?;
    }
    parser.flush()?;
    if !parser.done {
        return Err(backend_msg("COPY stream ended without its trailer"));
    }
    let head_bytes = parser.head.len() as u64;
    let fine = parser
        .h
        .fine
        .take()
        .map(super::Fine::finish)
        .unwrap_or_default();
    Ok(PartHash {
        fine,
        head: std::mem::take(&mut parser.head),
        head_rows: parser.head_rows,
        leaves: parser.h.leaves.take().unwrap_or_default(),
        tail: parser.h.leaf.clone(),
        tail_rows: parser.h.leaf_rows,
        rows: parser.head_rows + parser.h.rows,
        bytes: parser.h.bytes + head_bytes,
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
    Ok(stitch(clients, shape, &preds, parts).await?.root)
}

/// The whole relation's hash from its parts in key order (`preds[i]` selects part `i`):
/// the root exactly as a single pass gives it. A part whose first rows should end the
/// previous part's last leaf but were not set aside (or the other way round) is hashed
/// again with the right offset, on a session chosen round-robin among `clients`.
async fn stitch(
    clients: &[&Client],
    shape: &Shape,
    preds: &[String],
    parts: Vec<PartHash>,
) -> Result<TableHash> {
    let mut root = blake3::Hasher::new();
    root.update(ROOT_DOMAIN);
    let mut cur = blake3::Hasher::new();
    let mut cur_rows = 0u64;
    let mut rows = 0u64;
    let mut bytes = 0u64;
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
            part = hash_part(clients[i % clients.len()], shape, &preds[i], head).await?;
        }
        cur.update(&part.head);
        cur_rows += part.head_rows;
        rows += part.rows;
        bytes += part.bytes;
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
    Ok(TableHash {
        rows,
        bytes,
        root: Digest(*root.finalize().as_bytes()),
        chunks: Vec::new(),
    })
}

/// A relation with one dense integer key (`smallint`, `integer` or `bigint` whose span
/// from minimum to maximum is within 2% of `estimate` rows) hashed on `clients` in key
/// ranges of `chunk_rows` key values each, as stored chunks: each range's rows and digest,
/// its start key, and the whole relation's root (the same as a single pass). With
/// `chunk_rows` below [`LEAF_ROWS`] the ranges span four leaves' worth of key values and
/// the chunks are runs of `chunk_rows` rows within them (see [`super::Fine`]). `None` when
/// the key is not such a key, or the relation is empty: hash it in one pass instead.
pub(crate) async fn hash_dense_chunks(
    clients: &[&Client],
    shape: &Shape,
    key_type: &str,
    estimate: u64,
    chunk_rows: u64,
) -> Result<Option<TableHash>> {
    // Ranges of whole leaves (their digests are the chunks), or of a few leaves each kept
    // in runs of fewer rows.
    let (chunk_rows, runs) = if chunk_rows < LEAF_ROWS {
        (LEAF_ROWS * 4, chunk_rows)
    } else {
        (chunk_rows, u64::MAX)
    };
    let width = match key_type {
        "smallint" => 2,
        "integer" => 4,
        "bigint" => 8,
        _ => return Ok(None),
    };
    if shape.key.len() != 1 || clients.len() < 2 || chunk_rows == 0 {
        return Ok(None);
    }
    let Some((lo, hi, true)) = integer_key_bounds(clients[0], shape, estimate).await? else {
        return Ok(None);
    };
    let mut values = Vec::new();
    let mut v = lo as i128 + chunk_rows as i128;
    while v <= hi as i128 {
        values.push(v as i64);
        v += chunk_rows as i128;
    }
    let starts: Vec<Split> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Split {
            lits: vec![typed_literal(&v.to_string(), key_type)],
            rank: Some((i as u64 + 1) * chunk_rows),
        })
        .collect();
    let (ranges, whole) = hash_ranges(clients, shape, &starts, runs).await?;
    if runs < LEAF_ROWS && whole.chunks.len() <= super::FINE_MOST_RUNS {
        return Ok(Some(whole));
    }
    let chunks = ranges
        .into_iter()
        .enumerate()
        .map(|(i, (rows, digest))| super::ChunkDigest {
            start: i.checked_sub(1).map(|j| {
                let be = values[j].to_be_bytes();
                super::KeyValue(vec![super::copy::to_hex(&be[8 - width..])])
            }),
            rows,
            digest,
        })
        .collect();
    Ok(Some(TableHash { chunks, ..whole }))
}

/// Some of a relation's key ranges, each hashed on its own as one chunk (its rows and
/// digest, equal to the stored chunk of a table hashed with the same chunk starts when the
/// rows are): range `i` is `starts[i - 1] <= key < starts[i]` (the first from the start of
/// the key order, the last to its end), for each `i` in `which`. One session; the COPYs
/// are prepared in one round trip and each is asked for while the previous one is read.
pub(crate) async fn hash_chosen_ranges(
    c: &Client,
    shape: &Shape,
    starts: &[Split],
    which: &[usize],
) -> Result<Vec<(u64, Digest)>> {
    if which.is_empty() {
        return Ok(Vec::new());
    }
    range_plans(&[c], shape.is_relation(), true).await?;
    let out = hash_chosen_ranges_in(c, shape, starts, which).await;
    range_plans(&[c], shape.is_relation(), false).await?;
    out
}

async fn hash_chosen_ranges_in(
    c: &Client,
    shape: &Shape,
    starts: &[Split],
    which: &[usize],
) -> Result<Vec<(u64, Digest)>> {
    let sqls: Vec<String> = which
        .iter()
        .map(|&i| {
            let pred = range_sql(shape, i.checked_sub(1).map(|j| &starts[j]), starts.get(i));
            part_sql(shape, &pred)
        })
        .collect();
    let stmts = futures::future::try_join_all(sqls.iter().map(|q| c.prepare(q)))
        .await
        .ctx("hashing table ranges (COPY)")?;
    let mut out = Vec::with_capacity(which.len());
    let mut stream = c
        .copy_out(&stmts[0])
        .await
        .ctx("hashing table ranges (COPY)")?;
    for k in 0..stmts.len() {
        let part = if k + 1 < stmts.len() {
            let (part, next) =
                futures::future::join(read_part(stream, 0, NO_RUNS), c.copy_out(&stmts[k + 1]))
                    .await;
            stream = next.ctx("hashing table ranges (COPY)")?;
            part?
        } else {
            let last = read_part(stream, 0, NO_RUNS).await?;
            out.push((last.rows, last.chunk_digest()));
            break;
        };
        out.push((part.rows, part.chunk_digest()));
    }
    Ok(out)
}

/// The relation hashed in the key ranges that start at `starts` (the first range from the
/// start of the key order, range `i` up to `starts[i]`, the last to the end): one binary
/// COPY per range, each client taking a run of consecutive ranges (all in one snapshot). Returns
/// each range's rows and digest as one chunk — equal to the stored chunk of a table hashed
/// with the same chunk starts when the rows are — and the whole relation's hash (root,
/// rows, bytes; no chunks), the same as a single pass. Only after a range whose row count
/// is not a multiple of [`LEAF_ROWS`] off are the following ranges hashed a second time
/// for the root (see [`stitch`]), so a table whose row counts per range are unchanged is
/// read once. With `runs` below [`LEAF_ROWS`] the whole relation's chunks are runs of that
/// many rows (see [`super::Fine`]), restarting at each range; else it has none.
pub(crate) async fn hash_ranges(
    clients: &[&Client],
    shape: &Shape,
    starts: &[Split],
    runs: u64,
) -> Result<(Vec<(u64, Digest)>, TableHash)> {
    let key_idx = shape.key_idx();
    let runs = Runs {
        every: runs,
        key_idx: &key_idx,
    };
    range_plans(clients, shape.is_relation(), true).await?;
    let out = hash_ranges_in(clients, shape, starts, runs).await;
    range_plans(clients, shape.is_relation(), false).await?;
    out
}

async fn hash_ranges_in(
    clients: &[&Client],
    shape: &Shape,
    starts: &[Split],
    runs: Runs<'_>,
) -> Result<(Vec<(u64, Digest)>, TableHash)> {
    let preds: Vec<String> = (0..=starts.len())
        .map(|i| range_sql(shape, i.checked_sub(1).map(|j| &starts[j]), starts.get(i)))
        .collect();
    // Each session takes a run of consecutive ranges, prepares their COPYs at once and
    // asks for the next range's COPY while it reads the current one, so that the server
    // starts it without a round trip.
    let n = preds.len();
    let w = clients.len().max(1);
    let workers = clients.iter().enumerate().map(|(j, c)| {
        let preds = &preds;
        async move {
            let (from, to) = (n * j / w, n * (j + 1) / w);
            let mut done = Vec::new();
            if from == to {
                return Ok(done);
            }
            // Prepared all at once: one round trip for the run.
            let sqls: Vec<String> = (from..to).map(|i| part_sql(shape, &preds[i])).collect();
            let stmts = futures::future::try_join_all(sqls.iter().map(|q| c.prepare(q)))
                .await
                .ctx("hashing table (COPY)")?;
            let stmts = &stmts;
            let copy = |i: usize| async move {
                c.copy_out(&stmts[i - from])
                    .await
                    .ctx("hashing table (COPY)")
            };
            let mut stream = copy(from).await?;
            for i in from..to {
                if i + 1 < to {
                    let (part, next) =
                        futures::future::join(read_part(stream, 0, runs), copy(i + 1)).await;
                    done.push((i, part?));
                    stream = next?;
                } else {
                    done.push((i, read_part(stream, 0, runs).await?));
                    break;
                }
            }
            Ok::<_, rollback_core::Error>(done)
        }
    });
    let mut parts: Vec<(usize, PartHash)> = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    parts.sort_by_key(|(i, _)| *i);
    let ranges = parts
        .iter()
        .map(|(_, p)| (p.rows, p.chunk_digest()))
        .collect();
    let mut fine: Vec<super::ChunkDigest> = parts
        .iter_mut()
        .flat_map(|(_, p)| std::mem::take(&mut p.fine))
        .collect();
    if let Some(first) = fine.first_mut() {
        first.start = None;
    }
    let mut whole = stitch(
        clients,
        shape,
        &preds,
        parts.into_iter().map(|(_, p)| p).collect(),
    )
    .await?;
    whole.chunks = fine;
    Ok((ranges, whole))
}
