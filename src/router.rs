//! The route table: an immutable snapshot of every loaded module and its endpoints, built once per
//! (re)load in plain Rust data and replaced whole. Resolving a request against it never touches
//! Python. Also renders `__dir__` (SPEC §3) from the same data.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::exec::{CodeRef, Schedule};
use crate::marshal::Signature;
use crate::plugins::FileState;

/// An HTTP method a plugin function can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Patch,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
        }
    }

    /// Parses an upper-case method name.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Method`]s, parsed from a decorator's `"GET|POST"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodSet(u8);

impl MethodSet {
    /// The set of just `m`.
    pub fn only(m: Method) -> MethodSet {
        MethodSet(m.bit())
    }

    pub fn insert(&mut self, m: Method) {
        self.0 |= m.bit();
    }

    pub fn contains(self, m: Method) -> bool {
        self.0 & m.bit() != 0
    }

    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub fn intersection(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }

    /// Parses the method names a plugin declared: each entry may hold `|`-separated names;
    /// names are trimmed and upper-cased. HEAD and OPTIONS are accepted and ignored (the server
    /// answers them itself).
    pub fn parse(names: &[String]) -> Result<MethodSet, String> {
        let mut set = MethodSet::default();
        for entry in names {
            for name in entry.split('|') {
                let name = name.trim().to_ascii_uppercase();
                if name == "HEAD" || name == "OPTIONS" {
                    continue;
                }
                match Method::parse(&name) {
                    Some(m) => set.insert(m),
                    None => {
                        return Err(format!(
                            "unknown method `{name}` (allowed: GET, POST, PUT, DELETE, PATCH)"
                        ))
                    }
                }
            }
        }
        if set.is_empty() {
            return Err("no method given".into());
        }
        Ok(set)
    }
}

/// The `Allow` header value: the declared methods plus what the server answers itself.
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = Vec::with_capacity(7);
        for m in self.iter() {
            names.push(m.as_str());
            if m == Method::Get {
                names.push("HEAD");
            }
        }
        names.push("OPTIONS");
        f.write_str(&names.join(", "))
    }
}

/// Who may call an endpoint (SPEC §12): `auth="public"` or `auth="token"` in the decorator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// No `auth=`: a token when `DPMS_REQUIRE_TOKENS` says so.
    #[default]
    Default,
    /// Anyone, also when tokens are required.
    Public,
    /// A valid token, also when tokens are not required.
    Token,
}

impl Auth {
    /// The decorator's `auth=` value (`None`: not given).
    pub fn parse(value: Option<&Value>) -> Result<Auth, String> {
        match value {
            None => Ok(Auth::Default),
            Some(Value::String(s)) if s == "public" => Ok(Auth::Public),
            Some(Value::String(s)) if s == "token" => Ok(Auth::Token),
            Some(other) => Err(format!("auth must be \"public\" or \"token\", not {other}")),
        }
    }

    /// As `__dir__` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Default => "default",
            Auth::Public => "public",
            Auth::Token => "token",
        }
    }
}

/// One routable function of a module.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The public name in URLs.
    pub api: String,
    /// The Python function's own name.
    pub func: String,
    pub methods: MethodSet,
    /// First line of the docstring.
    pub doc: String,
    /// The whole docstring, cleaned (`inspect.getdoc`).
    pub description: String,
    /// `str(inspect.signature(func))`.
    pub signature: String,
    pub params: Signature,
    /// Extra decorator keywords, shown in `__dir__`.
    pub meta: Value,
    /// `auth=` in the decorator (SPEC §12).
    pub auth: Auth,
    /// `{"status":"OK","response":{"<module>.<func>":` — the success envelope up to the result.
    pub envelope_prefix: Bytes,
    /// `<module>.<func>`, as the access log names the endpoint.
    pub label: Arc<str>,
    /// Index of the function object in the module's loaded code ([`CodeRef`]).
    pub index: usize,
    /// Where calls run (inline or on the pool), learnt from call times.
    pub schedule: Arc<Schedule>,
}

