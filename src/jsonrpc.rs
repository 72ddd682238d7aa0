//! JSON-RPC 2.0 as plain data (SPEC §13): a body read into calls (single or batch, with the
//! specification's validation), the errors of the REST catalogue mapped to its codes, and the
//! reply objects written. The service's `rpc` front door runs each call through the same
//! pipeline as REST.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// The plugin raised (or its module does not import, or its result cannot be converted).
pub const PLUGIN_ERROR: i64 = -32000;
pub const TIMEOUT: i64 = -32001;
pub const OVERLOADED: i64 = -32002;
/// No valid token for a call that needs one (SPEC §12).
pub const UNAUTHORIZED: i64 = -32003;

/// Most entries a batch may hold (the body size limit bounds it too).
pub const MAX_BATCH: usize = 1000;

/// `params`: by position (`*args`), by name (`**kwargs`) or absent.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    None,
    Array(Vec<Value>),
    Object(Map<String, Value>),
}

/// One valid request object.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `None`: a notification (no `id` member), which gets no reply.
    pub id: Option<Value>,
    pub method: String,
    pub params: Params,
    /// The request object as sent, for the plugin's `__request__.json`.
    pub object: Value,
}

/// What a body holds.
#[derive(Debug)]
pub enum Incoming {
    /// One request; `Err` is its error reply.
    Single(Result<Call, Value>),
    /// A batch; each entry a call or its error reply.
    Batch(Vec<Result<Call, Value>>),
    /// The whole answer is this one error (unparseable JSON, an empty batch).
    Refused(Value),
}

/// Reads a request body.
pub fn parse(body: &[u8]) -> Incoming {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Incoming::Refused(error(Value::Null, PARSE_ERROR, "Parse error", None)),
    };
    match value {
        Value::Array(items) if items.is_empty() => Incoming::Refused(invalid(Value::Null)),
        Value::Array(items) if items.len() > MAX_BATCH => Incoming::Refused(error(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request",
            Some(json!({"status": format!("A batch holds at most {MAX_BATCH} requests.")})),
        )),
        Value::Array(items) => Incoming::Batch(items.into_iter().map(call).collect()),
        other => Incoming::Single(call(other)),
    }
}

/// One request object checked (JSON-RPC 2.0 §4): `jsonrpc` exactly "2.0", `method` a string,
/// `params` absent, an array or an object, `id` absent, a string, a number or null.
fn call(v: Value) -> Result<Call, Value> {
    let Value::Object(map) = &v else {
        return Err(invalid(Value::Null));
    };
    let id = match map.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id.clone()),
        Some(_) => return Err(invalid(Value::Null)),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if map.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(invalid(reply_id));
    }
    let Some(Value::String(method)) = map.get("method") else {
        return Err(invalid(reply_id));
    };
    let params = match map.get("params") {
        None => Params::None,
        Some(Value::Array(a)) => Params::Array(a.clone()),
        Some(Value::Object(o)) => Params::Object(o.clone()),
        Some(_) => return Err(invalid(reply_id)),
    };
    Ok(Call {
        id,
        method: method.clone(),
        params,
        object: v.clone(),
    })
}

fn invalid(id: Value) -> Value {
    error(id, INVALID_REQUEST, "Invalid Request", None)
}

/// An error reply.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(data) = data {
        err["data"] = data;
    }
    json!({"jsonrpc": "2.0", "error": err, "id": id})
}

