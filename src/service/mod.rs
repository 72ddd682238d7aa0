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

mod docs;
mod rpc;

use self::docs::Wanted;
use crate::config::{Config, ReloadMode};
use crate::cors;
use crate::error::ApiError;
use crate::health;
use crate::marshal::{self, RequestParts, Target};
use crate::metrics::Metrics;
use crate::plugins::{Registry, Snapshot};
use crate::pyhost::{CallFailure, Dispatch, Outcome, PyHost, RequestInfo};
use crate::request_id::RequestId;
use crate::response::{self, Body as RespBody};
use crate::router::{is_uuid_segment, Located, Method, MethodSet, RouteTable, Selected};
use crate::sandboxed::{RemoteModule, TenantExec};
use crate::telemetry;
use crate::tenancy::admin;
use crate::tenancy::gate::{Access, Gate};
use crate::tenants::{Caller as Who, Refused, Tenants, View};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SERVICES_PREFIX: &str = "/rest/services";
const METRICS_PATH: &str = "/metrics";

const X_DPMS_WORKER: HeaderName = HeaderName::from_static("x-dpms-worker");

/// Shared state of the running server.
pub struct App {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub host: Arc<PyHost>,
    /// The tenant registry, when `ADMIN_ID` is set and it opened (else the admin API is 503).
    pub tenants: Option<Arc<crate::store::Registry>>,
    /// This worker's index, as sent in `X-Dpms-Worker`.
    worker: HeaderValue,
    worker_index: usize,
    /// Whether access lines pass the log filter (fixed at start-up).
    access_log: bool,
    /// `MULTI_TENANT=True`: who each uuid is, and the tenants' views.
    tenancy: Option<Arc<Tenants>>,
    /// Tokens (SPEC §12), when `ADMIN_ID` is set.
    gate: Option<Arc<Gate>>,
    /// This worker's counters, shared with the others for `/metrics`.
    metrics: &'static Metrics,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        host: Arc<PyHost>,
        tenants: Option<Arc<crate::store::Registry>>,
        worker: usize,
    ) -> App {
        let config_state_dir = config.state_dir.as_deref();
        let metrics = crate::metrics::init(config_state_dir, worker);
        App {
            config,
            registry,
            host,
            tenants,
            worker: HeaderValue::from(worker),
            worker_index: worker,
            access_log: telemetry::access_enabled(),
            tenancy: None,
            gate: None,
            metrics,
        }
    }

    /// Checks tokens (SPEC §12) where the configuration or an endpoint asks for them.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> App {
        self.gate = Some(gate);
        self
    }

    /// Serves tenants (SPEC §7): every call names its caller by uuid.
    pub fn with_tenancy(mut self, tenancy: Arc<Tenants>) -> App {
        self.tenancy = Some(tenancy);
        self
    }
}

/// The client's own `X-Request-Id` when it is usable (SPEC §4: up to 128 characters of
/// `[A-Za-z0-9._:-]`), else a new uuid.
fn request_id(headers: &hyper::HeaderMap) -> RequestId {
    headers
        .get(&X_REQUEST_ID)
        .and_then(RequestId::from_client)
        .unwrap_or_else(RequestId::generate)
}

/// How the request's method is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Call(Method),
    Head,
    Options,
}

impl Verb {
    /// The method an endpoint must declare (HEAD is a GET without its body); `None` for
    /// OPTIONS, which no endpoint runs for.
    fn method(self) -> Option<Method> {
        match self {
            Verb::Options => None,
            Verb::Head => Some(Method::Get),
            Verb::Call(m) => Some(m),
        }
    }
}

