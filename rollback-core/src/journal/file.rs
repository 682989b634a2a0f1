use super::{
    check_fence, decide_lease, now_ms, released, Entry, Journal, JournalError, Lease, LiveProgress,
    LostTail, Record, WitnessedOutcome,
};
use crate::{Digest, Error, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The embedded default journal: one append-only file per run in a folder.
///
/// Each record is one line of JSON, sealed into the run's blake3 hash chain and
/// `fsync`ed before [`Journal::append`] returns, i.e. before the action it announces.
/// Reads verify the chain and never write (they work on a read-only mount): an altered,
/// reordered or missing record in the middle is a [`JournalError`], while bytes of a
/// record cut short after the last complete one (a write torn by a crash) are left out of
/// [`Journal::records`] and reported by [`Journal::lost_tail`]. The next append drops
/// them and records that it did ([`Entry::TailTruncated`]). A last record whose JSON is
/// whole and verifies but whose newline is missing or damaged was written in full: it is
/// read as a record, and the next append restores its newline.
///
/// When a run reaches an outcome (`committed`, `rolled_back`) the journal also writes a
/// small witness file beside the run (`<run>.end`, fsynced). Should the run's file later
/// lose its end (cut at a line boundary, which no hash chain can tell from a crash), the
/// witness still says an outcome was reached: [`Journal::lost_tail`] reports it, and
/// appends are refused until [`Entry::TailLossResolved`] records an explicit decision.
///
/// File locks (`flock`) serialize writers of different processes (readers take a shared
/// lock), and leases live in `<key>.lease` files beside the runs; a released lease keeps
/// its fencing epoch in that file.
///
/// Its file work runs on tokio's blocking pool, so the runtime's thread goes on with other
/// tasks while a write is synced; [`FileJournal::inline_io`] runs it on the calling thread
/// instead, for the lowest cost per append.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use rollback_core::journal::{Entry, FileJournal, Journal};
/// let dir = tempfile::tempdir().unwrap();
/// let j = FileJournal::open(dir.path()).unwrap();
/// j.append("run-1", &Entry::Committed, 0).await.unwrap();
/// let again = FileJournal::open(dir.path()).unwrap();
/// assert_eq!(again.records("run-1").await.unwrap().len(), 1);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct FileJournal {
    inner: Arc<Inner>,
    /// File work on the calling thread ([`FileJournal::inline_io`]).
    inline: bool,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Per run, the head as last written by this process.
    heads: Mutex<HashMap<String, Head>>,
    /// Per run, what its file held when this process last read or wrote it.
    index: Mutex<HashMap<String, Indexed>>,
}

/// What a run's file says about the run — its plan, whether it ended — as of the file's
/// `stamp`: valid while the file keeps that length and modification time, so a run that
/// no process touched since is not read again (`runs_of_plan`, `open_runs_of_plan`).
/// Appends by any process grow the file; a rewrite changes its time — unless it comes
/// within the file system's timestamp granularity of the change before, which is why an
/// entry is trusted only once the file's time is [`RACY`] older than the moment the entry
/// was taken (as git treats "racily clean" index entries): a file changed since then has
/// a later time. A file that this process wrote last needs no such wait: when it still
/// has the length that this process's last append left, no journal writer wrote it since,
/// since journal writers only append (a torn tail, the one thing they cut, is left by a
/// writer that crashed or whose write failed, and this process's last append did not).
/// So a run appended to by this process, then listed at once (the next run of a fleet or
/// a loop), is not read again.
#[derive(Debug, Clone)]
struct Indexed {
    stamp: Stamp,
    /// When `stamp` was taken (after the read or write that the entry describes).
    seen_at: std::time::SystemTime,
    /// The plan of its `run_started` first record.
    plan: Option<String>,
    /// [`run_ended`](super::run_ended) of its records.
    ended: bool,
}

/// How much older than its index entry a run file's time must be for the entry to be
/// trusted: above the timestamp granularity of local Linux file systems (ext4, xfs, btrfs
/// and tmpfs stamp with the kernel tick, at most 10 ms; since Linux 6.13 a change after a
/// `stat` always gets a new time). On file systems with coarser times (FAT, ext3) a
/// rewrite to the same length within their granularity may go unseen by the listings
/// until the file changes again; `records` always reads and verifies.
const RACY: Duration = Duration::from_millis(20);

