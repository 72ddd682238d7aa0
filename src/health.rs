//! `GET /healthz` and `GET /readyz` (SPEC §13): whether this process answers at all, and
//! whether it is ready to serve — its plugins loaded, the tenant registry readable and, under
//! `MULTI_TENANT`, every sandbox layer present (SPEC §11.9: fail closed, and say so here).
//!
//! The facts are gathered by the service; this module only judges them, so the rules have
//! unit tests. Neither answer names a module, a tenant or a path: both are open to anyone.

use hyper::StatusCode;
use serde_json::{json, Value};

/// The process answers.
pub const HEALTHZ: &str = "/healthz";
/// The process is ready to serve.
pub const READYZ: &str = "/readyz";

/// What readiness is judged on.
#[derive(Debug)]
pub struct Facts {
    /// The first load of the plugin folders finished (a worker serves only after it, so this
    /// is true whenever it answers; kept so the answer says what was checked).
    pub plugins_loaded: bool,
    /// `None` without a tenant registry (no `ADMIN_ID`); the error is for the log only.
    pub registry: Option<Result<(), String>>,
    /// Whether calls depend on the registry and the sandbox (`MULTI_TENANT=True`).
    pub multi_tenant: bool,
    /// The sandbox layers this kernel lacks.
    pub layers_missing: Vec<&'static str>,
    /// `DPMS_SANDBOX=relaxed`: tenant code runs without them.
    pub relaxed: bool,
}

/// `/healthz`: always 200 while the process can answer.
pub fn health() -> (StatusCode, Value) {
    (StatusCode::OK, json!({"status": "OK"}))
}

/// `/readyz`: 200 with every check, or 503 naming the first that fails. Without
/// `MULTI_TENANT` neither the registry nor the sandbox decides (only the admin API needs the
/// registry, and it answers 503 on its own); both are still shown.
pub fn readiness(f: &Facts) -> (StatusCode, Value) {
    let registry_ok = f.registry.as_ref().map(Result::is_ok);
    let sandbox_ok = f.layers_missing.is_empty() || f.relaxed;
    let checks = json!({
        "plugins": {"ok": f.plugins_loaded},
        "registry": {"ok": registry_ok},
        "sandbox": {
            "ok": sandbox_ok,
            "layers_missing": f.layers_missing,
            "mode": if f.relaxed { "relaxed" } else { "strict" },
        },
    });
    let reason = if !f.plugins_loaded {
        Some("the plugin folders are not loaded yet".to_string())
    } else if f.multi_tenant && registry_ok != Some(true) {
        Some("the tenant registry is unavailable; see the server log".to_string())
    } else if f.multi_tenant && !sandbox_ok {
        Some(format!(
            "sandbox layers missing ({}): tenant code cannot run",
            f.layers_missing.join(", ")
        ))
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, json!({"status": "OK", "checks": checks})),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": format!("Not ready: {reason}."), "error": "not_ready", "checks": checks}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            plugins_loaded: true,
            registry: Some(Ok(())),
            multi_tenant: true,
            layers_missing: Vec::new(),
            relaxed: false,
        }
    }

    #[test]
    fn all_checks_pass_is_200() {
        let (status, body) = readiness(&ready());
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["sandbox"]["ok"], json!(true));
    }

    #[test]
    fn a_missing_layer_is_503_unless_relaxed() {
        let mut f = ready();
        f.layers_missing = vec!["host_uid"];
        let (status, body) = readiness(&f);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], json!("not_ready"));
        assert!(body["status"]
            .as_str()
            .is_some_and(|s| s.contains("host_uid")));
        f.relaxed = true;
        let (status, body) = readiness(&f);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["sandbox"]["mode"], json!("relaxed"));
    }

    #[test]
    fn an_unreadable_registry_is_503_only_when_calls_need_it() {
        let mut f = ready();
        f.registry = Some(Err("disk I/O error".into()));
        let (status, body) = readiness(&f);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // The detail is for the log, not for anyone who asks.
        assert!(!body.to_string().contains("disk I/O"));
        f.multi_tenant = false;
        f.layers_missing = vec!["landlock"];
        let (status, body) = readiness(&f);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["registry"]["ok"], json!(false));
    }

    #[test]
    fn no_registry_at_all_is_not_a_failure_without_tenants() {
        let mut f = ready();
        f.registry = None;
        f.multi_tenant = false;
        assert_eq!(readiness(&f).0, StatusCode::OK);
        assert_eq!(readiness(&f).1["checks"]["registry"]["ok"], Value::Null);
    }
}
