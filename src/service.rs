//! The request pipeline, and the only place that puts its steps in order: classify the method,
//! split the path, take a fresh snapshot, route, read and marshal the body, bind to the
//! signature, call the plugin, and write the response — with one log line per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tracing::Instrument;

use crate::config::{Config, ReloadMode};
use crate::error::ApiError;
use crate::marshal::{self, RequestParts, Target};
use crate::plugins::{Registry, Snapshot};
use crate::pyhost::{CallFailure, Dispatch, Outcome, PyHost, RequestInfo};
use crate::response::{self, Body as RespBody};
use crate::router::{is_uuid_segment, Located, Method, MethodSet, Selected};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SERVICES_PREFIX: &str = "/rest/services";

const X_DPMS_WORKER: HeaderName = HeaderName::from_static("x-dpms-worker");

/// Shared state of the running server.
pub struct App {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub host: Arc<PyHost>,
    /// This worker's index, as sent in `X-Dpms-Worker`.
    worker: HeaderValue,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        host: Arc<PyHost>,
        worker: usize,
    ) -> App {
        App {
            config,
            registry,
            host,
            worker: HeaderValue::from(worker),
        }
    }
}

/// How the request's method is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Call(Method),
    Head,
    Options,
}

/// Handles one request; never fails (every error is a JSON response).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<RespBody> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    // Error answers and OPTIONS may come before the body was read; hyper then cannot reuse
    // the connection and closes it: say so, so clients do not send the next request into it.
    let sent_body = !hyper::body::Body::is_end_stream(req.body());
    let span = tracing::info_span!("request", id = %request_id);
    let (mut resp, endpoint) = async {
        match route(&app, req, remote).await {
            Ok(done) => done,
            Err((err, endpoint)) => {
                if let ApiError::Internal(detail) = &err {
                    tracing::error!(detail = %detail, "internal error");
                }
                (response::error(&err), endpoint)
            }
        }
    }
    .instrument(span)
    .await;
    response::set_header(&mut resp, X_REQUEST_ID, &request_id);
    resp.headers_mut().insert(X_DPMS_WORKER, app.worker.clone());
    if sent_body && (resp.status().is_client_error() || resp.status() == StatusCode::NO_CONTENT) {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::info!(
        target: "dpms::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        endpoint = endpoint.as_deref().unwrap_or("-"),
        worker = app.worker.to_str().unwrap_or("-"),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        id = %request_id,
    );
    resp
}

type Routed = (Response<RespBody>, Option<String>);
type Failed = (ApiError, Option<String>);

async fn route(app: &App, req: Request<Incoming>, remote: SocketAddr) -> Result<Routed, Failed> {
    check_sizes(&app.config, &req).map_err(|e| (e, None))?;
    let verb = match req.method().as_str() {
        "HEAD" => Verb::Head,
        "OPTIONS" => Verb::Options,
        name => match Method::parse(name) {
            Some(m) => Verb::Call(m),
            None => {
                let err = ApiError::MethodNotImplemented {
                    method: name.to_string(),
                };
                return Err((err, None));
            }
        },
    };
    let path = req.uri().path();
    if path == "/" {
        return index(verb).map_err(|e| (e, None));
    }
    let rest = match path.strip_prefix(SERVICES_PREFIX) {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => {
            return Err((
                ApiError::NotFound {
                    path: path.to_string(),
                },
                None,
            ))
        }
    };
    let mut segs = marshal::split_path(rest).map_err(|e| (e, None))?;
    let uuid = match segs.first() {
        Some(first) if is_uuid_segment(first) => Some(segs.remove(0)),
        _ => None,
    };

    let (snap, located) = locate(app, &segs).await.map_err(|e| (e, None))?;
    let (api, module_index, module_segment, params_at) = match located {
        Located::Dir(only) => {
            return match verb {
                Verb::Call(Method::Get) | Verb::Head => Ok((
                    response::json_value(StatusCode::OK, &snap.table.dir(only)),
                    Some("__dir__".into()),
                )),
                Verb::Options => Ok((
                    response::options("GET, HEAD, OPTIONS"),
                    Some("__dir__".into()),
                )),
                Verb::Call(m) => Err((
                    ApiError::MethodUndefined {
                        api: "__dir__".into(),
                        method: m.as_str().into(),
                        allow: MethodSet::only(Method::Get),
                    },
                    None,
                )),
            };
        }
        Located::Api {
            api,
            module,
            module_segment,
            params_at,
        } => (api, module, module_segment, params_at),
    };
    let method = match verb {
        Verb::Options => {
            let allow = snap.table.allowed(&api, module_index);
            return Ok((response::options(&allow.to_string()), Some(api)));
        }
        Verb::Head => Method::Get,
        Verb::Call(m) => m,
    };
    let selected = select(app, snap, &segs, &api, method)
        .await
        .map_err(|e| (e, Some(api.clone())))?;
    let label = format!("{}.{}", selected.module.name, selected.endpoint().func);
    call(
        app,
        req,
        remote,
        selected,
        &segs[params_at..],
        module_segment,
        uuid,
    )
    .await
    .map(|resp| (resp, Some(label.clone())))
    .map_err(|e| (e, Some(label)))
}

