//! Creating a flag is a normal migration step ([`SetFlag::create`]), reverted by removing
//! the flag; and what Unleash 6 cannot hold (flag-level variants) is refused before
//! anything is written. Against the real Unleash started by `scripts/test`.

mod common;

use async_trait::async_trait;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Context, Error, Executor, Outcome, Plan, Step, Verdict, Verifier};
use rollback_flags::{FlagChange, FlagProvider, FlagState, SetFlag, Variant};
use std::sync::Arc;

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
async fn set_flag_create_makes_a_missing_flag_and_rollback_removes_it() {
    let prefix = common::prefix("create");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let flag = format!("{prefix}new");
    assert_eq!(p.get(&flag).await.unwrap(), None);

    // Forward: committed, the flag exists with the change applied.
    let plan = Plan::builder(format!("{prefix}ok"))
        .step(
            "flags",
            SetFlag::create(
                "add",
                p.clone(),
                &flag,
                FlagChange::new().rollout(20).enabled(true),
            ),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        p.get(&flag).await.unwrap(),
        Some(FlagState::rollout(&flag, 20))
    );
    p.delete(&flag).await.unwrap();

    // Backward: a failing final check rolls back; the created flag is removed.
    let plan = Plan::builder(format!("{prefix}fail"))
        .step(
            "flags",
            SetFlag::create("add", p.clone(), &flag, FlagChange::new().rollout(20)),
            &[],
        )
        .verify_final(Failing)
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        p.get(&flag).await.unwrap(),
        None,
        "the created flag is removed"
    );
    assert!(!p.list().await.unwrap().contains(&flag));
}

#[tokio::test]
async fn set_flag_create_on_an_existing_flag_reverts_to_its_prior_state() {
    let prefix = common::prefix("create-existing");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let flag = format!("{prefix}f");
    p.put(&flag, &FlagState::rollout(&flag, 10)).await.unwrap();
    let step = SetFlag::create("set", p.clone(), &flag, FlagChange::new().rollout(60));
    let ctx = Context::standalone(&format!("{prefix}run"));
    let receipt = step.apply(&ctx).await.unwrap();
    assert_eq!(
        p.get(&flag).await.unwrap(),
        Some(FlagState::rollout(&flag, 60))
    );
    step.revert(Some(&receipt), &ctx).await.unwrap();
    assert_eq!(
        p.get(&flag).await.unwrap(),
        Some(FlagState::rollout(&flag, 10)),
        "kept, not removed"
    );
    common::cleanup(&prefix).await;
}

#[tokio::test]
async fn revert_without_receipt_removes_the_created_flag_from_the_cursor() {
    let prefix = common::prefix("create-cursor");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let flag = format!("{prefix}f");
    let step = SetFlag::create("add", p.clone(), &flag, FlagChange::new().enabled(false));
    let ctx = Context::standalone(&format!("{prefix}run"));
    step.apply(&ctx).await.unwrap();
    assert!(p.get(&flag).await.unwrap().is_some());
    // Apply outcome unknown: the step knows from its cursor that it created the flag.
    step.revert(None, &ctx).await.unwrap();
    assert_eq!(p.get(&flag).await.unwrap(), None);
    // And again: idempotent.
    step.revert(None, &ctx).await.unwrap();
}

#[tokio::test]
async fn set_flag_new_refuses_a_missing_flag_and_names_create() {
    let prefix = common::prefix("missing");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let flag = format!("{prefix}f");
    let step = SetFlag::new("set", p.clone(), &flag, FlagChange::new().rollout(5));
    let err = step
        .apply(&Context::standalone(&format!("{prefix}run")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("SetFlag::create"), "{err}");
    assert_eq!(p.get(&flag).await.unwrap(), None);
}

#[tokio::test]
async fn flag_level_variants_are_refused_before_anything_is_written() {
    let prefix = common::prefix("variants");
    let unleash = common::unleash();
    let facts = unleash.server_facts().await.unwrap();
    assert!(facts.version.starts_with('6'), "{facts:?}");
    if facts.flag_variants {
        eprintln!("skipped: this Unleash accepts flag-level variants (enableLegacyVariants on)");
        return;
    }
    let p: Arc<dyn FlagProvider> = Arc::new(unleash);
    let flag = format!("{prefix}f");
    let mut state = FlagState::rollout(&flag, 50);
    state.variants = vec![Variant::new("blue", 500), Variant::new("green", 500)];
    let err = p.put(&flag, &state).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("strategy"), "{err}");
    assert_eq!(p.get(&flag).await.unwrap(), None, "nothing was created");

    // A step asking for them fails its apply, and the run rolls back with nothing left.
    let plan = Plan::builder(format!("{prefix}plan"))
        .step(
            "flags",
            SetFlag::create(
                "add",
                p.clone(),
                &flag,
                FlagChange::new()
                    .rollout(50)
                    .variants(vec![Variant::new("blue", 1000)]),
            ),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.to_markdown().contains("flag-level variants"));
    assert_eq!(p.get(&flag).await.unwrap(), None);
}

