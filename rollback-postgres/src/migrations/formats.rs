//! Reading a migration folder in each tool's layout.

use super::{Format, Migration, MigrationError};
use sha2::Digest;
use std::path::{Path, PathBuf};

fn io(path: &Path, e: std::io::Error) -> MigrationError {
    MigrationError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn read(path: &Path) -> Result<String, MigrationError> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, MigrationError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        out.push((name, e.path()));
    }
    out.sort();
    Ok(out)
}

fn parse_version(file: &Path, v: &str) -> Result<u64, MigrationError> {
    v.parse::<u64>().map_err(|_| MigrationError::Parse {
        file: file.to_path_buf(),
        line: 0,
        message: format!("version {v:?} is not a number"),
    })
}

/// `<digits>_<rest>` → (digits, rest).
fn split_version(name: &str) -> Option<(&str, &str)> {
    let end = name.find(|c: char| !c.is_ascii_digit())?;
    if end == 0 || !name[end..].starts_with('_') {
        return None;
    }
    Some((&name[..end], &name[end + 1..]))
}

pub(super) fn load(format: Format, dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let mut out = match format {
        Format::Sqlx => sqlx(dir)?,
        Format::GolangMigrate => golang_migrate(dir)?,
        Format::Dbmate => dbmate(dir)?,
        Format::Diesel => diesel(dir)?,
        Format::Refinery => refinery(dir)?,
        Format::Flyway => flyway(dir)?,
        Format::Sqitch => super::sqitch::load(dir)?,
    };
    out.sort_by(|a, b| a.order.cmp(&b.order));
    for w in out.windows(2) {
        if w[0].order == w[1].order {
            return Err(MigrationError::Duplicate {
                version: w[0].version.clone(),
                files: vec![w[0].file.clone(), w[1].file.clone()],
            });
        }
    }
    Ok(out)
}

/// sqlx: `<version>_<description>.sql` (simple, no down) or `<version>_<description>.up.sql`
/// with `.down.sql`; a first line `-- no-transaction` runs it outside a transaction. The
/// description is the name with `_` as spaces; the checksum is SHA-384 of the up file.
fn sqlx(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let files = entries(dir)?;
    let mut out = Vec::new();
    for (name, path) in &files {
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        if stem.ends_with(".down") {
            continue;
        }
        let Some((v, rest)) = split_version(stem) else {
            continue;
        };
        let (desc, down_path) = match rest.strip_suffix(".up") {
            Some(d) => (d, Some(dir.join(format!("{v}_{d}.down.sql")))),
            None => (rest, None),
        };
        let up = read(path)?;
        let down = match &down_path {
            Some(p) if p.exists() => Some((read(p)?, p.clone())),
            _ => None,
        };
        let transaction = !up.trim_start().starts_with("-- no-transaction");
        // The ledger keeps the version as a number: `0001` is recorded as `1`.
        let number = parse_version(path, v)?;
        out.push(Migration {
            order: vec![number],
            ledger_key: number.to_string(),
            script: name.clone(),
            verify: None,
            sqitch: None,
            unversioned: false,
            version: v.to_string(),
            name: desc.replace('_', " "),
            file: path.clone(),
            checksum: Some(super::ledger::hex(&sha2::Sha384::digest(up.as_bytes()))),
            up,
            up_line: 1,
            down: down.as_ref().map(|(s, _)| s.clone()),
            down_file: down.map(|(_, p)| p),
            down_line: 1,
            transaction,
        });
    }
    Ok(out)
}

/// golang-migrate: `<version>_<title>.up.<ext>` and optional `.down.<ext>`.
fn golang_migrate(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let files = entries(dir)?;
    let mut out = Vec::new();
    for (name, path) in &files {
        let Some((v, rest)) = split_version(name) else {
            continue;
        };
        let Some(i) = rest.find(".up.") else {
            continue;
        };
        let (title, ext) = (&rest[..i], &rest[i + 4..]);
        let down_path = dir.join(format!("{v}_{title}.down.{ext}"));
        let up = read(path)?;
        let down = if down_path.exists() {
            Some(read(&down_path)?)
        } else {
            None
        };
        // The ledger keeps the version as a number: `0001` is recorded as `1`.
        let number = parse_version(path, v)?;
        out.push(Migration {
            order: vec![number],
            ledger_key: number.to_string(),
            script: name.clone(),
            verify: None,
            sqitch: None,
            unversioned: false,
            version: v.to_string(),
            name: title.to_string(),
            file: path.clone(),
            checksum: None,
            up,
            up_line: 1,
            down_file: down.as_ref().map(|_| down_path.clone()),
            down,
            down_line: 1,
            transaction: true,
        });
    }
    Ok(out)
}