/// A file's length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The end of a run's file as this process last wrote it.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// Seq of the next record.
    next: u64,
    /// Hash of the last record.
    prev: Digest,
    /// Epoch of the last record.
    epoch: u64,
    /// File length after the last record.
    len: u64,
}

impl FileJournal {
    /// Open (creating if needed) a journal folder. An existing folder on a read-only
    /// file system opens for reading.
    ///
    /// # Errors
    /// I/O errors creating the folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(JournalError::Io)?;
        }
        Ok(FileJournal {
            inner: Arc::new(Inner {
                dir,
                heads: Mutex::new(HashMap::new()),
                index: Mutex::new(HashMap::new()),
            }),
            inline: false,
        })
    }

    /// Do the journal's file work — reads, writes, `fsync`s — on the thread of the task
    /// that calls it, instead of handing each call to tokio's blocking pool and back.
    ///
    /// An append then costs its write and its `fsync` and little else. The hand-off costs
    /// two thread wake-ups per call; beside a fast disk's `fsync` (about 170 µs on a local
    /// NVMe volume) that is a fifth more per step (see the `compare` bench, section 4).
    /// The price: for as long as the `fsync` lasts — or a wait for the file lock that
    /// another process holds (a runner stopped in the middle of a lease renewal holds the
    /// lease's lock) — that thread runs no other task, and on a current-thread runtime
    /// nothing else runs: no timeout fires, no cancellation is seen, no lease is renewed.
    /// Choose it for a process whose runtime serves the run and little else, running many
    /// short steps (flag flips, object copies) where tens of microseconds per step add up;
    /// keep the default (off) where the runtime also serves other work, such as a web
    /// server that runs migrations, or on a disk whose `fsync` takes milliseconds, where
    /// the hand-off is lost in the sync.
    ///
    /// Durability and locking are the same either way. A panic in the file work (a bug)
    /// unwinds into the caller instead of coming back as a [`JournalError::Backend`].
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use rollback_core::journal::{Entry, FileJournal, Journal};
    /// let dir = tempfile::tempdir().unwrap();
    /// let j = FileJournal::open(dir.path()).unwrap().inline_io(true);
    /// j.append("run-1", &Entry::Committed, 0).await.unwrap();
    /// assert_eq!(j.records("run-1").await.unwrap().len(), 1);
    /// # });
    /// ```
    #[must_use]
    pub fn inline_io(mut self, inline: bool) -> Self {
        self.inline = inline;
        self
    }

    /// The folder this journal lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file holding the records of `run_id`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a run id that is not a safe file name.
    pub fn run_path(&self, run_id: &str) -> Result<PathBuf> {
        let ok = !run_id.is_empty()
            && run_id.len() <= 128
            && !run_id.starts_with('.')
            && run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(Error::invalid(format!(
                "run id {run_id:?} is not a safe file name"
            )));
        }
        Ok(self.inner.dir.join(format!("{run_id}.journal")))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.inline {
            return f(&self.inner);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::from(JournalError::Backend(format!("journal task failed: {e}"))))?
    }
}

/// Open `path` for writing (creating it) and lock it exclusively.
fn lock_for_write(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(JournalError::Io)?;
    f.lock().map_err(JournalError::Io)?;
    Ok(f)
}

/// Open `path` read-only with a shared lock; `None` when it does not exist.
fn lock_for_read(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => {
            f.lock_shared().map_err(JournalError::Io)?;
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::Io(e).into()),
    }
}

/// A run's file, read and verified.
struct Parsed {
    records: Vec<Record>,
    /// Bytes holding the records (the last one's newline included when present).
    records_len: u64,
    /// The last record is whole but its newline is missing (or was damaged).
    missing_newline: bool,
    /// Bytes after the records that are no record: a write cut short.
    torn: u64,
    /// The entry type of the cut record, when its bytes say it.
    torn_kind: Option<String>,
}

fn read_all(file: &mut File) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(JournalError::Io)?;
    file.read_to_end(&mut bytes).map_err(JournalError::Io)?;
    Ok(bytes)
}

