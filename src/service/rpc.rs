//! The JSON-RPC 2.0 front door (SPEC §13): `POST /rpc` and `POST /api` (a tenant's:
//! `/rpc/<uuid>`, `/api/<uuid>`). Each call is located, selected, allowed (tokens), bound and
//! run by the same steps as a REST call; only the way in (a request object instead of a URL,
//! query and body) and the way out (the result without the envelope) differ. A batch runs its
//! calls one after another, in order, within one `MAX_FUNCTION_SECS` for all of them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming as HttpBody;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::{
    importable, locate, read_body, resolve, run, runs_in_tenant_process, select, tenant_table, App,
    Failed, Routed, Verb,
};
use crate::error::ApiError;
use crate::exec::Outcome;
use crate::jsonrpc::{self, Call, Incoming, Params};
use crate::marshal::{self, Arg, Key, RESERVED};
use crate::pyhost::RequestInfo;
use crate::request_id::RequestId;
use crate::response::{self, Body as RespBody};
use crate::router::{Located, Method, RouteTable, Selected};
use crate::tenancy::gate::Access;
use crate::tenants::{Caller as Who, View};

const ALLOW: &str = "POST, OPTIONS";

/// The uuid segment if `path` is a JSON-RPC endpoint: `/rpc`, `/api`, `/rpc/<uuid>`, `/api/<uuid>`
/// (a trailing slash optional).
pub fn wanted(path: &str) -> Option<Option<&str>> {
    let rest = path
        .strip_prefix("/rpc")
        .or_else(|| path.strip_prefix("/api"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest {
        "" => Some(None),
        _ => rest
            .strip_prefix('/')
            .filter(|u| crate::router::is_uuid_segment(u))
            .map(Some),
    }
}

/// Everything the calls of one HTTP request share.
struct Batch<'a> {
    /// `MAX_FUNCTION_SECS` from the request's arrival bounds the whole batch: a call that would
    /// start past it is answered -32001 without running, so no batch holds its connection
    /// longer than one call may.
    deadline: tokio::time::Instant,
    app: &'a App,
    access: &'a Access<'a>,
    who: Who,
    uuid: Option<String>,
    remote: SocketAddr,
    id: &'a RequestId,
    parts: hyper::http::request::Parts,
    body: Bytes,
}

pub async fn serve(
    app: &App,
    req: Request<HttpBody>,
    remote: SocketAddr,
    id: &RequestId,
    uuid: Option<String>,
    verb: Verb,
    access: &Access<'_>,
) -> Result<Routed, Failed> {
    let label = || Some("rpc".into());
    let path = req.uri().path().to_string();
    match verb {
        Verb::Call(Method::Post) => {}
        Verb::Options => return Ok((response::options(ALLOW), label())),
        Verb::Head | Verb::Call(_) => {
            let method = req.method().as_str().to_string();
            return Err((
                ApiError::MethodNotAllowed {
                    path,
                    method,
                    allow: ALLOW,
                },
                label(),
            ));
        }
    }
    let who = resolve(app, &path, uuid.as_deref()).await?;
    let (parts, body) = req.into_parts();
    let (max, limit) = (app.config.max_body, app.config.body_time);
    let body = match tokio::time::timeout(limit, read_body(body, max)).await {
        Ok(read) => read.map_err(|e| (e, label()))?,
        Err(_) => {
            let secs = limit.as_secs_f64();
            return Err((ApiError::RequestTimeout { secs }, label()));
        }
    };
    let batch = Batch {
        deadline: tokio::time::Instant::now() + app.config.max_function_time,
        app,
        access,
        who,
        uuid,
        remote,
        id,
        parts,
        body,
    };
    let replies = match jsonrpc::parse(&batch.body) {
        Incoming::Refused(reply) => return Ok((json_reply(json_text(&reply)), label())),
        Incoming::Single(call) => match batch.one(call).await {
            Some(reply) => return Ok((json_reply(reply), label())),
            None => return Ok((no_content(), label())),
        },
        Incoming::Batch(calls) => {
            let mut replies = Vec::with_capacity(calls.len());
            for call in calls {
                if let Some(reply) = batch.one(call).await {
                    replies.push(reply);
                }
            }
            replies
        }
    };
    if replies.is_empty() {
        return Ok((no_content(), label()));
    }
    let mut out = Vec::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, reply) in replies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(reply);
    }
    out.push(b']');
    Ok((json_reply(out), label()))
}

