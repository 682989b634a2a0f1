//! The environment `scripts/test` (or `scripts/servers-up`) describes the test servers by.

/// The value of `name`; panics with a message saying how to get it when it is unset.
pub fn require(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests through scripts/test (it starts PostgreSQL, moto, \
             radosgw and Unleash and exports ROLLBACK_TEST_*), or `source` the file written by \
             scripts/servers-up"
        )
    })
}

/// Whether this is a CI run (`CI=true`), where a missing server fails a test instead of
/// skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}