/// Parse and verify a run file's bytes. Every newline-terminated line must be a record
/// chained to the one before; what follows the last newline is either a whole record
/// without its newline, or a torn write.
fn parse(run_id: &str, bytes: &[u8]) -> Result<Parsed> {
    let lines_end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut records: Vec<Record> = Vec::new();
    for (i, line) in bytes[..lines_end].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_slice(line).map_err(|e| JournalError::Malformed {
            run_id: run_id.to_string(),
            line: i as u64 + 1,
            message: e.to_string(),
        })?;
        rec.verify(run_id, records.last())?;
        records.push(rec);
    }
    let tail = &bytes[lines_end..];
    let mut parsed = Parsed {
        records,
        records_len: lines_end as u64,
        missing_newline: false,
        torn: tail.len() as u64,
        torn_kind: None,
    };
    if tail.is_empty() {
        return Ok(parsed);
    }
    let mut stream = serde_json::Deserializer::from_slice(tail).into_iter::<Record>();
    if let Some(Ok(rec)) = stream.next() {
        if rec.verify(run_id, parsed.records.last()).is_ok() {
            // Written in full: only its newline is missing (or a byte after it is not one).
            let used = stream.byte_offset();
            parsed.records.push(rec);
            parsed.records_len += used as u64;
            parsed.missing_newline = true;
            parsed.torn = (tail.len() - used) as u64;
            return Ok(parsed);
        }
    }
    parsed.torn_kind = torn_kind(tail);
    Ok(parsed)
}

/// The entry type named in a cut-short record, if its bytes got that far.
fn torn_kind(tail: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"entry\":{\"type\":\"";
    let at = tail.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &tail[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    let kind = std::str::from_utf8(&rest[..end]).ok()?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| kind.to_string())
}

fn witness_path(run_path: &Path) -> PathBuf {
    run_path.with_extension("end")
}

fn read_witness(run_path: &Path) -> Result<Option<WitnessedOutcome>> {
    match std::fs::read(witness_path(run_path)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            JournalError::Malformed {
                run_id: run_path.display().to_string(),
                line: 0,
                message: format!("outcome witness: {e}"),
            }
            .into()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::Io(e).into()),
    }
}

/// The witnessed outcome the records do not reach, if any (a resolution record after
/// the loss settles it).
fn unmet_witness(
    records: &[Record],
    witness: Option<WitnessedOutcome>,
) -> Option<WitnessedOutcome> {
    let w = witness?;
    let reached = records.iter().any(|r| r.seq == w.seq && r.hash == w.hash);
    let resolved = records
        .iter()
        .any(|r| matches!(r.entry, Entry::TailLossResolved { .. }));
    (!reached && !resolved).then_some(w)
}

/// Write `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync of the
/// folder).
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_whole(path, bytes)?;
    File::open(dir)?.sync_all()
}