/// 414 and 431 with the JSON error shape (hyper's own limits, set higher, answer with empty
/// bodies).
fn check_sizes(config: &Config, req: &Request<Incoming>) -> Result<(), ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > config.max_uri {
        return Err(ApiError::UriTooLong {
            max: config.max_uri,
        });
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers > config.max_headers {
        return Err(ApiError::HeadersTooLarge {
            max: config.max_headers,
        });
    }
    Ok(())
}

/// `/`: a short index.
fn index(verb: Verb) -> Result<Routed, ApiError> {
    match verb {
        Verb::Call(Method::Get) | Verb::Head => {
            let body = json!({
                "status": "OK",
                "name": "dpms",
                "version": env!("CARGO_PKG_VERSION"),
                "directory": "/rest/services/__dir__/",
            });
            Ok((response::json_value(StatusCode::OK, &body), None))
        }
        Verb::Options => Ok((response::options("GET, HEAD, OPTIONS"), None)),
        Verb::Call(_) => Err(ApiError::NotFound { path: "/".into() }),
    }
}

/// Locates the path in a fresh snapshot. An unknown name is checked once more against the
/// files on disk (a plugin fixed or extended just before this request must be seen).
async fn locate(app: &App, segs: &[String]) -> Result<(Arc<Snapshot>, Located), ApiError> {
    let snap = app.registry.snapshot().await;
    let located = snap.table.locate(segs);
    let recheck = app.registry.reload_mode() != ReloadMode::Never
        && (located.is_err() || matches!(located, Ok(Located::Dir(_))));
    if recheck && !app.registry.files_current(&snap) {
        let snap = app.registry.sync(&[]).await;
        let located = snap.table.locate(segs)?;
        return Ok((snap, located));
    }
    Ok((snap, located?))
}

/// Picks the endpoint for `method`, making sure the code that runs is what is on disk.
async fn select(
    app: &App,
    snap: Arc<Snapshot>,
    segs: &[String],
    api: &str,
    method: Method,
) -> Result<Selected, ApiError> {
    let pick = |snap: &Snapshot| -> Result<Selected, ApiError> {
        match snap.table.locate(segs)? {
            Located::Api { module, .. } => snap.table.select(api, module, method),
            Located::Dir(_) => Err(ApiError::ApiUndefined {
                api: api.to_string(),
            }),
        }
    };
    let first = pick(&snap);
    let fresh = match (&first, app.registry.reload_mode()) {
        (_, ReloadMode::Never) => true,
        (Ok(sel), ReloadMode::Changed) => app.registry.module_current(&snap, &sel.module),
        (Ok(sel), ReloadMode::Always) => {
            let snap = app
                .registry
                .sync(std::slice::from_ref(&sel.module.name))
                .await;
            return pick(&snap);
        }
        (Err(_), _) => app.registry.files_current(&snap),
    };
    if fresh {
        return first;
    }
    let snap = app.registry.sync(&[]).await;
    pick(&snap)
}

