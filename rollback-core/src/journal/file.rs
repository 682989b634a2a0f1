use super::{decide_lease, now_ms, Entry, Journal, JournalError, Lease, Record};
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
/// Reads verify the chain: a torn last line (a write cut short by a crash) is truncated
/// away, while an altered, reordered or missing record in the middle is a
/// [`JournalError`]. File locks (`flock`) serialize writers of different processes, and
/// leases live in `<key>.lease` files beside the runs.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use rollback_core::journal::{Entry, FileJournal, Journal};
/// let dir = tempfile::tempdir().unwrap();
/// let j = FileJournal::open(dir.path()).unwrap();
/// j.append("run-1", &Entry::Committed).await.unwrap();
/// let again = FileJournal::open(dir.path()).unwrap();
/// assert_eq!(again.records("run-1").await.unwrap().len(), 1);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct FileJournal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Per run: (next seq, last hash, file length) as last seen by this process.
    heads: Mutex<HashMap<String, (u64, Digest, u64)>>,
}

impl FileJournal {
    /// Open (creating if needed) a journal folder.
    ///
    /// # Errors
    /// I/O errors creating the folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(JournalError::Io)?;
        Ok(FileJournal {
            inner: Arc::new(Inner {
                dir,
                heads: Mutex::new(HashMap::new()),
            }),
        })
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
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::from(JournalError::Backend(format!("journal task failed: {e}"))))?
    }
}

fn lock_file(path: &Path) -> Result<File> {
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

/// Read and verify the records in `file` (locked by the caller), truncating a torn tail.
fn read_locked(run_id: &str, file: &mut File) -> Result<(Vec<Record>, u64)> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(JournalError::Io)?;
    file.read_to_end(&mut bytes).map_err(JournalError::Io)?;
    let complete_len = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete_len < bytes.len() {
        tracing::warn!(
            run_id,
            torn_bytes = bytes.len() - complete_len,
            "journal has a torn last record; truncating it"
        );
        file.set_len(complete_len as u64)
            .map_err(JournalError::Io)?;
        file.sync_all().map_err(JournalError::Io)?;
    }
    let mut records: Vec<Record> = Vec::new();
    for (i, line) in bytes[..complete_len].split(|b| *b == b'\n').enumerate() {
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
    Ok((records, complete_len as u64))
}

impl Inner {
    fn append(&self, path: &Path, run_id: &str, entry: &Entry) -> Result<Record> {
        let mut file = lock_file(path)?;
        let len = file.metadata().map_err(JournalError::Io)?.len();
        let cached = self
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .copied();
        let (seq, prev, len) = match cached {
            Some((seq, prev, l)) if l == len => (seq, prev, len),
            _ => {
                let (recs, len) = read_locked(run_id, &mut file)?;
                match recs.last() {
                    Some(r) => (r.seq + 1, r.hash, len),
                    None => (0, Digest::default(), len),
                }
            }
        };
        let rec = Record::seal(run_id, seq, now_ms(), prev, entry.clone());
        let mut line = serde_json::to_vec(&rec)
            .map_err(|e| JournalError::Backend(format!("encoding record: {e}")))?;
        line.push(b'\n');
        file.seek(SeekFrom::Start(len)).map_err(JournalError::Io)?;
        file.write_all(&line).map_err(JournalError::Io)?;
        file.sync_data().map_err(JournalError::Io)?;
        if len == 0 {
            // A new run file: make its directory entry durable too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(JournalError::Io)?;
        }
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).insert(
            run_id.to_string(),
            (seq + 1, rec.hash, len + line.len() as u64),
        );
        Ok(rec)
    }
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

#[async_trait]
impl Journal for FileJournal {
    async fn append(&self, run_id: &str, entry: &Entry) -> Result<Record> {
        let path = self.run_path(run_id)?;
        let (run_id, entry) = (run_id.to_string(), entry.clone());
        self.blocking(move |inner| inner.append(&path, &run_id, &entry))
            .await
    }

    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        let path = self.run_path(run_id)?;
        if !path.exists() {
            return Ok(Vec::new());
        }
        let run_id = run_id.to_string();
        self.blocking(move |_| {
            let mut f = lock_file(&path)?;
            Ok(read_locked(&run_id, &mut f)?.0)
        })
        .await
    }

    async fn runs(&self) -> Result<Vec<String>> {
        let dir = self.inner.dir.clone();
        self.blocking(move |_| {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir).map_err(JournalError::Io)? {
                let name = e.map_err(JournalError::Io)?.file_name();
                if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".journal")) {
                    out.push(id.to_string());
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let (lease_path, lock_path) = lease_paths(&self.inner.dir, key);
        let (key, holder) = (key.to_string(), holder.to_string());
        self.blocking(move |_| {
            let _lock = lock_file(&lock_path)?;
            let current: Option<Lease> = match std::fs::read(&lease_path) {
                Ok(b) => serde_json::from_slice(&b).ok(),
                Err(_) => None,
            };
            let lease = decide_lease(current.as_ref(), &key, &holder, ttl, now_ms())?;
            let tmp = lease_path.with_extension("lease.tmp");
            let mut f = File::create(&tmp).map_err(JournalError::Io)?;
            f.write_all(&serde_json::to_vec(&lease).unwrap_or_default())
                .map_err(JournalError::Io)?;
            f.sync_all().map_err(JournalError::Io)?;
            std::fs::rename(&tmp, &lease_path).map_err(JournalError::Io)?;
            Ok(lease)
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        let (lease_path, lock_path) = lease_paths(&self.inner.dir, key);
        let holder = holder.to_string();
        self.blocking(move |_| {
            let _lock = lock_file(&lock_path)?;
            if let Ok(b) = std::fs::read(&lease_path) {
                if serde_json::from_slice::<Lease>(&b).is_ok_and(|l| l.holder == holder) {
                    std::fs::remove_file(&lease_path).map_err(JournalError::Io)?;
                }
            }
            Ok(())
        })
        .await
    }
}