/// A module as the route table sees it.
#[derive(Debug)]
pub struct Module {
    /// The file stem.
    pub name: String,
    pub path: PathBuf,
    pub alias: Option<String>,
    pub owner: Option<String>,
    /// Public callables defined in the module, exposed or not.
    pub public: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// Per-function problems (bad `method` or `API` values).
    pub errors: Vec<String>,
    /// Set when the current file does not import; the endpoints are those of the last version
    /// that did, and answer 500 `plugin_import_error` until the file is fixed.
    pub import_error: Option<String>,
    /// The loaded code, opened only by the executor that made it; `None` when the current
    /// file does not import.
    pub code: Option<CodeRef>,
    /// The file as loaded, for the freshness check.
    pub file: Arc<FileState>,
    /// Other plugin modules it imported: a change to one re-imports this one.
    pub deps: Vec<String>,
    /// Function name → the line its definition starts on (where `dpms check` points).
    pub lines: std::collections::HashMap<String, u32>,
}

/// A file that is not (or no longer) served, for `__dir__`.
#[derive(Debug, Clone)]
pub struct FileProblem {
    /// The key under `imports`: `<file>.py`, or the full path for a shadowed file.
    pub key: String,
    pub status: &'static str,
    pub error: String,
    /// Where in the file, when known (an import error's line).
    pub line: Option<u32>,
}

/// Where a request goes, before its method is checked.
#[derive(Debug)]
pub enum Located {
    /// `__dir__`, for everything or for one module (by index).
    Dir(Option<usize>),
    /// A call to `api`, optionally qualified by a module; URL parameters start at `params_at`.
    Api {
        api: String,
        module: Option<usize>,
        /// The module segment as written (`v1`), for the `module` kwarg.
        module_segment: Option<String>,
        params_at: usize,
    },
}

/// One (method, API) a caller can call.
pub struct Operation<'a> {
    pub module: &'a Module,
    pub endpoint: &'a Endpoint,
    pub method: Method,
    /// Another module has the API for this method too: it is called as `<module>/<api>`.
    pub qualified: bool,
}

/// The chosen endpoint.
pub struct Selected {
    pub module: Arc<Module>,
    pub endpoint: usize,
}

impl Selected {
    pub fn endpoint(&self) -> &Endpoint {
        &self.module.endpoints[self.endpoint]
    }
}

/// An immutable snapshot of all routes.
#[derive(Default)]
pub struct RouteTable {
    /// Modules in load order (plugin folder order, then file name).
    modules: Vec<Arc<Module>>,
    /// File stem or alias → module index.
    by_name: HashMap<String, usize>,
    /// API name → (module index, endpoint index), in module order.
    by_api: HashMap<String, Vec<(usize, usize)>>,
    problems: Vec<FileProblem>,
    /// Files are named relative to their plugin folder (a tenant's view: no absolute paths).
    relative_files: bool,
}