/// dbmate: `<version>_<name>.sql` holding `-- migrate:up [transaction:false]` and
/// optionally `-- migrate:down [transaction:false]`.
fn dbmate(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let files = entries(dir)?;
    let mut out = Vec::new();
    for (name, path) in &files {
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let Some((v, rest)) = split_version(stem) else {
            continue;
        };
        let text = read(path)?;
        let sections = dbmate_sections(path, &text)?;
        let up = sections
            .iter()
            .find(|s| s.up)
            .ok_or_else(|| MigrationError::Parse {
                file: path.clone(),
                line: 1,
                message: "no `-- migrate:up` section (dbmate requires one)".into(),
            })?;
        let down = sections.iter().find(|s| !s.up);
        if down.is_some_and(|d| d.transaction != up.transaction) {
            // dbmate reads each section's option on its own; one step runs both alike.
            return Err(MigrationError::Parse {
                file: path.clone(),
                line: down.map(|d| d.marker_line).unwrap_or(1),
                message: "`transaction:false` is set on one section only; set it on both".into(),
            });
        }
        out.push(Migration {
            order: vec![parse_version(path, v)?],
            ledger_key: v.to_string(),
            script: name.clone(),
            verify: None,
            sqitch: None,
            unversioned: false,
            version: v.to_string(),
            name: rest.to_string(),
            file: path.clone(),
            checksum: None,
            up: up.sql.clone(),
            up_line: up.marker_line + 1,
            down: down.map(|d| d.sql.clone()),
            down_file: down.map(|_| path.clone()),
            down_line: down.map(|d| d.marker_line + 1).unwrap_or(1),
            transaction: up.transaction,
        });
    }
    Ok(out)
}

struct Section {
    up: bool,
    marker_line: usize,
    transaction: bool,
    sql: String,
}

fn dbmate_sections(path: &Path, text: &str) -> Result<Vec<Section>, MigrationError> {
    let mut out: Vec<Section> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        let marker = t
            .strip_prefix("-- migrate:")
            .or_else(|| t.strip_prefix("--migrate:"));
        if let Some(m) = marker {
            let mut words = m.split_whitespace();
            let kind = words.next().unwrap_or("");
            let up = match kind {
                "up" => true,
                "down" => false,
                other => {
                    return Err(MigrationError::Parse {
                        file: path.to_path_buf(),
                        line: n + 1,
                        message: format!("unknown dbmate section `migrate:{other}`"),
                    })
                }
            };
            let mut transaction = true;
            for opt in words {
                match opt {
                    "transaction:false" => transaction = false,
                    "transaction:true" => transaction = true,
                    o => {
                        return Err(MigrationError::Parse {
                            file: path.to_path_buf(),
                            line: n + 1,
                            message: format!("unknown dbmate option {o:?}"),
                        })
                    }
                }
            }
            if out.iter().any(|s| s.up == up) {
                return Err(MigrationError::Parse {
                    file: path.to_path_buf(),
                    line: n + 1,
                    message: format!("a second `migrate:{kind}` section"),
                });
            }
            out.push(Section {
                up,
                marker_line: n + 1,
                transaction,
                sql: String::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.sql.push_str(line);
            s.sql.push('\n');
        }
    }
    Ok(out)
}

/// diesel: `<version>_<name>/up.sql` + `down.sql` (+ `metadata.toml`), the version being the
/// folder name before its first `_` without dashes.
fn diesel(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let mut out = Vec::new();
    for (name, path) in entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        let up_path = path.join("up.sql");
        if !up_path.exists() {
            continue;
        }
        let (raw, rest) = name.split_once('_').unwrap_or((name.as_str(), ""));
        let v = raw.replace('-', "");
        let down_path = path.join("down.sql");
        let down = if down_path.exists() {
            Some(read(&down_path)?)
        } else {
            None
        };
        let meta = path.join("metadata.toml");
        let mut transaction = true;
        if meta.exists() {
            for (n, line) in read(&meta)?.lines().enumerate() {
                let l: String = line.chars().filter(|c| !c.is_whitespace()).collect();
                if l == "run_in_transaction=false" {
                    transaction = false;
                } else if l.starts_with("run_in_transaction") && l != "run_in_transaction=true" {
                    return Err(MigrationError::Parse {
                        file: meta.clone(),
                        line: n + 1,
                        message: format!("cannot read {line:?} (true or false)"),
                    });
                }
            }
        }
        out.push(Migration {
            order: vec![parse_version(&path, &v)?],
            ledger_key: v.clone(),
            script: name.clone(),
            verify: None,
            sqitch: None,
            unversioned: false,
            version: v,
            name: rest.to_string(),
            file: up_path.clone(),
            checksum: None,
            up: read(&up_path)?,
            up_line: 1,
            down_file: down.as_ref().map(|_| down_path.clone()),
            down,
            down_line: 1,
            transaction,
        });
    }
    Ok(out)
}