/// A rollback removing the flags a migration created takes the removal path that used to
/// crash Unleash 6 (purge racing its asynchronous archive handling): twenty created flags
/// rolled back in one run leave the server healthy and the flags gone.
#[tokio::test]
async fn rolling_back_twenty_created_flags_leaves_unleash_healthy() {
    let prefix = common::prefix("create-many");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let names: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
    let mut plan = Plan::builder(format!("{prefix}plan"));
    for (i, n) in names.iter().enumerate() {
        plan = plan.step(
            "flags",
            SetFlag::create(
                &format!("add-{i}"),
                p.clone(),
                n,
                FlagChange::new().rollout(10).enabled(true),
            ),
            &[],
        );
    }
    let plan = plan.verify_final(Failing).build().unwrap();
    let t0 = std::time::Instant::now();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    eprintln!("20 flags created and rolled back in {:?}", t0.elapsed());
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    let health = common::http()
        .get(format!("{}/health", common::unleash_url()))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(200), "Unleash is down after the rollback");
    let left = p.list().await.unwrap();
    for n in &names {
        assert!(!left.contains(n), "{n} is left after the rollback");
        assert_eq!(p.get(n).await.unwrap(), None);
    }
}

#[tokio::test]
async fn the_ready_check_refuses_a_plan_before_anything_changes() {
    use rollback_flags::UnleashProvider;
    let prefix = common::prefix("ready");
    let ok = common::unleash();
    let ctx = Context::standalone(&format!("{prefix}run"));
    let v = ok.ready_check().verify(&ctx).await.unwrap();
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.evidence["project"], "default");

    let facts = ok.server_facts().await.unwrap();
    let v = ok
        .ready_check()
        .needs_flag_variants()
        .verify(&ctx)
        .await
        .unwrap();
    assert_eq!(v.passed(), facts.flag_variants, "{v:?}");

    let url = common::unleash_url();
    let cases = [
        (
            UnleashProvider::new(&url, "*:*.not-a-token", "default", "development").unwrap(),
            "401",
        ),
        (
            UnleashProvider::new(&url, common::client_token(), "default", "development").unwrap(),
            "403",
        ),
        (
            UnleashProvider::new(
                &url,
                common::admin_token(),
                "no-such-project",
                "development",
            )
            .unwrap(),
            "does not exist",
        ),
        (
            UnleashProvider::new(&url, common::admin_token(), "default", "no-such-env").unwrap(),
            "not enabled",
        ),
    ];
    for (p, says) in cases {
        let v = p.ready_check().verify(&ctx).await.unwrap();
        assert!(!v.passed() && v.summary.contains(says), "{says}: {v:?}");
    }

    // As a plan precondition: the run stops before the step writes anything.
    let p: Arc<dyn FlagProvider> = Arc::new(
        UnleashProvider::new(&url, common::admin_token(), "default", "no-such-env").unwrap(),
    );
    let flag = format!("{prefix}f");
    let bad = UnleashProvider::new(&url, common::admin_token(), "default", "no-such-env").unwrap();
    let plan = Plan::builder(format!("{prefix}plan"))
        .precondition(bad.ready_check())
        .step(
            "flags",
            SetFlag::create("add", p, &flag, FlagChange::new().enabled(false)),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new()).run(&plan).await;
    let text = match &report {
        Ok(r) => r.to_markdown(),
        Err(e) => e.to_string(),
    };
    if let Ok(r) = &report {
        assert_ne!(r.outcome, Outcome::Committed, "{text}");
    }
    assert!(text.contains("not enabled"), "{text}");
    assert_eq!(ok.get(&flag).await.unwrap(), None, "nothing was written");
}
