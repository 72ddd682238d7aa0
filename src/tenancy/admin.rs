//! The admin API (SPEC §7): `/rest/admin/…`, the tenant registry over HTTP, for the admin only.
//!
//! A request passes four steps, each a plain function that can be tested without a server:
//! [`authorize`] (the bearer, compared in constant time: 401) → [`route`] (path and method:
//! 404 / 405, path uuid and secret name: 400) → [`Route::with_body`] (the JSON body: 400) →
//! [`execute`] (the registry, on tokio's blocking pool: the I/O thread serves every connection
//! of a worker and must never wait on SQLite's fsync or busy timeout). [`serve`] chains them and
//! reads the body only once the caller has proved to be the admin; [`parse`] is the same chain
//! without the registry.
//!
//! What the registry does not know is asked of the caller through [`Admin`]: the modules a
//! tenant owns (the plugin registry's) and what else goes when a tenant is removed (its
//! processes).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::error::ApiError;
use crate::response::{self, Body};
use crate::store::{self, NewKey, Registry, StoreError, Tenant};
use crate::tokens::{self, jwt, MintError, MintRequest};

/// Every admin path is this or below it.
pub const PREFIX: &str = "/rest/admin";

/// Whether `path` belongs to the admin API (`/rest/admin` or `/rest/admin/…`; not
/// `/rest/administrator`).
pub fn owns(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A secret's value. Its `Debug` prints a mask, so an [`AdminOp`] in a log line never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One admin request, checked: a row of SPEC §7's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    /// `POST /tenants`; `uuid` is made when absent.
    CreateTenant { userid: String, uuid: Option<Uuid> },
    /// `GET /tenants`.
    ListTenants,
    /// `GET /tenants/<uuid>`.
    GetTenant(Uuid),
    /// `PATCH /tenants/<uuid>` `{"enabled": bool}`.
    SetEnabled(Uuid, bool),
    /// `DELETE /tenants/<uuid>`.
    RemoveTenant(Uuid),
    /// `PUT /tenants/<uuid>/secrets/<NAME>` `{"value": str}`.
    SetSecret {
        uuid: Uuid,
        name: String,
        value: SecretValue,
    },
    /// `GET /tenants/<uuid>/secrets`.
    ListSecrets(Uuid),
    /// `DELETE /tenants/<uuid>/secrets/<NAME>`.
    UnsetSecret { uuid: Uuid, name: String },
    /// `POST /tenants/<uuid>/keys`: a new signing key (the admin's own with `ADMIN_ID`).
    RotateKey(Uuid),
    /// `POST /tenants/<uuid>/tokens` `{"ttl": int, "htm": str, "htu": str}` (all optional).
    MintToken { uuid: Uuid, ask: MintRequest },
    /// `POST /tenants/<uuid>/sessions` `{"ttl": int}` (optional): a browser session key.
    MintSession { uuid: Uuid, ttl: Option<i64> },
}

impl AdminOp {
    /// Whether the op changes the registry (and so is worth an info line).
    fn writes(&self) -> bool {
        !matches!(
            self,
            AdminOp::ListTenants
                | AdminOp::GetTenant(_)
                | AdminOp::ListSecrets(_)
                | AdminOp::MintToken { .. }
                | AdminOp::MintSession { .. }
        )
    }
}

/// A known path with a method it takes, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateTenant,
    ListTenants,
    GetTenant(Uuid),
    PatchTenant(Uuid),
    RemoveTenant(Uuid),
    PutSecret(Uuid, String),
    ListSecrets(Uuid),
    UnsetSecret(Uuid, String),
    Keys(Uuid),
    Tokens(Uuid),
    Sessions(Uuid),
}

