//! Live progress beside the journal: the executor publishes the last
//! [`RunEvent::Progress`] of each source of a running run to its journal
//! ([`Journal::publish_progress`]), so that another process (`rollback watch`) can draw a
//! bar per long step. Progress is not a record: it is not chained, not durable, and
//! neither `resume` nor the report reads it.

use crate::events::{Event, RunEvent};
use crate::journal::{now_ms, Journal, LiveProgress};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How often one source's progress is published at most (its last value always is).
const EVERY: Duration = Duration::from_millis(200);

/// Where a run's contexts send their progress events for the publisher: a channel of its
/// own, not the run's event stream, so that the publisher wakes for progress only (waking
/// it for each of a run's events cost the memory journal half its time per step).
pub(crate) type Sender = mpsc::UnboundedSender<Event>;

/// A channel for [`publish`].
pub(crate) fn channel() -> (Sender, mpsc::UnboundedReceiver<Event>) {
    mpsc::unbounded_channel()
}

/// Publishes a run's progress events until dropped; then publishes what the run sent
/// before and stops.
pub(crate) struct Publisher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Stop once what the run sent before is published, and wait for it.
    pub(crate) async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Follow `events` (the progress the run's contexts send, see [`channel`]) and publish
/// the progress of `run_id` to `journal`, each source at most every 200 ms plus its last
/// value. Publishing is best effort: a failure is logged and the run goes on.
pub(crate) fn publish(
    journal: Arc<dyn Journal>,
    mut events: mpsc::UnboundedReceiver<Event>,
    run_id: &str,
) -> Publisher {
    let run_id = run_id.to_string();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut last: HashMap<String, Instant> = HashMap::new();
        let mut draining = false;
        loop {
            let e = if draining {
                // Stopped: what the run sent before, then done.
                match events.try_recv() {
                    Ok(e) => e,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    biased;
                    e = events.recv() => match e {
                        Some(e) => e,
                        None => return,
                    },
                    _ = &mut stopped => {
                        draining = true;
                        continue;
                    }
                }
            };
            if e.run_id != run_id {
                continue;
            }
            let RunEvent::Progress {
                source,
                done,
                total,
                unit,
            } = e.event
            else {
                continue;
            };
            let finished = total.is_some_and(|t| done >= t);
            let now = Instant::now();
            if !finished && last.get(&source).is_some_and(|t| now - *t < EVERY) {
                continue;
            }
            last.insert(source.clone(), now);
            let p = LiveProgress {
                source,
                done,
                total,
                unit,
                at_ms: now_ms(),
            };
            if let Err(err) = journal.publish_progress(&run_id, &p).await {
                tracing::debug!(error = %err, "could not publish progress");
            }
        }
    });
    Publisher {
        stop: Some(stop),
        task: Some(task),
    }
}