/// Handles one request; never fails (every error is a JSON response).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<RespBody> {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    // Both are cheap clones (a standard method is a tag, a URI shares its bytes), kept for the
    // access line after the request itself has been consumed.
    let method = req.method().clone();
    let uri = req.uri().clone();
    // Error answers and OPTIONS may come before the body was read; hyper then cannot reuse
    // the connection and closes it: say so, so clients do not send the next request into it.
    let sent_body = !hyper::body::Body::is_end_stream(req.body());
    let cors = app
        .config
        .cors
        .as_ref()
        .and_then(|o| o.allow(req.headers()));
    let routed = match &cors {
        // A preflight from an allowed origin: answered before routing and tokens.
        Some(_) if cors::is_preflight(req.method(), req.headers()) => {
            Ok((cors::preflight(req.headers()), None))
        }
        _ => route(&app, req, remote, &request_id).await,
    };
    let (mut resp, endpoint) = match routed {
        Ok(done) => done,
        Err((err, endpoint)) => {
            if let ApiError::Internal(detail) = &err {
                tracing::error!(id = %request_id, detail = %detail, "internal error");
            }
            (response::error(&err), endpoint)
        }
    };
    if let Some(origin) = cors {
        cors::decorate(&mut resp, origin);
    }
    resp.headers_mut()
        .insert(X_REQUEST_ID, request_id.header().clone());
    resp.headers_mut().insert(X_DPMS_WORKER, app.worker.clone());
    if sent_body && (resp.status().is_client_error() || resp.status() == StatusCode::NO_CONTENT) {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    app.metrics.request(
        endpoint.as_deref().unwrap_or("-"),
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    if app.access_log {
        telemetry::access(&telemetry::Access {
            method: method.as_str(),
            path: uri.path(),
            status: resp.status().as_u16(),
            endpoint: endpoint.as_deref().unwrap_or("-"),
            worker: app.worker_index,
            remote,
            elapsed: started.elapsed(),
            id: request_id.as_str(),
        });
    }
    resp
}

/// What the access log calls the endpoint a request reached.
type Label = Option<Arc<str>>;
type Routed = (Response<RespBody>, Label);
type Failed = (ApiError, Label);

async fn route(
    app: &App,
    req: Request<Incoming>,
    remote: SocketAddr,
    id: &RequestId,
) -> Result<Routed, Failed> {
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
    if path == health::HEALTHZ || path == health::READYZ {
        return probe(app, verb, path).await.map_err(|e| (e, None));
    }
    if path == METRICS_PATH {
        return scrape(app, verb, req.headers())
            .await
            .map_err(|e| (e, Some("metrics".into())));
    }
    // The admin API (SPEC §7); without ADMIN_ID its paths are unknown like any other.
    if let Some(admin_id) = app.config.admin_id.filter(|_| admin::owns(path)) {
        // With tokens required the admin's bearer is the admin's token, not ADMIN_ID.
        let token_checked = match app.gate.as_deref().filter(|g| g.required()) {
            Some(gate) => {
                gate.check(
                    req.headers(),
                    Some(admin_id),
                    req.method().as_str(),
                    path,
                    id.as_str(),
                )
                .await
                .map_err(|e| (e, Some("admin".into())))?;
                true
            }
            None => false,
        };
        let (parts, body) = req.into_parts();
        let (max, limit) = (app.config.max_body, app.config.body_time);
        let body = async move {
            tokio::time::timeout(limit, read_body(body, max))
                .await
                .unwrap_or(Err(ApiError::RequestTimeout {
                    secs: limit.as_secs_f64(),
                }))
        };
        let snap = app.registry.current();
        // The files that name the tenant as their owner (what its `modules` lists).
        let modules = move |uuid: uuid::Uuid| -> Vec<String> {
            snap.foreign()
                .iter()
                .filter(|(_, owner)| uuid::Uuid::parse_str(owner).ok() == Some(uuid))
                .map(|(file, _)| file.trim_end_matches(".py").to_string())
                .collect()
        };
        let stop = |uuid: uuid::Uuid| {
            if let Some(t) = &app.tenancy {
                t.stop(uuid);
            }
        };
        let admin = admin::Admin {
            admin_id,
            registry: app.tenants.clone(),
            modules: &modules,
            on_tenant_removed: &stop,
            token_checked,
        };
        let resp = admin::serve(
            &admin,
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            body,
        )
        .await;
        return Ok((resp, Some("admin".into())));
    }
    if let Some(wanted) = docs::wanted(path) {
        let Wanted::Document(uuid) = wanted else {
            return docs::serve(app, path, verb, wanted).await;
        };
        // The document shows what the caller may call: the same token rule as `__dir__`.
        let access = Access::before_routing(
            app.gate.as_deref(),
            uuid,
            req.headers(),
            req.method().as_str(),
            path,
            id.as_str(),
        )
        .await;
        let routed = docs::serve(app, path, verb, Wanted::Document(uuid)).await;
        return access.answer(routed);
    }
    if let Some(uuid) = rpc::wanted(path) {
        let uuid = uuid.map(str::to_string);
        let access = Access::before_routing(
            app.gate.as_deref(),
            uuid.as_deref(),
            req.headers(),
            req.method().as_str(),
            path,
            id.as_str(),
        )
        .await;
        let routed = rpc::serve(app, req, remote, id, uuid, verb, &access).await;
        return access.answer(routed);
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
    // Before anything that looks up what exists: without a valid token (when required) every
    // answer but a public endpoint's is the same 401, whatever the uuid or API (SPEC §12).
    let access = Access::before_routing(
        app.gate.as_deref(),
        uuid.as_deref(),
        req.headers(),
        req.method().as_str(),
        path,
        id.as_str(),
    )
    .await;
    let routed = route_services(app, req, remote, id, uuid, segs, verb, &access).await;
    access.answer(routed)
}

/// A call under `/rest/services/`: its caller resolved, then routed in the caller's view.
#[allow(clippy::too_many_arguments)]
async fn route_services(
    app: &App,
    req: Request<Incoming>,
    remote: SocketAddr,
    id: &RequestId,
    uuid: Option<String>,
    segs: Vec<String>,
    verb: Verb,
    access: &Access<'_>,
) -> Result<Routed, Failed> {
    let who = resolve(app, req.uri().path(), uuid.as_deref()).await?;
    if let Who::Tenant(_, view) = &who {
        let view = Arc::clone(view);
        return route_tenant(app, req, remote, id, uuid, &view, &segs, verb, access).await;
    }

    let (snap, located) = locate(app, &segs).await.map_err(|e| (e, None))?;
    let (api, module_index, module_segment, params_at) = match located {
        Located::Dir(only) => {
            let body = if matches!(verb, Verb::Call(Method::Get) | Verb::Head) {
                let mut body = snap.table.dir(only);
                if let (Some(tenancy), None) = (&app.tenancy, only) {
                    let unowned = tenancy.unowned(snap.foreign()).await;
                    add_unowned(&mut body, &unowned);
                    add_sandbox(&mut body, tenancy);
                }
                Some(body)
            } else {
                None
            };
            return dir_response(verb, body);
        }
        Located::Api {
            api,
            module,
            module_segment,
            params_at,
        } => (api, module, module_segment, params_at),
    };
    let Some(method) = verb.method() else {
        return Ok(options(&snap.table, api, module_index));
    };
    let selected = select(app, snap, &segs, &api, method)
        .await
        .map_err(|e| (e, Some(api.as_str().into())))?;
    allow(access, &req, &selected, id).await?;
    let caller = Caller {
        remote,
        id: id.clone(),
        uuid,
        role: "admin",
    };
    let params = &segs[params_at..];
    call_labelled(app, req, caller, selected, params, module_segment).await
}

/// Who the caller is: the admin without MULTI_TENANT, else the tenant the uuid names.
async fn resolve(app: &App, path: &str, uuid: Option<&str>) -> Result<Who, Failed> {
    let Some(tenancy) = &app.tenancy else {
        return Ok(Who::Admin);
    };
    // One answer for a missing, unknown, disabled or removed uuid (SPEC §7).
    let unknown = || ApiError::NotFound {
        path: path.to_string(),
    };
    let Some(segment) = uuid else {
        return Err((unknown(), None));
    };
    match tenancy.resolve(segment).await {
        Ok(who) => Ok(who),
        Err(Refused::Unknown) => Err((unknown(), None)),
        Err(Refused::Unavailable(why)) => Err((ApiError::RegistryUnavailable(why), None)),
        Err(Refused::NoSandbox(why)) => Err((ApiError::SandboxUnavailable(why), None)),
    }
}

/// A tenant's call: routed in its view (its modules over the admin's), run in its process
/// for its own modules and in this interpreter for the admin's.
#[allow(clippy::too_many_arguments)]
async fn route_tenant(
    app: &App,
    req: Request<Incoming>,
    remote: SocketAddr,
    id: &RequestId,
    uuid: Option<String>,
    view: &View,
    segs: &[String],
    verb: Verb,
    access: &Access<'_>,
) -> Result<Routed, Failed> {
    let table = tenant_table(app, view).await;
    let located = match table.locate(segs) {
        Ok(l) => l,
        Err(e) => {
            if view.exec.start_failed() {
                // Tenant code cannot run (SPEC §11.9); the next call tries again.
                if let Some(tenancy) = &app.tenancy {
                    tenancy.forget_view(view);
                }
                return Err((
                    ApiError::SandboxUnavailable(
                        "Tenant code cannot run here: its sandboxed process could not start; see the server log.".into(),
                    ),
                    None,
                ));
            }
            if view.exec.lost() {
                return Err((lost_view(), None));
            }
            return Err((e, None));
        }
    };
    let (api, module_index, module_segment, params_at) = match located {
        Located::Dir(only) => {
            let body = matches!(verb, Verb::Call(Method::Get) | Verb::Head).then(|| {
                let mut body = table.dir(only);
                if let (Some(tenancy), None) = (&app.tenancy, only) {
                    add_sandbox(&mut body, tenancy);
                }
                body
            });
            return dir_response(verb, body);
        }
        Located::Api {
            api,
            module,
            module_segment,
            params_at,
        } => (api, module, module_segment, params_at),
    };
    let Some(method) = verb.method() else {
        return Ok(options(&table, api, module_index));
    };
    let selected = table
        .select(&api, module_index, method)
        .map_err(|e| (e, Some(api.as_str().into())))?;
    allow(access, &req, &selected, id).await?;
    // Held until the call is answered: DPMS_TENANT_CONCURRENCY calls at most in its process.
    let _slot = match runs_in_tenant_process(&selected.module).then(|| view.slot()) {
        Some(None) => {
            let label = Some(Arc::clone(&selected.endpoint().label));
            return Err((ApiError::Overloaded, label));
        }
        Some(Some(slot)) => Some(slot),
        None => None,
    };
    let caller = Caller {
        remote,
        id: id.clone(),
        uuid,
        role: "tenant",
    };
    let params = &segs[params_at..];
    call_labelled(app, req, caller, selected, params, module_segment).await
}

/// Whether the selected endpoint may be called with the request's token (SPEC §12).
async fn allow(
    access: &Access<'_>,
    req: &Request<Incoming>,
    selected: &Selected,
    id: &RequestId,
) -> Result<(), Failed> {
    let endpoint = selected.endpoint();
    access
        .allow(
            endpoint.auth,
            req.headers(),
            req.method().as_str(),
            req.uri().path(),
            id.as_str(),
        )
        .await
        .map_err(|e| (e, Some(Arc::clone(&endpoint.label))))
}

/// The tenant's layered table, with both owners' files checked fresh.
async fn tenant_table(app: &App, view: &View) -> Arc<RouteTable> {
    let admin = current_files(&app.registry).await;
    let own = current_files(&view.registry).await;
    view.table(&admin, &own)
}

/// The registry's snapshot, reloaded first if any of its files changed.
async fn current_files(registry: &Registry) -> Arc<Snapshot> {
    let snap = registry.snapshot().await;
    if registry.files_current(&snap) {
        snap
    } else {
        registry.sync(&[]).await
    }
}

/// Whether the module's code was loaded into a tenant's process (else: this interpreter).
fn runs_in_tenant_process(module: &crate::router::Module) -> bool {
    module
        .code
        .as_ref()
        .is_some_and(|c| c.get::<RemoteModule>().is_some())
}

/// [`call`], its response or error labelled with the endpoint the access log names.
async fn call_labelled(
    app: &App,
    req: Request<Incoming>,
    caller: Caller,
    selected: Selected,
    params: &[String],
    module_segment: Option<String>,
) -> Result<Routed, Failed> {
    let label = Some(Arc::clone(&selected.endpoint().label));
    match call(app, req, caller, selected, params, module_segment).await {
        Ok(resp) => Ok((resp, label)),
        Err(e) => Err((e, label)),
    }
}

/// OPTIONS on an API: the methods it answers to.
fn options(table: &RouteTable, api: String, module: Option<usize>) -> Routed {
    let allow = table.allowed(&api, module);
    (response::options(&allow.to_string()), Some(api.into()))
}

/// `__dir__` answered for `verb`: GET and HEAD get `body`, OPTIONS the methods it takes,
/// any other method 404 `method_undefined`.
fn dir_response(verb: Verb, body: Option<serde_json::Value>) -> Result<Routed, Failed> {
    let label = || Some("__dir__".into());
    match (verb, body) {
        (Verb::Call(Method::Get) | Verb::Head, Some(body)) => {
            Ok((response::json_value(StatusCode::OK, &body), label()))
        }
        (Verb::Options, _) => Ok((response::options("GET, HEAD, OPTIONS"), label())),
        (Verb::Call(m), _) => Err((
            ApiError::MethodUndefined {
                api: "__dir__".into(),
                method: m.as_str().into(),
                allow: MethodSet::only(Method::Get),
            },
            None,
        )),
        (Verb::Head, None) => Err((ApiError::Internal("__dir__ without a body".into()), None)),
    }
}

/// `__dir__` says whether tenant code can run here (SPEC §11.9: fail closed, and say so).
fn add_sandbox(body: &mut serde_json::Value, tenancy: &Tenants) {
    if let Some(map) = body.as_object_mut() {
        let missing = tenancy.missing_layers();
        map.insert(
            "sandbox".into(),
            json!({
                "tenant_code_runs": tenancy.tenant_code_runs(),
                "layers_missing": missing,
                "mode": tenancy.sandbox_mode(),
            }),
        );
    }
}

/// The admin's `__dir__` lists files whose `__ID__` names no registered tenant.
fn add_unowned(body: &mut serde_json::Value, unowned: &[(String, String)]) {
    if let Some(imports) = body.get_mut("imports").and_then(|v| v.as_object_mut()) {
        for (file, owner) in unowned {
            imports.insert(
                file.clone(),
                json!({
                    "status": "unowned",
                    "error": format!("`__ID__` names {owner}, which is no registered tenant: served to no one"),
                }),
            );
        }
    }
}

/// The tenant's process died under this view (its next request gets a new one).
fn lost_view() -> ApiError {
    ApiError::WorkerLost {
        api: "this call".into(),
    }
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
                "openapi": "/rest/openapi.json",
                "docs": "/docs",
                "jsonrpc": "/rpc",
                "metrics": "/metrics",
                "health": health::HEALTHZ,
                "ready": health::READYZ,
            });
            Ok((response::json_value(StatusCode::OK, &body), None))
        }
        Verb::Options => Ok((response::options("GET, HEAD, OPTIONS"), None)),
        Verb::Call(_) => Err(ApiError::NotFound { path: "/".into() }),
    }
}

