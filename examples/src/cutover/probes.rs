//! What the cutover watches and tells: the application's read path as a health probe,
//! rows against objects, and the status page.

use super::{list_objects, pg, Backends, FROM, TO};
use async_trait::async_trait;
use futures::StreamExt;
use rollback_core::events::{Notice, Notifier};
use rollback_core::{Context, Result, Verdict, Verifier};
use rollback_flags::{FlagProvider, FlagState};
use rollback_s3::ObjectBackend;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Publishes status-page messages (prints them, and keeps them for the report).
#[derive(Clone, Default)]
pub struct StatusPage {
    print: bool,
    notices: Arc<Mutex<Vec<Notice>>>,
}

impl StatusPage {
    /// A status page; `print`: also print each message as it is published.
    pub fn new(print: bool) -> Self {
        StatusPage {
            print,
            notices: Arc::default(),
        }
    }

    /// Every message so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Notifier for StatusPage {
    async fn notify(&self, notice: &Notice) -> std::result::Result<(), String> {
        if self.print {
            println!("\n  [status page] {}\n", notice.message);
        }
        if let Ok(mut n) = self.notices.lock() {
            n.push(notice.clone());
        }
        Ok(())
    }
}

/// An injected incident for the soak drill.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// From which poll on (1-based) the incident shows.
    pub from_poll: u32,
    /// The error rate it adds.
    pub error_rate: f64,
}

/// The application's read path as a health probe: for a sample of attachments, it reads
/// both flags, then, as the application would for that customer, the customer's name (the
/// new `first_name`/`last_name` when `new_name_fields` is on for the customer, else
/// `name`) and the attachment (under `v2/` when `use_v2_storage` is on for the customer,
/// else `v1/`, falling back to the other layout as an application must while objects
/// move under a flag that is still off). A read that fails or finds the wrong thing is
/// an error; the verdict's value is the error rate, failing above the threshold.
///
/// It catches a name flag turned on before its columns are filled, and attachments lost
/// or damaged by the move. In the soak drill a [`Chaos`] adds an injected error rate
/// from a given poll on, saying so in the verdict.
pub struct ReadPathProbe {
    id: String,
    backends: Backends,
    sample: u64,
    max_error_rate: f64,
    chaos: Option<Chaos>,
    polls: AtomicU32,
}

impl ReadPathProbe {
    /// The probe over `backends`, failing above `max_error_rate` (25 attachments sampled
    /// per poll).
    pub fn new(id: &str, backends: &Backends, max_error_rate: f64) -> Self {
        ReadPathProbe {
            id: id.into(),
            backends: backends.clone(),
            sample: 25,
            max_error_rate,
            chaos: None,
            polls: AtomicU32::new(0),
        }
    }

    /// Add an injected incident (the soak drill).
    pub fn with_chaos(mut self, chaos: Chaos) -> Self {
        self.chaos = Some(chaos);
        self
    }
}

impl fmt::Debug for ReadPathProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadPathProbe")
            .field("id", &self.id)
            .field("sample", &self.sample)
            .field("chaos", &self.chaos)
            .finish()
    }
}

/// Which percentage bucket (0..100) a customer falls in for flag rollouts.
pub fn rollout_bucket(customer_id: u64) -> u32 {
    ((customer_id.wrapping_mul(2_654_435_761)) % 100) as u32
}

fn served_percent(state: Option<FlagState>) -> u32 {
    match state {
        Some(s) if s.enabled => s.rollout_percent().unwrap_or(100),
        _ => 0,
    }
}

