//! The messages between a worker and a tenant's sandboxed process (SPEC §11: "calls into a
//! tenant's process carry a plain-data copy of the request"). Everything here is plain data
//! with serde; bytes travel as base64 so a frame stays one JSON document of bounded size.
//!
//! The host speaks first: one [`Start`], then any number of [`ToTenant`] messages, each
//! answered by exactly one [`FromTenant`] with the same `id` (calls may finish out of order).
//! Anything else from the tenant's side kills its process (see [`crate::ipc`]'s policy).
//!
//! Enums are externally tagged (`{"done": {...}}`, serde's default): serde reads them in one
//! pass, where an internally tagged one (`{"op": "done", ...}`) is first buffered whole and then
//! read again, which was most of a tenant process's cost per call.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallFailure, CallResult, FinderEntry, LoadRequest, Outcome};
use crate::marshal::{Arg, CallArgs, Field, Typed, Upload};

/// Bytes as one base64 string inside the JSON frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<B64, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

/// What the tenant process needs before it enters its sandbox and starts Python.
#[derive(Debug, Serialize, Deserialize)]
pub struct Start {
    /// The tenant's uuid (hyphenated).
    pub tenant: String,
    pub host_uid: u32,
    pub comm: String,
    pub read_only: Vec<String>,
    pub scratch_bytes: u64,
    pub memory_bytes: Option<u64>,
    pub nofile: u64,
    pub fsize_bytes: u64,
    pub nproc: u64,
    /// The tenant's secrets: its whole environment besides `HOME`, `TMPDIR` and `LANG`.
    pub secrets: Vec<(String, String)>,
    /// The configured virtual environment, whose site-packages the tenant may import.
    pub venv: Option<String>,
    pub py_threads: usize,
    pub max_queued: usize,
    pub max_function_ms: u64,
    pub load_ms: u64,
    /// The layers this kernel lacks, skipped under `DPMS_SANDBOX=relaxed` (empty otherwise:
    /// the host starts no tenant process where a layer is missing).
    pub skip_layers: Vec<String>,
    /// A warm pool's process: no tenant yet (`tenant`, `comm` and `secrets` are unused); it
    /// enters the sandbox but its name and seccomp filter, starts Python, and waits for a
    /// [`ToTenant::Specialise`] as its first message.
    pub pooled: bool,
}

/// Host → tenant.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // built once per message and moved into the writer
#[serde(rename_all = "snake_case")]
pub enum ToTenant {
    /// A pooled process becomes this tenant's: its name, its environment, then seccomp.
    Specialise {
        id: u64,
        comm: String,
        secrets: Vec<(String, String)>,
    },
    Load {
        id: u64,
        /// `(name, path, source)`: the complete finder map, when it changed.
        files: Option<Vec<(String, String, B64)>>,
        forget: Vec<String>,
        requests: Vec<(String, String, B64)>,
    },
    Call {
        id: u64,
        module: String,
        endpoint: usize,
        args: WireArgs,
        request: WireRequest,
    },
}

