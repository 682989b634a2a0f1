//! Against the real Unleash 6 started by `scripts/test`: exact writes, restores, the
//! staged rollout of three flags among fifty rolled back and checked through the client
//! API an application uses, kill switches and partial rollback.

mod common;

use async_trait::async_trait;
use open_feature::provider::FeatureProvider;
use open_feature::EvaluationContext;
use rollback_core::events::RunEvent;
use rollback_core::journal::MemoryJournal;
use rollback_core::{
    Checkpoint, Context, Executor, Outcome, Plan, RollbackScope, Step, Verdict, Verifier,
};
use rollback_flags::{
    evaluate_bool, Expect, FlagChange, FlagCheckpoint, FlagProvider, FlagState, FlagsMatch,
    FlagsMatchSnapshot, OpenFeatureBridge, SetFlag, StagedRollout, Strategy, Variant,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A state with everything Unleash keeps per environment: two strategies in a given
/// order, constraints, strategy variants with payloads, a title, a disabled strategy.
fn rich_state(flag: &str) -> FlagState {
    let mut rollout = Strategy::rollout(25, flag);
    rollout.sort_order = 1;
    rollout.title = Some("quarter".into());
    rollout.variants = vec![
        Variant::new("blue", 500).with_payload("string", "b"),
        Variant::new("green", 500).with_payload("json", r#"{"hue":120}"#),
    ];
    let targeted = Strategy {
        name: "default".into(),
        constraints: vec![
            json!({"contextName": "userId", "operator": "IN", "values": ["u1", "u2"], "inverted": false, "caseInsensitive": false}),
        ],
        sort_order: 0,
        ..Default::default()
    };
    let parked = Strategy {
        name: "default".into(),
        disabled: true,
        sort_order: 2,
        ..Default::default()
    };
    FlagState {
        enabled: true,
        strategies: vec![rollout, targeted, parked],
        variants: vec![],
    }
}

#[tokio::test]
async fn put_then_get_gives_back_strategies_constraints_variants_and_order() {
    let prefix = common::prefix("rich");
    let p = common::unleash();
    let f = format!("{prefix}x");
    let want = rich_state(&f).normalized();
    p.put(&f, &want).await.unwrap();
    assert_eq!(p.get(&f).await.unwrap(), Some(want.clone()));
    // Changing order and one parameter is an exact write too.
    let mut changed = want.clone();
    changed.strategies[0].sort_order = 3;
    changed.strategies[1]
        .parameters
        .insert("rollout".into(), json!("60"));
    let changed = changed.normalized();
    p.put(&f, &changed).await.unwrap();
    assert_eq!(p.get(&f).await.unwrap(), Some(changed));
    p.put(&f, &want).await.unwrap();
    assert_eq!(p.get(&f).await.unwrap(), Some(want));
    // Unleash cannot hold an enabled flag without strategies: refused, nothing changed.
    let err = p
        .put(
            &f,
            &FlagState {
                enabled: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, rollback_core::Error::Invalid { .. }), "{err}");
    common::cleanup(&prefix).await;
}

#[tokio::test]
async fn restore_deletes_flags_created_after_capture_and_brings_back_deleted_ones() {
    let prefix = common::prefix("exist");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let (a, b, c) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}c"),
    );
    p.put(&a, &FlagState::rollout(&a, 10)).await.unwrap();
    p.put(&b, &rich_state(&b)).await.unwrap();
    let cp = FlagCheckpoint::prefix(p.clone(), &prefix);
    let ctx = Context::standalone("exist");
    let snap = cp.capture(&ctx).await.unwrap();
    assert_eq!(
        snap.resource,
        format!("flags:unleash:default/development/{prefix}*")
    );

    p.put(&c, &FlagState::rollout(&c, 100)).await.unwrap(); // created after the capture
    p.delete(&b).await.unwrap(); // archived and deleted
    p.put(&a, &FlagState::off()).await.unwrap();
    assert_ne!(cp.fingerprint(&ctx).await.unwrap(), snap.fingerprint);

    let restored = cp.restore(&snap, &ctx).await.unwrap();
    assert_eq!(restored.items_changed, Some(3));
    assert_eq!(cp.fingerprint(&ctx).await.unwrap(), snap.fingerprint);
    assert_eq!(p.get(&c).await.unwrap(), None);
    assert_eq!(p.get(&b).await.unwrap(), Some(rich_state(&b).normalized()));
    assert_eq!(p.get(&a).await.unwrap(), Some(FlagState::rollout(&a, 10)));

    // A flag archived (not deleted) by someone else is revived by the restore.
    let archive = reqwest::Client::new()
        .delete(format!(
            "{}/api/admin/projects/default/features/{a}",
            common::unleash_url()
        ))
        .header("Authorization", common::admin_token())
        .send()
        .await
        .unwrap();
    assert!(archive.status().is_success());
    assert_eq!(p.get(&a).await.unwrap(), None);
    cp.restore(&snap, &ctx).await.unwrap();
    assert_eq!(p.get(&a).await.unwrap(), Some(FlagState::rollout(&a, 10)));
    common::cleanup(&prefix).await;
}

