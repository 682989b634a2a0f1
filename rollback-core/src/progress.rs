//! [`ConsoleProgress`]: a run's events as lines a person reads.

use crate::events::{Event, RunEvent};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Renders a run's [`Event`]s as lines for a person: one line per step, verdict, restore
/// and parity proof, and the progress of long work (snapshots, hashing, restores) at most
/// once per [`every`](ConsoleProgress::every) per source, plus its last line.
///
/// ```
/// use rollback_core::events::{Event, RunEvent};
/// use rollback_core::ConsoleProgress;
///
/// let mut p = ConsoleProgress::new(Vec::new());
/// p.render(&Event::new("run-1", RunEvent::RunFinished { outcome: "committed".into() }))
///     .unwrap();
/// assert_eq!(String::from_utf8(p.into_inner()).unwrap(), "[run-1] run finished: committed\n");
/// ```
///
/// In a program, follow an executor's events while it runs:
///
/// ```no_run
/// # async fn f(executor: rollback_core::Executor, plan: rollback_core::Plan) -> rollback_core::Result<()> {
/// use rollback_core::ConsoleProgress;
/// let printer = ConsoleProgress::stderr().follow(executor.subscribe());
/// let report = executor.run(&plan).await?;
/// printer.await.ok();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConsoleProgress<W> {
    out: W,
    every: Duration,
    run_ids: bool,
    last: HashMap<String, Instant>,
}

impl ConsoleProgress<std::io::Stderr> {
    /// Lines to standard error.
    pub fn stderr() -> Self {
        Self::new(std::io::stderr())
    }
}

impl ConsoleProgress<std::io::Stdout> {
    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl<W: Write> ConsoleProgress<W> {
    /// Lines to `out`: progress at most every 500 ms per source, run ids shown.
    pub fn new(out: W) -> Self {
        ConsoleProgress {
            out,
            every: Duration::from_millis(500),
            run_ids: true,
            last: HashMap::new(),
        }
    }

    /// Show a source's progress at most this often (its last line always shows).
    pub fn every(mut self, d: Duration) -> Self {
        self.every = d;
        self
    }

    /// Leave the run id out of each line (one run at a time).
    pub fn without_run_ids(mut self) -> Self {
        self.run_ids = false;
        self
    }

    /// The line for `e`, or `None` when it is progress shown too recently.
    pub fn line(&mut self, e: &Event) -> Option<String> {
        if let RunEvent::Progress {
            source,
            done,
            total,
            ..
        } = &e.event
        {
            let last = total.is_some_and(|t| done >= &t);
            let key = format!("{}\u{0}{source}", e.run_id);
            let now = Instant::now();
            match self.last.get(&key) {
                Some(t) if !last && now.duration_since(*t) < self.every => return None,
                _ => {
                    self.last.insert(key, now);
                }
            }
        }
        let indent = match &e.event {
            RunEvent::RunStarted { .. }
            | RunEvent::RunFinished { .. }
            | RunEvent::RollbackStarted { .. } => "",
            RunEvent::Progress { .. } => "    ",
            _ => "  ",
        };
        Some(if self.run_ids {
            format!("[{}] {indent}{}", e.run_id, e.event)
        } else {
            format!("{indent}{}", e.event)
        })
    }

    /// Write the line for `e` (if any).
    ///
    /// # Errors
    /// When writing fails.
    pub fn render(&mut self, e: &Event) -> std::io::Result<()> {
        match self.line(e) {
            Some(l) => writeln!(self.out, "{l}"),
            None => Ok(()),
        }
    }

    /// The writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send + 'static> ConsoleProgress<W> {
    /// Render every event from `events` until a run finishes (or the executor is
    /// dropped); the task returns the writer. A subscriber that falls behind skips what it
    /// missed and says so.
    pub fn follow(mut self, mut events: broadcast::Receiver<Event>) -> JoinHandle<W> {
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let done = matches!(e.event, RunEvent::RunFinished { .. });
                        let _ = self.render(&e);
                        if done {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ =
                            writeln!(self.out, "  ({n} events skipped: the printer fell behind)");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = self.out.flush();
            self.out
        })
    }
}
