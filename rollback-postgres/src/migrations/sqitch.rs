//! sqitch: its plan file (`sqitch.plan`), the `deploy/`, `revert/` and `verify/` scripts,
//! the ids it gives changes and tags, and its registry (`sqitch.changes`, `tags`,
//! `dependencies`, `events`, `projects`, `releases`) as its PostgreSQL engine writes it.

use super::{Migration, MigrationError};
use crate::ident::{quote_ident, quote_literal};
use sha1::Digest;
use std::path::{Path, PathBuf};

/// One planned change as sqitch's registry records it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub project: String,
    pub uri: Option<String>,
    pub id: String,
    pub name: String,
    pub note: String,
    pub planned_at: String,
    pub planner_name: String,
    pub planner_email: String,
    /// Each required change as the plan names it (`users`, `users@v1`, `@v1`) and the id
    /// of the change it resolves to.
    pub requires: Vec<(String, String)>,
    pub conflicts: Vec<String>,
    pub tags: Vec<Tag>,
}

/// A tag on a change.
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub id: String,
    /// `@name`.
    pub name: String,
    pub note: String,
    pub planned_at: String,
    pub planner_name: String,
    pub planner_email: String,
}

/// The project of a plan: its name and `%uri`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Project {
    pub name: String,
    pub uri: Option<String>,
}

struct Line {
    line: usize,
    name: String,
    deps: Vec<String>,
    date: String,
    planner_name: String,
    planner_email: String,
    note: String,
}

struct Planned {
    l: Line,
    tags: Vec<Line>,
    rework_tags: Vec<String>,
}

