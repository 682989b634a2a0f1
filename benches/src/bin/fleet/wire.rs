//! A counting proxy for the PostgreSQL wire protocol: the fleet's sessions connect through
//! it, and it counts, from the messages themselves, every statement the server completed
//! for them and every round trip, by statement.
//!
//! - A **statement** is one `CommandComplete` message from the server: one per statement
//!   executed, whether it came in a simple query (a `;`-separated batch counts each of
//!   its statements) or through the extended protocol (`Parse`/`Bind`/`Execute`).
//!   `BEGIN` and `COMMIT` count as statements, as the server runs them.
//! - A **round trip** is one `ReadyForQuery` message after the session's start: the end of
//!   one request the client waited for (a simple query, or a pipeline closed by `Sync`).
//!
//! - The **time waited** for a request is measured from its last message to the server's
//!   `ReadyForQuery`: the server's time plus the loopback, what the client waited for.
//!
//! Each completed statement is attributed to the SQL that produced it (the `Execute`d
//! portal's prepared text, or the simple query's text), shortened to a label. The proxy
//! forwards every byte unchanged and needs a session without TLS (`sslmode=disable`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy has counted so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Completed statements by label.
    pub(crate) statements: BTreeMap<String, u64>,
    /// Round trips (requests the client waited for).
    pub(crate) round_trips: u64,
    /// Time from a request's last message to its `ReadyForQuery` (the server's time and
    /// the loopback), in µs, by the label of the request's last statement.
    pub(crate) waited_us: BTreeMap<String, u64>,
    /// Sessions opened through the proxy.
    pub(crate) sessions: u64,
}

impl Counts {
    /// Every completed statement.
    pub(crate) fn total(&self) -> u64 {
        self.statements.values().sum()
    }
}

/// A running proxy.
pub(crate) struct Proxy {
    /// The address to connect to instead of the server's.
    pub(crate) addr: std::net::SocketAddr,
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                lock(&c).sessions += 1;
                let conn = Arc::new(Mutex::new(Conn::default()));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, true, conn.clone(), c.clone()));
                tokio::spawn(pump(sr, cw, false, conn, c.clone()));
            }
        });
        Ok(Proxy { addr, counts, task })
    }

    /// What was counted so far.
    pub(crate) fn counts(&self) -> Counts {
        lock(&self.counts).clone()
    }

    /// Start counting again from zero.
    pub(crate) fn reset(&self) {
        *lock(&self.counts) = Counts::default();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request waiting for its answer, in the order the server answers them.
enum Unit {
    /// A simple query: each `CommandComplete` until `ReadyForQuery` is one of its
    /// statements.
    Simple(String, Instant),
    /// An `Execute`: its one `CommandComplete` (or none, after an error).
    Execute(String),
    /// A `Sync`, after the label of the pipeline's last `Execute`: ends at
    /// `ReadyForQuery`.
    Sync(String, Instant),
}

#[derive(Default)]
struct Conn {
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
    waiting: VecDeque<Unit>,
    last_execute: String,
    ready: bool,
}

/// The label of a statement: its SQL with whitespace collapsed and quoting dropped,
/// shortened.
fn label(sql: &str) -> String {
    let flat: String = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('"', "");
    if flat.chars().count() > 90 {
        let cut: String = flat.chars().take(90).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

fn cstr(body: &[u8]) -> (String, &[u8]) {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    (s, body.get(end + 1..).unwrap_or(&[]))
}

fn count(counts: &Mutex<Counts>, label: &str) {
    *lock(counts)
        .statements
        .entry(label.to_string())
        .or_default() += 1;
}

/// A message from the client: note what it asks before it is forwarded.
fn from_client(conn: &mut Conn, tag: u8, body: &[u8]) {
    match tag {
        b'Q' => {
            let (sql, _) = cstr(body);
            conn.waiting
                .push_back(Unit::Simple(label(&sql), Instant::now()));
        }
        b'P' => {
            let (name, rest) = cstr(body);
            let (sql, _) = cstr(rest);
            conn.statements.insert(name, label(&sql));
        }
        b'B' => {
            let (portal, rest) = cstr(body);
            let (stmt, _) = cstr(rest);
            let sql = conn.statements.get(&stmt).cloned().unwrap_or_default();
            conn.portals.insert(portal, sql);
        }
        b'E' => {
            let (portal, _) = cstr(body);
            let sql = conn.portals.get(&portal).cloned().unwrap_or_default();
            conn.last_execute = sql.clone();
            conn.waiting.push_back(Unit::Execute(sql));
        }
        b'S' => {
            let l = std::mem::take(&mut conn.last_execute);
            conn.waiting.push_back(Unit::Sync(l, Instant::now()));
        }
        _ => {}
    }
}

/// A message from the server: count what it completes.
fn from_server(conn: &mut Conn, counts: &Mutex<Counts>, tag: u8) {
    match tag {
        b'C' => match conn.waiting.front() {
            Some(Unit::Simple(l, _)) => count(counts, l),
            Some(Unit::Execute(l)) => {
                count(counts, l);
                conn.waiting.pop_front();
            }
            _ => {}
        },
        // An empty query, or a portal suspended: the `Execute` is answered.
        b'I' | b's' => {
            if matches!(conn.waiting.front(), Some(Unit::Execute(_))) {
                conn.waiting.pop_front();
            }
        }
        // An error: the server skips to the next `Sync`.
        b'E' => {
            while matches!(conn.waiting.front(), Some(Unit::Execute(_))) {
                conn.waiting.pop_front();
            }
        }
        b'Z' => {
            if conn.ready {
                let mut c = lock(counts);
                c.round_trips += 1;
                while let Some(u) = conn.waiting.pop_front() {
                    if let Unit::Simple(l, t0) | Unit::Sync(l, t0) = u {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        *c.waited_us.entry(l).or_default() += us;
                        break;
                    }
                }
            }
            conn.ready = true;
        }
        _ => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    client: bool,
    conn: Arc<Mutex<Conn>>,
    counts: Arc<Mutex<Counts>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // The client's first message (the startup packet) carries no type byte.
    let mut startup = client;
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (head, tag) = if startup {
                (0, 0u8)
            } else {
                (1, buf.first().copied().unwrap_or(0))
            };
            if buf.len() < head + 4 {
                break;
            }
            let len = u32::from_be_bytes([buf[head], buf[head + 1], buf[head + 2], buf[head + 3]])
                as usize;
            let total = head + len;
            if buf.len() < total {
                break;
            }
            if startup {
                let code = buf
                    .get(4..8)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                assert_ne!(
                    code,
                    Some(80_877_103),
                    "the counting proxy needs sslmode=disable"
                );
                startup = false;
            } else {
                let mut c = lock(&conn);
                if client {
                    from_client(&mut c, tag, &buf[head + 4..total]);
                } else {
                    from_server(&mut c, &counts, tag);
                }
            }
            buf.drain(..total);
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
