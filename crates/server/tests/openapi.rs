//! The OpenAPI document is generated from the code, lists every endpoint, and real responses
//! validate against the schemas it gives them.

mod common;

use axum::http::StatusCode;
use common::{call, events, server, ADMIN};
use serde_json::{json, Value};

/// (method, path, key, body, schema of the response)
type Check = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

fn validate(doc: &Value, schema: &str, instance: &Value) {
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#/components/schemas/{schema}"));
    let validator =
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{schema} does not describe {instance}: {errors:?}"
    );
}

#[tokio::test]
async fn responses_match_the_generated_document() {
    let s = server();
    let (st, doc) = call(&s.state, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for p in [
        "/api/v1/models",
        "/api/v1/models/switch",
        "/api/v2/groups",
        "/api/v2/groups/{id}",
        "/api/v2/groups/{id}/preload",
        "/api/v2/groups/{id}/unload",
        "/api/v2/models/{id}",
        "/api/v2/memory",
        "/api/v2/analyze",
        "/api/v2/generate",
        "/api/v2/requests/{id}",
        "/api/v2/requests/{id}/cancel",
        "/api/v2/requests/{id}/events",
        "/api/v2/admin/reload",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains(&p), "{p} is not documented");
    }
    let checks: Vec<Check> = vec![
        ("GET", "/healthz", None, None, "Health"),
        ("GET", "/api/v1/models", Some(ADMIN), None, "ModelsResponse"),
        (
            "POST",
            "/api/v1/models/switch",
            None,
            Some(r#"{"model_id": "pub-logit"}"#),
            "SwitchResponse",
        ),
        ("GET", "/api/v2/groups", Some(ADMIN), None, "GroupsResponse"),
        ("GET", "/api/v2/groups/public", None, None, "GroupView"),
        ("GET", "/api/v2/models/pub-tuned", None, None, "ModelView"),
        ("GET", "/api/v2/memory", Some(ADMIN), None, "MemoryResponse"),
        (
            "POST",
            "/api/v2/groups/public/unload",
            Some(ADMIN),
            None,
            "UnloadResponse",
        ),
        (
            "POST",
            "/api/v2/groups/public/preload",
            Some(ADMIN),
            None,
            "PreloadResponse",
        ),
        ("GET", "/api/v2/models/nope", None, None, "ErrorBody"),
        (
            "POST",
            "/api/v2/analyze",
            None,
            Some(r#"{"text": 1}"#),
            "ErrorBody",
        ),
    ];
    for (method, path, key, body, schema) in checks {
        let (_, v) = call(&s.state, method, path, key, body).await;
        validate(&doc, schema, &v);
    }
    let (st, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(r#"{"model_id": "pub-tuned", "text": "a b"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    validate(&doc, "Accepted", &a);
    let id = a["request_id"].as_str().unwrap();
    events(&s.state, id, None).await;
    let (_, r) = call(
        &s.state,
        "GET",
        &format!("/api/v2/requests/{id}"),
        None,
        None,
    )
    .await;
    validate(&doc, "RequestView", &r);
    let (_, c) = call(
        &s.state,
        "POST",
        &format!("/api/v2/requests/{id}/cancel"),
        None,
        None,
    )
    .await;
    validate(&doc, "CancelResponse", &c);
    // A value of the wrong shape is caught, so the checks above are not vacuous.
    let mut broken = r.clone();
    broken["status"] = json!({"state": "flying"});
    let mut root = doc.clone();
    root["$ref"] = json!("#/components/schemas/RequestView");
    assert!(!jsonschema::validator_for(&root).unwrap().is_valid(&broken));
}