/// Replace `path` by `bytes` atomically: a crash leaves the old file or the new one, each
/// whole (temp file, fsync, rename), but the rename itself may not survive it (the folder
/// is not synced): for a change whose loss a crash may undo.
fn replace_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Inner {
    /// Appends `entries` (at least one) with one write and one `fdatasync`.
    fn append(
        &self,
        path: &Path,
        run_id: &str,
        entries: &[Entry],
        epoch: u64,
    ) -> Result<Vec<Record>> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let mut file = lock_for_write(path)?;
        let before = Stamp::of(&file.metadata().map_err(JournalError::Io)?);
        let len = before.len;
        // What the index knew of the file as it is now (updated after the write).
        let mut indexed = self.indexed(run_id, before);
        let cached = self
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .copied()
            .filter(|h| h.len == len);
        // Bytes to write before the new record: a restored newline, a truncation record.
        let mut out = Vec::new();
        let head = match cached {
            Some(h) => h,
            None => {
                let parsed = parse(run_id, &read_all(&mut file)?)?;
                indexed = Some(Indexed::of(before, &parsed.records));
                if let Some(w) = unmet_witness(&parsed.records, read_witness(path)?) {
                    if !matches!(first, Entry::TailLossResolved { .. }) {
                        return Err(JournalError::TailLost {
                            run_id: run_id.to_string(),
                            last_seq: parsed.records.last().map(|r| r.seq),
                            lost: LostTail {
                                torn_bytes: parsed.torn,
                                torn_kind: parsed.torn_kind,
                                witnessed: Some(w),
                            }
                            .to_string(),
                        }
                        .into());
                    }
                }
                let mut head = match parsed.records.last() {
                    Some(r) => Head {
                        next: r.seq + 1,
                        prev: r.hash,
                        epoch: r.epoch,
                        len: parsed.records_len,
                    },
                    None => Head {
                        next: 0,
                        prev: Digest::default(),
                        epoch: 0,
                        len: 0,
                    },
                };
                check_fence(run_id, head.epoch, epoch)?;
                if parsed.torn > 0 || parsed.missing_newline {
                    // Drop what is no record; the truncation is recorded below.
                    file.set_len(parsed.records_len).map_err(JournalError::Io)?;
                }
                if parsed.missing_newline {
                    // Written before the new record, at `head.len` (the record's end).
                    out.push(b'\n');
                }
                if parsed.torn > 0 {
                    tracing::warn!(
                        run_id,
                        torn_bytes = parsed.torn,
                        kind = parsed.torn_kind.as_deref().unwrap_or("unknown"),
                        "dropping a torn last record before appending"
                    );
                    let rec = Record::seal(
                        run_id,
                        head.next,
                        now_ms(),
                        head.prev,
                        epoch,
                        Entry::TailTruncated {
                            bytes: parsed.torn,
                            kind: parsed.torn_kind,
                        },
                    );
                    encode_line(&rec, &mut out)?;
                    head.next += 1;
                    head.prev = rec.hash;
                    head.epoch = epoch;
                }
                head
            }
        };
        check_fence(run_id, head.epoch, epoch)?;
        let at = now_ms();
        let mut recs: Vec<Record> = Vec::with_capacity(entries.len());
        let (mut next, mut prev) = (head.next, head.prev);
        for entry in entries {
            let rec = Record::seal(run_id, next, at, prev, epoch, entry.clone());
            encode_line(&rec, &mut out)?;
            (next, prev) = (rec.seq + 1, rec.hash);
            recs.push(rec);
        }
        file.seek(SeekFrom::Start(head.len))
            .map_err(JournalError::Io)?;
        file.write_all(&out).map_err(JournalError::Io)?;
        file.sync_data().map_err(JournalError::Io)?;
        if head.len == 0 {
            indexed = Some(Indexed::of(before, &[]));
        }
        if let Some(mut ix) = indexed {
            // Index what was written, as of the file after the write.
            for rec in &recs {
                ix.fold(rec);
            }
            let after = file.metadata().map(|m| Stamp::of(&m));
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            match after {
                Ok(stamp) => {
                    ix.stamp = stamp;
                    ix.seen_at = std::time::SystemTime::now();
                    index.insert(run_id.to_string(), ix);
                }
                Err(_) => {
                    index.remove(run_id);
                }
            }
        }
        if head.len == 0 {
            // A new run file: make its directory entry durable too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(JournalError::Io)?;
        }
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).insert(
            run_id.to_string(),
            Head {
                next,
                prev,
                epoch,
                len: head.len + out.len() as u64,
            },
        );
        for (rec, entry) in recs.iter().zip(entries) {
            self.after_append(path, run_id, rec, entry);
        }
        Ok(recs)
    }

    /// The index entry of `run_id` when it is as of `stamp` and can be trusted to be
    /// (see [`Indexed`]).
    fn indexed(&self, run_id: &str, stamp: Stamp) -> Option<Indexed> {
        let wrote_last = self
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .is_some_and(|h| h.len == stamp.len);
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .filter(|ix| ix.stamp == stamp && (wrote_last || ix.settled()))
            .cloned()
    }

    /// Every run of the journal with what its file says now: from the index for files
    /// unchanged since this process last saw them (one `stat` each), read and verified
    /// (under a shared lock) otherwise.
    fn scan(&self, mut keep: impl FnMut(&str, &Indexed)) -> Result<()> {
        for run_id in list_runs(&self.dir)? {
            let path = self.dir.join(format!("{run_id}.journal"));
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => Stamp::of(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(JournalError::Io(e).into()),
            };
            let ix = match self.indexed(&run_id, stamp) {
                Some(ix) => ix,
                None => {
                    let Some(mut f) = lock_for_read(&path)? else {
                        continue;
                    };
                    let stamp = Stamp::of(&f.metadata().map_err(JournalError::Io)?);
                    let ix = Indexed::of(stamp, &parse(&run_id, &read_all(&mut f)?)?.records);
                    self.index
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(run_id.clone(), ix.clone());
                    ix
                }
            };
            keep(&run_id, &ix);
        }
        Ok(())
    }

    /// The witness files a durable record calls for.
    fn after_append(&self, path: &Path, run_id: &str, rec: &Record, entry: &Entry) {
        if matches!(entry, Entry::TailLossResolved { .. }) {
            // The decision is recorded: keep the witness for forensics, out of the way.
            let w = witness_path(path);
            if w.exists() {
                let _ = std::fs::rename(&w, w.with_extension(format!("end.resolved-{}", rec.seq)));
            }
        }
        if entry.is_outcome() {
            let witness = WitnessedOutcome {
                seq: rec.seq,
                kind: entry.kind().to_string(),
                hash: rec.hash,
            };
            let bytes = serde_json::to_vec(&witness).unwrap_or_default();
            if let Err(e) = write_durably(&self.dir, &witness_path(path), &bytes) {
                // The outcome record itself is durable; only the safety net is missing.
                tracing::warn!(run_id, error = %e, "could not write the outcome witness");
            }
        }
    }
}

