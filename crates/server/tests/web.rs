//! The web page's routes: the page and every file it loads are served with their types from the
//! files built into the binary, or from `--web-dir` (read at each request, nothing outside it).

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{server, server_full};
use http_body_util::BodyExt;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;
use lensd_server::Shared;
use tower::ServiceExt;

/// Status, content type and body of a GET.
async fn get(state: &Shared, path: &str) -> (StatusCode, String, String) {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    let resp = lensd_server::api::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let mime = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, mime, String::from_utf8_lossy(&bytes).to_string())
}

/// The `/static/...` files a text names, and the `./x.js` modules a script imports.
fn references(text: &str, dir: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for quote in ['"', '\''] {
        for piece in text.split(quote).skip(1).step_by(2) {
            if let Some(rest) = piece.strip_prefix("/static/") {
                out.insert(rest.to_string());
            } else if let Some(rest) = piece.strip_prefix("./") {
                if rest.ends_with(".js") {
                    out.insert(format!("{dir}{rest}"));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_page_and_every_file_it_loads_are_built_in_with_their_types() {
    let s = server();
    let (status, mime, index) = get(&s.state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(mime.starts_with("text/html"), "{mime}");
    assert!(index.contains("/static/js/app.js"), "{index}");

    // Walk the module graph from the page: each file must be there, with a type the browser
    // accepts for it (a module script served as text/plain is refused).
    let mut todo: Vec<String> = references(&index, "").into_iter().collect();
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, mime, body) = get(&s.state, &format!("/static/{path}")).await;
        assert_eq!(status, StatusCode::OK, "/static/{path}: {body}");
        if path.ends_with(".js") {
            assert!(mime.contains("javascript"), "/static/{path} is {mime}");
            let dir = path
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/"));
            todo.extend(references(&body, &dir));
        } else if path.ends_with(".css") {
            assert!(mime.starts_with("text/css"), "/static/{path} is {mime}");
        }
    }
    assert!(seen.contains("js/switcher.js"), "{seen:?}");
    assert!(seen.len() > 10, "{seen:?}");

    let (status, _, body) = get(&s.state, "/static/js/nothing-here.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("js/nothing-here.js"), "{body}");
}

#[tokio::test]
async fn a_web_dir_is_read_at_each_request_and_nothing_outside_it() {
    let root = tempfile::tempdir().unwrap();
    let web = root.path().join("web");
    std::fs::create_dir_all(web.join("js")).unwrap();
    std::fs::write(web.join("index.html"), "<p>first</p>").unwrap();
    std::fs::write(web.join("js/a.js"), "export const a = 1;").unwrap();
    std::fs::write(root.path().join("secret.txt"), "not for you").unwrap();
    let s = server_full(
        Limits::default(),
        QueueConfig::default(),
        FakeEngine::new(true),
        Some(web.clone()),
    );

    assert_eq!(get(&s.state, "/").await.2, "<p>first</p>");
    std::fs::write(web.join("index.html"), "<p>edited</p>").unwrap();
    assert_eq!(get(&s.state, "/").await.2, "<p>edited</p>");
    let (status, mime, body) = get(&s.state, "/static/js/a.js").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "export const a = 1;")
    );
    assert!(mime.contains("javascript"), "{mime}");

    for path in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/js/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/js//a.js",
        "/static/./js/a.js",
    ] {
        let (status, _, body) = get(&s.state, path).await;
        assert_ne!(status, StatusCode::OK, "{path} was served: {body}");
        assert!(!body.contains("not for you"), "{path}: {body}");
    }
}
