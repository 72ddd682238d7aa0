//! CORS (SPEC §13): `DPMS_CORS_ORIGINS`, a comma list of origins or `*`, off by default.
//!
//! A request whose `Origin` is allowed gets `Access-Control-Allow-Origin` (that origin, or `*`)
//! and `Vary: Origin` on whatever it is answered, errors included, with the headers a client
//! reads exposed. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! from an allowed origin is answered here, before routing and before any token check: browsers
//! send no credentials on a preflight. An origin not allowed gets no CORS header at all, and
//! its preflight is an ordinary `OPTIONS`.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use hyper::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::response::Body;

/// What a preflight may ask for: every method dpms routes.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// Asked-for headers allowed when the preflight names none.
const HEADERS: &str = "Authorization, Content-Type, X-Dpms-Token, X-Request-Id";
/// What a page may read of an answer besides the CORS-safelisted headers.
const EXPOSE: &str = "X-Request-Id, X-Dpms-Worker, WWW-Authenticate, Retry-After, Allow";
/// How long a browser may keep a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// `DPMS_CORS_ORIGINS` as checked at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origins {
    Any,
    /// Exact `scheme://host[:port]` origins, lower case.
    List(Vec<String>),
}

impl Origins {
    /// Parses the setting: `*`, or origins separated by commas (`https://app.example`,
    /// `http://127.0.0.1:3000`). Empty: off (`None`).
    pub fn parse(value: &str) -> Result<Option<Origins>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        if value == "*" {
            return Ok(Some(Origins::Any));
        }
        let mut list = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let origin = item.trim_end_matches('/').to_ascii_lowercase();
            let Some((scheme, host)) = origin.split_once("://") else {
                return Err(format!("`{item}` is not an origin (scheme://host[:port])"));
            };
            let bad = !matches!(scheme, "http" | "https")
                || host.is_empty()
                || host.contains(['/', '?', '#', '@', ' ', '*']);
            if bad {
                return Err(format!("`{item}` is not an origin (scheme://host[:port])"));
            }
            list.push(origin);
        }
        Ok((!list.is_empty()).then_some(Origins::List(list)))
    }

    /// The `Access-Control-Allow-Origin` value for a request with these headers, if allowed.
    pub fn allow(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        match self {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => {
                let text = origin.to_str().ok()?;
                list.iter()
                    .any(|o| o.eq_ignore_ascii_case(text))
                    .then(|| origin.clone())
            }
        }
    }
}

/// Whether this is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to an allowed preflight: 204 with what may be sent ([`decorate`] adds the
/// origin).
pub fn preflight(headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(Body::new(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    // The headers the page asked for (a browser sends a header-name list), else the usual.
    let asked = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.to_str().is_ok_and(is_name_list))
        .cloned()
        .unwrap_or(HeaderValue::from_static(HEADERS));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    resp
}

/// Adds the CORS headers of an allowed origin to an answer.
pub fn decorate(resp: &mut Response<Body>, allow_origin: HeaderValue) {
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    h.append(VARY, HeaderValue::from_static("Origin"));
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE),
    );
}

/// `Access-Control-Request-Headers`: comma-separated header names (RFC 9110 tokens).
fn is_name_list(text: &str) -> bool {
    text.split(',').map(str::trim).all(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    fn with_origin(origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static(origin));
        h
    }

    #[test]
    fn the_setting() {
        assert_eq!(Origins::parse("").unwrap(), None);
        assert_eq!(Origins::parse("  ").unwrap(), None);
        assert_eq!(Origins::parse("*").unwrap(), Some(Origins::Any));
        assert_eq!(
            Origins::parse("https://App.example/, http://127.0.0.1:3000").unwrap(),
            Some(Origins::List(vec![
                "https://app.example".into(),
                "http://127.0.0.1:3000".into()
            ]))
        );
        for bad in [
            "app.example",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://*.a",
            "*, https://a",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn which_origins_are_allowed() {
        let list = Origins::parse("https://app.example").unwrap().unwrap();
        assert_eq!(
            list.allow(&with_origin("https://APP.example")).unwrap(),
            "https://APP.example"
        );
        assert!(list.allow(&with_origin("https://evil.example")).is_none());
        assert!(list
            .allow(&with_origin("https://app.example.evil"))
            .is_none());
        assert!(list.allow(&HeaderMap::new()).is_none());
        assert_eq!(
            Origins::Any.allow(&with_origin("https://any")).unwrap(),
            "*"
        );
    }

    #[test]
    fn preflights() {
        let mut h = with_origin("https://app.example");
        assert!(!is_preflight(&Method::OPTIONS, &h));
        h.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::GET, &h));
        let r = preflight(&h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], HEADERS);
        h.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("authorization, x-custom"),
        );
        let r = preflight(&h);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, x-custom"
        );
        // Not a header-name list: the usual ones instead of an echo.
        h.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("a b, (c)"),
        );
        let r = preflight(&h);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], HEADERS);
    }
}