/// `Authorization: Bearer <ADMIN_ID>` (scheme case-insensitive, RFC 9110 §11.1), else 401.
///
/// The token is parsed as a UUID (any of its spellings: case does not matter) and its 16 bytes
/// compared with the admin's in constant time, so the time a wrong guess takes says nothing
/// about how much of it was right. Parsing only looks at the caller's own bytes.
pub fn authorize(admin_id: Uuid, authorization: Option<&HeaderValue>) -> Result<(), ApiError> {
    let presented = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .and_then(|token| Uuid::try_parse(token).ok());
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(admin_id.as_bytes())) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token of a `Bearer` credential.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Matches the path (the whole request path, `/rest/admin/…`; one trailing `/` is ignored) and
/// the method: an unknown path is 404, a method the path does not take 405 (with its `Allow`),
/// a path uuid that is not a UUID or a secret name outside `[A-Z_][A-Z0-9_]{0,63}` 400.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::NotFound {
        path: path.to_string(),
    };
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    let m = method.as_str();
    let refuse = |allow: &'static str| ApiError::MethodNotAllowed {
        path: path.to_string(),
        method: m.to_string(),
        allow,
    };
    match segs[..] {
        ["tenants"] => match m {
            "GET" => Ok(Route::ListTenants),
            "POST" => Ok(Route::CreateTenant),
            _ => Err(refuse("GET, POST")),
        },
        ["tenants", uuid] => {
            let make = match m {
                "GET" => Route::GetTenant,
                "PATCH" => Route::PatchTenant,
                "DELETE" => Route::RemoveTenant,
                _ => return Err(refuse("GET, PATCH, DELETE")),
            };
            Ok(make(path_uuid(uuid)?))
        }
        ["tenants", uuid, "keys"] => match m {
            "POST" => Ok(Route::Keys(path_uuid(uuid)?)),
            _ => Err(refuse("POST")),
        },
        ["tenants", uuid, "tokens"] => match m {
            "POST" => Ok(Route::Tokens(path_uuid(uuid)?)),
            _ => Err(refuse("POST")),
        },
        ["tenants", uuid, "sessions"] => match m {
            "POST" => Ok(Route::Sessions(path_uuid(uuid)?)),
            _ => Err(refuse("POST")),
        },
        ["tenants", uuid, "secrets"] => match m {
            "GET" => Ok(Route::ListSecrets(path_uuid(uuid)?)),
            _ => Err(refuse("GET")),
        },
        ["tenants", uuid, "secrets", name] => {
            let make = match m {
                "PUT" => Route::PutSecret,
                "DELETE" => Route::UnsetSecret,
                _ => return Err(refuse("PUT, DELETE")),
            };
            let uuid = path_uuid(uuid)?;
            store::check_secret_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(make(uuid, name.to_string()))
        }
        _ => Err(not_found()),
    }
}

fn path_uuid(seg: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(seg).map_err(|_| ApiError::BadRequest(format!("`{seg}` is not a UUID.")))
}

/// `POST /tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    userid: String,
    #[serde(default)]
    uuid: Option<String>,
}

/// `PATCH /tenants/<uuid>`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enabled {
    enabled: bool,
}

/// `PUT /tenants/<uuid>/secrets/<NAME>`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecret {
    value: String,
}

/// `POST /tenants/<uuid>/tokens`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
}

/// `POST /tenants/<uuid>/sessions`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewSession {
    #[serde(default)]
    ttl: Option<i64>,
}

/// The body as `T`: bad JSON, a missing or unknown field or a wrong type is 400. serde's
/// message names the field and the type; it quotes a value only when that value has the wrong
/// type, and a secret's value has the right one, so no secret ends up in a response.
/// Only an object: serde would also read a struct from a JSON array, by position.
fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8], takes: &str) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequest(format!(
            "The request body must be a JSON object {takes}."
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("The request body must be JSON {takes}: {e}.")))
}

/// [`json_body`], where no body at all asks for the defaults.
fn json_body_or_default<'a, T: Deserialize<'a> + Default>(
    body: &'a [u8],
    takes: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(body, takes)
    }
}

