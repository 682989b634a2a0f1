//! The binary `COPY` encoding a table hash is taken over: a parser that walks a binary
//! COPY stream by its length prefixes and feeds whole spans to the [`RowHasher`], the
//! fields of one tuple, and raw binary parameters of any type (with their hex form).

use super::{KeyValue, RowHasher};
use crate::error::backend_msg;
use bytes::BytesMut;
use rollback_core::Result;
use std::error::Error as StdError;
use tokio_postgres::types::{IsNull, ToSql, Type};

/// Parses a binary COPY stream and hashes it span by span.
pub(super) struct CopyParser {
    pub(super) h: RowHasher,
    key_idx: Vec<usize>,
    header_done: bool,
    pub(super) done: bool,
    pending: Vec<u8>,
    /// Rows still to be set aside before the first leaf starts (see `PartHash::head` in
    /// [`super::split`]).
    pub(super) head_left: u64,
    pub(super) head: Vec<u8>,
    pub(super) head_rows: u64,
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
    pub(super) fn new(chunk_leaves: u64, key_idx: Vec<usize>) -> Self {
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
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<()> {
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
    pub(super) fn flush(&mut self) -> Result<()> {
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
        // The fine runs' pending span (see [`super::Fine`]), when kept.
        let mut fspan = p;
        while !self.done {
            match Self::row_end(buf, p)? {
                Parsed::Incomplete => break,
                Parsed::Trailer(end) => {
                    self.done = true;
                    self.h.leaf.update(&buf[span..p]);
                    if let Some(f) = self.h.fine.as_mut() {
                        f.update(&buf[fspan..p]);
                    }
                    span = end;
                    fspan = end;
                    p = end;
                }
                Parsed::Row(end) if self.head_left > 0 => {
                    // Head rows come before any leaf row: nothing is pending in `span`.
                    self.head.extend_from_slice(&buf[p..end]);
                    self.head_left -= 1;
                    self.head_rows += 1;
                    p = end;
                    span = end;
                    fspan = end;
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
                    if self.h.fine.is_some() {
                        let key = self
                            .h
                            .fine
                            .as_ref()
                            .is_some_and(|f| f.full() || f.at_start());
                        let key = if key { self.key_of(&buf[p..end]) } else { None };
                        if let Some(f) = self.h.fine.as_mut() {
                            if f.full() {
                                f.update(&buf[fspan..p]);
                                fspan = p;
                                f.finish_run();
                            }
                            if f.at_start() {
                                f.start = key;
                            }
                            f.count_row();
                        }
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
            if let Some(f) = self.h.fine.as_mut() {
                f.update(&buf[fspan..p]);
            }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
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
            by_row.push_row(r, || Some(key.clone()));
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
        // Runs below a leaf kept while parsing are those kept row by row.
        let mut by_row = RowHasher::new(u64::MAX).with_fine(300);
        for r in &rows {
            let key = KeyValue(vec![to_hex(&r[6..10])]);
            by_row.push_row(r, || Some(key.clone()));
        }
        let expected = by_row.finish();
        assert_eq!(expected.chunks.len(), 34);
        for split in [1usize, 7, 100, 4096, stream.len()] {
            let mut p = CopyParser::new(u64::MAX, vec![0]);
            p.h = RowHasher::new(u64::MAX).with_fine(300);
            for piece in stream.chunks(split) {
                p.feed(piece).unwrap();
            }
            p.flush().unwrap();
            assert_eq!(p.h.finish(), expected, "runs, split {split}");
        }
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
