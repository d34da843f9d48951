//! `GET /asyncapi.json`: the WebSocket protocol as an AsyncAPI 3.0 document, its message
//! schemas generated from the frame types the edge and the rooms use
//! (`convene_actors::protocol`), so the document cannot drift from the code.

use std::sync::LazyLock;

use convene_actors::protocol::{ClientFrame, ServerFrame};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The route.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("asyncapi.json")
        .and(warp::get())
        .map(|| warp::reply::json(&*DOCUMENT).into_response())
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

/// Where the message schemas live in the document.
const SCHEMAS: &str = "/components/schemas";

/// The variants of a frame schema tagged by `op`: `(op, its schema)`.
fn ops(root: &Value) -> Vec<(String, Value)> {
    let variants = root
        .get("oneOf")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    variants
        .into_iter()
        .filter_map(|variant| {
            let op = variant
                .pointer("/properties/op/const")
                .or_else(|| variant.pointer("/properties/op/enum/0"))
                .and_then(Value::as_str)?
                .to_owned();
            Some((op, variant))
        })
        .collect()
}

/// Adds the message of one op (`side` is `client` or `server`) with its payload schema, and
/// answers the channel's reference to it.
fn message(
    schemas: &mut Map<String, Value>,
    messages: &mut Map<String, Value>,
    side: &str,
    op: &str,
    mut schema: Value,
) -> Value {
    let name = format!("{side}_{op}");
    let summary = schema
        .as_object_mut()
        .and_then(|o| o.remove("description"))
        .unwrap_or(Value::Null);
    schemas.insert(name.clone(), schema);
    messages.insert(
        name.clone(),
        json!({
            "name": op, "title": format!("{op} ({side})"), "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": format!("#{SCHEMAS}/{name}")},
        }),
    );
    json!({"$ref": format!("#/channels/ws/messages/{name}")})
}

/// The AsyncAPI 3.0 document of `/ws`.
pub fn document() -> Value {
    let settings = SchemaSettings::draft07().with(|s| s.definitions_path = SCHEMAS.into());
    let mut client = settings.clone().into_generator();
    let client_root = client.root_schema_for::<ClientFrame>().to_value();
    let mut server = settings.for_serialize().into_generator();
    let server_root = server.root_schema_for::<ServerFrame>().to_value();

    let mut schemas = Map::new();
    schemas.extend(client.take_definitions(true));
    schemas.extend(server.take_definitions(true));
    let mut messages = Map::new();
    let mut sent = Vec::new();
    let mut received = Vec::new();

    // A client frame is `ref` plus one op's fields; each op becomes a message of its own.
    let reference = client_root
        .pointer("/properties/ref")
        .cloned()
        .unwrap_or(json!({}));
    let client_ops = match client_root.pointer("/allOf/0") {
        Some(inner) => ops(inner),
        None => ops(&client_root),
    };
    for (op, mut schema) in client_ops {
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("ref".into(), reference.clone());
        }
        sent.push(message(&mut schemas, &mut messages, "client", &op, schema));
    }
    for (op, schema) in ops(&server_root) {
        received.push(message(&mut schemas, &mut messages, "server", &op, schema));
    }
    let channel_messages: Map<String, Value> = messages
        .keys()
        .map(|name| {
            let target = json!({"$ref": format!("#/components/messages/{name}")});
            (name.clone(), target)
        })
        .collect();

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Convene live rooms",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live rooms over one WebSocket per client. Every frame is a JSON text \
                frame with an `op`. A client frame may carry a `ref` (any JSON value) that its \
                reply echoes. Rooms are `room:{name}` (anyone signed in) and `event:{id}` (while \
                the event exists; its creator and registered attendees publish). Presence follows \
                Phoenix: a `presence_state` on join, then `presence_diff`s gathered over 20 ms, \
                one meta per connection. A room above the node's `room_presence_limit` \
                connections (1000 by default) sends counts instead: a `presence_count` on join \
                and at most once a second while the counts change, no diffs, until it falls to \
                half the limit and every member receives a `presence_state` again. The join \
                reply's `presence` says which (`full` or `counts`); the `presence` op pages \
                through the connections at any size. Close codes: 4001 unauthorized, 4000 heartbeat timeout \
                (a connection silent for two heartbeats), 4008 slow consumer, 1009 frame over \
                64 KiB.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "node": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "Any node of the cluster: rooms are reached wherever they live.",
                "security": [{"$ref": "#/components/securitySchemes/token"}],
            }
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "A client's connection",
                "bindings": {"ws": {"method": "GET", "query": {
                    "type": "object",
                    "properties": {"token": {"type": "string", "description":
                        "An access token; without it the first frame must be `auth` within 5 s."}},
                }}},
                "messages": channel_messages,
            }
        },
        "operations": {
            "sendFrame": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "Frames a client sends.",
                "messages": sent,
            },
            "receiveFrame": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "Frames a client receives.",
                "messages": received,
            },
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "token": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "The JWT from `POST /api/v1/auth/login`.",
                }
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_a_message_whose_schema_resolves() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().unwrap();
        let names: Vec<&str> = messages.keys().map(String::as_str).collect();
        for name in [
            "client_auth",
            "client_join",
            "client_leave",
            "client_publish",
            "client_ping",
            "client_presence",
            "server_reply",
            "server_message",
            "server_presence_state",
            "server_presence_diff",
            "server_presence_count",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        // Every $ref in the document points at something in it.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r.clone());
                    }
                    o.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
        let join = &doc["components"]["schemas"]["client_join"];
        let required: Vec<&str> = join["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            required.contains(&"op") && required.contains(&"room"),
            "{join}"
        );
        assert!(join["properties"].get("ref").is_some(), "{join}");
    }
}
