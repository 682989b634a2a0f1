//! Errors a caller can act on: what no retry can fix is permanent (the run fails fast
//! with the server's own message), what waiting may fix is transient.

mod common;

use common::{server_url, with_database};
use rollback_core::{Checkpoint, Context, Error};
use rollback_postgres::{Database, Table, TableSnapshot};

fn with_user(url: &str, user: &str) -> String {
    url.replacen("postgres@", &format!("{user}@"), 1)
}

#[tokio::test]
async fn an_unknown_database_or_role_is_a_permanent_error_naming_it() {
    let server = server_url();
    assert!(server.contains("postgres@"), "test setup: {server}");
    let cases = [
        (
            with_database(&server, "no_such_database_rb"),
            "no_such_database_rb",
        ),
        (with_user(&server, "no_such_role_rb"), "no_such_role_rb"),
    ];
    for (url, name) in cases {
        let db = Database::connect(&url).unwrap();
        let err = db.client().await.map(|_| ()).unwrap_err();
        assert!(!err.is_transient(), "{name}: retrying cannot help: {err}");
        assert!(matches!(err, Error::Backend { .. }), "{name}: {err:?}");
        assert!(
            err.to_string().contains(name),
            "{name}: the cause is named: {err}"
        );
        // Through an adapter call too, as the executor sees it.
        let cp = TableSnapshot::new(&db, Table::public("t"));
        let err = cp.fingerprint(&Context::detached()).await.unwrap_err();
        assert!(!err.is_transient(), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_transient() {
    let url = server_url();
    let host_start = url.rfind('@').unwrap() + 1;
    let path = url[host_start..]
        .find('/')
        .map_or(url.len(), |i| host_start + i);
    let closed = format!("{}127.0.0.1:1{}", &url[..host_start], &url[path..]);
    let db = Database::connect(&closed).unwrap();
    let err = db.client().await.map(|_| ()).unwrap_err();
    assert!(err.is_transient(), "{err}");
}
