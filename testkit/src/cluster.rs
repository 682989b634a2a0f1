//! A throwaway PostgreSQL cluster started from the machine's own binaries: the
//! embedded default database of the examples when `DATABASE_URL` is not set.
//!
//! `initdb` into a temporary folder, `pg_ctl start` on a free port of 127.0.0.1 (with
//! `fsync=off`: nothing here outlives the program), trust authentication for the
//! `postgres` user; stopped and deleted when the [`ThrowawayCluster`] is dropped. As root
//! (PostgreSQL refuses to run as root) every command runs as the `postgres` user through
//! `runuser -u postgres --`, with the folder owned by that user.
//!
//! ```no_run
//! let cluster = rollback_testkit::cluster::ThrowawayCluster::start().expect("PostgreSQL binaries");
//! println!("{}", cluster.url("postgres")); // postgres://postgres@127.0.0.1:<port>/postgres
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No `initdb` / `pg_ctl` was found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; looked in {searched}. \
         Install them (Debian: `apt-get install postgresql`), set ROLLBACK_PG_BIN to their folder, \
         or set DATABASE_URL to a server of yours"
    )]
    NoBinaries {
        /// Where we looked.
        searched: String,
    },
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error("running as root, and PostgreSQL refuses to run as root; create a `postgres` user (e.g. `useradd -r postgres`) or run as another user")]
    NoPostgresUser,
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was run.
        what: String,
        /// Its exit status and output.
        detail: String,
    },
    /// A local I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct ThrowawayCluster {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// The folder of `initdb` and `pg_ctl`: `$ROLLBACK_PG_BIN`, `pg_config --bindir`, the
/// newest `/usr/lib/postgresql/<version>/bin`, or the `PATH`.
pub fn find_binaries() -> Result<PathBuf, ClusterError> {
    find_binaries_in(Path::new("/usr/lib/postgresql"))
}

/// [`find_binaries`], looking for versioned installs under `versions_root` instead of
/// `/usr/lib/postgresql`.
fn find_binaries_in(versions_root: &Path) -> Result<PathBuf, ClusterError> {
    let mut searched = Vec::new();
    if let Ok(d) = std::env::var("ROLLBACK_PG_BIN") {
        searched.push(format!("$ROLLBACK_PG_BIN ({d})"));
        if has_server_binaries(Path::new(&d)) {
            return Ok(d.into());
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
        searched.push(format!("pg_config --bindir ({d})"));
        if out.status.success() && has_server_binaries(Path::new(&d)) {
            return Ok(d.into());
        }
    }
    searched.push(format!("{}/*/bin", versions_root.display()));
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| has_server_binaries(p))
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    searched.push("PATH".into());
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_server_binaries(&d) {
                return Ok(d);
            }
        }
    }
    Err(ClusterError::NoBinaries {
        searched: searched.join(", "),
    })
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>\t…"
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = s.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn describe(out: &Output) -> String {
    format!(
        "{}; {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" / ")
    )
}

impl ThrowawayCluster {
    /// Find the binaries, `initdb`, and start the server (waits until it accepts
    /// connections).
    ///
    /// # Errors
    /// [`ClusterError::NoBinaries`] when none are installed; [`ClusterError::Command`]
    /// when `initdb` or `pg_ctl` fails.
    pub fn start() -> Result<Self, ClusterError> {
        let bin = find_binaries()?;
        let as_postgres = is_root();
        if as_postgres
            && !Command::new("id")
                .arg("postgres")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        {
            return Err(ClusterError::NoPostgresUser);
        }
        let dir = tempfile::Builder::new().prefix("rollback-pg-").tempdir()?;
        let mut cluster = ThrowawayCluster {
            dir: Some(dir),
            bin,
            port: free_port()?,
            as_postgres,
            running: false,
        };
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres")
                .arg(cluster.path())
                .output()?;
            if !out.status.success() {
                return Err(ClusterError::Command {
                    what: "chown postgres".into(),
                    detail: describe(&out),
                });
            }
        }
        let data = cluster.path().join("data");
        cluster.run(
            "initdb",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-U"),
                OsStr::new("postgres"),
                OsStr::new("--auth=trust"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--no-sync"),
            ],
        )?;
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            cluster.port,
            cluster.path().display()
        );
        let log = cluster.path().join("server.log");
        cluster.run(
            "pg_ctl",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&opts),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("start"),
            ],
        )?;
        cluster.running = true;
        Ok(cluster)
    }

    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    fn run<'a>(
        &self,
        tool: &str,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> Result<(), ClusterError> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // Run from a folder the postgres user may read.
        cmd.args(args).current_dir(self.path());
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Command {
                what: format!(
                    "{} {tool}",
                    if self.as_postgres {
                        "runuser -u postgres --"
                    } else {
                        ""
                    }
                )
                .trim()
                .to_string(),
                detail: describe(&out),
            })
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of the binaries used.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A connection URL for database `db` (user `postgres`, trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stop the server (fast shutdown) and remove its folder. Also done on drop.
    pub fn stop(&mut self) {
        if self.running {
            let data = self.path().join("data");
            let _ = self.run(
                "pg_ctl",
                [
                    OsStr::new("-D"),
                    data.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("fast"),
                    OsStr::new("-w"),
                    OsStr::new("stop"),
                ],
            );
            self.running = false;
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_reported_with_where_we_looked_and_what_to_do() {
        let empty = tempfile::tempdir().unwrap();
        // Only meaningful where neither $ROLLBACK_PG_BIN, pg_config nor the PATH has them.
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| has_server_binaries(&d)))
            .unwrap_or(false);
        let configured = std::env::var("ROLLBACK_PG_BIN").is_ok()
            || Command::new("pg_config").arg("--bindir").output().is_ok();
        match find_binaries_in(empty.path()) {
            Err(e @ ClusterError::NoBinaries { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("no PostgreSQL server binaries"), "{msg}");
                assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
                assert!(msg.contains("DATABASE_URL"), "{msg}");
            }
            Ok(p) => assert!(
                on_path || configured,
                "found {} out of nowhere",
                p.display()
            ),
            Err(e) => panic!("{e}"),
        }
    }
}
