//! Reading a migration folder in each tool's layout.

use super::{Format, Migration, MigrationError};
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
    };
    out.sort_by_key(|m| m.number);
    for w in out.windows(2) {
        if w[0].number == w[1].number {
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
        out.push(Migration {
            number: parse_version(path, v)?,
            version: v.to_string(),
            name: desc.replace('_', " "),
            file: path.clone(),
            checksum_source: up.clone().into_bytes(),
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
        out.push(Migration {
            number: parse_version(path, v)?,
            version: v.to_string(),
            name: title.to_string(),
            file: path.clone(),
            checksum_source: Vec::new(),
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
            number: parse_version(path, v)?,
            version: v.to_string(),
            name: rest.to_string(),
            file: path.clone(),
            checksum_source: Vec::new(),
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
            number: parse_version(&path, &v)?,
            version: v,
            name: rest.to_string(),
            file: up_path.clone(),
            checksum_source: Vec::new(),
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