#[async_trait]
impl Verifier for ReadPathProbe {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let poll = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        let b = &self.backends;
        let n = &b.names;
        let names_pct = served_percent(b.flags.get(&n.new_name_fields).await?);
        let v2_pct = served_percent(b.flags.get(&n.use_v2_storage).await?);
        let c = b.db.client().await?;
        let total: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {}", n.attachments().quoted()),
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let offset = (poll as i64 * self.sample as i64) % total.max(1);
        let rows = c
            .query(
                &format!(
                    "SELECT customer_id, file_name, size_bytes FROM {} ORDER BY id LIMIT $1 OFFSET $2",
                    n.attachments().quoted()
                ),
                &[&(self.sample as i64), &offset],
            )
            .await
            .map_err(pg)?;
        let sample: Vec<(u64, String, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2) as u64,
                )
            })
            .collect();
        let mut errors: Vec<String> = Vec::new();
        // Names: the new fields for customers in the rollout, `name` for the others.
        let new_ids: Vec<i64> = sample
            .iter()
            .filter(|(cid, _, _)| rollout_bucket(*cid) < names_pct)
            .map(|(cid, _, _)| *cid as i64)
            .collect();
        if !new_ids.is_empty() {
            match c
                .query(
                    &format!(
                        "SELECT id, first_name, last_name, name FROM {} WHERE id = ANY($1)",
                        n.customers().quoted()
                    ),
                    &[&new_ids],
                )
                .await
            {
                Ok(rows) => {
                    let good: BTreeSet<i64> = rows
                        .iter()
                        .filter(|r| {
                            let f: Option<String> = r.get(1);
                            let l: Option<String> = r.get(2);
                            let name: String = r.get(3);
                            matches!((f, l), (Some(f), Some(l)) if !f.is_empty() && !l.is_empty() && format!("{f} {l}") == name)
                        })
                        .map(|r| r.get(0))
                        .collect();
                    for id in &new_ids {
                        if !good.contains(id) {
                            errors.push(format!("customer {id}: new name fields missing"));
                        }
                    }
                }
                Err(e) => {
                    let why = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string());
                    for id in &new_ids {
                        errors.push(format!("customer {id}: {why}"));
                    }
                }
            }
        }
        drop(c);
        // Attachments: v2 for customers in the rollout, v1 for the others.
        let storage = &b.storage;
        // During a re-layout the application reads the layout its flag prefers and falls
        // back to the other one (objects move while the flag is still off).
        let reads =
            futures::stream::iter(sample.iter().cloned().map(|(cid, file, size)| async move {
                let (first, second) = if rollout_bucket(cid) < v2_pct {
                    (TO, FROM)
                } else {
                    (FROM, TO)
                };
                let mut fell_back = false;
                for layout in [first, second] {
                    let key = format!("{layout}{cid}/{file}");
                    match storage.head(&key).await.map(|o| o.map(|o| o.size)) {
                        Ok(Some(s)) if s == size => return (fell_back, None),
                        Ok(Some(s)) => {
                            return (fell_back, Some(format!("{key}: {s} B, expected {size} B")))
                        }
                        Ok(None) => fell_back = true,
                        Err(e) => return (fell_back, Some(format!("{key}: {e}"))),
                    }
                }
                (
                    fell_back,
                    Some(format!("{cid}/{file}: under neither {FROM} nor {TO}")),
                )
            }))
            .buffer_unordered(8)
            .collect::<Vec<(bool, Option<String>)>>()
            .await;
        let fallbacks = reads.iter().filter(|(f, e)| *f && e.is_none()).count();
        errors.extend(reads.into_iter().filter_map(|(_, e)| e));
        let requests = (sample.len() * 2).max(1) as f64;
        let measured = errors.len() as f64 / requests;
        let injected = self
            .chaos
            .filter(|c| poll >= c.from_poll)
            .map(|c| c.error_rate)
            .unwrap_or(0.0);
        let rate = (measured + injected).min(1.0);
        let mut summary = format!(
            "error rate {:.1}% over {} reads (new names for {names_pct}% of customers, v2 storage for {v2_pct}%, {fallbacks} attachment reads served by the other layout; max {:.1}%)",
            rate * 100.0,
            requests as u64,
            self.max_error_rate * 100.0
        );
        if injected > 0.0 {
            summary.push_str(&format!(
                " — includes {:.0}% injected by the soak drill (simulated timeouts on the checkout path)",
                injected * 100.0
            ));
        }
        Ok(Verdict::check(rate <= self.max_error_rate, summary)
            .with_evidence(json!({
                "poll": poll,
                "reads": requests as u64,
                "failed_reads": errors.len(),
                "fallback_reads": fallbacks,
                "examples": &errors[..errors.len().min(5)],
                "new_name_fields_percent": names_pct,
                "use_v2_storage_percent": v2_pct,
                "injected_error_rate": injected,
            }))
            .with_value(rate))
    }
}

/// Referential integrity across the database and the object store: every `attachments`
/// row has its object under the layout (same size), and every object under the layout
/// belongs to a row. Evidence lists missing, wrong-size and orphan keys.
pub struct AttachmentsResolve {
    id: String,
    backends: Backends,
    layout: String,
}

impl AttachmentsResolve {
    /// Check rows against objects under `layout` (`v1/` or `v2/`).
    pub fn new(id: &str, backends: &Backends, layout: &str) -> Self {
        AttachmentsResolve {
            id: id.into(),
            backends: backends.clone(),
            layout: layout.into(),
        }
    }
}

#[async_trait]
impl Verifier for AttachmentsResolve {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let b = &self.backends;
        let c = b.db.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT customer_id, file_name, size_bytes FROM {}",
                    b.names.attachments().quoted()
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        drop(c);
        let expected: BTreeMap<String, u64> = rows
            .iter()
            .map(|r| {
                (
                    format!(
                        "{}{}/{}",
                        self.layout,
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1)
                    ),
                    r.get::<_, i32>(2) as u64,
                )
            })
            .collect();
        let objects = list_objects(&*b.storage, &self.layout).await?;
        let missing: Vec<&String> = expected
            .keys()
            .filter(|k| !objects.contains_key(*k))
            .collect();
        let wrong: Vec<&String> = expected
            .iter()
            .filter(|(k, s)| objects.get(*k).is_some_and(|o| o != *s))
            .map(|(k, _)| k)
            .collect();
        let orphans: Vec<&String> = objects
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        let bad = missing.len() + wrong.len() + orphans.len();
        Ok(Verdict::check(
            bad == 0,
            if bad == 0 {
                format!(
                    "{} attachment rows resolve to their {} objects under {}",
                    expected.len(),
                    objects.len(),
                    self.layout
                )
            } else {
                format!(
                    "{} rows without object, {} wrong size, {} orphan objects under {}",
                    missing.len(),
                    wrong.len(),
                    orphans.len(),
                    self.layout
                )
            },
        )
        .with_evidence(json!({
            "rows": expected.len(),
            "objects": objects.len(),
            "missing": missing.iter().take(10).collect::<Vec<_>>(),
            "wrong_size": wrong.iter().take(10).collect::<Vec<_>>(),
            "orphans": orphans.iter().take(10).collect::<Vec<_>>(),
        }))
        .with_value(bad as f64))
    }
}