/// The "application's" error rate: the share of 2 000 users the flag sends down the new
/// (broken) code path, evaluated with the same bucketing as the OpenFeature bridge.
struct ErrorRate {
    provider: Arc<dyn FlagProvider>,
    flag: String,
    max: f64,
    polls: std::sync::Mutex<Vec<f64>>,
}

#[async_trait]
impl Verifier for ErrorRate {
    fn id(&self) -> &str {
        "checkout-error-rate"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        let state = self.provider.get(&self.flag).await?.unwrap_or_default();
        let users = 2000;
        let on = (0..users)
            .filter(|i| {
                evaluate_bool(&self.flag, &state, Some(&format!("user-{i}")))
                    .map(|e| e.value)
                    .unwrap_or(false)
            })
            .count();
        let rate = on as f64 / users as f64;
        self.polls.lock().unwrap().push(rate);
        Ok(Verdict::check(
            rate <= self.max,
            format!(
                "error rate {:.1}% (max {:.1}%)",
                rate * 100.0,
                self.max * 100.0
            ),
        )
        .with_value(rate))
    }
}

/// Fifty flags in every shape; three of them (a rollout at 2 %, an off flag, an off flag
/// with a 30 % rollout and strategy variants) go 1 % → 10 % → 50 % → 100 %; the health
/// check fails at the third flag's 10 % stage; the executor rolls everything back; every
/// flag is back exactly as before, as an application reading the client API sees it.
#[tokio::test]
async fn staged_rollout_failing_at_ten_percent_rolls_fifty_flags_back_to_the_exact_client_view() {
    let prefix = common::prefix("fifty");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let name = |i: usize| format!("{prefix}{i:03}");
    let t = Instant::now();
    for i in 0..50 {
        let f = name(i);
        let state = match i % 5 {
            0 => FlagState::off(),
            1 => FlagState::rollout(&f, (i * 2 % 101) as u32),
            2 => rich_state(&f),
            3 => {
                let mut s = FlagState::rollout(&f, 30);
                s.enabled = false;
                s.strategies[0].variants =
                    vec![Variant::new("a", 1000).with_payload("string", "x")];
                s
            }
            _ => {
                let mut s = FlagState::rollout(&f, 70);
                s.strategies.push(Strategy {
                    name: "default".into(),
                    sort_order: 1,
                    constraints: vec![json!({"contextName": "appName", "operator": "IN", "values": ["web"], "inverted": false, "caseInsensitive": false})],
                    ..Default::default()
                });
                s
            }
        };
        p.put(&f, &state).await.unwrap();
    }
    let seeded = t.elapsed();
    let rolled = [name(1), name(5), name(13)];
    let seeded_states = p
        .get_many(&(0..50).map(name).collect::<Vec<_>>())
        .await
        .unwrap();

    let (before, waited_before) = common::client_view(&prefix).await;
    assert_eq!(before.len(), 50, "the client API must show all 50 flags");

    let health = Arc::new(ErrorRate {
        provider: p.clone(),
        flag: rolled[2].clone(),
        max: 0.05,
        polls: Default::default(),
    });
    let checkpoint = FlagCheckpoint::prefix(p.clone(), &prefix);
    let mut builder = Plan::builder(format!("{prefix}plan"))
        .checkpoint("flags", checkpoint.clone())
        .verify_final(FlagsMatch::new("all-on", p.clone()).flag(&rolled[2], Expect::rollout(100)));
    let mut prev: Option<String> = None;
    for (k, f) in rolled.iter().enumerate() {
        let id = format!("rollout-{k}");
        let step = StagedRollout::new(&id, p.clone(), f, &[1, 10, 50, 100])
            .health_check(health.clone())
            .pause(Duration::from_millis(20))
            .touching(checkpoint.resource());
        let deps: Vec<&str> = prev.iter().map(String::as_str).collect();
        builder = builder.step("flags", step, &deps);
        prev = Some(id);
    }
    let plan = builder.build().unwrap();
    let executor = Executor::new(MemoryJournal::new());
    let mut events = executor.subscribe();
    let report = executor.run(&plan).await.unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert!(
        md.contains("health check checkout-error-rate failed at stage 2/4 (10%)"),
        "{md}"
    );

    // The health check saw the third flag at 1 % (pass), then 10 % (fail).
    let polls = health.polls.lock().unwrap().clone();
    assert_eq!(polls.len(), 4 + 4 + 2, "{polls:?}");
    assert!(polls[8] < 0.05 && polls[9] > 0.05, "{polls:?}");

    // Progress reached every stage of the first two flags and stage 2 of the third.
    let mut progress: BTreeMap<String, u64> = BTreeMap::new();
    while let Ok(e) = events.try_recv() {
        if let RunEvent::Progress { source, done, .. } = e.event {
            let d = progress.entry(source).or_default();
            *d = (*d).max(done);
        }
    }
    assert_eq!(progress.get(&format!("rollout:{}", rolled[0])), Some(&4));
    assert_eq!(progress.get(&format!("rollout:{}", rolled[2])), Some(&2));

    // Admin view: every flag exactly as seeded.
    let after_states = p
        .get_many(&(0..50).map(name).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(after_states, seeded_states);

    // Client view, field by field, once the client API has caught up.
    let (after, waited_after) = common::client_view(&prefix).await;
    let diff = common::diff_views(&before, &after);
    assert!(
        diff.is_empty(),
        "client view differs after rollback: {diff:#?}"
    );
    for f in &rolled {
        assert_eq!(before[f], after[f]);
    }
    println!(
        "seeded 50 flags in {seeded:?}; client API caught up in {waited_before:?} / {waited_after:?}\n{md}"
    );
    common::cleanup(&prefix).await;
}

#[tokio::test]
async fn kill_switch_turns_a_flag_off_for_applications_and_revert_turns_it_back_on() {
    let prefix = common::prefix("kill");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let f = format!("{prefix}cutover");
    p.put(&f, &FlagState::rollout(&f, 100)).await.unwrap();
    let bridge = OpenFeatureBridge::new(p.clone());
    let user = EvaluationContext::default().with_targeting_key("user-7");
    assert!(bridge.resolve_bool_value(&f, &user).await.unwrap().value);

    let kill = SetFlag::kill_switch("kill", p.clone(), &f);
    let ctx = Context::standalone("kill");
    let receipt = kill.apply(&ctx).await.unwrap();
    assert!(!bridge.resolve_bool_value(&f, &user).await.unwrap().value);
    let (view, _) = common::client_view(&prefix).await;
    assert_eq!(view[&f]["enabled"], json!(false));
    // Strategies are kept: turning it back on restores the same rollout.
    assert_eq!(
        view[&f]["strategies"][0]["parameters"]["rollout"],
        json!("100")
    );

    kill.revert(Some(&receipt), &ctx).await.unwrap();
    kill.revert(Some(&receipt), &ctx).await.unwrap(); // idempotent
    assert!(bridge.resolve_bool_value(&f, &user).await.unwrap().value);
    let (view, _) = common::client_view(&prefix).await;
    assert_eq!(view[&f]["enabled"], json!(true));
    common::cleanup(&prefix).await;
}

/// Struct: a health check that always fails.
struct Failing;
#[async_trait]
impl Verifier for Failing {
    fn id(&self) -> &str {
        "always-failing"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        Ok(Verdict::fail("synthetic failure"))
    }
}

#[tokio::test]
async fn component_rollback_keeps_one_flag_and_restores_the_other() {
    let prefix = common::prefix("partial");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let (x, y) = (format!("{prefix}x"), format!("{prefix}y"));
    p.put(&x, &FlagState::rollout(&x, 10)).await.unwrap();
    p.put(&y, &FlagState::off()).await.unwrap();
    let plan = Plan::builder(format!("{prefix}plan"))
        .checkpoint("flag-x", FlagCheckpoint::flag(p.clone(), &x))
        .checkpoint("flag-y", FlagCheckpoint::flag(p.clone(), &y))
        .step(
            "flag-x",
            SetFlag::new("x-to-50", p.clone(), &x, FlagChange::new().rollout(50)),
            &[],
        )
        .step(
            "flag-y",
            StagedRollout::new("y-rollout", p.clone(), &y, &[5, 100])
                .health_check(Arc::new(Failing)),
            &["x-to-50"],
        )
        .verify_final(FlagsMatchSnapshot::baseline(
            "never-reached",
            FlagCheckpoint::flag(p.clone(), &y),
        ))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::PartiallyRolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());
    assert_eq!(
        p.get(&x).await.unwrap().unwrap().rollout_percent(),
        Some(50),
        "x is kept"
    );
    assert_eq!(
        p.get(&y).await.unwrap(),
        Some(FlagState::off()),
        "y is rolled back"
    );
    common::cleanup(&prefix).await;
}