/// `GET /metrics`: the whole server's counters in Prometheus text format. Under MULTI_TENANT
/// it names every tenant's endpoints, so it takes the admin's bearer (`ADMIN_ID`, which a
/// scraper can hold as a static credential); otherwise it is open, like the probes.
async fn scrape(app: &App, verb: Verb, headers: &hyper::HeaderMap) -> Result<Routed, ApiError> {
    const ALLOW: &str = "GET, HEAD, OPTIONS";
    match verb {
        Verb::Call(Method::Get) | Verb::Head => {}
        Verb::Options => return Ok((response::options(ALLOW), Some("metrics".into()))),
        Verb::Call(m) => {
            return Err(ApiError::MethodNotAllowed {
                path: METRICS_PATH.to_string(),
                method: m.as_str().to_string(),
                allow: ALLOW,
            })
        }
    }
    if app.tenancy.is_some() {
        let admin_id = app.config.admin_id.ok_or(ApiError::Unauthorized)?;
        admin::authorize(admin_id, headers.get(hyper::header::AUTHORIZATION))?;
    }
    let snap = app.registry.snapshot().await;
    let import_errors = snap
        .table
        .modules()
        .iter()
        .filter(|m| m.import_error.is_some())
        .count()
        + snap
            .table
            .problems()
            .iter()
            .filter(|p| p.status == "error")
            .count();
    let text = app.metrics.render(import_errors);
    let mut resp = Response::new(RespBody::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok((resp, Some("metrics".into())))
}

/// `/healthz` and `/readyz` (see [`health`]).
async fn probe(app: &App, verb: Verb, path: &str) -> Result<Routed, ApiError> {
    const ALLOW: &str = "GET, HEAD, OPTIONS";
    match verb {
        Verb::Call(Method::Get) | Verb::Head => {}
        Verb::Options => return Ok((response::options(ALLOW), None)),
        Verb::Call(m) => {
            return Err(ApiError::MethodNotAllowed {
                path: path.to_string(),
                method: m.as_str().to_string(),
                allow: ALLOW,
            })
        }
    }
    let (status, body) = if path == health::HEALTHZ {
        health::health()
    } else {
        let registry = if let Some(tenancy) = &app.tenancy {
            Some(tenancy.registry_check().await)
        } else if let Some(store) = &app.tenants {
            let store = Arc::clone(store);
            Some(
                tokio::task::spawn_blocking(move || store.snapshot().map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
            )
        } else if app.config.admin_id.is_some() {
            Some(Err("the tenant registry could not be opened".into()))
        } else {
            None
        };
        if let Some(Err(cause)) = &registry {
            tracing::warn!(cause = %cause, "/readyz: the tenant registry is unavailable");
        }
        health::readiness(&health::Facts {
            plugins_loaded: true,
            registry,
            multi_tenant: app.tenancy.is_some(),
            layers_missing: app
                .tenancy
                .as_ref()
                .map(|t| t.missing_layers().to_vec())
                .unwrap_or_default(),
            relaxed: app.config.sandbox_relaxed,
        })
    };
    Ok((response::json_value(status, &body), None))
}

/// Locates the path in a fresh snapshot. An unknown name is checked once more against the
/// files on disk (a plugin fixed or extended just before this request must be seen).
async fn locate(app: &App, segs: &[String]) -> Result<(Arc<Snapshot>, Located), ApiError> {
    let snap = app.registry.snapshot_for(|s| s.table.serving(segs)).await;
    let located = snap.table.locate(segs);
    let recheck = app.registry.reload_mode() != ReloadMode::Never
        && (located.is_err() || matches!(located, Ok(Located::Dir(_))));
    let (snap, located) = if recheck && !app.registry.files_current(&snap) {
        let snap = app.registry.sync(&[]).await;
        let located = snap.table.locate(segs);
        (snap, located)
    } else {
        (snap, located)
    };
    match located {
        Ok(located) => Ok((snap, located)),
        Err(ApiError::ApiUndefined { api }) => Err(match snap.broken_mention(&api) {
            Some((file, exception)) => ApiError::ApiUndefinedBroken {
                api,
                file,
                exception,
            },
            None => ApiError::ApiUndefined { api },
        }),
        Err(e) => Err(e),
    }
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

/// Who is calling: the peer, the request id, the uuid segment of the URL and its role.
struct Caller {
    remote: SocketAddr,
    id: RequestId,
    uuid: Option<String>,
    role: &'static str,
}

/// Reads the body, marshals the call, runs it and writes the response.
async fn call(
    app: &App,
    req: Request<Incoming>,
    caller: Caller,
    selected: Selected,
    params: &[String],
    module_segment: Option<String>,
) -> Result<Response<RespBody>, ApiError> {
    let Caller {
        remote,
        id,
        uuid,
        role,
    } = caller;
    let config = &app.config;
    let endpoint = selected.endpoint();
    importable(&selected)?;
    let (parts, body) = req.into_parts();
    // No body (every plain GET): no read, and no timer to arm and cancel.
    let bytes = if hyper::body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        match tokio::time::timeout(config.body_time, read_body(body, config.max_body)).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(ApiError::RequestTimeout {
                    secs: config.body_time.as_secs_f64(),
                })
            }
        }
    };
    let marshalled = marshal::assemble(
        &RequestParts {
            method: parts.method.as_str(),
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
    let (args, json_body) = (marshalled.call, marshalled.json);

    let info = Arc::new(RequestInfo {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: bytes,
        json: json_body,
        remote,
        uuid,
        role: Some(role),
        id: id.clone(),
    });

    match run(app, &selected, args, info, config.max_function_time).await? {
        Outcome::Json(body) => Ok(response::json_bytes(StatusCode::OK, body)),
        Outcome::Custom {
            status,
            headers,
            content_type,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            // 204 and 304 carry no body and no content type (RFC 9110 §15.3.5, §15.4.5).
            let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
            let body = if bodiless {
                Bytes::new()
            } else {
                Bytes::from(body)
            };
            let mut resp = Response::new(http_body_util::Full::new(body));
            *resp.status_mut() = status;
            for (k, v) in headers {
                // Checked by the executor; a pair that still does not parse is dropped.
                let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) else {
                    tracing::warn!(id = %id, api = %endpoint.api, header = %k, "dropped a header that is not valid HTTP");
                    continue;
                };
                if response::is_framing_header(&k) {
                    framing_ignored(&endpoint.label, &k);
                    continue;
                }
                resp.headers_mut().append(k, v);
            }
            if !bodiless {
                response::set_header(&mut resp, CONTENT_TYPE, &content_type);
            } else {
                resp.headers_mut().remove(CONTENT_TYPE);
            }
            Ok(resp)
        }
    }
}

/// Whether the endpoint's module has code to run (its current file imports).
fn importable(selected: &Selected) -> Result<(), ApiError> {
    match &selected.module.import_error {
        Some(err) => Err(ApiError::PluginImport {
            api: selected.endpoint().api.clone(),
            exception: err.clone(),
        }),
        None => Ok(()),
    }
}

/// Runs one bound call where its module lives (this interpreter or the tenant's process),
/// within `limit` (`MAX_FUNCTION_SECS`, or what a JSON-RPC batch has left of it): the step REST
/// and JSON-RPC share.
async fn run(
    app: &App,
    selected: &Selected,
    args: marshal::CallArgs,
    info: Arc<RequestInfo>,
    limit: std::time::Duration,
) -> Result<Outcome, ApiError> {
    let config = &app.config;
    let endpoint = selected.endpoint();
    let id = info.id.clone();
    let dispatch = if runs_in_tenant_process(&selected.module) {
        TenantExec::call(
            &selected.module,
            selected.endpoint,
            &args,
            crate::sandboxed::wire_request(&info),
        )
    } else {
        app.host
            .call(Arc::clone(&selected.module), selected.endpoint, args, info)
    };
    let outcome = match dispatch {
        Dispatch::Done(result) => result,
        Dispatch::Pending(rx, interrupt) => match tokio::time::timeout(limit, rx).await {
            Err(_) => {
                tracing::warn!(id = %id, api = %endpoint.api, "call past MAX_FUNCTION_SECS; interrupting it");
                interrupt.interrupt();
                return Err(ApiError::Timeout {
                    api: endpoint.api.clone(),
                    secs: limit.as_secs_f64(),
                });
            }
            Ok(Err(_)) => {
                return Err(ApiError::Internal(
                    "the Python thread dropped the call".into(),
                ))
            }
            Ok(Ok(result)) => result,
        },
    };
    match outcome {
        Ok(outcome) => Ok(outcome),
        Err(CallFailure::Raised {
            exception,
            traceback,
        }) => {
            // One record, one line: the traceback is a field, its newlines escaped.
            tracing::warn!(id = %id, api = %endpoint.api, exception = %exception, traceback = %traceback, "plugin raised");
            Err(ApiError::Plugin {
                api: endpoint.api.clone(),
                exception,
                traceback: config.debug.then_some(traceback),
            })
        }
        Err(CallFailure::Unserializable(reason)) => {
            tracing::warn!(id = %id, api = %endpoint.api, reason = %reason, "unserializable plugin result");
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
        Err(CallFailure::WorkerLost) => Err(ApiError::WorkerLost {
            api: endpoint.api.clone(),
        }),
        Err(CallFailure::Internal(detail)) => Err(ApiError::Internal(detail)),
    }
}

/// Logs, once per endpoint and header name, that a plugin's framing header was dropped.
fn framing_ignored(endpoint: &str, header: &HeaderName) {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    const MAX_REMEMBERED: usize = 10_000;
    let key = format!("{endpoint} {header}");
    let first = match SEEN.lock() {
        Ok(mut seen) => {
            let seen = seen.get_or_insert_with(Default::default);
            seen.len() < MAX_REMEMBERED && seen.insert(key)
        }
        Err(_) => false,
    };
    if first {
        tracing::warn!(endpoint, header = %header, "dpms.Response sets a framing header, which dpms owns: ignored");
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