impl Indexed {
    fn of(stamp: Stamp, records: &[Record]) -> Self {
        Indexed {
            stamp,
            seen_at: std::time::SystemTime::now(),
            plan: super::plan_of(records).map(str::to_string),
            ended: super::run_ended(records),
        }
    }

    /// Whether a change of the file after the entry was taken would show in its time.
    fn settled(&self) -> bool {
        self.stamp
            .modified
            .and_then(|m| m.checked_add(RACY))
            .is_some_and(|m| m < self.seen_at)
    }

    /// Take in a record appended after those indexed.
    fn fold(&mut self, rec: &Record) {
        if rec.seq == 0 {
            if let Entry::RunStarted { plan, .. } = &rec.entry {
                self.plan = Some(plan.clone());
            }
        }
        if let Some(ended) = rec.entry.ends_run() {
            self.ended = ended;
        }
    }
}

/// The ids of the runs in the journal folder `dir`, sorted.
fn list_runs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(JournalError::Io)? {
        let name = e.map_err(JournalError::Io)?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".journal")) {
            out.push(id.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn encode_line(rec: &Record, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(&mut *out, rec)
        .map_err(|e| JournalError::Backend(format!("encoding record: {e}")))?;
    out.push(b'\n');
    Ok(())
}

fn lease_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!("{safe}-{}", Digest::of(key.as_bytes()).short());
    (
        dir.join(format!("{name}.lease")),
        dir.join(format!("{name}.lease.lock")),
    )
}

/// A run's published progress (`<run>.progress`); none when absent or unreadable (it is
/// best effort, never evidence).
fn read_progress(path: &Path) -> Vec<LiveProgress> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn read_lease(path: &Path) -> Option<Lease> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[async_trait]
impl Journal for FileJournal {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        let path = self.run_path(run_id)?;
        let (run_id, entry) = (run_id.to_string(), entry.clone());
        let mut recs = self
            .blocking(move |inner| inner.append(&path, &run_id, &[entry], epoch))
            .await?;
        recs.pop()
            .ok_or_else(|| JournalError::Backend("append wrote no record".into()).into())
    }

    async fn append_all(&self, run_id: &str, entries: &[Entry], epoch: u64) -> Result<Vec<Record>> {
        let path = self.run_path(run_id)?;
        let (run_id, entries) = (run_id.to_string(), entries.to_vec());
        self.blocking(move |inner| inner.append(&path, &run_id, &entries, epoch))
            .await
    }

    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        let path = self.run_path(run_id)?;
        let run_id = run_id.to_string();
        self.blocking(move |_| match lock_for_read(&path)? {
            None => Ok(Vec::new()),
            Some(mut f) => Ok(parse(&run_id, &read_all(&mut f)?)?.records),
        })
        .await
    }

    async fn lost_tail(&self, run_id: &str) -> Result<Option<LostTail>> {
        let path = self.run_path(run_id)?;
        let run_id = run_id.to_string();
        self.blocking(move |_| {
            let parsed = match lock_for_read(&path)? {
                None => Parsed {
                    records: Vec::new(),
                    records_len: 0,
                    missing_newline: false,
                    torn: 0,
                    torn_kind: None,
                },
                Some(mut f) => parse(&run_id, &read_all(&mut f)?)?,
            };
            let witnessed = unmet_witness(&parsed.records, read_witness(&path)?);
            if parsed.torn == 0 && witnessed.is_none() {
                return Ok(None);
            }
            Ok(Some(LostTail {
                torn_bytes: parsed.torn,
                torn_kind: parsed.torn_kind,
                witnessed,
            }))
        })
        .await
    }

    async fn runs(&self) -> Result<Vec<String>> {
        self.blocking(move |inner| list_runs(&inner.dir)).await
    }

    async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        let plan = plan.to_string();
        self.blocking(move |inner| {
            let mut out = Vec::new();
            inner.scan(|run_id, ix| {
                if ix.plan.as_deref() == Some(plan.as_str()) {
                    out.push(run_id.to_string());
                }
            })?;
            Ok(out)
        })
        .await
    }

    async fn open_runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        let plan = plan.to_string();
        self.blocking(move |inner| {
            let mut out = Vec::new();
            inner.scan(|run_id, ix| {
                if ix.plan.as_deref() == Some(plan.as_str()) && !ix.ended {
                    out.push(run_id.to_string());
                }
            })?;
            Ok(out)
        })
        .await
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let (lease_path, lock_path) = lease_paths(&self.inner.dir, key);
        let (key, holder) = (key.to_string(), holder.to_string());
        self.blocking(move |inner| {
            let _lock = lock_for_write(&lock_path)?;
            let current = read_lease(&lease_path);
            let lease = decide_lease(current.as_ref(), &key, &holder, ttl, now_ms())?;
            let bytes = serde_json::to_vec(&lease).unwrap_or_default();
            write_durably(&inner.dir, &lease_path, &bytes).map_err(JournalError::Io)?;
            Ok(lease)
        })
        .await
    }

    async fn publish_progress(&self, run_id: &str, progress: &LiveProgress) -> Result<()> {
        let path = self.run_path(run_id)?.with_extension("progress");
        let progress = progress.clone();
        self.blocking(move |_| {
            let mut all = read_progress(&path);
            match all.iter_mut().find(|p| p.source == progress.source) {
                Some(p) => *p = progress,
                None => all.push(progress),
            }
            // Replaced whole (a reader sees the old file or the new one), not fsynced:
            // progress is not a record.
            let tmp = path.with_extension("progress.tmp");
            let bytes = serde_json::to_vec(&all).unwrap_or_default();
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| JournalError::Io(e).into())
        })
        .await
    }

    async fn progress(&self, run_id: &str) -> Result<Vec<LiveProgress>> {
        let path = self.run_path(run_id)?.with_extension("progress");
        self.blocking(move |_| Ok(read_progress(&path))).await
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        let (lease_path, _) = lease_paths(&self.inner.dir, key);
        self.blocking(move |_| match std::fs::read(&lease_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError::Io(e).into()),
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                JournalError::Backend(format!(
                    "lease file {} is not a lease: {e}",
                    lease_path.display()
                ))
                .into()
            }),
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        let (lease_path, lock_path) = lease_paths(&self.inner.dir, key);
        let holder = holder.to_string();
        self.blocking(move |_| {
            let _lock = lock_for_write(&lock_path)?;
            if let Some(l) = read_lease(&lease_path).filter(|l| l.holder == holder) {
                // Whole but not synced into the folder: should a crash undo the release,
                // the lease is held until it expires, as a crashed holder's is; either
                // file keeps the epoch.
                let bytes = serde_json::to_vec(&released(&l)).unwrap_or_default();
                replace_whole(&lease_path, &bytes).map_err(JournalError::Io)?;
            }
            Ok(())
        })
        .await
    }
}
