//! The API description front door (SPEC §13): `GET /rest/openapi.json` (a tenant's:
//! `/rest/<uuid>/openapi.json`), built from the caller's route table by [`crate::openapi`], and
//! `GET /docs` (`/docs/<uuid>/`), Swagger UI pinned and embedded in the binary
//! (`assets/swagger-ui/`), so the page needs no network beyond this server.

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::{current_files, resolve, tenant_table, App, Failed, Routed, Verb};
use crate::error::ApiError;
use crate::openapi;
use crate::response::{self, Body as RespBody};
use crate::router::{is_uuid_segment, Method};
use crate::tenants::Caller as Who;

const ALLOW: &str = "GET, HEAD, OPTIONS";

/// What a path asks this module for.
pub enum Wanted<'a> {
    /// The OpenAPI document, for the admin (`None`) or the tenant the uuid names.
    Document(Option<&'a str>),
    /// The `/docs` page, for the admin or a tenant.
    Page(Option<&'a str>),
    /// One of the embedded Swagger UI files.
    Asset(&'static str, &'static [u8]),
}

/// Whether `path` is one of this module's.
pub fn wanted(path: &str) -> Option<Wanted<'_>> {
    if path == "/rest/openapi.json" {
        return Some(Wanted::Document(None));
    }
    if let Some(uuid) = path
        .strip_prefix("/rest/")
        .and_then(|r| r.strip_suffix("/openapi.json"))
        .filter(|u| is_uuid_segment(u))
    {
        return Some(Wanted::Document(Some(uuid)));
    }
    let rest = path.strip_prefix("/docs")?;
    match rest.trim_matches('/') {
        "" => Some(Wanted::Page(None)),
        "swagger-ui-bundle.js" => Some(Wanted::Asset(
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
        )),
        "swagger-ui.css" => Some(Wanted::Asset(
            "text/css; charset=utf-8",
            include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
        )),
        uuid if is_uuid_segment(uuid) => Some(Wanted::Page(Some(uuid))),
        _ => None,
    }
}

/// Answers what [`wanted`] found. The document goes through the caller's tenancy (and, by
/// the caller, its token); the page and its files are the same static bytes for everyone.
pub async fn serve(
    app: &App,
    path: &str,
    verb: Verb,
    wanted: Wanted<'_>,
) -> Result<Routed, Failed> {
    match verb {
        Verb::Call(Method::Get) | Verb::Head => {}
        Verb::Options => return Ok((response::options(ALLOW), None)),
        Verb::Call(m) => {
            let err = ApiError::MethodNotAllowed {
                path: path.to_string(),
                method: m.as_str().to_string(),
                allow: ALLOW,
            };
            return Err((err, None));
        }
    }
    match wanted {
        Wanted::Document(uuid) => document(app, path, uuid).await,
        // Under MULTI_TENANT every view is someone's: without a uuid, ask for one.
        Wanted::Page(None) if app.tenancy.is_some() => Ok((choose_tenant(), Some("docs".into()))),
        Wanted::Page(uuid) => Ok((page(uuid), Some("docs".into()))),
        Wanted::Asset(content_type, bytes) => {
            let mut resp = bytes_response(content_type, Bytes::from_static(bytes));
            resp.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            Ok((resp, Some("docs".into())))
        }
    }
}

async fn document(app: &App, path: &str, uuid: Option<&str>) -> Result<Routed, Failed> {
    let who = resolve(app, path, uuid).await?;
    let base = match uuid {
        Some(u) => format!("/rest/services/{u}"),
        None => "/rest/services".to_string(),
    };
    let resp = match &who {
        Who::Tenant(_, view) => {
            let title = format!("dpms — tenant {}", uuid.unwrap_or_default());
            render(tenant_table(app, view).await.as_ref(), app, &base, &title)
        }
        // The admin (or, under MULTI_TENANT, the admin's uuid): its own modules.
        Who::Admin => render(
            &current_files(&app.registry).await.table,
            app,
            &base,
            "dpms",
        ),
    };
    Ok((resp, Some("openapi".into())))
}

fn render(
    table: &crate::router::RouteTable,
    app: &App,
    base: &str,
    title: &str,
) -> Response<RespBody> {
    let doc = openapi::document(
        table,
        &openapi::Options {
            base,
            url_parm_names: &app.config.url_parm_names,
            tokens_required: app.gate.as_deref().is_some_and(|g| g.required()),
            title,
        },
    );
    response::json_value(StatusCode::OK, &doc)
}

fn bytes_response(content_type: &'static str, body: Bytes) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `/docs` under MULTI_TENANT: every document is a caller's, so the page asks whose (the
/// tenant's uuid, or ADMIN_ID for the admin's modules) and opens `/docs/<uuid>/`.
fn choose_tenant() -> Response<RespBody> {
    let html = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>dpms — API</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>dpms</h1>
<p>This server serves many tenants: each sees its own API. Whose do you want to see?</p>
<form id="who">
<label>uuid <input id="uuid" size="40" placeholder="00000000-0000-0000-0000-000000000000"
  pattern="[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}" required></label>
<button type="submit">Open</button>
</form>
<script>
document.getElementById("who").addEventListener("submit", (e) => {
  e.preventDefault();
  location.href = "/docs/" + document.getElementById("uuid").value.trim() + "/";
});
</script>
</body>
</html>
"#;
    bytes_response(
        "text/html; charset=utf-8",
        Bytes::from_static(html.as_bytes()),
    )
}

/// The page: Swagger UI over the caller's document, with its try-it form on.
fn page(uuid: Option<&str>) -> Response<RespBody> {
    let spec = match uuid {
        Some(u) => format!("/rest/{u}/openapi.json"),
        None => "/rest/openapi.json".to_string(),
    };
    let html = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dpms — API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{spec}",
  dom_id: "#ui",
  deepLinking: true,
  tryItOutEnabled: true,
  validatorUrl: null,
  displayRequestDuration: true,
}});
</script>
</body>
</html>
"##
    );
    bytes_response("text/html; charset=utf-8", Bytes::from(html))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let u = "12345678-1234-5678-1234-567812345678";
        assert!(matches!(
            wanted("/rest/openapi.json"),
            Some(Wanted::Document(None))
        ));
        assert!(
            matches!(wanted(&format!("/rest/{u}/openapi.json")), Some(Wanted::Document(Some(x))) if x == u)
        );
        assert!(wanted("/rest/x/openapi.json").is_none());
        assert!(wanted("/rest/services/openapi.json").is_none());
        assert!(matches!(wanted("/docs"), Some(Wanted::Page(None))));
        assert!(matches!(wanted("/docs/"), Some(Wanted::Page(None))));
        assert!(matches!(
            wanted(&format!("/docs/{u}/")),
            Some(Wanted::Page(Some(_)))
        ));
        assert!(matches!(
            wanted("/docs/swagger-ui.css"),
            Some(Wanted::Asset(..))
        ));
        assert!(wanted("/docs/other").is_none());
        assert!(wanted("/docsx").is_none());
    }
}
