//! The token gate on the request path (SPEC §12): which token a request presents, whether it
//! is valid for the caller it claims to be, and its single use through the replay ledger.
//!
//! Every refusal is the same 401 to the client (`unauthorized`, `WWW-Authenticate: Bearer
//! realm="dpms", error="invalid_token"`); the reason goes to the log only. The keys come from
//! an exact in-memory copy of the registry, re-read (off the I/O thread) only when the
//! registry's change counter moved, so a rotation, a disabled or a removed tenant counts from
//! the next request on in every worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION};
use uuid::Uuid;

use crate::config::Config;
use crate::error::ApiError;
use crate::router::Auth;
use crate::store::{Registry, Snapshot};
use crate::tokens::jwt::{self, Target};
use crate::tokens::ledger::{Admit, FileLedger, Replay};
use crate::tokens::{secret_for, unix_now};

use super::admin::bearer_token;

/// The header for clients that cannot set `Authorization`.
pub static X_DPMS_TOKEN: HeaderName = HeaderName::from_static("x-dpms-token");

/// The gate of one worker.
pub struct Gate {
    admin: Option<Uuid>,
    required: bool,
    grace: u64,
    store: Option<Arc<Registry>>,
    latest: Mutex<Option<Arc<Snapshot>>>,
    ledger: Result<Arc<dyn Replay>, String>,
}

impl Gate {
    /// The gate for `config`, over the registry `store` (`None`: it did not open, so no token
    /// verifies: fail closed). The ledger is opened in `DPMS_DATA_DIR` next to the registry; one
    /// that cannot be refuses every token with 503, logged once here.
    pub fn new(config: &Config, store: Option<Arc<Registry>>) -> Gate {
        // Nothing is made in a data folder whose registry did not open (no token verifies then).
        let ledger = if store.is_some() {
            FileLedger::open(&config.data_dir, config.token_ledger)
                .map(|l| Arc::new(l) as Arc<dyn Replay>)
                .map_err(|e| {
                    tracing::error!(cause = %e, "replay ledger unavailable: calls that need a token answer 503");
                    e.to_string()
                })
        } else {
            Err("no tenant registry, so no keys".to_string())
        };
        Gate {
            admin: config.admin_id,
            required: config.require_tokens,
            grace: config.key_grace_secs,
            store,
            latest: Mutex::new(None),
            ledger,
        }
    }

    /// `DPMS_REQUIRE_TOKENS`.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whom a call claims to be: the uuid in its URL, else the admin.
    pub fn subject(&self, url_uuid: Option<&str>) -> Option<Uuid> {
        match url_uuid {
            Some(segment) => Uuid::try_parse(segment).ok(),
            None => self.admin,
        }
    }

