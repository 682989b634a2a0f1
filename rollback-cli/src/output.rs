//! Output for people and for scripts: tables, colors (only on a terminal), times.

use crate::Color;
use comfy_table::{presets, ContentArrangement, Table};
use console::{style, StyledObject};
use rollback_core::Outcome;
use std::io::Write;

/// Decide colors once: `--color`, else on only when stdout is a terminal and `NO_COLOR`
/// is not set (console's own detection also honours `CLICOLOR_FORCE`).
pub(crate) fn set_colors(choice: Color) {
    let on = match choice {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => console::colors_enabled(),
    };
    console::set_colors_enabled(on);
    console::set_colors_enabled_stderr(on && console::colors_enabled_stderr());
}

/// Print `text` to stdout, ending in one newline; a closed pipe is not an error.
pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = if text.ends_with('\n') {
        out.write_all(text.as_bytes())
    } else {
        writeln!(out, "{text}")
    };
    let _ = out.flush();
}

/// Pretty JSON of `value` on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) {
    print(&serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A table with a header and no borders, as `ls -l` or `kubectl get` print them.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// Render a table: trailing spaces trimmed from every line.
pub(crate) fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An outcome, colored for a terminal.
pub(crate) fn outcome(o: Outcome) -> StyledObject<String> {
    let s = style(o.to_string());
    match o {
        Outcome::Committed => s.green(),
        Outcome::RolledBack | Outcome::PartiallyRolledBack => s.yellow(),
        Outcome::RollbackFailed => s.red().bold(),
        Outcome::InProgress => s.cyan(),
    }
}

/// An epoch-ms time as `2026-12-07 11:30:08Z` (UTC).
pub(crate) fn time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// A duration in ms for a person: `850 ms`, `12.3 s`, `4 min 5 s`.
pub(crate) fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// An optional duration, `-` when absent.
pub(crate) fn maybe_duration(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), duration)
}
