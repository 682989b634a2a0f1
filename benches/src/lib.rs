//! Benchmarks of **rollback** against the physical limit and against the tools teams use
//! today.
//!
//! - `cargo bench -p benches` — criterion benches of in-process costs: executor overhead
//!   per step with the memory and file journals beside the fsync latency that bounds the
//!   file journal (`--bench executor`), and the hashing that table fingerprints are made of
//!   (`--bench hashing`). Neither needs a server.
//! - `cargo run --release -p benches --bin compare -- --scale 0.1` — the side-by-side
//!   runner: table fingerprint against a raw binary `COPY`, finding the differing rows
//!   against reladiff, table snapshots against `pg_dump`/`pg_restore`, executor overhead
//!   against fsync, S3 checkpoints (versioned against copy-based, request counts), and peak
//!   memory per measurement. It starts the servers it needs (or reuses those named by
//!   `ROLLBACK_TEST_PG_URL` / `ROLLBACK_TEST_S3_ENDPOINT`) and prints a Markdown table.
//!
//! This library holds what the runner shares: statistics, number formatting, peak RSS and
//! the result table.
//!
//! ```
//! use benches::{Report, Row};
//! let mut r = Report::default();
//! r.push(Row::new("fingerprint", "5M rows").rollback("2.0 s").reference("COPY 1.8 s").ratio("0.90×").target("≥ 0.8×", Some(true)));
//! assert!(r.to_markdown().contains("| fingerprint | 5M rows | 2.0 s | COPY 1.8 s | 0.90× | ≥ 0.8× | met |"));
//! ```

use std::fmt::Write as _;

/// The median of `xs` (mean of the middle two for an even count); `NaN` when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A duration in seconds, with a unit that keeps three significant digits or so:
/// `1.23 s`, `45.6 ms`, `12.3 µs`.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "—".into();
    }
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    format!("{} {unit}", sig3(v))
}

/// A byte count in binary units: `512 B`, `1.50 KiB`, `97.3 MiB`, `1.20 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    const U: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{} {}", sig3(v), U[i])
}

/// A throughput: bytes over seconds, as `MiB/s`.
pub fn fmt_rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 || !secs.is_finite() {
        return "—".into();
    }
    format!("{} MiB/s", sig3(bytes as f64 / secs / (1024.0 * 1024.0)))
}

/// A count with thousands separators: `5,000,000`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio: `0.85×`, `12.3×`, `240×`.
pub fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        return "—".into();
    }
    format!("{}×", sig3(r))
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`) in KiB;
/// `None` where the file or the field is missing (not Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&s, "VmHWM:")
}

/// The value in KiB of field `name` (e.g. `"VmHWM:"`) of a `/proc/<pid>/status` text.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One line of the result table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// What is compared (the issue's section).
    pub section: String,
    /// The measurement, with its size.
    pub measure: String,
    /// rollback's number.
    pub rollback: String,
    /// The limit or the peer tool's number, with its name.
    pub reference: String,
    /// rollback against the reference, oriented so that higher is better for rollback
    /// (unless the text says otherwise).
    pub ratio: String,
    /// The target, in words.
    pub target: String,
    /// Whether the target is met (`None`: no target, or not measured).
    pub met: Option<bool>,
}

impl Row {
    /// A row for `section`, measuring `measure`; the other cells empty.
    pub fn new(section: impl Into<String>, measure: impl Into<String>) -> Self {
        Row {
            section: section.into(),
            measure: measure.into(),
            ..Default::default()
        }
    }
    /// Set rollback's number.
    pub fn rollback(mut self, s: impl Into<String>) -> Self {
        self.rollback = s.into();
        self
    }
    /// Set the reference's number.
    pub fn reference(mut self, s: impl Into<String>) -> Self {
        self.reference = s.into();
        self
    }
    /// Set the ratio.
    pub fn ratio(mut self, s: impl Into<String>) -> Self {
        self.ratio = s.into();
        self
    }
    /// Set the target and whether it is met.
    pub fn target(mut self, s: impl Into<String>, met: Option<bool>) -> Self {
        self.target = s.into();
        self.met = met;
        self
    }
}

/// The result table and the notes under it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rows in order.
    pub rows: Vec<Row>,
    /// Free-text lines printed under the table (checks, breakdowns, failures).
    pub notes: Vec<String>,
}

impl Report {
    /// Add a row.
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }
    /// Add a note.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
    /// Append another report's rows and notes.
    pub fn extend(&mut self, other: Report) {
        self.rows.extend(other.rows);
        self.notes.extend(other.notes);
    }
    /// The table (GitHub Markdown), then the notes as a list.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| what | measured | rollback | limit / peer | ratio | target | |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&r.section),
                cell(&r.measure),
                cell(&r.rollback),
                cell(&r.reference),
                cell(&r.ratio),
                cell(&r.target),
                met
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn durations_bytes_and_counts_read_naturally() {
        assert_eq!(fmt_secs(1.234), "1.23 s");
        assert_eq!(fmt_secs(0.0456), "45.6 ms");
        assert_eq!(fmt_secs(0.000_024_1), "24.1 µs");
        assert_eq!(fmt_secs(125.0), "125 s");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(fmt_bytes(100 * 1024 * 1024), "100 MiB");
        assert_eq!(fmt_count(5_000_000), "5,000,000");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_ratio(0.853), "0.85×");
        assert_eq!(fmt_rate(10 * 1024 * 1024, 2.0), "5.00 MiB/s");
    }

    #[test]
    fn peak_rss_is_read_from_the_status_text() {
        let status =
            "Name:\tcompare\nVmPeak:\t  200000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().unwrap() > 0);
        }
    }

    #[test]
    fn table_cells_escape_pipes_and_mark_missed_targets() {
        let mut r = Report::default();
        r.push(
            Row::new("restore", "a | b")
                .rollback("1 s")
                .target("≥ 5×", Some(false)),
        );
        r.note("why");
        let md = r.to_markdown();
        assert!(md.contains("| restore | a \\| b | 1 s |  |  | ≥ 5× | **missed** |"));
        assert!(md.ends_with("- why\n"));
    }
}