    /// Checks the token `headers` present for a call by `sub` (`None`: the URL's uuid is none)
    /// to `method` `path`, and spends it. `Err` is the response to give.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        sub: Option<Uuid>,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Result<(), ApiError> {
        let refuse = |why: &dyn std::fmt::Display| {
            tracing::info!(id = request_id, reason = %why, "token refused");
            ApiError::InvalidToken
        };
        let Some(token) = presented(headers) else {
            // The common case of a public endpoint's callers: not worth a line each.
            tracing::debug!(id = request_id, "no token");
            return Err(ApiError::InvalidToken);
        };
        let Some(sub) = sub else {
            return Err(refuse(&"the URL names no valid uuid"));
        };
        let snap = self.latest().await?;
        let now = unix_now();
        let sub_text = sub.hyphenated().to_string();
        let target = Target {
            sub: &sub_text,
            method,
            path,
        };
        let key_for = |kid: &str| secret_for(&snap, kid, sub, self.admin, now, self.grace);
        let claims = jwt::verify(token, key_for, target, now).map_err(|e| refuse(&e))?;
        let ledger = self.ledger.as_ref().map_err(|why| {
            ApiError::RegistryUnavailable(format!("replay ledger unavailable: {why}"))
        })?;
        match ledger.admit(sub, &claims.jti, claims.exp, now) {
            Admit::Fresh => Ok(()),
            Admit::Replayed => Err(refuse(&"replayed")),
            Admit::Full { retry_after } => {
                tracing::warn!(
                    id = request_id,
                    "replay ledger full: token refused with 429"
                );
                Err(ApiError::TooManyTokens { retry_after })
            }
        }
    }

    /// The registry as of now: re-read only when another write happened.
    async fn latest(&self) -> Result<Arc<Snapshot>, ApiError> {
        let unavailable = |why: String| ApiError::RegistryUnavailable(why);
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| unavailable("the tenant registry did not open".into()))?;
        let generation = store.generation();
        if let Some(s) = self.lock().as_ref().filter(|s| s.generation == generation) {
            return Ok(Arc::clone(s));
        }
        let reading = Arc::clone(store);
        let snap = tokio::task::spawn_blocking(move || reading.snapshot())
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let snap = Arc::new(snap);
        *self.lock() = Some(Arc::clone(&snap));
        Ok(snap)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<Snapshot>>> {
        match self.latest.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Where one request stands with tokens: decided before routing (when tokens are required,
/// before anything looks up what exists), applied once routing found the endpoint.
pub struct Access<'a> {
    gate: Option<&'a Gate>,
    sub: Option<Uuid>,
    /// The token was checked and spent (one token serves every call of the request: a
    /// JSON-RPC batch spends it once).
    passed: AtomicBool,
    /// Why the request has no valid token, when tokens are required: only an `auth="public"`
    /// endpoint is served; every other answer is this one.
    denied: Option<ApiError>,
    /// A public endpoint was let through although `denied`.
    public_served: AtomicBool,
}

impl<'a> Access<'a> {
    /// Checks the token now if `gate` requires one for every call.
    pub async fn before_routing(
        gate: Option<&'a Gate>,
        url_uuid: Option<&str>,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Access<'a> {
        let sub = gate.and_then(|g| g.subject(url_uuid));
        let mut access = Access {
            gate,
            sub,
            passed: AtomicBool::new(false),
            denied: None,
            public_served: AtomicBool::new(false),
        };
        if let Some(g) = gate.filter(|g| g.required()) {
            match g.check(headers, sub, method, path, request_id).await {
                Ok(()) => access.passed = AtomicBool::new(true),
                Err(e) => access.denied = Some(e),
            }
        }
        access
    }

    /// Whether the call to an endpoint declared `auth` may run. `Err` only stops the call;
    /// what the client gets is [`Access::answer`]'s.
    pub async fn allow(
        &self,
        auth: Auth,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Result<(), ApiError> {
        match auth {
            Auth::Public => {
                self.public_served.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ if self.passed.load(Ordering::Relaxed) => Ok(()),
            _ if self.denied.is_some() => Err(ApiError::InvalidToken),
            Auth::Default => Ok(()),
            Auth::Token => match self.gate {
                Some(g) => {
                    g.check(headers, self.sub, method, path, request_id).await?;
                    self.passed.store(true, Ordering::Relaxed);
                    Ok(())
                }
                None => {
                    tracing::info!(id = request_id, "token refused: no ADMIN_ID, so no keys");
                    Err(ApiError::InvalidToken)
                }
            },
        }
    }

    /// The answer to give for `routed`: itself, or the refusal when tokens were required and
    /// what was served was not a public endpoint.
    pub fn answer<T, L>(self, routed: Result<T, (ApiError, L)>) -> Result<T, (ApiError, L)>
    where
        L: Default,
    {
        match self.denied {
            Some(e) if !self.public_served.load(Ordering::Relaxed) => Err((e, L::default())),
            _ => routed,
        }
    }
}

/// The token a request presents: `Authorization: Bearer <jwt>`, else `X-Dpms-Token: <jwt>`.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| {
            headers
                .get(&X_DPMS_TOKEN)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn where_a_token_is_read_from() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(&X_DPMS_TOKEN, HeaderValue::from_static(" a.b.c "));
        assert_eq!(presented(&h), Some("a.b.c"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer x.y.z"));
        assert_eq!(presented(&h), Some("x.y.z"));
        // Another scheme is no bearer token; the other header still counts.
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(presented(&h), Some("a.b.c"));
        h.remove(&X_DPMS_TOKEN);
        assert_eq!(presented(&h), None);
        h.insert(&X_DPMS_TOKEN, HeaderValue::from_static("  "));
        assert_eq!(presented(&h), None);
    }
}