fn parse_err(file: &Path, line: usize, message: impl Into<String>) -> MigrationError {
    MigrationError::Parse {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// sqitch's note escapes: `\\`, `\n`, `\r`.
fn unescape(note: &str) -> String {
    let mut out = String::new();
    let mut it = note.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.peek() {
                Some('\\') => {
                    out.push('\\');
                    it.next();
                }
                Some('n') => {
                    out.push('\n');
                    it.next();
                }
                Some('r') => {
                    out.push('\r');
                    it.next();
                }
                _ => out.push(c),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// One change or tag line (without its `@` or `+`): `name [deps] date planner <email> # note`.
fn parse_line(file: &Path, n: usize, body: &str, note: &str) -> Result<Line, MigrationError> {
    let name_end = body.find([' ', '\t', '[']).unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() || name.contains([':', '@', '#', '\\']) {
        return Err(parse_err(file, n, format!("invalid name {name:?}")));
    }
    let mut rest = body[name_end..].trim_start();
    let mut deps = Vec::new();
    if let Some(r) = rest.strip_prefix('[') {
        let end = r
            .find(']')
            .ok_or_else(|| parse_err(file, n, "a dependency list without its `]`"))?;
        deps = r[..end].split_whitespace().map(str::to_string).collect();
        rest = r[end + 1..].trim_start();
    }
    let (date, planner) = rest.split_at(rest.find([' ', '\t']).unwrap_or(rest.len()));
    if !is_date(date) {
        return Err(parse_err(
            file,
            n,
            format!("missing timestamp (YYYY-MM-DDTHH:MM:SSZ) after {name:?}"),
        ));
    }
    let planner = planner.trim_start();
    let (lt, gt) = match (planner.find('<'), planner.rfind('>')) {
        (Some(a), Some(b)) if a > 0 && b > a + 1 && planner[b + 1..].trim().is_empty() => (a, b),
        _ => return Err(parse_err(file, n, "missing planner name and <email>")),
    };
    // sqitch's regex: the name is greedy, then at least one blank before `<`.
    let before = &planner[..lt];
    let planner_name = match before.strip_suffix([' ', '\t']) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => return Err(parse_err(file, n, "missing planner name before <email>")),
    };
    Ok(Line {
        line: n,
        name: name.to_string(),
        deps,
        date: date.to_string(),
        planner_name,
        planner_email: planner[lt + 1..gt].to_string(),
        note: note.to_string(),
    })
}

fn sha1_hex(kind: &str, info: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("{kind} {}\0", info.len()).as_bytes());
    h.update(info.as_bytes());
    super::ledger::hex(&h.finalize())
}

fn file_sha1(bytes: &[u8]) -> String {
    super::ledger::hex(&sha1::Sha1::digest(bytes))
}

/// Read `dir/sqitch.plan` and its scripts (`deploy/`, `revert/`, `verify/`, extension
/// `sql`).
pub(super) fn load(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let plan_file = dir.join("sqitch.plan");
    let text = std::fs::read_to_string(&plan_file).map_err(|e| MigrationError::Io {
        path: plan_file.clone(),
        message: e.to_string(),
    })?;
    let file = plan_file.as_path();
    let mut project = Project::default();
    let mut header = true;
    let mut planned: Vec<Planned> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        let t = line.trim_start();
        if t.is_empty() {
            header = false;
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        if header {
            let Some(p) = t.strip_prefix('%') else {
                return Err(parse_err(
                    file,
                    n,
                    "a blank line must come between pragmas and changes",
                ));
            };
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.trim() {
                "project" => project.name = v.trim().to_string(),
                "uri" => project.uri = Some(v.trim().to_string()),
                _ => {}
            }
            continue;
        }
        let (body, note) = match line.find('#') {
            Some(h) => (&line[..h], unescape(line[h + 1..].trim())),
            None => (line, String::new()),
        };
        let body = body.trim();
        if let Some(tag) = body.strip_prefix('@') {
            let l = parse_line(file, n, tag, &note)?;
            if !l.deps.is_empty() {
                return Err(parse_err(file, n, "tags may not specify dependencies"));
            }
            let Some(last) = planned.last_mut() else {
                return Err(parse_err(
                    file,
                    n,
                    format!("tag @{} declared without a preceding change", l.name),
                ));
            };
            last.tags.push(l);
            continue;
        }
        let body = match body.strip_prefix('-') {
            Some(_) => {
                return Err(MigrationError::Unsupported {
                    file: file.to_path_buf(),
                    line: n,
                    message: "a `-` (revert) entry in the plan: sqitch's plan syntax keeps it \
                              for old plans; remove the change from the plan instead"
                        .into(),
                })
            }
            None => body.strip_prefix('+').unwrap_or(body).trim_start(),
        };
        let l = parse_line(file, n, body, &note)?;
        // A rework: the earlier change of that name takes the tags between them.
        if let Some(d) = planned.iter().rposition(|p| p.l.name == l.name) {
            let mut rework: Vec<String> = Vec::new();
            for p in planned[d + 1..].iter().rev() {
                rework.extend(p.tags.iter().map(|t| t.name.clone()));
            }
            rework.extend(planned[d].tags.iter().map(|t| t.name.clone()));
            if rework.is_empty() {
                return Err(parse_err(
                    file,
                    n,
                    format!(
                        "change {:?} duplicates line {} with no tag between them",
                        l.name, planned[d].l.line
                    ),
                ));
            }
            planned[d].rework_tags = rework;
        }
        planned.push(Planned {
            l,
            tags: Vec::new(),
            rework_tags: Vec::new(),
        });
    }
    if project.name.is_empty() {
        return Err(parse_err(file, 0, "missing %project pragma"));
    }
    let mut out: Vec<Migration> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let head = |p: &Project| {
        let mut s = format!("project {}", p.name);
        if let Some(u) = &p.uri {
            s.push_str(&format!("\nuri {u}"));
        }
        s
    };
    for (idx, p) in planned.iter().enumerate() {
        let l = &p.l;
        let mut requires = Vec::new();
        let mut conflicts = Vec::new();
        for d in &l.deps {
            let (conflict, spec) = match d.strip_prefix('!') {
                Some(s) => (true, s),
                None => (false, d.as_str()),
            };
            let spec = match spec.split_once(':') {
                Some((proj, s)) if proj == project.name => s,
                Some(_) => {
                    return Err(MigrationError::Unsupported {
                        file: file.to_path_buf(),
                        line: l.line,
                        message: format!(
                            "dependency {d:?} on another project's change (only changes of \
                             this plan are resolved)"
                        ),
                    })
                }
                None => spec,
            };
            if conflict {
                conflicts.push(spec.to_string());
                continue;
            }
            let (cname, tag) = match spec.split_once('@') {
                Some((c, t)) => (c, Some(t)),
                None => (spec, None),
            };
            // The change a tag is on: the latest of that name at or before it.
            let tag_at = match tag {
                Some(t) => Some(
                    planned[..idx]
                        .iter()
                        .position(|q| q.tags.iter().any(|x| x.name == t))
                        .ok_or_else(|| {
                            parse_err(
                                file,
                                l.line,
                                format!("dependency {d:?}: no tag @{t} before it"),
                            )
                        })?,
                ),
                None => None,
            };
            let found = match (cname.is_empty(), tag_at) {
                (true, at) => at,
                (false, Some(at)) => (0..=at).rev().find(|&j| planned[j].l.name == cname),
                (false, None) => (0..idx).rev().find(|&j| planned[j].l.name == cname),
            };
            let Some(j) = found else {
                return Err(parse_err(
                    file,
                    l.line,
                    format!("dependency {d:?}: no such change before {:?}", l.name),
                ));
            };
            requires.push((spec.to_string(), ids[j].clone()));
        }
        let mut info = format!("{}\nchange {}", head(&project), l.name);
        if let Some(parent) = ids.last() {
            info.push_str(&format!("\nparent {parent}"));
        }
        info.push_str(&format!(
            "\nplanner {} <{}>\ndate {}",
            l.planner_name, l.planner_email, l.date
        ));
        if !requires.is_empty() {
            let r: Vec<&str> = requires.iter().map(|(s, _)| s.as_str()).collect();
            info.push_str(&format!("\nrequires\n  + {}", r.join("\n  + ")));
        }
        if !conflicts.is_empty() {
            info.push_str(&format!("\nconflicts\n  - {}", conflicts.join("\n  - ")));
        }
        if !l.note.is_empty() {
            info.push_str(&format!("\n\n{}", l.note));
        }
        let id = sha1_hex("change", &info);
        ids.push(id.clone());
        let tags = p
            .tags
            .iter()
            .map(|t| {
                let mut info = format!(
                    "{}\ntag @{}\nchange {id}\nplanner {} <{}>\ndate {}",
                    head(&project),
                    t.name,
                    t.planner_name,
                    t.planner_email,
                    t.date
                );
                if !t.note.is_empty() {
                    info.push_str(&format!("\n\n{}", t.note));
                }
                Tag {
                    id: sha1_hex("tag", &info),
                    name: format!("@{}", t.name),
                    note: t.note.clone(),
                    planned_at: t.date.clone(),
                    planner_name: t.planner_name.clone(),
                    planner_email: t.planner_email.clone(),
                }
            })
            .collect();
        // Script paths: `<name>.sql`, or for a reworked change `<name>@<tag>.sql` (the first
        // rework tag whose deploy script exists).
        let segments = |file_name: &str| -> PathBuf {
            let mut parts: Vec<&str> = l.name.split('/').collect();
            parts.pop();
            let mut p = PathBuf::new();
            for s in parts {
                p.push(s);
            }
            p.push(file_name);
            p
        };
        let base = l.name.rsplit('/').next().unwrap_or(&l.name);
        let rel = if p.rework_tags.is_empty() {
            segments(&format!("{base}.sql"))
        } else {
            let candidates: Vec<PathBuf> = p
                .rework_tags
                .iter()
                .map(|t| segments(&format!("{base}@{t}.sql")))
                .collect();
            candidates
                .iter()
                .find(|c| dir.join("deploy").join(c).exists())
                .unwrap_or(&candidates[0])
                .clone()
        };
        let deploy = dir.join("deploy").join(&rel);
        let bytes = std::fs::read(&deploy).map_err(|e| MigrationError::Io {
            path: deploy.clone(),
            message: e.to_string(),
        })?;
        let up =
            String::from_utf8(bytes.clone()).map_err(|_| parse_err(&deploy, 0, "not UTF-8"))?;
        let revert = dir.join("revert").join(&rel);
        let down = if revert.exists() {
            Some(
                std::fs::read_to_string(&revert).map_err(|e| MigrationError::Io {
                    path: revert.clone(),
                    message: e.to_string(),
                })?,
            )
        } else {
            None
        };
        let verify = dir.join("verify").join(&rel);
        let verify = if verify.exists() {
            let text = std::fs::read_to_string(&verify).map_err(|e| MigrationError::Io {
                path: verify.clone(),
                message: e.to_string(),
            })?;
            Some((verify, text))
        } else {
            None
        };
        let number = idx as u64 + 1;
        out.push(Migration {
            version: number.to_string(),
            order: vec![number],
            ledger_key: id.clone(),
            script: rel.to_string_lossy().into_owned(),
            verify,
            name: l.name.clone(),
            file: deploy,
            checksum: Some(file_sha1(&bytes)),
            up,
            up_line: 1,
            down_file: down.as_ref().map(|_| revert),
            down,
            down_line: 1,
            transaction: true,
            unversioned: false,
            sqitch: Some(Box::new(Change {
                project: project.name.clone(),
                uri: project.uri.clone(),
                id,
                name: l.name.clone(),
                note: l.note.clone(),
                planned_at: l.date.clone(),
                planner_name: l.planner_name.clone(),
                planner_email: l.planner_email.clone(),
                requires,
                conflicts,
                tags,
            })),
        });
    }
    Ok(out)
}

/// The project of a loaded plan.
pub(super) fn project(all: &[Migration]) -> Project {
    all.iter()
        .find_map(|m| m.sqitch.as_ref())
        .map(|c| Project {
            name: c.project.clone(),
            uri: c.uri.clone(),
        })
        .unwrap_or_default()
}

fn text_array(items: &[String]) -> String {
    if items.is_empty() {
        "'{}'::text[]".into()
    } else {
        format!(
            "ARRAY[{}]::text[]",
            items
                .iter()
                .map(|s| quote_literal(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Who deploys: sqitch's committer name and email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committer {
    pub name: String,
    pub email: String,
}

impl Committer {
    /// As sqitch finds it without a configuration file: `SQITCH_FULLNAME` /
    /// `SQITCH_EMAIL`, else the system user and `user@host`.
    pub(crate) fn from_env() -> Self {
        let user = std::env::var("SQITCH_USERNAME")
            .or_else(|_| std::env::var("USER"))
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Committer {
            name: std::env::var("SQITCH_FULLNAME").unwrap_or_else(|_| user.clone()),
            email: std::env::var("SQITCH_EMAIL").unwrap_or_else(|_| format!("{user}@{host}")),
        }
    }
}

/// The registry as sqitch's `pg.sql` creates it (if missing), its release row, and the
/// project's row (as `sqitch deploy` registers it).
pub(super) fn create_sql(schema: &str, project: &Project, who: &Committer) -> String {
    let s = quote_ident(schema);
    let (n, e) = (quote_literal(&who.name), quote_literal(&who.email));
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.releases (
    version REAL PRIMARY KEY, installed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    installer_name TEXT NOT NULL, installer_email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.projects (
    project TEXT PRIMARY KEY, uri TEXT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    creator_name TEXT NOT NULL, creator_email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.changes (
    change_id TEXT PRIMARY KEY, script_hash TEXT NULL, change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES {s}.projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL,
    planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT NOT NULL,
    UNIQUE(project, script_hash));
CREATE TABLE IF NOT EXISTS {s}.tags (
    tag_id TEXT PRIMARY KEY, tag TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES {s}.projects(project) ON UPDATE CASCADE,
    change_id TEXT NOT NULL REFERENCES {s}.changes(change_id) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL,
    planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT NOT NULL,
    UNIQUE(project, tag));
CREATE TABLE IF NOT EXISTS {s}.dependencies (
    change_id TEXT NOT NULL REFERENCES {s}.changes(change_id) ON UPDATE CASCADE ON DELETE CASCADE,
    type TEXT NOT NULL, dependency TEXT NOT NULL,
    dependency_id TEXT NULL REFERENCES {s}.changes(change_id) ON UPDATE CASCADE
        CONSTRAINT dependencies_check CHECK (
            (type = 'require' AND dependency_id IS NOT NULL)
         OR (type = 'conflict' AND dependency_id IS NULL)),
    PRIMARY KEY (change_id, dependency));
CREATE TABLE IF NOT EXISTS {s}.events (
    event TEXT NOT NULL CONSTRAINT events_event_check CHECK (
        event IN ('deploy', 'revert', 'fail', 'merge')),
    change_id TEXT NOT NULL, change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES {s}.projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '', requires TEXT[] NOT NULL DEFAULT '{{}}',
    conflicts TEXT[] NOT NULL DEFAULT '{{}}', tags TEXT[] NOT NULL DEFAULT '{{}}',
    committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL,
    planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT NOT NULL,
    PRIMARY KEY (change_id, committed_at));
INSERT INTO {s}.releases (version, installer_name, installer_email)
    SELECT 1.1, {n}, {e} WHERE NOT EXISTS (SELECT 1 FROM {s}.releases)"
    );
    if !project.name.is_empty() {
        sql.push_str(&format!(
            ";\nINSERT INTO {s}.projects (project, uri, creator_name, creator_email) \
             VALUES ({}, {}, {n}, {e}) ON CONFLICT (project) DO NOTHING",
            quote_literal(&project.name),
            project
                .uri
                .as_deref()
                .map(quote_literal)
                .unwrap_or_else(|| "NULL".into())
        ));
    }
    sql
}

/// The project's deployed changes: change id, script hash, never dirty.
pub(super) fn read_sql(schema: &str, project: &Project) -> String {
    format!(
        "SELECT change_id, script_hash, 'false' FROM {}.changes WHERE project = {} ORDER BY committed_at",
        quote_ident(schema),
        quote_literal(&project.name)
    )
}

const EVENT_COLUMNS: &str = "event, change_id, change, project, note, tags, requires, \
     conflicts, committer_name, committer_email, planned_at, planner_name, planner_email, \
     committed_at";

fn event_sql(s: &str, event: &str, c: &Change, who: &Committer) -> String {
    format!(
        "INSERT INTO {s}.events ({EVENT_COLUMNS}) SELECT {}, {}, {}, {}, clock_timestamp()",
        quote_literal(event),
        event_head(c),
        committer(who),
        event_tail(c),
    )
}

/// change_id … conflicts.
fn event_head(c: &Change) -> String {
    let tags: Vec<String> = c.tags.iter().map(|t| t.name.clone()).collect();
    let req: Vec<String> = c.requires.iter().map(|(r, _)| r.clone()).collect();
    format!(
        "{}, {}, {}, {}, {}, {}, {}",
        quote_literal(&c.id),
        quote_literal(&c.name),
        quote_literal(&c.project),
        quote_literal(&c.note),
        text_array(&tags),
        text_array(&req),
        text_array(&c.conflicts),
    )
}

/// planned_at, planner_name, planner_email.
fn event_tail(c: &Change) -> String {
    format!(
        "{}::timestamptz, {}, {}",
        quote_literal(&c.planned_at),
        quote_literal(&c.planner_name),
        quote_literal(&c.planner_email),
    )
}

fn committer(who: &Committer) -> String {
    format!(
        "{}, {}",
        quote_literal(&who.name),
        quote_literal(&who.email)
    )
}

/// `sqitch revert` of several changes at once (latest first), for those deployed: one
/// statement per registry table.
pub(super) fn erase_all_sql(schema: &str, changes: &[&Change], who: &Committer) -> String {
    let s = quote_ident(schema);
    let ids = changes
        .iter()
        .map(|c| quote_literal(&c.id))
        .collect::<Vec<_>>()
        .join(", ");
    let values = changes
        .iter()
        .rev()
        .enumerate()
        .map(|(i, c)| format!("({i}, {}, {})", event_head(c), event_tail(c)))
        .collect::<Vec<_>>()
        .join(",\n");
    format!(
        "DELETE FROM {s}.tags WHERE change_id IN ({ids});\n\
         DELETE FROM {s}.dependencies WHERE change_id IN ({ids});\n\
         WITH gone AS (DELETE FROM {s}.changes WHERE change_id IN ({ids}) RETURNING change_id) \
         INSERT INTO {s}.events ({EVENT_COLUMNS}) \
         SELECT 'revert', v.change_id, v.change, v.project, v.note, v.tags, v.requires, \
         v.conflicts, {}, v.planned_at, v.planner_name, v.planner_email, clock_timestamp() \
         FROM (VALUES {values}) AS v(ord, change_id, change, project, note, tags, requires, \
         conflicts, planned_at, planner_name, planner_email) \
         JOIN gone USING (change_id) ORDER BY v.ord",
        committer(who)
    )
}

/// What `sqitch deploy` logs for one change: its `changes` row, `dependencies`, `tags`
/// and a `deploy` event.
pub(super) fn record_sql(
    schema: &str,
    c: &Change,
    script_hash: Option<&str>,
    who: &Committer,
) -> String {
    let s = quote_ident(schema);
    let (n, e) = (quote_literal(&who.name), quote_literal(&who.email));
    let mut sql = format!(
        "INSERT INTO {s}.changes (change_id, script_hash, change, project, note, committer_name, \
         committer_email, planned_at, planner_name, planner_email, committed_at) VALUES \
         ({}, {}, {}, {}, {}, {n}, {e}, {}::timestamptz, {}, {}, clock_timestamp())",
        quote_literal(&c.id),
        script_hash
            .map(quote_literal)
            .unwrap_or_else(|| "NULL".into()),
        quote_literal(&c.name),
        quote_literal(&c.project),
        quote_literal(&c.note),
        quote_literal(&c.planned_at),
        quote_literal(&c.planner_name),
        quote_literal(&c.planner_email),
    );
    let mut deps: Vec<String> = c
        .requires
        .iter()
        .map(|(d, id)| {
            format!(
                "({}, 'require', {}, {})",
                quote_literal(&c.id),
                quote_literal(d),
                quote_literal(id)
            )
        })
        .collect();
    deps.extend(c.conflicts.iter().map(|d| {
        format!(
            "({}, 'conflict', {}, NULL)",
            quote_literal(&c.id),
            quote_literal(d)
        )
    }));
    if !deps.is_empty() {
        sql.push_str(&format!(
            ";\nINSERT INTO {s}.dependencies (change_id, type, dependency, dependency_id) VALUES {}",
            deps.join(", ")
        ));
    }
    for t in &c.tags {
        sql.push_str(&format!(
            ";\nINSERT INTO {s}.tags (tag_id, tag, project, change_id, note, committer_name, \
             committer_email, planned_at, planner_name, planner_email, committed_at) VALUES \
             ({}, {}, {}, {}, {}, {n}, {e}, {}::timestamptz, {}, {}, clock_timestamp())",
            quote_literal(&t.id),
            quote_literal(&t.name),
            quote_literal(&c.project),
            quote_literal(&c.id),
            quote_literal(&t.note),
            quote_literal(&t.planned_at),
            quote_literal(&t.planner_name),
            quote_literal(&t.planner_email),
        ));
    }
    sql.push_str(";\n");
    sql.push_str(&event_sql(&s, "deploy", c, who));
    sql
}

/// What `sqitch revert` logs for one change: its rows removed and a `revert` event, only
/// if it is deployed (so it can run again).
pub(super) fn erase_sql(schema: &str, c: &Change, who: &Committer) -> String {
    let s = quote_ident(schema);
    let id = quote_literal(&c.id);
    format!(
        "DELETE FROM {s}.tags WHERE change_id = {id};\n\
         DELETE FROM {s}.dependencies WHERE change_id = {id};\n\
         WITH gone AS (DELETE FROM {s}.changes WHERE change_id = {id} RETURNING 1) {} \
         WHERE EXISTS (SELECT 1 FROM gone)",
        event_sql(&s, "revert", c, who)
    )
}
