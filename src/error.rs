//! The catalogue of errors a client can see (SPEC §4): each variant knows its status, its stable
//! snake_case `error` code and its sentence. [`ApiError::into_response`] renders all of them, so
//! every error body has the same shape: `status`, `error`, and only the extras named here.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use crate::router::MethodSet;

/// A value that does not convert to its parameter's annotation.
#[derive(Debug)]
pub struct TypeMismatch {
    pub parameter: String,
    /// The annotation as Python spells it.
    pub expected: String,
    /// What a caller may send, in words.
    pub hint: String,
    /// The value as sent.
    pub got: Value,
}

/// Everything that ends a request with an error status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed path, query or body.
    #[error("{0}")]
    BadRequest(String),
    /// The call does not fit the function's signature.
    #[error("{0}")]
    BadArguments(String),
    /// A value that does not convert to its parameter's annotation (SPEC §13).
    #[error("`{}` must be {} ({}); got {}.", .0.parameter, .0.hint, .0.expected, .0.got)]
    BadArgumentType(Box<TypeMismatch>),
    /// A required parameter received no value.
    #[error("{0}")]
    MissingArgument(String),
    #[error("{api} is undefined.")]
    ApiUndefined { api: String },
    /// An unknown API that a plugin file which does not import mentions: the likely cause.
    #[error("{api} is undefined.")]
    ApiUndefinedBroken {
        api: String,
        file: String,
        exception: String,
    },
    /// `<module>/<api>` where the module has no such API.
    #[error("{api} is undefined in {module}.")]
    ApiUndefinedInModule { api: String, module: String },
    #[error("{api} is undefined for {method}.")]
    MethodUndefined {
        api: String,
        method: String,
        allow: MethodSet,
    },
    #[error("{api} takes at most {max} URL parameters ({given} given).")]
    TooManyUrlParams {
        api: String,
        max: usize,
        given: usize,
    },
    #[error("{path} is not a dpms path.")]
    NotFound { path: String },
    #[error("{api} is defined in several modules for {method}; call it as one of the candidates.")]
    Ambiguous {
        api: String,
        method: String,
        candidates: Vec<String>,
    },
    #[error("The request body is larger than {max} bytes.")]
    BodyTooLarge { max: usize },
    #[error("The request body did not arrive within {secs} seconds.")]
    RequestTimeout { secs: f64 },
    #[error("Too many calls are waiting; retry in a moment.")]
    Overloaded,
    #[error("The request target is longer than {max} bytes.")]
    UriTooLong { max: usize },
    #[error("The request headers are larger than {max} bytes.")]
    HeadersTooLarge { max: usize },
    #[error("{api} raised {exception}")]
    Plugin {
        api: String,
        exception: String,
        traceback: Option<String>,
    },
    #[error("{api} cannot be called: its module does not import ({exception})")]
    PluginImport { api: String, exception: String },
    #[error("{api} returned a result that cannot be converted to JSON: {reason}")]
    Unserializable { api: String, reason: String },
    /// A fault of dpms itself; the detail goes to the log only.
    #[error("internal error")]
    Internal(String),
    #[error("{method} is not implemented.")]
    MethodNotImplemented { method: String },
    #[error("{api} did not finish within {secs} seconds.")]
    Timeout { api: String, secs: f64 },
    /// The tenant process running the call died (SPEC §11.7).
    #[error("The process running {api} stopped before it answered.")]
    WorkerLost { api: String },
    /// Tenant code cannot run: a sandbox layer is missing or the process could not start.
    #[error("{0}")]
    SandboxUnavailable(String),
    /// The admin API without the admin's bearer token (`WWW-Authenticate` goes with it).
    #[error("The admin API needs `Authorization: Bearer <ADMIN_ID>`.")]
    Unauthorized,
    /// Missing or invalid single-use token; the reason is logged, never sent (SPEC §12).
    #[error("This call needs a valid single-use token: `Authorization: Bearer <jwt>`.")]
    InvalidToken,
    #[error("Too many live tokens; retry in {retry_after} seconds.")]
    TooManyTokens { retry_after: u64 },
    /// An admin API path that exists, with a method it does not have (`Allow`: `allow`). The
    /// plugin APIs answer 404 here instead (SPEC §4, compat); the admin API has no such past.
    #[error("{path} does not take {method}.")]
    MethodNotAllowed {
        path: String,
        method: String,
        allow: &'static str,
    },
    /// Admin API: no tenant with this uuid.
    #[error("Tenant `{uuid}` does not exist.")]
    NoSuchTenant { uuid: String },
    /// Admin API: the tenant, or its secret of this name, does not exist.
    #[error("Tenant `{uuid}` has no secret `{name}`.")]
    NoSuchSecret { uuid: String, name: String },
    /// Admin API: the uuid or userid is taken, or the uuid is the admin's; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The tenant registry cannot be read or written: fail closed. The detail goes to the log
    /// only.
    #[error("The tenant registry is unavailable; see the server log.")]
    RegistryUnavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::BadArguments(_)
            | ApiError::MissingArgument(_)
            | ApiError::BadArgumentType(_) => StatusCode::BAD_REQUEST,
            ApiError::ApiUndefined { .. }
            | ApiError::ApiUndefinedBroken { .. }
            | ApiError::ApiUndefinedInModule { .. }
            | ApiError::MethodUndefined { .. }
            | ApiError::TooManyUrlParams { .. }
            | ApiError::NotFound { .. }
            | ApiError::NoSuchTenant { .. }
            | ApiError::NoSuchSecret { .. } => StatusCode::NOT_FOUND,
            ApiError::Ambiguous { .. } | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::TooManyTokens { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::RegistryUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Plugin { .. }
            | ApiError::PluginImport { .. }
            | ApiError::Unserializable { .. }
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::WorkerLost { .. } => StatusCode::BAD_GATEWAY,
            ApiError::SandboxUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `error` code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadArguments(_) => "bad_arguments",
            ApiError::MissingArgument(_) => "missing_argument",
            ApiError::BadArgumentType(_) => "bad_argument_type",
            ApiError::ApiUndefined { .. }
            | ApiError::ApiUndefinedBroken { .. }
            | ApiError::ApiUndefinedInModule { .. } => "api_undefined",
            ApiError::MethodUndefined { .. } => "method_undefined",
            ApiError::TooManyUrlParams { .. } => "too_many_url_params",
            ApiError::NotFound { .. }
            | ApiError::NoSuchTenant { .. }
            | ApiError::NoSuchSecret { .. } => "not_found",
            ApiError::Ambiguous { .. } => "ambiguous_api",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::UriTooLong { .. } => "uri_too_long",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::Plugin { .. } => "plugin_error",
            ApiError::PluginImport { .. } => "plugin_import_error",
            ApiError::Unserializable { .. } => "unserializable_result",
            ApiError::Internal(_) => "internal",
            ApiError::MethodNotImplemented { .. } => "method_not_implemented",
            ApiError::Timeout { .. } => "timeout",
            ApiError::WorkerLost { .. } => "worker_lost",
            ApiError::SandboxUnavailable(_) => "sandbox_unavailable",
            ApiError::Unauthorized | ApiError::InvalidToken => "unauthorized",
            ApiError::TooManyTokens { .. } => "too_many_tokens",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::RegistryUnavailable(_) => "registry_unavailable",
        }
    }

    /// The JSON body: `status` and `error`, plus this variant's documented extras.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        let status = match self {
            ApiError::Internal(_) => "Internal server error; see the server log.".to_string(),
            other => other.to_string(),
        };
        body.insert("status".into(), Value::String(status));
        body.insert("error".into(), Value::String(self.code().into()));
        match self {
            ApiError::Ambiguous { candidates, .. } => {
                body.insert("candidates".into(), json!(candidates));
            }
            ApiError::Plugin {
                exception,
                traceback,
                ..
            } => {
                body.insert("exception".into(), Value::String(exception.clone()));
                if let Some(tb) = traceback {
                    body.insert("traceback".into(), Value::String(tb.clone()));
                }
            }
            ApiError::BadArgumentType(m) => {
                body.insert("parameter".into(), Value::String(m.parameter.clone()));
                body.insert("expected".into(), Value::String(m.expected.clone()));
                body.insert("got".into(), m.got.clone());
            }
            ApiError::PluginImport { exception, .. } => {
                body.insert("exception".into(), Value::String(exception.clone()));
            }
            ApiError::ApiUndefinedBroken {
                api,
                file,
                exception,
            } => {
                let hint = format!(
                    "`{file}` mentions `{api}` but is not served ({exception}); see __dir__"
                );
                body.insert("hint".into(), Value::String(hint));
            }
            _ => {}
        }
        Value::Object(body)
    }

    /// Extra headers this error carries (`Allow` on a method mismatch).
    pub fn allow(&self) -> Option<String> {
        match self {
            ApiError::MethodUndefined { allow, .. } => Some(allow.to_string()),
            ApiError::MethodNotAllowed { allow, .. } => Some((*allow).to_string()),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge this error carries (RFC 6750 §3).
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            ApiError::Unauthorized => Some(r#"Bearer realm="dpms""#),
            ApiError::InvalidToken => Some(r#"Bearer realm="dpms", error="invalid_token""#),
            _ => None,
        }
    }

    /// Whether this is dpms's own fault or a plugin's (logged at error level) rather than the
    /// caller's (logged at debug level at most).
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }
}