impl RouteTable {
    /// Builds the table. Alias clashes are reported as problems of the later module.
    pub fn build(modules: Vec<Arc<Module>>, mut problems: Vec<FileProblem>) -> RouteTable {
        let mut by_name = HashMap::new();
        for (i, m) in modules.iter().enumerate() {
            by_name.insert(m.name.clone(), i);
        }
        for (i, m) in modules.iter().enumerate() {
            if let Some(alias) = &m.alias {
                if let Some(&other) = by_name.get(alias) {
                    if other != i {
                        problems.push(FileProblem {
                            line: None,
                            key: format!("{}.py", m.name),
                            status: "warning",
                            error: format!(
                                "alias `{alias}` is ignored: it already names module `{}`",
                                modules[other].name
                            ),
                        });
                    }
                    continue;
                }
                by_name.insert(alias.clone(), i);
            }
        }
        let mut by_api: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, m) in modules.iter().enumerate() {
            for (j, e) in m.endpoints.iter().enumerate() {
                by_api.entry(e.api.clone()).or_default().push((i, j));
            }
        }
        RouteTable {
            modules,
            by_name,
            by_api,
            problems,
            relative_files: false,
        }
    }

    /// A tenant's view (SPEC §7): its own modules first, then the admin's. A tenant's module
    /// shadows an admin module of the same name or alias, and a tenant's API shadows the
    /// admin's APIs of the same name; within one owner §3's rules hold. Only the tenant's own
    /// problems are listed (never the admin's files).
    pub fn layered(own: &RouteTable, admin: &RouteTable) -> RouteTable {
        let names: std::collections::HashSet<&str> = own
            .modules
            .iter()
            .flat_map(|m| std::iter::once(m.name.as_str()).chain(m.alias.as_deref()))
            .collect();
        let mut modules: Vec<Arc<Module>> = own.modules.clone();
        let first_admin = modules.len();
        modules.extend(
            admin
                .modules
                .iter()
                .filter(|m| {
                    !names.contains(m.name.as_str())
                        && m.alias.as_deref().is_none_or(|a| !names.contains(a))
                })
                .cloned(),
        );
        let problems = own
            .problems
            .iter()
            .map(|p| {
                let key = file_name(std::path::Path::new(&p.key));
                // Its message names the other file by its path: say it without the path.
                let error = if p.status == "shadowed" {
                    format!("`{key}` is shadowed by a file of the same name in an earlier plugin folder (the first folder wins)")
                } else {
                    p.error.clone()
                };
                FileProblem {
                    line: None,
                    key,
                    status: p.status,
                    error,
                }
            })
            .collect();
        let mut table = RouteTable::build(modules, problems);
        table.relative_files = true;
        for entries in table.by_api.values_mut() {
            if entries.iter().any(|&(mi, _)| mi < first_admin) {
                entries.retain(|&(mi, _)| mi < first_admin);
            }
        }
        table
    }

    pub fn modules(&self) -> &[Arc<Module>] {
        &self.modules
    }

    pub fn problems(&self) -> &[FileProblem] {
        &self.problems
    }

    /// The problem recorded under `key` (`<file>.py`), if any.
    pub fn problem(&self, key: &str) -> Option<&FileProblem> {
        self.problems.iter().find(|p| p.key == key)
    }

    pub fn module_named(&self, name: &str) -> Option<&Arc<Module>> {
        self.by_name.get(name).map(|&i| &self.modules[i])
    }

    /// Decides what the path segments after `/rest/services/[<uuid>/]` address (SPEC §3).
    pub fn locate(&self, segs: &[String]) -> Result<Located, ApiError> {
        let Some(first) = segs.first() else {
            return Err(ApiError::NotFound {
                path: "/rest/services/".into(),
            });
        };
        if first == "__dir__" {
            if segs.len() > 1 {
                return Err(ApiError::ApiUndefined {
                    api: segs[1].clone(),
                });
            }
            return Ok(Located::Dir(None));
        }
        let module = self.by_name.get(first.as_str()).copied();
        if let (Some(mi), Some(second)) = (module, segs.get(1)) {
            if second == "__dir__" && segs.len() == 2 {
                return Ok(Located::Dir(Some(mi)));
            }
            let has_api = self.modules[mi].endpoints.iter().any(|e| &e.api == second);
            if has_api {
                return Ok(Located::Api {
                    api: second.clone(),
                    module: Some(mi),
                    module_segment: Some(first.clone()),
                    params_at: 2,
                });
            }
        }
        if self.by_api.contains_key(first.as_str()) {
            return Ok(Located::Api {
                api: first.clone(),
                module: None,
                module_segment: None,
                params_at: 1,
            });
        }
        match (module, segs.get(1)) {
            (Some(mi), Some(second)) => Err(ApiError::ApiUndefinedInModule {
                api: second.clone(),
                module: self.modules[mi].name.clone(),
            }),
            _ => Err(ApiError::ApiUndefined { api: first.clone() }),
        }
    }

    /// The endpoints `api` has, in the qualified module or in all modules.
    fn candidates<'a>(
        &'a self,
        api: &str,
        module: Option<usize>,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        self.by_api
            .get(api)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |(mi, _)| module.is_none_or(|m| m == *mi))
    }

    /// The plugin modules a call to `segs` can run code from (each candidate module and what
    /// it imported), or `None` when the path is not a call this table answers (`__dir__`, an
    /// unknown name): a request that needs nothing else can be served from this table while
    /// other modules reload.
    pub fn serving(&self, segs: &[String]) -> Option<Vec<String>> {
        let Ok(Located::Api { api, module, .. }) = self.locate(segs) else {
            return None;
        };
        let mut needs: Vec<String> = Vec::new();
        for (mi, _) in self.candidates(&api, module) {
            let m = &self.modules[mi];
            needs.push(m.name.clone());
            needs.extend(m.deps.iter().cloned());
        }
        (!needs.is_empty()).then_some(needs)
    }

    /// Every method `api` answers to (for `Allow`).
    pub fn allowed(&self, api: &str, module: Option<usize>) -> MethodSet {
        self.candidates(api, module)
            .fold(MethodSet::default(), |acc, (mi, ei)| {
                acc.union(self.modules[mi].endpoints[ei].methods)
            })
    }

    /// Picks the one endpoint for `method`: 404 if none declares it, 409 if several modules do.
    pub fn select(
        &self,
        api: &str,
        module: Option<usize>,
        method: Method,
    ) -> Result<Selected, ApiError> {
        let mut found = self
            .candidates(api, module)
            .filter(|&(mi, ei)| self.modules[mi].endpoints[ei].methods.contains(method));
        let Some((mi, ei)) = found.next() else {
            return Err(ApiError::MethodUndefined {
                api: api.to_string(),
                method: method.as_str().to_string(),
                allow: self.allowed(api, module),
            });
        };
        let rest: Vec<(usize, usize)> = found.collect();
        if !rest.is_empty() {
            let candidates = std::iter::once((mi, ei))
                .chain(rest)
                .map(|(m, _)| format!("{}/{}", self.modules[m].name, api))
                .collect();
            return Err(ApiError::Ambiguous {
                api: api.to_string(),
                method: method.as_str().to_string(),
                candidates,
            });
        }
        Ok(Selected {
            module: Arc::clone(&self.modules[mi]),
            endpoint: ei,
        })
    }

    /// Whether a call to `api` can reach endpoint `endpoint` of module `module`.
    /// Every (method, API) this table routes, module by module: what `__dir__` lists and the
    /// API description describes.
    pub fn operations(&self) -> impl Iterator<Item = Operation<'_>> + '_ {
        (0..self.modules.len()).flat_map(move |i| self.operations_in(i))
    }

    fn operations_in(&self, i: usize) -> impl Iterator<Item = Operation<'_>> + '_ {
        let module = &self.modules[i];
        module
            .endpoints
            .iter()
            .enumerate()
            // In a tenant's view a shadowed admin API is not routed: not listed either.
            .filter(move |(j, e)| self.routes(&e.api, i, *j))
            .flat_map(move |(_, endpoint)| {
                endpoint.methods.iter().map(move |method| {
                    let qualified = self
                        .candidates(&endpoint.api, None)
                        .filter(|&(mi, ei)| self.modules[mi].endpoints[ei].methods.contains(method))
                        .count()
                        > 1;
                    Operation {
                        module,
                        endpoint,
                        method,
                        qualified,
                    }
                })
            })
    }

    fn routes(&self, api: &str, module: usize, endpoint: usize) -> bool {
        self.by_api
            .get(api)
            .is_some_and(|entries| entries.contains(&(module, endpoint)))
    }

    fn file_label(&self, path: &std::path::Path) -> String {
        if self.relative_files {
            file_name(path)
        } else {
            path.display().to_string()
        }
    }

    /// The `__dir__` body, for every module or for one.
    pub fn dir(&self, only: Option<usize>) -> Value {
        let chosen: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.modules.len()).collect(),
        };
        let mut modules = Map::new();
        let mut imports = Map::new();
        let mut aliases = Map::new();
        let mut endpoints: Map<String, Value> = Map::new();
        for &i in &chosen {
            let m = &self.modules[i];
            modules.insert(m.name.clone(), json!(m.public));
            match &m.import_error {
                None => {
                    let mut entry = Map::new();
                    entry.insert("status".into(), json!("OK"));
                    let funcs: Vec<&str> = m.endpoints.iter().map(|e| e.func.as_str()).collect();
                    entry.insert("funcs".into(), json!(funcs));
                    entry.insert("alias".into(), json!(m.alias.clone().unwrap_or_default()));
                    entry.insert("file".into(), json!(self.file_label(&m.path)));
                    if !m.errors.is_empty() {
                        entry.insert("errors".into(), json!(m.errors));
                    }
                    imports.insert(m.name.clone(), Value::Object(entry));
                }
                Some(err) => {
                    imports.insert(
                        format!("{}.py", m.name),
                        json!({"status": "error", "error": err, "file": self.file_label(&m.path)}),
                    );
                }
            }
            if let Some(alias) = &m.alias {
                if self.by_name.get(alias) == Some(&i) {
                    aliases.insert(alias.clone(), json!(m.name));
                }
            }
            for op in self.operations_in(i) {
                let (e, method) = (op.endpoint, op.method);
                let key = if op.qualified {
                    format!("{}/{}", m.name, e.api)
                } else {
                    e.api.clone()
                };
                let per_method = endpoints
                    .entry(method.as_str())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = per_method {
                    let mut info = json!({
                        "func": e.func,
                        "module": m.name,
                        "alias": m.alias,
                        "doc": e.doc,
                        "signature": e.signature,
                        "schedule": e.schedule.describe(),
                        "auth": e.auth.as_str(),
                    });
                    if let (Value::Object(info), Value::Object(meta)) = (&mut info, &e.meta) {
                        if !meta.is_empty() {
                            info.insert("meta".into(), Value::Object(meta.clone()));
                        }
                    }
                    map.insert(key, info);
                }
            }
        }
        if only.is_none() {
            for p in &self.problems {
                imports.insert(p.key.clone(), json!({"status": p.status, "error": p.error}));
            }
        }
        json!({
            "status": "OK",
            "has_plugins": !self.modules.is_empty(),
            "modules": modules,
            "endpoints": endpoints,
            "imports": imports,
            "aliases": aliases,
        })
    }
}