/// Reads the body, marshals the call, runs it and writes the response.
async fn call(
    app: &App,
    req: Request<Incoming>,
    remote: SocketAddr,
    selected: Selected,
    params: &[String],
    module_segment: Option<String>,
    uuid: Option<String>,
) -> Result<Response<RespBody>, ApiError> {
    let config = &app.config;
    let endpoint = selected.endpoint();
    if let Some(err) = &selected.module.import_error {
        return Err(ApiError::PluginImport {
            api: endpoint.api.clone(),
            exception: err.clone(),
        });
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(config.body_time, read_body(body, config.max_body)).await
    {
        Ok(read) => read?,
        Err(_) => {
            return Err(ApiError::RequestTimeout {
                secs: config.body_time.as_secs_f64(),
            })
        }
    };
    let method = parts.method.as_str().to_string();
    let marshalled = marshal::assemble(
        &RequestParts {
            method: &method,
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            query: parts.uri.query().unwrap_or("").as_bytes(),
            body: &bytes,
            params,
            module: module_segment.as_deref(),
            uuid: uuid.as_deref(),
        },
        &Target {
            api: &endpoint.api,
            func: &endpoint.func,
            sig: &endpoint.params,
            url_parm_names: &config.url_parm_names,
        },
    )?;
    let (args, query, json_body) = (marshalled.call, marshalled.query, marshalled.json);

    let info = Arc::new(RequestInfo {
        method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes,
        json: json_body,
        remote_addr: remote.to_string(),
        uuid,
        role: Some("admin"),
    });

    let dispatch = app
        .host
        .call(Arc::clone(&selected.module), selected.endpoint, args, info);
    let outcome = match dispatch {
        Dispatch::Done(result) => result,
        Dispatch::Pending(rx, interrupt) => {
            match tokio::time::timeout(config.max_function_time, rx).await {
                Err(_) => {
                    tracing::warn!(api = %endpoint.api, "call past MAX_FUNCTION_SECS; interrupting it");
                    interrupt.interrupt();
                    return Err(ApiError::Timeout {
                        api: endpoint.api.clone(),
                        secs: config.max_function_time.as_secs_f64(),
                    });
                }
                Ok(Err(_)) => {
                    return Err(ApiError::Internal(
                        "the Python thread dropped the call".into(),
                    ))
                }
                Ok(Ok(result)) => result,
            }
        }
    };
    match outcome {
        Ok(Outcome::Json(result)) => Ok(response::envelope(&endpoint.envelope_prefix, &result)),
        Ok(Outcome::Custom {
            status,
            headers,
            content_type,
            body,
        }) => {
            let mut resp = Response::new(http_body_util::Full::new(Bytes::from(body)));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) =
                    (HeaderName::try_from(k.as_str()), HeaderValue::from_str(&v))
                {
                    resp.headers_mut().append(k, v);
                }
            }
            response::set_header(&mut resp, CONTENT_TYPE, &content_type);
            Ok(resp)
        }
        Err(CallFailure::Raised {
            exception,
            traceback,
        }) => {
            tracing::warn!(api = %endpoint.api, exception = %exception, "plugin raised\n{traceback}");
            Err(ApiError::Plugin {
                api: endpoint.api.clone(),
                exception,
                traceback: config.debug.then_some(traceback),
            })
        }
        Err(CallFailure::Unserializable(reason)) => {
            tracing::warn!(api = %endpoint.api, reason = %reason, "unserializable plugin result");
            Err(ApiError::Unserializable {
                api: endpoint.api.clone(),
                reason,
            })
        }
        Err(CallFailure::Overloaded) => Err(ApiError::Overloaded),
        Err(CallFailure::TimedOut) => Err(ApiError::Timeout {
            api: endpoint.api.clone(),
            secs: config.max_function_time.as_secs_f64(),
        }),
        Err(CallFailure::Internal(detail)) => Err(ApiError::Internal(detail)),
    }
}

/// Reads the whole body, at most `max` bytes (413 past that, after reading at most that much).
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge { max }),
        Err(e) => Err(ApiError::BadRequest(format!(
            "The request body could not be read: {e}."
        ))),
    }
}