impl Route {
    /// The op, with the body read where the route takes one (other routes ignore it).
    pub fn with_body(self, body: &[u8]) -> Result<AdminOp, ApiError> {
        Ok(match self {
            Route::CreateTenant => {
                let b: NewTenant = json_body(body, r#"{"userid": str, "uuid": str (optional)}"#)?;
                store::check_userid(&b.userid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let uuid = b
                    .uuid
                    .as_deref()
                    .map(|u| {
                        Uuid::try_parse(u).map_err(|_| {
                            ApiError::BadRequest(format!("`uuid`: `{u}` is not a UUID."))
                        })
                    })
                    .transpose()?;
                AdminOp::CreateTenant {
                    userid: b.userid,
                    uuid,
                }
            }
            Route::ListTenants => AdminOp::ListTenants,
            Route::GetTenant(u) => AdminOp::GetTenant(u),
            Route::PatchTenant(u) => {
                let b: Enabled = json_body(body, r#"{"enabled": bool}"#)?;
                AdminOp::SetEnabled(u, b.enabled)
            }
            Route::RemoveTenant(u) => AdminOp::RemoveTenant(u),
            Route::PutSecret(uuid, name) => {
                let b: NewSecret = json_body(body, r#"{"value": str}"#)?;
                // A secret becomes an environment variable of the tenant's process, and no
                // environment variable can hold a NUL.
                if b.value.contains('\0') {
                    return Err(ApiError::BadRequest(
                        "`value` must not contain NUL: it becomes an environment variable.".into(),
                    ));
                }
                AdminOp::SetSecret {
                    uuid,
                    name,
                    value: SecretValue(b.value),
                }
            }
            Route::ListSecrets(u) => AdminOp::ListSecrets(u),
            Route::UnsetSecret(uuid, name) => AdminOp::UnsetSecret { uuid, name },
            Route::Keys(u) => AdminOp::RotateKey(u),
            Route::Tokens(uuid) => {
                let b: NewToken =
                    json_body_or_default(body, r#"{"ttl": int (1-60), "htm": str, "htu": str}"#)?;
                if let Some(ttl) = b.ttl.filter(|t| !(1..=jwt::MAX_LIFETIME).contains(t)) {
                    return Err(ApiError::BadRequest(format!(
                        "`ttl` must be 1 to {} seconds (got {ttl}).",
                        jwt::MAX_LIFETIME
                    )));
                }
                AdminOp::MintToken {
                    uuid,
                    ask: MintRequest {
                        ttl: b.ttl,
                        htm: b.htm,
                        htu: b.htu,
                    },
                }
            }
            Route::Sessions(uuid) => {
                let b: NewSession = json_body_or_default(body, r#"{"ttl": int (1-86400)}"#)?;
                if let Some(ttl) = b
                    .ttl
                    .filter(|t| !(1..=tokens::MAX_SESSION_SECS).contains(t))
                {
                    return Err(ApiError::BadRequest(
                        MintError::BadSessionTtl(ttl).to_string(),
                    ));
                }
                AdminOp::MintSession { uuid, ttl: b.ttl }
            }
        })
    }
}

/// The whole check of one request, without the registry: what [`serve`] does before
/// [`execute`].
pub fn parse(
    admin_id: Uuid,
    method: &Method,
    path: &str,
    authorization: Option<&HeaderValue>,
    body: &[u8],
) -> Result<AdminOp, ApiError> {
    authorize(admin_id, authorization)?;
    route(method, path)?.with_body(body)
}

/// What the admin API needs from the running server.
pub struct Admin<'a> {
    /// `ADMIN_ID`; no tenant may have it.
    pub admin_id: Uuid,
    /// The registry, `None` when it did not open at start (then every op is 503: fail closed).
    pub registry: Option<Arc<Registry>>,
    /// `T.modules`: the names of the modules a tenant owns. Called on the I/O thread, so it
    /// must only read memory (the plugin registry's current snapshot).
    pub modules: &'a (dyn Fn(Uuid) -> Vec<String> + Sync),
    /// Called once a tenant has been removed from the registry, to stop its processes. Called
    /// on the I/O thread: it must not block (start the work and return).
    pub on_tenant_removed: &'a (dyn Fn(Uuid) + Sync),
    /// The caller already checked the bearer as the admin's single-use token
    /// (`DPMS_REQUIRE_TOKENS`); `Bearer <ADMIN_ID>` is then not what lets a request in.
    pub token_checked: bool,
}

/// [`Admin::modules`] while the plugin registry knows no owners: every tenant owns none.
pub fn no_modules(_: Uuid) -> Vec<String> {
    Vec::new()
}

/// [`Admin::on_tenant_removed`] while tenants have no processes: nothing else to stop.
pub fn nothing_to_stop(_: Uuid) {}

/// What the registry answered, before `T.modules` is filled in.
enum Done {
    Created(Tenant, NewKey),
    Key(NewKey),
    Token(String, i64),
    Session(tokens::Session),
    Tenant(Tenant),
    Tenants(Vec<Tenant>),
    Removed(Uuid),
    Secrets(Vec<String>),
    Ok,
}

/// Runs `op` against the registry on the blocking pool and answers the status and JSON body.
pub async fn execute(admin: &Admin<'_>, op: AdminOp) -> Result<(StatusCode, Value), ApiError> {
    let Some(registry) = admin.registry.clone() else {
        return Err(ApiError::RegistryUnavailable(
            "the tenant registry did not open at start (see the start-up log)".into(),
        ));
    };
    let reserved = admin.admin_id;
    let audit = op.writes().then(|| format!("{op:?}"));
    let done = tokio::task::spawn_blocking(move || run(&registry, reserved, op))
        .await
        .map_err(|e| ApiError::Internal(format!("the admin registry task failed: {e}")))??;
    if let Some(op) = audit {
        tracing::info!(op = %op, "admin API changed the tenant registry");
    }
    let tenant = |t: &Tenant| {
        let mut v = t.to_json();
        if let Value::Object(m) = &mut v {
            m.insert("modules".into(), json!((admin.modules)(t.uuid)));
        }
        v
    };
    Ok(match done {
        Done::Created(t, key) => (
            StatusCode::CREATED,
            json!({"status": "OK", "tenant": tenant(&t), "key": key.to_json()}),
        ),
        Done::Key(key) => (
            StatusCode::CREATED,
            json!({"status": "OK", "key": key.to_json()}),
        ),
        Done::Token(token, exp) => (
            StatusCode::CREATED,
            json!({"status": "OK", "token": token, "exp": exp}),
        ),
        Done::Session(session) => {
            let mut body = session.to_json();
            if let Value::Object(m) = &mut body {
                m.insert("status".into(), json!("OK"));
            }
            (StatusCode::CREATED, body)
        }
        Done::Tenant(t) => (
            StatusCode::OK,
            json!({"status": "OK", "tenant": tenant(&t)}),
        ),
        Done::Tenants(all) => {
            let all: Vec<Value> = all.iter().map(tenant).collect();
            (StatusCode::OK, json!({"status": "OK", "tenants": all}))
        }
        Done::Removed(uuid) => {
            (admin.on_tenant_removed)(uuid);
            (StatusCode::OK, json!({"status": "OK"}))
        }
        Done::Secrets(names) => (StatusCode::OK, json!({"status": "OK", "secrets": names})),
        Done::Ok => (StatusCode::OK, json!({"status": "OK"})),
    })
}

/// The registry call of `op` (blocking), its refusals turned into client errors.
fn run(registry: &Registry, reserved: Uuid, op: AdminOp) -> Result<Done, ApiError> {
    match op {
        AdminOp::CreateTenant { userid, uuid } => registry
            .add_tenant(&userid, uuid, Some(reserved))
            .map(|(t, key)| Done::Created(t, key))
            .map_err(store_error),
        AdminOp::ListTenants => registry.list().map(Done::Tenants).map_err(store_error),
        AdminOp::GetTenant(u) => registry.get(u).map(Done::Tenant).map_err(no_tenant(u)),
        AdminOp::SetEnabled(u, on) => registry
            .set_enabled(u, on)
            .map(Done::Tenant)
            .map_err(no_tenant(u)),
        AdminOp::RemoveTenant(u) => registry
            .remove(u)
            .map(|()| Done::Removed(u))
            .map_err(no_tenant(u)),
        AdminOp::SetSecret { uuid, name, value } => registry
            .set_secret(uuid, &name, &value.0)
            .map(|()| Done::Ok)
            .map_err(no_tenant(uuid)),
        AdminOp::ListSecrets(u) => registry
            .secret_names(u)
            .map(Done::Secrets)
            .map_err(no_tenant(u)),
        AdminOp::UnsetSecret { uuid, name } => registry
            .unset_secret(uuid, &name)
            .map(|()| Done::Ok)
            .map_err(|e| match e {
                StoreError::NotFound => ApiError::NoSuchSecret {
                    uuid: uuid.to_string(),
                    name,
                },
                e => store_error(e),
            }),
        AdminOp::RotateKey(u) => registry
            .rotate_key(u, Some(reserved))
            .map(Done::Key)
            .map_err(no_tenant(u)),
        AdminOp::MintToken { uuid, ask } => {
            let (kid, secret) = signing_key(registry, uuid, reserved)?;
            let (token, exp) = tokens::mint_with(uuid, &kid, &secret, &ask, tokens::unix_now())
                .map_err(mint_error)?;
            Ok(Done::Token(token, exp))
        }
        AdminOp::MintSession { uuid, ttl } => {
            let (kid, secret) = signing_key(registry, uuid, reserved)?;
            let session =
                tokens::mint_session(&kid, &secret, ttl, tokens::unix_now()).map_err(mint_error)?;
            Ok(Done::Session(session))
        }
    }
}

/// The current signing key of `uuid` (a tenant, or `reserved`: the admin); 404 for an unknown
/// tenant, 409 for one without a key yet.
fn signing_key(
    registry: &Registry,
    uuid: Uuid,
    reserved: Uuid,
) -> Result<(String, [u8; store::SECRET_BYTES]), ApiError> {
    registry
        .current_key(uuid, Some(reserved))
        .map_err(no_tenant(uuid))?
        .ok_or_else(|| ApiError::Conflict(MintError::NoKey(uuid).to_string()))
}

/// A minting failure as the client sees it: a bad lifetime is the caller's, the rest ours.
fn mint_error(e: MintError) -> ApiError {
    match e {
        MintError::BadTtl(_) | MintError::BadSessionTtl(_) => ApiError::BadRequest(e.to_string()),
        MintError::NoKey(_) => ApiError::Conflict(e.to_string()),
        MintError::Random(_) => ApiError::Internal(e.to_string()),
    }
}

/// A store error of an op on tenant `uuid`: its `NotFound` names the tenant.
fn no_tenant(uuid: Uuid) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NoSuchTenant {
            uuid: uuid.to_string(),
        },
        e => store_error(e),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::BadRequest(m) => ApiError::BadRequest(m),
        StoreError::Conflict(m) => ApiError::Conflict(m),
        // Only reached by an op that names no tenant; the others say which one is missing.
        StoreError::NotFound => ApiError::NotFound {
            path: PREFIX.to_string(),
        },
        StoreError::Unavailable(why) => ApiError::RegistryUnavailable(why),
    }
}

/// Answers one `/rest/admin/…` request: the admin's bearer first, then the path, then `body`
/// (awaited only for the admin: nobody else makes dpms read up to `DPMS_MAX_BODY`), then the
/// registry. Every refusal is the JSON error shape of SPEC §4.
pub async fn serve<F>(
    admin: &Admin<'_>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: F,
) -> Response<Body>
where
    F: Future<Output = Result<Bytes, ApiError>>,
{
    let answer = async {
        if !admin.token_checked {
            authorize(admin.admin_id, headers.get(AUTHORIZATION))?;
        }
        let route = route(method, path)?;
        let body = body.await?;
        let op = route.with_body(&body)?;
        execute(admin, op).await
    };
    match answer.await {
        Ok((status, value)) => response::json_value(status, &value),
        Err(err) => error_response(&err),
    }
}

/// The error as a response, with the headers the admin API's own errors carry. dpms's faults
/// are logged here with their detail (the client gets none of it).
fn error_response(err: &ApiError) -> Response<Body> {
    match err {
        ApiError::RegistryUnavailable(why) => {
            tracing::error!(cause = %why, "admin API refused: tenant registry unavailable");
        }
        ApiError::Internal(detail) => tracing::error!(detail = %detail, "admin API internal error"),
        ApiError::Unauthorized => tracing::debug!("admin API without the admin's bearer"),
        _ => {}
    }
    response::error(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    const ADMIN: Uuid = Uuid::from_u128(0x9f5b7c1e_2d3a_4b8c_9e0f_1a2b3c4d5e6f);
    const T: &str = "0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11";

    fn t() -> Uuid {
        Uuid::parse_str(T).unwrap()
    }

    fn bearer(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn method(m: &str) -> Method {
        Method::from_bytes(m.as_bytes()).unwrap()
    }

    fn code(r: Result<impl fmt::Debug, ApiError>) -> &'static str {
        r.unwrap_err().code()
    }

    #[test]
    fn owned_paths() {
        for p in [
            "/rest/admin",
            "/rest/admin/",
            "/rest/admin/tenants",
            "/rest/admin/x/y",
        ] {
            assert!(owns(p), "{p}");
        }
        for p in [
            "/rest/administrator",
            "/rest/adminx/tenants",
            "/rest",
            "/rest/services/x",
        ] {
            assert!(!owns(p), "{p}");
        }
    }

    #[test]
    fn bearer_checks() {
        let good = format!("Bearer {ADMIN}");
        for ok in [
            good.clone(),
            format!("bearer {ADMIN}"),
            format!("BEARER   {}  ", ADMIN.to_string().to_uppercase()),
            format!("Bearer {}", ADMIN.simple()),
        ] {
            assert!(authorize(ADMIN, Some(&bearer(&ok))).is_ok(), "{ok}");
        }
        let other = Uuid::new_v4();
        let mut near = ADMIN.to_string();
        near.pop();
        near.push('0');
        for bad in [
            String::new(),
            "Bearer".into(),
            "Bearer ".into(),
            format!("Basic {ADMIN}"),
            format!("Bearer{ADMIN}"),
            format!("Bearer {other}"),
            format!("Bearer {near}"),
            format!("Bearer {ADMIN} x"),
            format!("Token {ADMIN}"),
        ] {
            assert!(
                matches!(
                    authorize(ADMIN, Some(&bearer(&bad))),
                    Err(ApiError::Unauthorized)
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            authorize(ADMIN, None),
            Err(ApiError::Unauthorized)
        ));
        let not_text = HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert!(authorize(ADMIN, Some(&not_text)).is_err());
    }

    #[test]
    fn routes() {
        let cases: Vec<(&str, String, Route)> = vec![
            ("GET", "/rest/admin/tenants".into(), Route::ListTenants),
            ("GET", "/rest/admin/tenants/".into(), Route::ListTenants),
            ("POST", "/rest/admin/tenants".into(), Route::CreateTenant),
            (
                "GET",
                format!("/rest/admin/tenants/{T}"),
                Route::GetTenant(t()),
            ),
            (
                "PATCH",
                format!("/rest/admin/tenants/{T}/"),
                Route::PatchTenant(t()),
            ),
            (
                "DELETE",
                format!("/rest/admin/tenants/{T}"),
                Route::RemoveTenant(t()),
            ),
            (
                "GET",
                format!("/rest/admin/tenants/{T}/secrets"),
                Route::ListSecrets(t()),
            ),
            (
                "PUT",
                format!("/rest/admin/tenants/{T}/secrets/API_KEY"),
                Route::PutSecret(t(), "API_KEY".into()),
            ),
            (
                "DELETE",
                format!("/rest/admin/tenants/{T}/secrets/_X9"),
                Route::UnsetSecret(t(), "_X9".into()),
            ),
            (
                "POST",
                format!("/rest/admin/tenants/{T}/keys"),
                Route::Keys(t()),
            ),
            (
                "POST",
                format!("/rest/admin/tenants/{T}/tokens/"),
                Route::Tokens(t()),
            ),
            (
                "POST",
                format!("/rest/admin/tenants/{T}/sessions"),
                Route::Sessions(t()),
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(route(&method(m), &p).unwrap(), want, "{m} {p}");
        }
    }

    #[test]
    fn route_refusals() {
        let cases: Vec<(&str, String, &str)> = vec![
            ("GET", "/rest/admin".into(), "not_found"),
            ("GET", "/rest/admin/".into(), "not_found"),
            ("GET", "/rest/admin/nope".into(), "not_found"),
            ("GET", "/rest/admin/tenants//".into(), "not_found"),
            ("GET", "/rest/admin//tenants".into(), "not_found"),
            ("GET", format!("/rest/admin/tenants/{T}/nope"), "not_found"),
            (
                "GET",
                format!("/rest/admin/tenants/{T}/keys"),
                "method_not_allowed",
            ),
            (
                "GET",
                format!("/rest/admin/tenants/{T}/secrets/A/B"),
                "not_found",
            ),
            ("DELETE", "/rest/admin/tenants".into(), "method_not_allowed"),
            (
                "PUT",
                format!("/rest/admin/tenants/{T}"),
                "method_not_allowed",
            ),
            (
                "HEAD",
                format!("/rest/admin/tenants/{T}"),
                "method_not_allowed",
            ),
            (
                "POST",
                format!("/rest/admin/tenants/{T}/secrets"),
                "method_not_allowed",
            ),
            (
                "GET",
                format!("/rest/admin/tenants/{T}/secrets/A"),
                "method_not_allowed",
            ),
            (
                "OPTIONS",
                "/rest/admin/tenants".into(),
                "method_not_allowed",
            ),
            // The method is checked before the path's values.
            (
                "PUT",
                "/rest/admin/tenants/zzz".into(),
                "method_not_allowed",
            ),
            ("GET", "/rest/admin/tenants/zzz".into(), "bad_request"),
            (
                "GET",
                "/rest/admin/tenants/zzz/secrets".into(),
                "bad_request",
            ),
            (
                "PUT",
                format!("/rest/admin/tenants/{T}/secrets/api_key"),
                "bad_request",
            ),
            (
                "DELETE",
                format!("/rest/admin/tenants/{T}/secrets/9A"),
                "bad_request",
            ),
            (
                "PUT",
                format!("/rest/admin/tenants/{T}/secrets/A%5FB"),
                "bad_request",
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(code(route(&method(m), &p)), want, "{m} {p}");
        }
        match route(&method("DELETE"), "/rest/admin/tenants") {
            Err(ApiError::MethodNotAllowed { allow, .. }) => assert_eq!(allow, "GET, POST"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies() {
        let op = |r: Route, b: &str| r.with_body(b.as_bytes());
        assert_eq!(
            op(Route::CreateTenant, r#"{"userid": "alice"}"#).unwrap(),
            AdminOp::CreateTenant {
                userid: "alice".into(),
                uuid: None
            }
        );
        assert_eq!(
            op(
                Route::CreateTenant,
                &format!(r#"{{"userid": "a", "uuid": "{T}"}}"#)
            )
            .unwrap(),
            AdminOp::CreateTenant {
                userid: "a".into(),
                uuid: Some(t())
            }
        );
        assert_eq!(
            op(Route::CreateTenant, r#"{"userid": "a", "uuid": null}"#).unwrap(),
            AdminOp::CreateTenant {
                userid: "a".into(),
                uuid: None
            }
        );
        assert_eq!(
            op(Route::PatchTenant(t()), r#"{"enabled": false}"#).unwrap(),
            AdminOp::SetEnabled(t(), false)
        );
        assert_eq!(
            op(Route::PutSecret(t(), "K".into()), r#"{"value": ""}"#).unwrap(),
            AdminOp::SetSecret {
                uuid: t(),
                name: "K".into(),
                value: SecretValue(String::new())
            }
        );
        assert_eq!(
            op(Route::Tokens(t()), "").unwrap(),
            AdminOp::MintToken {
                uuid: t(),
                ask: MintRequest::default()
            }
        );
        assert_eq!(
            op(Route::Tokens(t()), r#"{"ttl": 5, "htm": "GET"}"#).unwrap(),
            AdminOp::MintToken {
                uuid: t(),
                ask: MintRequest {
                    ttl: Some(5),
                    htm: Some("GET".into()),
                    htu: None
                }
            }
        );
        // Routes without a body ignore one.
        assert_eq!(
            op(Route::ListTenants, "junk").unwrap(),
            AdminOp::ListTenants
        );

        let long = format!(r#"{{"userid": "{}"}}"#, "x".repeat(129));
        let bad: Vec<(Route, &str)> = vec![
            (Route::CreateTenant, ""),
            (Route::CreateTenant, "{"),
            (Route::CreateTenant, "[]"),
            (Route::CreateTenant, "{}"),
            (Route::CreateTenant, r#"{"userid": ""}"#),
            (Route::CreateTenant, &long),
            (Route::CreateTenant, r#"{"userid": 5}"#),
            (Route::CreateTenant, r#"{"userid": "a", "uuid": "nope"}"#),
            (Route::CreateTenant, r#"{"userid": "a", "uuid": 7}"#),
            (Route::CreateTenant, r#"{"userid": "a", "enabled": true}"#),
            (Route::PatchTenant(t()), r#"{"enabled": "yes"}"#),
            (Route::PatchTenant(t()), r#"{"enabled": 1}"#),
            (Route::PatchTenant(t()), r#"{}"#),
            (
                Route::PatchTenant(t()),
                r#"{"enabled": true, "userid": "b"}"#,
            ),
            (Route::PutSecret(t(), "K".into()), r#"{"value": 5}"#),
            (Route::PutSecret(t(), "K".into()), r#"{"value": null}"#),
            (
                Route::PutSecret(t(), "K".into()),
                r#"{"value": "a\u0000b"}"#,
            ),
            (
                Route::PutSecret(t(), "K".into()),
                r#"{"value": "v", "x": 1}"#,
            ),
            (Route::PutSecret(t(), "K".into()), r#""v""#),
            (Route::Tokens(t()), r#"{"ttl": 61}"#),
            (Route::Tokens(t()), r#"{"ttl": 0}"#),
            (Route::Tokens(t()), r#"{"ttl": "5"}"#),
            (Route::Tokens(t()), r#"{"lifetime": 5}"#),
            // serde reads a struct from an array by position; a body is an object.
            (Route::Tokens(t()), "[]"),
            (Route::Sessions(t()), r#"{"ttl": 86401}"#),
            (Route::Sessions(t()), r#"{"ttl": 0}"#),
            (Route::Sessions(t()), r#"{"ttl": 60, "htm": "GET"}"#),
            (Route::Tokens(t()), "[5]"),
            (Route::CreateTenant, r#"["alice"]"#),
            (Route::PatchTenant(t()), "[false]"),
            (Route::PutSecret(t(), "K".into()), r#"["v"]"#),
        ];
        for (r, b) in bad {
            assert_eq!(code(op(r.clone(), b)), "bad_request", "{r:?} {b}");
        }
    }

    #[test]
    fn secret_values_stay_out_of_logs_and_errors() {
        let op = Route::PutSecret(t(), "K".into())
            .with_body(br#"{"value": "hunter2"}"#)
            .unwrap();
        assert!(!format!("{op:?}").contains("hunter2"));
        let err = Route::PutSecret(t(), "K".into())
            .with_body(br#"{"value": "hunter2", "extra": 1}"#)
            .unwrap_err();
        assert!(!err.body().to_string().contains("hunter2"));
    }

    #[test]
    fn auth_comes_first() {
        // Without the bearer, nothing about the path or body is told.
        let r = parse(ADMIN, &method("DELETE"), "/rest/admin/nope", None, b"{");
        assert_eq!(code(r), "unauthorized");
        let h = bearer(&format!("Bearer {ADMIN}"));
        let r = parse(ADMIN, &method("DELETE"), "/rest/admin/nope", Some(&h), b"{");
        assert_eq!(code(r), "not_found");
    }

    #[tokio::test]
    async fn ops_on_a_real_registry() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let removed = std::sync::Mutex::new(Vec::new());
        let on_removed = |u: Uuid| removed.lock().unwrap().push(u);
        let modules = |u: Uuid| vec![format!("m_{}", u.simple())];
        let admin = Admin {
            admin_id: ADMIN,
            registry: Some(Arc::clone(&registry)),
            modules: &modules,
            on_tenant_removed: &on_removed,
            token_checked: false,
        };
        let run = |op| execute(&admin, op);

        let (s, v) = run(AdminOp::CreateTenant {
            userid: "alice".into(),
            uuid: Some(t()),
        })
        .await
        .unwrap();
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(v["tenant"]["uuid"], T);
        assert_eq!(v["tenant"]["enabled"], true);
        assert_eq!(
            v["tenant"]["modules"],
            json!([format!("m_{}", t().simple())])
        );
        for (userid, uuid) in [("bob", Some(t())), ("alice", None), ("admin", Some(ADMIN))] {
            let e = run(AdminOp::CreateTenant {
                userid: userid.into(),
                uuid,
            })
            .await
            .unwrap_err();
            assert_eq!(e.code(), "conflict", "{userid}");
        }
        let (_, v) = run(AdminOp::SetEnabled(t(), false)).await.unwrap();
        assert_eq!(v["tenant"]["enabled"], false);
        run(AdminOp::SetSecret {
            uuid: t(),
            name: "K".into(),
            value: SecretValue("v".into()),
        })
        .await
        .unwrap();
        let (_, v) = run(AdminOp::ListSecrets(t())).await.unwrap();
        assert_eq!(v, json!({"status": "OK", "secrets": ["K"]}));
        let e = run(AdminOp::UnsetSecret {
            uuid: t(),
            name: "NOPE".into(),
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), "not_found");
        let other = Uuid::new_v4();
        for op in [
            AdminOp::GetTenant(other),
            AdminOp::SetEnabled(other, true),
            AdminOp::RemoveTenant(other),
            AdminOp::ListSecrets(other),
        ] {
            assert!(matches!(run(op).await, Err(ApiError::NoSuchTenant { .. })));
        }
        assert!(removed.lock().unwrap().is_empty());
        let (s, v) = run(AdminOp::RemoveTenant(t())).await.unwrap();
        assert_eq!((s, v), (StatusCode::OK, json!({"status": "OK"})));
        assert_eq!(*removed.lock().unwrap(), [t()]);
        let (_, v) = run(AdminOp::ListTenants).await.unwrap();
        assert_eq!(v, json!({"status": "OK", "tenants": []}));
    }

    #[tokio::test]
    async fn no_registry_fails_closed() {
        let admin = Admin {
            admin_id: ADMIN,
            registry: None,
            modules: &no_modules,
            on_tenant_removed: &nothing_to_stop,
            token_checked: false,
        };
        let e = execute(&admin, AdminOp::ListTenants).await.unwrap_err();
        assert_eq!(e.code(), "registry_unavailable");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.body().to_string().contains("start-up log)"));
    }
}