/// A file named relative to its plugin folder (plugin folders are scanned without recursion).
fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Whether a path segment is a hyphenated 8-4-4-4-12 UUID (the caller's identity, SPEC §3).
pub fn is_uuid_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, dir: &str, apis: &[&str]) -> Arc<Module> {
        let endpoints = apis
            .iter()
            .enumerate()
            .map(|(i, api)| Endpoint {
                api: api.to_string(),
                func: format!("{name}_{i}"),
                methods: MethodSet::only(Method::Get),
                doc: String::new(),
                description: String::new(),
                signature: "()".into(),
                params: crate::marshal::Signature::default(),
                meta: Value::Null,
                auth: Auth::Default,
                envelope_prefix: bytes::Bytes::new(),
                label: format!("{name}.{api}").into(),
                index: i,
                schedule: Arc::new(crate::exec::Schedule::new(false)),
            })
            .collect();
        Arc::new(Module {
            name: name.into(),
            path: std::path::PathBuf::from(format!("/srv/{dir}/{name}.py")),
            alias: None,
            owner: None,
            public: Vec::new(),
            endpoints,
            errors: Vec::new(),
            import_error: None,
            code: None,
            file: Arc::new(crate::plugins::FileState::in_memory(Arc::new(Vec::new()))),
            deps: Vec::new(),
            lines: Default::default(),
        })
    }

    fn segs(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_tenants_names_shadow_the_admins_for_it_only() {
        let admin = RouteTable::build(
            vec![
                module("orders", "admin", &["list"]),
                module("util", "admin", &["list", "ping"]),
            ],
            Vec::new(),
        );
        let own = RouteTable::build(vec![module("orders", "tenant", &["list"])], Vec::new());
        let view = RouteTable::layered(&own, &admin);
        // The admin's `orders` is shadowed by name, the admin's `list` API by name.
        let names: Vec<&str> = view.modules().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["orders", "util"]);
        let Ok(Located::Api { api, module, .. }) = view.locate(&segs(&["list"])) else {
            panic!("list is routed");
        };
        let picked = view
            .select(&api, module, Method::Get)
            .map(|s| s.module.path.clone());
        assert_eq!(picked.ok(), Some("/srv/tenant/orders.py".into()));
        // What the tenant does not define still reaches the admin's.
        assert!(view.select("ping", None, Method::Get).is_ok());
        // The admin's own table still has its 409 for `list`.
        assert!(matches!(
            admin.select("list", None, Method::Get),
            Err(ApiError::Ambiguous { .. })
        ));
        // __dir__ lists only what the tenant's calls reach, and no absolute path.
        let dir = view.dir(None);
        let get = &dir["endpoints"]["GET"];
        assert_eq!(get["list"]["func"], "orders_0", "{dir}");
        assert_eq!(get["ping"]["func"], "util_1", "{dir}");
        assert!(
            get.get("util/list").is_none(),
            "a shadowed admin API is listed: {dir}"
        );
        assert!(!dir.to_string().contains("/srv/"), "{dir}");
    }

    #[test]
    fn method_sets_parse_like_the_decorator_promises() {
        let ok =
            |v: &[&str]| MethodSet::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&["GET|POST"]).map(|s| s.to_string()),
            Ok("GET, HEAD, POST, OPTIONS".into())
        );
        assert_eq!(
            ok(&[" get ", "put"]).map(|s| s.to_string()),
            Ok("GET, HEAD, PUT, OPTIONS".into())
        );
        assert!(ok(&["FETCH"]).is_err());
        assert!(ok(&[""]).is_err());
    }

    #[test]
    fn uuid_segments() {
        assert!(is_uuid_segment("4a1bf01e-0693-48c5-a52b-fc275205c1d8"));
        assert!(!is_uuid_segment("4a1bf01e0693-48c5-a52b-fc275205c1d8x"));
        assert!(!is_uuid_segment("hello-world"));
    }
}