#[tokio::test]
async fn baseline_verifier_lists_each_differing_flag() {
    let prefix = common::prefix("verify");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    p.put(&a, &FlagState::rollout(&a, 10)).await.unwrap();
    p.put(&b, &FlagState::off()).await.unwrap();
    let cp = FlagCheckpoint::prefix(p.clone(), &prefix);
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::detached().with_baseline([snap]);
    let v = FlagsMatchSnapshot::baseline("flags-match", cp.clone());
    assert!(v.verify(&ctx).await.unwrap().passed());
    p.put(&a, &FlagState::rollout(&a, 20)).await.unwrap();
    p.delete(&b).await.unwrap();
    let verdict = v.verify(&ctx).await.unwrap();
    assert!(!verdict.passed());
    assert_eq!(verdict.value, Some(2.0));
    let differing = verdict.evidence["differing"].as_array().unwrap();
    assert_eq!(differing[0]["flag"], json!(a));
    assert_eq!(
        differing[0]["actual"]["strategies"][0]["parameters"]["rollout"],
        json!("20")
    );
    assert_eq!(differing[1]["flag"], json!(b));
    assert_eq!(differing[1]["actual"], json!(null));
    common::cleanup(&prefix).await;
}

/// Unleash 6 records a flag's lifecycle stages from events, asynchronously; deleting a
/// flag from the archive before its `archived` stage is written used to crash the server
/// (an unhandled foreign-key error in `FeatureLifecycleService.featureArchived`) after
/// about 20 removals in a row. A rollback that removes the flags a migration created
/// takes that path: 20 rounds of 50 removals must leave the server healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_many_flags_never_takes_unleash_down() {
    use rollback_flags::FlagProvider;
    let provider = common::unleash();
    let prefix = common::prefix("rm-loop");
    let health = format!("{}/health", common::unleash_url());
    for round in 0..20 {
        let names: Vec<String> = (0..50).map(|i| format!("{prefix}-{round}-{i}")).collect();
        for n in &names {
            common::create_flag(n).await;
        }
        let mut tasks = Vec::new();
        for n in names.clone() {
            let p = provider.clone();
            tasks.push(tokio::spawn(async move { p.delete(&n).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let status = common::http()
            .get(&health)
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            status.ok(),
            Some(200),
            "Unleash is down after round {round}"
        );
        for n in &names {
            assert!(
                provider.get(n).await.unwrap().is_none(),
                "{n} is gone after its removal"
            );
        }
    }
}
