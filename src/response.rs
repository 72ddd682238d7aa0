//! Building responses: the JSON content type on everything dpms writes itself and error bodies
//! from the catalogue. (The success envelope is written around a plugin's result by the result
//! walk itself, `pyhost::worker::outcome`, from the endpoint's precomputed prefix.)

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::error::ApiError;

pub type Body = Full<Bytes>;

pub const JSON: &str = "application/json; charset=utf-8";

/// A response whose body is JSON text.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
}

pub fn json_value(status: StatusCode, body: &Value) -> Response<Body> {
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// The error's JSON body, status and headers (`Allow`, `WWW-Authenticate`, `Retry-After`).
pub fn error(err: &ApiError) -> Response<Body> {
    let mut resp = json_value(err.status(), &err.body());
    if let Some(allow) = err.allow() {
        set_header(&mut resp, ALLOW, &allow);
    }
    if let Some(challenge) = err.www_authenticate() {
        set_header(&mut resp, WWW_AUTHENTICATE, challenge);
    }
    match err {
        ApiError::Overloaded => set_header(&mut resp, RETRY_AFTER, "1"),
        ApiError::TooManyTokens { retry_after } => {
            set_header(&mut resp, RETRY_AFTER, &retry_after.to_string());
        }
        // The rest of the body may still be on its way: do not read it, close.
        ApiError::RequestTimeout { .. } => set_header(&mut resp, CONNECTION, "close"),
        _ => {}
    }
    resp
}

/// `204 No Content` with an `Allow` header, for OPTIONS.
pub fn options(allow: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    set_header(&mut resp, ALLOW, allow);
    resp
}

/// Sets a header, skipping values that are not valid header text.
pub fn set_header(resp: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Headers that frame the message on the wire: dpms sets them, a plugin's are ignored
/// (SPEC §6), so a plugin cannot desynchronise a kept-alive connection.
pub fn is_framing_header(name: &HeaderName) -> bool {
    use hyper::header::{CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TRAILER,
        TE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_headers() {
        for name in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "Keep-Alive",
            "upgrade",
            "trailer",
        ] {
            let h = HeaderName::try_from(name).map_err(|e| e.to_string());
            assert_eq!(h.map(|h| is_framing_header(&h)), Ok(true), "{name}");
        }
        let h = HeaderName::from_static("set-cookie");
        assert!(!is_framing_header(&h));
    }
}