/// Tenant → host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromTenant {
    /// The sandbox is up and Python started: the process is ready for calls.
    Ready {
        layers_missing: Vec<String>,
    },
    /// The answer to [`ToTenant::Specialise`].
    Specialised {
        id: u64,
    },
    Loaded {
        id: u64,
        result: Result<Vec<WireLoaded>, String>,
    },
    Done {
        id: u64,
        result: WireResult,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireLoaded {
    /// The helper's JSON description, parsed by the host.
    Ok {
        json: String,
    },
    ImportError {
        error: String,
        traceback: String,
    },
    Refused {
        error: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireArgs {
    pub args: Vec<Value>,
    pub kwargs: Vec<(String, WireArg)>,
    pub pass_request: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireArg {
    Json(Value),
    Upload(WireUpload),
    Fields(Vec<(String, WireField)>),
    Typed(Typed),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireUpload {
    pub filename: String,
    pub content_type: Option<String>,
    pub data: B64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireField {
    Text(String),
    File(WireUpload),
}

/// The request as the plugin's `__request__` sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names and values in order (values as bytes: they need not be UTF-8).
    pub headers: Vec<(String, B64)>,
    pub body: B64,
    pub json: Option<Value>,
    pub remote: String,
    pub uuid: Option<String>,
    pub role: Option<String>,
    pub id: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireResult {
    Json {
        body: B64,
    },
    Custom {
        status: u16,
        headers: Vec<(String, String)>,
        content_type: String,
        body: B64,
    },
    Raised {
        exception: String,
        traceback: String,
    },
    Unserializable {
        reason: String,
    },
    Overloaded,
    TimedOut,
    Internal {
        detail: String,
    },
}

fn upload_to_wire(u: &Upload) -> WireUpload {
    WireUpload {
        filename: u.filename.clone(),
        content_type: u.content_type.clone(),
        data: B64(u.data.to_vec()),
    }
}

fn upload_from_wire(u: WireUpload) -> Arc<Upload> {
    Arc::new(Upload {
        filename: u.filename,
        content_type: u.content_type,
        data: bytes::Bytes::from(u.data.0),
    })
}

impl WireArgs {
    pub fn from_call(args: &CallArgs) -> WireArgs {
        let arg = |a: &Arg| match a {
            Arg::Json(v) => WireArg::Json(v.clone()),
            Arg::Typed(t) => WireArg::Typed(t.clone()),
            Arg::Upload(u) => WireArg::Upload(upload_to_wire(u)),
            Arg::Fields(fields) => WireArg::Fields(
                fields
                    .iter()
                    .map(|(k, f)| {
                        let f = match f {
                            Field::Text(t) => WireField::Text(t.clone()),
                            Field::File(u) => WireField::File(upload_to_wire(u)),
                        };
                        (k.clone(), f)
                    })
                    .collect(),
            ),
        };
        WireArgs {
            args: args.args.clone(),
            kwargs: args
                .kwargs
                .iter()
                .map(|(k, v)| (k.to_string(), arg(v)))
                .collect(),
            pass_request: args.pass_request,
        }
    }

    pub fn into_call(self) -> CallArgs {
        let arg = |a: WireArg| match a {
            WireArg::Json(v) => Arg::Json(v),
            WireArg::Typed(t) => Arg::Typed(t),
            WireArg::Upload(u) => Arg::Upload(upload_from_wire(u)),
            WireArg::Fields(fields) => Arg::Fields(
                fields
                    .into_iter()
                    .map(|(k, f)| {
                        let f = match f {
                            WireField::Text(t) => Field::Text(t),
                            WireField::File(u) => Field::File(upload_from_wire(u)),
                        };
                        (k, f)
                    })
                    .collect(),
            ),
        };
        CallArgs {
            args: self.args,
            kwargs: self
                .kwargs
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), arg(v)))
                .collect(),
            pass_request: self.pass_request,
        }
    }
}

impl WireResult {
    pub fn from_result(result: CallResult) -> WireResult {
        match result {
            Ok(Outcome::Json(body)) => WireResult::Json { body: B64(body) },
            Ok(Outcome::Custom {
                status,
                headers,
                content_type,
                body,
            }) => WireResult::Custom {
                status,
                headers,
                content_type,
                body: B64(body),
            },
            Err(CallFailure::Raised {
                exception,
                traceback,
            }) => WireResult::Raised {
                exception,
                traceback,
            },
            Err(CallFailure::Unserializable(reason)) => WireResult::Unserializable { reason },
            Err(CallFailure::Overloaded) => WireResult::Overloaded,
            Err(CallFailure::TimedOut) => WireResult::TimedOut,
            Err(CallFailure::WorkerLost) => WireResult::Internal {
                detail: "worker lost".into(),
            },
            Err(CallFailure::Internal(detail)) => WireResult::Internal { detail },
        }
    }

    pub fn into_result(self) -> CallResult {
        match self {
            WireResult::Json { body } => Ok(Outcome::Json(body.0)),
            WireResult::Custom {
                status,
                headers,
                content_type,
                body,
            } => Ok(Outcome::Custom {
                status,
                headers,
                content_type,
                body: body.0,
            }),
            WireResult::Raised {
                exception,
                traceback,
            } => Err(CallFailure::Raised {
                exception,
                traceback,
            }),
            WireResult::Unserializable { reason } => Err(CallFailure::Unserializable(reason)),
            WireResult::Overloaded => Err(CallFailure::Overloaded),
            WireResult::TimedOut => Err(CallFailure::TimedOut),
            WireResult::Internal { detail } => Err(CallFailure::Internal(detail)),
        }
    }
}

/// Load requests in wire form.
pub fn requests_to_wire(requests: &[LoadRequest]) -> Vec<(String, String, B64)> {
    requests
        .iter()
        .map(|r| (r.name.clone(), r.path.clone(), B64(r.source.to_vec())))
        .collect()
}

/// The finder map in wire form: every entry of a tenant's map carries its bytes.
pub fn files_to_wire(files: &[FinderEntry]) -> Vec<(String, String, B64)> {
    files
        .iter()
        .map(|f| {
            let source = f.source.as_deref().cloned().unwrap_or_default();
            (f.name.clone(), f.path.clone(), B64(source))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    #[test]
    fn args_survive_the_wire() {
        let upload = Arc::new(Upload {
            filename: "a.bin".into(),
            content_type: Some("application/octet-stream".into()),
            data: bytes::Bytes::from_static(&[0, 255, 10]),
        });
        let call = CallArgs {
            args: vec![serde_json::json!(1)],
            kwargs: vec![
                (
                    Cow::Borrowed("x"),
                    Arg::Json(serde_json::json!({"a": [1.5]})),
                ),
                (Cow::Owned("f".into()), Arg::Upload(Arc::clone(&upload))),
                (
                    Cow::Borrowed("__body__"),
                    Arg::Fields(vec![
                        ("t".into(), Field::Text("v".into())),
                        ("u".into(), Field::File(upload)),
                    ]),
                ),
            ],
            pass_request: true,
        };
        let text = serde_json::to_string(&WireArgs::from_call(&call)).unwrap();
        let back: WireArgs = serde_json::from_str(&text).unwrap();
        let back = back.into_call();
        assert_eq!(back.args, call.args);
        assert_eq!(back.kwargs, call.kwargs);
        assert!(back.pass_request);
    }

    #[test]
    fn results_survive_the_wire() {
        let custom = Ok(Outcome::Custom {
            status: 201,
            headers: vec![("X-A".into(), "1".into())],
            content_type: "text/plain".into(),
            body: vec![1, 2, 3],
        });
        let text = serde_json::to_string(&WireResult::from_result(custom)).unwrap();
        let back: WireResult = serde_json::from_str(&text).unwrap();
        match back.into_result() {
            Ok(Outcome::Custom { status, body, .. }) => {
                assert_eq!((status, body), (201, vec![1, 2, 3]))
            }
            other => panic!("{other:?}"),
        }
    }

    /// The frames `pytests/test_sandbox_promises.py` forges from inside a tenant process are
    /// well-formed messages, so those tests reach the checks they are about (an unexpected
    /// message, an unknown id, a forged status) and not the parser's refusal.
    #[test]
    fn the_frames_the_hostile_channel_tests_forge_parse() {
        let ready: FromTenant = serde_json::from_str(r#"{"ready":{"layers_missing":[]}}"#).unwrap();
        assert!(matches!(ready, FromTenant::Ready { .. }));
        let done: FromTenant = serde_json::from_str(
            r#"{"done":{"id":987654321,"result":{"internal":{"detail":"x"}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            done,
            FromTenant::Done {
                id: 987654321,
                result: WireResult::Internal { .. }
            }
        ));
        let forged: FromTenant = serde_json::from_str(
            r#"{"done":{"id":1,"result":{"custom":{"status":700,"headers":[],"content_type":"text/plain","body":"eA=="}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            forged,
            FromTenant::Done {
                result: WireResult::Custom { status: 700, .. },
                ..
            }
        ));
    }

    #[test]
    fn bad_base64_is_a_malformed_message() {
        assert!(serde_json::from_str::<B64>("\"***\"").is_err());
    }
}
