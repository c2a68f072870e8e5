//! The web page: the files of `web/static`, embedded in the binary at build time so that
//! `lensd serve` needs no other web server and the page fetches nothing from elsewhere.
//! `--web-dir` serves them from a folder instead, read at each request.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::Shared;

#[derive(RustEmbed)]
#[folder = "../../web/static"]
struct Assets;

fn not_found(path: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no file `{path}`")).into_response()
}

fn reply(mime: String, data: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        data,
    )
        .into_response()
}

async fn file(state: &Shared, path: &str) -> Response {
    let Some(dir) = &state.web_dir else {
        return match Assets::get(path) {
            Some(f) => reply(f.metadata.mimetype().to_string(), f.data.into_owned()),
            None => not_found(path),
        };
    };
    // Only plain relative names: no way out of the folder.
    let plain = path
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'));
    if !plain {
        return not_found(path);
    }
    match tokio::fs::read(dir.join(path)).await {
        Ok(data) => {
            let mime = mime_guess::from_path(path)
                .first_or_octet_stream()
                .to_string();
            reply(mime, data)
        }
        Err(_) => not_found(path),
    }
}

pub async fn index(State(state): State<Shared>) -> Response {
    file(&state, "index.html").await
}

pub async fn asset(State(state): State<Shared>, Path(path): Path<String>) -> Response {
    file(&state, &path).await
}
