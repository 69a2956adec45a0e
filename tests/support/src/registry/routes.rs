//! Maps the REST calls of Confluent's documented API that sluice makes onto the store.

use serde_json::{json, Value};

use super::http::{percent_decode, Request, Response};
use super::store::{ApiError, Store, VersionRef};

pub(crate) fn handle(store: &mut Store, request: &Request) -> Response {
    let authorized = store
        .required_authorization
        .as_ref()
        .is_none_or(|required| request.authorization.as_ref() == Some(required));
    let answer = if store.unavailable {
        Err(ApiError::new(
            503,
            50003,
            "the registry double is set to be unavailable",
        ))
    } else if !authorized {
        // Confluent's registry answers a missing or wrong credential with exactly this body.
        Err(ApiError::new(401, 401, "Unauthorized"))
    } else {
        route(store, request)
    };
    match answer {
        Ok(body) => Response {
            status: 200,
            body: body.to_string(),
        },
        Err(err) => Response {
            status: err.status,
            body: err.body().to_string(),
        },
    }
}

fn route(store: &mut Store, request: &Request) -> Result<Value, ApiError> {
    // Split before decoding, so an escaped `/` stays inside its subject.
    let segments: Vec<String> = request
        .path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["config"]) => Ok(json!({ "compatibilityLevel": "BACKWARD" })),
        ("GET", ["subjects"]) => Ok(json!(store.subjects())),
        ("POST", ["subjects", subject]) => {
            let schema = schema_of(&request.body)?;
            Ok(store.lookup(subject, &schema)?.body())
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let schema = schema_of(&request.body)?;
            Ok(json!({ "id": store.register(subject, &schema)? }))
        }
        ("GET", ["subjects", subject, "versions"]) => Ok(json!(store.versions(subject)?)),
        ("GET", ["subjects", subject, "versions", version]) => {
            Ok(store.version(subject, version_ref(version)?)?.body())
        }
        ("GET", ["schemas", "ids", id]) => {
            let id = id
                .parse()
                .map_err(|_| ApiError::new(404, 40403, format!("Schema {id} not found")))?;
            Ok(json!({ "schema": store.schema_by_id(id)? }))
        }
        (_, ["config"] | ["subjects"] | ["subjects", _] | ["subjects", _, "versions"])
        | (_, ["subjects", _, "versions", _] | ["schemas", "ids", _]) => Err(ApiError::new(
            405,
            405,
            format!("HTTP method {method} is not supported on {}", request.path),
        )),
        _ => Err(ApiError::new(
            404,
            404,
            format!(
                "{} {} is not served by the registry double",
                method, request.path
            ),
        )),
    }
}

/// The `schema` string of a registration or lookup body. Only Avro is spoken.
fn schema_of(body: &[u8]) -> Result<String, ApiError> {
    let body: Value = serde_json::from_slice(body).map_err(ApiError::invalid_schema)?;
    if let Some(kind) = body.get("schemaType").and_then(Value::as_str) {
        if kind != "AVRO" {
            return Err(ApiError::invalid_schema(format!(
                "schemaType {kind} is not supported by the registry double"
            )));
        }
    }
    match body.get("schema") {
        Some(Value::String(schema)) => Ok(schema.clone()),
        _ => Err(ApiError::invalid_schema("the body has no `schema` string")),
    }
}

fn version_ref(version: &str) -> Result<VersionRef, ApiError> {
    match version {
        "latest" | "-1" => Ok(VersionRef::Latest),
        number => number
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(VersionRef::Number)
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    42202,
                    format!("The specified version '{number}' is not a valid version id."),
                )
            }),
    }
}
