//! The results database failing under a running server: a result the database cannot take is
//! still delivered to its client, the server goes on, and results are stored again once the
//! database can take them.

mod common;

use std::sync::Arc;

use common::{call, events, server_with_store};
use lensd_server::store::Store;

async fn analyze(s: &common::TestServer) -> String {
    let (status, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(r#"{"model_id": "pub-tuned", "text": "one two three"}"#),
    )
    .await;
    assert!(status.is_success(), "{a}");
    a["request_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_database_cannot_take_still_reaches_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let store = Arc::new(Store::open(&path).unwrap());
    let s = server_with_store(store.clone());

    // Another process holds the database for writing until the save gives up.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let id = analyze(&s).await;
    let evs = events(&s.state, &id, None).await;
    let last = evs.last().expect("events");
    assert_eq!(last["type"], "completed", "{evs:?}");
    assert!(last["output"]["analyses"].is_array(), "{last}");
    other.execute_batch("COMMIT").unwrap();
    assert!(
        store.get(&id).unwrap().is_none(),
        "the locked database took nothing"
    );

    // The server goes on, and stores again.
    let id = analyze(&s).await;
    let evs = events(&s.state, &id, None).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
    assert!(
        store.get(&id).unwrap().is_some(),
        "stored once the lock is gone"
    );
}