/// Every file under `dir`, recursively, sorted by path (refinery and Flyway search their
/// locations recursively).
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, MigrationError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for (name, path) in entries(&d)? {
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((name, path));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// refinery: `V<n>__<name>.sql` (and `U<n>__<name>.sql`, "unversioned"), searched
/// recursively; the name is `\w+`, the version an `i32`. The checksum is refinery's:
/// SipHash-1-3 (keys 0, 0) over the name, the version and the file's text, each hashed
/// as Rust's `Hash` does (`str`: bytes then `0xff`; `i32`: 4 little-endian bytes).
fn refinery(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let mut out = Vec::new();
    for (name, path) in walk(dir)? {
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let Some(rest) = stem.strip_prefix('V').or_else(|| stem.strip_prefix('U')) else {
            continue;
        };
        let Some((v, title)) = rest.split_once("__") else {
            continue;
        };
        if v.is_empty()
            || !v.chars().all(|c| c.is_ascii_digit() || c == '.')
            || title.is_empty()
            || !title.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let version: i32 = v.parse().map_err(|_| MigrationError::Parse {
            file: path.clone(),
            line: 0,
            message: format!(
                "version {v:?} is not a 32-bit integer (refinery refuses it: InvalidVersion)"
            ),
        })?;
        if version < 0 {
            continue;
        }
        let up = read(&path)?;
        let checksum = {
            use std::hash::{Hash, Hasher};
            let mut h = siphasher::sip::SipHasher13::new();
            title.hash(&mut h);
            version.hash(&mut h);
            up.as_str().hash(&mut h);
            h.finish()
        };
        out.push(Migration {
            version: version.to_string(),
            order: vec![version as u64],
            ledger_key: version.to_string(),
            script: name.clone(),
            verify: None,
            sqitch: None,
            name: title.to_string(),
            file: path.clone(),
            checksum: Some(checksum.to_string()),
            up,
            up_line: 1,
            down: None,
            down_file: None,
            down_line: 1,
            transaction: true,
            unversioned: stem.starts_with('U'),
        });
    }
    Ok(out)
}

/// A Flyway version: parts separated by `.` or `_`, all digits. Trailing zero parts do not
/// count (`1.0` is `1`), as Flyway compares them.
fn flyway_version(file: &Path, v: &str) -> Result<(String, Vec<u64>), MigrationError> {
    let shown = v.replace('_', ".");
    let mut parts = Vec::new();
    for p in shown.split('.') {
        parts.push(p.parse::<u64>().map_err(|_| MigrationError::Parse {
            file: file.to_path_buf(),
            line: 0,
            message: format!("version {v:?} is not a Flyway version (numbers separated by . or _)"),
        })?);
    }
    while parts.len() > 1 && parts.last() == Some(&0) {
        parts.pop();
    }
    Ok((shown, parts))
}

/// Flyway: `V<version>__<description>.sql`, `U<version>__<description>.sql` (its undo),
/// searched recursively; `R__` (repeatable) and `B<version>__` (baseline) files are
/// refused. The checksum is Flyway's CRC-32 of the file's lines without their line
/// breaks (and without a leading byte-order mark), as a signed 32-bit integer.
fn flyway(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let mut out: Vec<Migration> = Vec::new();
    let mut undos: Vec<(Vec<u64>, PathBuf, String)> = Vec::new();
    for (name, path) in walk(dir)? {
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let kind = stem.chars().next().unwrap_or(' ');
        let rest = &stem[kind.len_utf8().min(stem.len())..];
        if kind == 'R' && rest.starts_with("__") {
            return Err(MigrationError::Unsupported {
                file: path.clone(),
                line: 0,
                message:
                    "a Flyway repeatable migration (R__): it runs again whenever its \
                          checksum changes and has no version to roll back to; apply it with \
                          Flyway, or make it a versioned V<version>__ file with a U<version>__ undo"
                        .into(),
            });
        }
        if !matches!(kind, 'V' | 'U' | 'B') {
            continue;
        }
        let Some((v, desc)) = rest.split_once("__") else {
            continue;
        };
        if v.is_empty() || !v.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let (shown, parts) = flyway_version(&path, v)?;
        if kind == 'B' {
            return Err(MigrationError::Unsupported {
                file: path.clone(),
                line: 0,
                message: "a Flyway baseline migration (B<version>__): it replaces the \
                          migrations before it on an empty database only; apply it with Flyway"
                    .into(),
            });
        }
        // Per-script settings (Flyway's script configuration file, `<file>.conf`).
        let mut transaction = true;
        let mut placeholders = true;
        let conf = path.with_file_name(format!("{name}.conf"));
        if conf.exists() {
            for (n, line) in read(&conf)?.lines().enumerate() {
                let l: String = line.chars().filter(|c| !c.is_whitespace()).collect();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                match (k, v.to_ascii_lowercase().as_str()) {
                    ("executeInTransaction", "false") => transaction = false,
                    ("executeInTransaction", "true") => transaction = true,
                    ("placeholderReplacement", "false") => placeholders = false,
                    ("placeholderReplacement", "true") => placeholders = true,
                    ("encoding", "utf-8" | "utf8") => {}
                    _ => {
                        return Err(MigrationError::Unsupported {
                            file: conf.clone(),
                            line: n + 1,
                            message: format!(
                                "script configuration {line:?} (read: executeInTransaction, \
                                 placeholderReplacement, encoding=UTF-8)"
                            ),
                        })
                    }
                }
            }
        }
        let text = read(&path)?;
        if let Some(line) = text.lines().position(|l| placeholders && l.contains("${")) {
            return Err(MigrationError::Unsupported {
                file: path.clone(),
                line: line + 1,
                message: "a Flyway placeholder (${…}): Flyway replaces placeholders before \
                          running a file, this library does not; write the value (or set \
                          placeholderReplacement=false in its .conf)"
                    .into(),
            });
        }
        if kind == 'U' {
            undos.push((parts, path.clone(), text));
            continue;
        }
        out.push(Migration {
            version: shown,
            order: parts,
            ledger_key: String::new(),
            script: path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned(),
            verify: None,
            sqitch: None,
            name: desc.replace('_', " "),
            file: path.clone(),
            checksum: Some(flyway_checksum(&text).to_string()),
            up: text,
            up_line: 1,
            down: None,
            down_file: None,
            down_line: 1,
            transaction,
            unversioned: false,
        });
    }
    for m in &mut out {
        m.ledger_key = m.version.clone();
    }
    for (parts, path, text) in undos {
        let Some(m) = out.iter_mut().find(|m| m.order == parts) else {
            return Err(MigrationError::Parse {
                file: path,
                line: 0,
                message: "an undo migration with no versioned migration of the same version".into(),
            });
        };
        m.down = Some(text);
        m.down_file = Some(path);
    }
    Ok(out)
}

/// Flyway's checksum: CRC-32 over each line's UTF-8 bytes, line breaks (`\n`, `\r\n`,
/// `\r`) excluded and a byte-order mark at the start removed, as a signed 32-bit integer
/// (`ChecksumCalculator`).
pub(super) fn flyway_checksum(text: &str) -> i32 {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut h = crc32fast::Hasher::new();
    for part in text.split('\n') {
        h.update(part.replace('\r', "").as_bytes());
    }
    h.finalize() as i32
}