/// A success reply around a result already written as JSON text.
pub fn success(id: &Value, result: &[u8]) -> Vec<u8> {
    let id = serde_json::to_vec(id).unwrap_or_else(|_| b"null".to_vec());
    let mut out = Vec::with_capacity(result.len() + id.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
    out.extend_from_slice(result);
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(&id);
    out.push(b'}');
    out
}

/// The reply for a call the pipeline refused or that failed: the specification's code and
/// message for what it names, dpms's own codes for the rest; `data` is the REST error body
/// (`error`, `status` and its extras), so a client sees the same detail either way.
pub fn failure(id: Value, err: &ApiError) -> Value {
    let (code, message) = match err {
        ApiError::ApiUndefined { .. }
        | ApiError::ApiUndefinedBroken { .. }
        | ApiError::ApiUndefinedInModule { .. }
        | ApiError::MethodUndefined { .. }
        | ApiError::NotFound { .. }
        | ApiError::Ambiguous { .. } => (METHOD_NOT_FOUND, "Method not found".to_string()),
        ApiError::BadArguments(_)
        | ApiError::MissingArgument(_)
        | ApiError::BadArgumentType(_)
        | ApiError::BadRequest(_) => (INVALID_PARAMS, "Invalid params".to_string()),
        ApiError::Plugin { .. }
        | ApiError::PluginImport { .. }
        | ApiError::Unserializable { .. }
        | ApiError::WorkerLost { .. } => (PLUGIN_ERROR, err.to_string()),
        ApiError::Timeout { .. } => (TIMEOUT, err.to_string()),
        ApiError::Overloaded
        | ApiError::TooManyTokens { .. }
        | ApiError::SandboxUnavailable(_)
        | ApiError::RegistryUnavailable(_) => (OVERLOADED, err.to_string()),
        ApiError::InvalidToken | ApiError::Unauthorized => (UNAUTHORIZED, err.to_string()),
        _ => (INTERNAL_ERROR, "Internal error".to_string()),
    };
    let mut data = err.body();
    if let Value::Object(map) = &mut data {
        // The REST body's `response`-less shape, without what is HTTP-only.
        map.remove("allow");
    }
    error(id, code, &message, Some(data))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn single(body: &str) -> Result<Call, Value> {
        match parse(body.as_bytes()) {
            Incoming::Single(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_and_notifications() {
        let c = single(r#"{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}"#).unwrap();
        assert_eq!(c.id, Some(json!(1)));
        assert_eq!(c.params, Params::Array(vec![json!(42), json!(23)]));
        let n = single(r#"{"jsonrpc":"2.0","method":"update","params":{"a":1}}"#).unwrap();
        assert_eq!(n.id, None);
        let null_id = single(r#"{"jsonrpc":"2.0","method":"m","id":null}"#).unwrap();
        assert_eq!(null_id.id, Some(Value::Null));
        assert_eq!(null_id.params, Params::None);
    }

    #[test]
    fn invalid_requests() {
        for (body, id) in [
            (
                r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#,
                Value::Null,
            ),
            (r#"{"jsonrpc":"1.0","method":"m","id":3}"#, json!(3)),
            (r#"{"method":"m","id":"x"}"#, json!("x")),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":"p","id":4}"#,
                json!(4),
            ),
            (r#"{"jsonrpc":"2.0","method":"m","id":[1]}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","method":"m","id":{}}"#, Value::Null),
            ("1", Value::Null),
            (r#""s""#, Value::Null),
        ] {
            let err = single(body).unwrap_err();
            assert_eq!(err["error"]["code"], json!(INVALID_REQUEST), "{body}");
            assert_eq!(err["error"]["message"], json!("Invalid Request"));
            assert_eq!(err["id"], id, "{body}");
        }
    }

    #[test]
    fn batches_and_refusals() {
        match parse(b"[]") {
            Incoming::Refused(v) => assert_eq!(v["error"]["code"], json!(INVALID_REQUEST)),
            other => panic!("{other:?}"),
        }
        match parse(b"{\"jsonrpc\": \"2.0\", \"method\": \"foobar, \"params\": \"bar\", \"baz]") {
            Incoming::Refused(v) => {
                assert_eq!(
                    v,
                    json!({"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null})
                )
            }
            other => panic!("{other:?}"),
        }
        match parse(b"[1,2,3]") {
            Incoming::Batch(items) => {
                assert_eq!(items.len(), 3);
                assert!(items.iter().all(|i| i.is_err()));
            }
            other => panic!("{other:?}"),
        }
        let big = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        assert!(matches!(parse(big.as_bytes()), Incoming::Refused(_)));
    }

    #[test]
    fn success_text() {
        let out = success(&json!("a"), b"[1,2]");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"jsonrpc":"2.0","result":[1,2],"id":"a"}));
    }

    #[test]
    fn failures_map_to_codes() {
        let e = failure(json!(1), &ApiError::ApiUndefined { api: "x".into() });
        assert_eq!(e["error"]["code"], json!(METHOD_NOT_FOUND));
        assert_eq!(e["error"]["message"], json!("Method not found"));
        assert_eq!(e["error"]["data"]["error"], json!("api_undefined"));
        let e = failure(
            json!(1),
            &ApiError::Plugin {
                api: "x".into(),
                exception: "ValueError: boom".into(),
                traceback: None,
            },
        );
        assert_eq!(e["error"]["code"], json!(PLUGIN_ERROR));
        assert_eq!(e["error"]["data"]["exception"], json!("ValueError: boom"));
        let e = failure(json!(1), &ApiError::MissingArgument("m".into()));
        assert_eq!(e["error"]["code"], json!(INVALID_PARAMS));
        let e = failure(json!(1), &ApiError::Overloaded);
        assert_eq!(e["error"]["code"], json!(OVERLOADED));
        let e = failure(
            json!(1),
            &ApiError::Timeout {
                api: "x".into(),
                secs: 1.0,
            },
        );
        assert_eq!(e["error"]["code"], json!(TIMEOUT));
        let e = failure(json!(1), &ApiError::Internal("secret detail".into()));
        assert_eq!(e["error"]["code"], json!(INTERNAL_ERROR));
        assert!(!e.to_string().contains("secret detail"));
    }
}