fn json_text(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn json_reply(body: Vec<u8>) -> Response<RespBody> {
    response::json_bytes(StatusCode::OK, body)
}

/// Only notifications: nothing to say (JSON-RPC 2.0 §6).
fn no_content() -> Response<RespBody> {
    let mut resp = Response::new(RespBody::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

impl Batch<'_> {
    /// One entry: its reply, or `None` for a notification (which runs all the same).
    async fn one(&self, call: Result<Call, Value>) -> Option<Vec<u8>> {
        let call = match call {
            Ok(call) => call,
            Err(reply) => return Some(json_text(&reply)),
        };
        let result = self.call(&call).await;
        let id = call.id?;
        Some(match result {
            Ok(text) => jsonrpc::success(&id, &text),
            Err(err) => json_text(&jsonrpc::failure(id, &err)),
        })
    }

    /// Runs one call; its result as JSON text.
    async fn call(&self, call: &Call) -> Result<Vec<u8>, ApiError> {
        let not_found = || ApiError::ApiUndefined {
            api: call.method.clone(),
        };
        // Names beginning with `rpc.` are the protocol's own (JSON-RPC 2.0 §4).
        if call.method.starts_with("rpc.") || call.method.is_empty() {
            return Err(not_found());
        }
        let (selected, module_segment) = match &self.who {
            Who::Tenant(_, view) => self.pick_tenant(view, &call.method).await?,
            Who::Admin => self.pick_admin(&call.method).await?,
        };
        let endpoint = selected.endpoint();
        self.access
            .allow(
                endpoint.auth,
                &self.parts.headers,
                self.parts.method.as_str(),
                self.parts.uri.path(),
                self.id.as_str(),
            )
            .await?;
        let view = match &self.who {
            Who::Tenant(_, view) => Some(Arc::clone(view)),
            Who::Admin => None,
        };
        // Held until the call is answered, as for REST: DPMS_TENANT_CONCURRENCY at most.
        let _slot = match (runs_in_tenant_process(&selected.module), &view) {
            (true, Some(view)) => Some(view.slot().ok_or(ApiError::Overloaded)?),
            _ => None,
        };
        importable(&selected)?;
        let args = self.bind(call, &selected, module_segment.as_deref())?;
        let info = Arc::new(RequestInfo {
            method: self.parts.method.clone(),
            uri: self.parts.uri.clone(),
            headers: self.parts.headers.clone(),
            body: self.body.clone(),
            json: Some(call.object.clone()),
            remote: self.remote,
            uuid: self.uuid.clone(),
            role: Some(match self.who {
                Who::Tenant(..) => "tenant",
                Who::Admin => "admin",
            }),
            id: self.id.clone(),
        });
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ApiError::Timeout {
                api: endpoint.api.clone(),
                secs: self.app.config.max_function_time.as_secs_f64(),
            });
        }
        match run(self.app, &selected, args, info, left).await? {
            Outcome::Json(body) => {
                let prefix = &endpoint.envelope_prefix[..];
                match body
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(b"}}"))
                {
                    Some(result) => Ok(result.to_vec()),
                    None => Err(ApiError::Internal("a result without its envelope".into())),
                }
            }
            // A `dpms.Response`: its JSON body is the result, a text body a string.
            Outcome::Custom {
                content_type, body, ..
            } => {
                if content_type.contains("json") && serde_json::from_slice::<Value>(&body).is_ok() {
                    return Ok(body);
                }
                match String::from_utf8(body) {
                    Ok(text) => Ok(json_text(&Value::String(text))),
                    Err(_) => Err(ApiError::Unserializable {
                        api: endpoint.api.clone(),
                        reason: "a Response with a binary body cannot be a JSON-RPC result".into(),
                    }),
                }
            }
        }
    }

    /// `method` as URL segments: `<module>.<api>` when the part before the first `.` names a
    /// module (or alias) of the table, else the whole name as the API.
    fn segments(table: &RouteTable, method: &str) -> Vec<String> {
        match method.split_once('.') {
            Some((module, api)) if table.module_named(module).is_some() && !api.is_empty() => {
                vec![module.to_string(), api.to_string()]
            }
            _ => vec![method.to_string()],
        }
    }

    async fn pick_admin(&self, method: &str) -> Result<(Selected, Option<String>), ApiError> {
        let snap = self.app.registry.snapshot().await;
        let segs = Self::segments(&snap.table, method);
        let (snap, located) = locate(self.app, &segs).await?;
        let (api, module, module_segment) = api_of(located, &segs)?;
        let http = method_for(&snap.table, &api, module)?;
        let selected = select(self.app, snap, &segs, &api, http).await?;
        Ok((selected, module_segment))
    }

    async fn pick_tenant(
        &self,
        view: &View,
        method: &str,
    ) -> Result<(Selected, Option<String>), ApiError> {
        let table = tenant_table(self.app, view).await;
        let segs = Self::segments(&table, method);
        let (api, module, module_segment) = api_of(table.locate(&segs)?, &segs)?;
        let http = method_for(&table, &api, module)?;
        Ok((table.select(&api, module, http)?, module_segment))
    }

    /// The call's arguments bound to the function: `params` by position or by name, plus the
    /// reserved keys a REST call gets (`func`, `module`, `uuid`).
    fn bind(
        &self,
        call: &Call,
        selected: &Selected,
        module_segment: Option<&str>,
    ) -> Result<marshal::CallArgs, ApiError> {
        let endpoint = selected.endpoint();
        let (args, mut kwargs): (Vec<Value>, Vec<(Key, Arg)>) = match &call.params {
            Params::None => (Vec::new(), Vec::new()),
            Params::Array(items) => (items.clone(), Vec::new()),
            Params::Object(map) => (
                Vec::new(),
                map.iter()
                    .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                    .map(|(k, v)| (Cow::Owned(k.clone()), Arg::Json(v.clone())))
                    .collect(),
            ),
        };
        args.iter().try_for_each(marshal::check_numbers)?;
        kwargs.iter().try_for_each(|(_, v)| match v {
            Arg::Json(v) => marshal::check_numbers(v),
            _ => Ok(()),
        })?;
        let text = |s: &str| Arg::Json(Value::String(s.to_string()));
        kwargs.push((Cow::Borrowed("func"), text(&endpoint.api)));
        if let Some(m) = module_segment {
            kwargs.push((Cow::Borrowed("module"), text(m)));
        }
        if let Some(u) = &self.uuid {
            kwargs.push((Cow::Borrowed("uuid"), text(u)));
        }
        marshal::bind(&endpoint.func, &endpoint.params, args, kwargs)
    }
}

