//! The OpenFeature bridge: applications evaluate the flags a migration controls.

mod common;

use open_feature::{EvaluationContext, OpenFeature};
use rollback_core::{Context, Step};
use rollback_flags::{
    bucket, evaluate_bool, FileProvider, FlagChange, FlagProvider, FlagState, MemoryProvider,
    OpenFeatureBridge, SetFlag, Variant,
};
use std::sync::Arc;

#[test]
fn bucketing_is_unleash_s_so_users_land_where_unleash_sdks_put_them() {
    // The vectors Unleash's own SDKs test against (normalizedValue).
    assert_eq!(bucket("gr1", "123", 100, 0), 73);
    assert_eq!(bucket("groupX", "999", 100, 0), 25);
}

#[test]
fn rollout_share_tracks_the_percentage_and_raising_it_keeps_users_on() {
    let ten = FlagState::rollout("checkout", 10);
    let fifty = FlagState::rollout("checkout", 50);
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let on = |s: &FlagState, u: &str| evaluate_bool("checkout", s, Some(u)).unwrap().value;
    let at_ten = users.iter().filter(|u| on(&ten, u)).count();
    let at_fifty = users.iter().filter(|u| on(&fifty, u)).count();
    assert!((900..1100).contains(&at_ten), "{at_ten}");
    assert!((4800..5200).contains(&at_fifty), "{at_fifty}");
    // Stable: every user on at 10 % is still on at 50 %.
    assert!(users.iter().all(|u| !on(&ten, u) || on(&fifty, u)));
    // Off is off, 0 % is nobody, no key needed at 100 %.
    let mut off = fifty.clone();
    off.enabled = false;
    assert!(users.iter().all(|u| !on(&off, u)));
    assert!(
        evaluate_bool("checkout", &FlagState::rollout("checkout", 100), None)
            .unwrap()
            .value
    );
    assert!(
        evaluate_bool("checkout", &ten, None).is_err(),
        "a partial rollout needs a targeting key"
    );
}

#[tokio::test]
async fn an_openfeature_client_sees_the_file_flag_a_step_changes_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FileProvider::new(dir.path().join("flags.json")));
    file.put("checkout", &FlagState::rollout("checkout", 100))
        .await
        .unwrap();
    let mut api = OpenFeature::default();
    api.set_provider(OpenFeatureBridge::new(file.clone())).await;
    let client = api.create_client();
    let user = EvaluationContext::default().with_targeting_key("user-1");
    assert!(client
        .get_bool_value("checkout", Some(&user), None)
        .await
        .unwrap());

    let kill = SetFlag::kill_switch("kill", file.clone(), "checkout");
    let ctx = Context::standalone("of");
    let r = kill.apply(&ctx).await.unwrap();
    assert!(!client
        .get_bool_value("checkout", Some(&user), None)
        .await
        .unwrap());
    kill.revert(Some(&r), &ctx).await.unwrap();
    assert!(client
        .get_bool_value("checkout", Some(&user), None)
        .await
        .unwrap());
    // Unknown flags are errors the client turns into the caller's default.
    assert!(client
        .get_bool_value("nope", Some(&user), None)
        .await
        .is_err());
}

#[tokio::test]
async fn string_evaluation_serves_the_weighted_variant_payload() {
    let mem = MemoryProvider::new("of");
    let state = FlagState {
        enabled: true,
        strategies: vec![],
        variants: vec![
            Variant::new("blue", 200).with_payload("string", "#00f"),
            Variant::new("red", 800).with_payload("string", "#f00"),
        ],
    };
    mem.put("theme", &state).await.unwrap();
    let mut api = OpenFeature::default();
    api.set_provider(OpenFeatureBridge::new(Arc::new(mem)))
        .await;
    let client = api.create_client();
    let mut blue = 0;
    for i in 0..2000 {
        let ctx = EvaluationContext::default().with_targeting_key(format!("u{i}"));
        let v = client
            .get_string_value("theme", Some(&ctx), None)
            .await
            .unwrap();
        assert!(v == "#00f" || v == "#f00");
        blue += usize::from(v == "#00f");
    }
    assert!(
        (300..500).contains(&blue),
        "{blue} of 2000 with weight 200/1000"
    );
}

#[tokio::test]
async fn an_openfeature_client_on_unleash_sees_a_rollout_change_at_once() {
    let prefix = common::prefix("of");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let f = format!("{prefix}flag");
    p.put(&f, &FlagState::rollout(&f, 0)).await.unwrap();
    let mut api = OpenFeature::default();
    api.set_provider(OpenFeatureBridge::new(p.clone())).await;
    let client = api.create_client();
    let user = EvaluationContext::default().with_targeting_key("user-1");
    assert!(!client.get_bool_value(&f, Some(&user), None).await.unwrap());
    let step = SetFlag::new("full", p.clone(), &f, FlagChange::new().rollout(100));
    let ctx = Context::standalone("of-unleash");
    step.apply(&ctx).await.unwrap();
    assert!(client.get_bool_value(&f, Some(&user), None).await.unwrap());
    step.revert(None, &ctx).await.unwrap(); // no receipt: the step remembers the prior state
    assert!(!client.get_bool_value(&f, Some(&user), None).await.unwrap());
    common::cleanup(&prefix).await;
}