/// The API a located name calls; `__dir__`, or a name followed by more segments, is no method.
fn api_of(
    located: Located,
    segs: &[String],
) -> Result<(String, Option<usize>, Option<String>), ApiError> {
    match located {
        Located::Api {
            api,
            module,
            module_segment,
            params_at,
        } if params_at == segs.len() => Ok((api, module, module_segment)),
        Located::Api { api, .. } => Err(ApiError::ApiUndefined { api }),
        Located::Dir(_) => Err(ApiError::ApiUndefined {
            api: segs.join("."),
        }),
    }
}

/// The HTTP method a JSON-RPC call takes the endpoint by: POST if the API has it, else the
/// first it has of GET, PUT, PATCH, DELETE.
fn method_for(table: &RouteTable, api: &str, module: Option<usize>) -> Result<Method, ApiError> {
    let allowed = table.allowed(api, module);
    [
        Method::Post,
        Method::Get,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ]
    .into_iter()
    .find(|m| allowed.contains(*m))
    .ok_or_else(|| ApiError::ApiUndefined {
        api: api.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let u = "12345678-1234-5678-1234-567812345678";
        assert_eq!(wanted("/rpc"), Some(None));
        assert_eq!(wanted("/api/"), Some(None));
        assert_eq!(wanted(&format!("/rpc/{u}")), Some(Some(u)));
        assert_eq!(wanted(&format!("/api/{u}/")), Some(Some(u)));
        assert_eq!(wanted("/rpcx"), None);
        assert_eq!(wanted("/rpc/x"), None);
        assert_eq!(wanted("/apis"), None);
    }
}
