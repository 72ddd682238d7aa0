//! One fuzz input through request marshalling (SPEC §5), the way `service.rs` drives it: the
//! raw path through `split_path` and the uuid/module/api split, then `assemble` against one of
//! a handful of realistic signatures. Beyond "no panic" it checks what SPEC §5 promises.
//!
//! # Input format
//! Plain text, so seeds can be written by hand (see `fuzz/README.md` and `fuzz/seeds.py`):
//!
//! ```text
//! line 1: selectors, one byte each, each read as `(byte - b'0') % n`; missing ones are 0:
//!         [0] method      [`METHODS`]
//!         [1] content type [`CONTENT_TYPES`]
//!         [2] signature   [`signatures`]
//!         [3] URL parameter names [`url_parm_names`]
//!         [4] routing: even = `<api>/<params>…`, odd = `<module>/<api>/<params>…`
//! line 2: the raw path after `/rest/services/` (a leading `/rest/services/` is stripped too),
//!         still percent-encoded; an optional uuid segment may come first
//! line 3: the raw query string, without `?`
//! rest:   the body, byte for byte
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use dpms::marshal::{self, Param, ParamKind, RequestParts, Signature, Target, RESERVED};
use dpms::router::is_uuid_segment;

/// What `service.rs` strips before `split_path`.
const SERVICES_PREFIX: &str = "/rest/services";

/// Every method hyper can hand to `assemble` (OPTIONS never gets there in the server, but
/// `assemble` must still behave).
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Content-Type header values, real and broken (only visible ASCII: `to_str()` drops others).
pub const CONTENT_TYPES: [Option<&str>; 12] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    Some("application/x-www-form-urlencoded; charset=UTF-8"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=----x"),
    Some("APPLICATION/X-WWW-FORM-URLENCODED"),
    Some(";;application/x-www-form-urlencoded"),
    Some(""),
    Some("application/x-www-form-urlencodedx"),
    Some(" application/x-www-form-urlencoded ;"),
];

/// The signatures a request is bound to, as `inspect.signature` would describe them.
pub struct Sig {
    /// The Python spelling, for failure messages.
    pub python: &'static str,
    pub func: &'static str,
    pub sig: Signature,
}

fn p(name: &str, kind: ParamKind, has_default: bool) -> Param {
    Param {
        name: name.to_string(),
        kind,
        has_default,
        ty: None,
        default: None,
    }
}

/// Realistic endpoint signatures: the samples' `*args, **kwargs`, `**kwargs` only, defaults,
/// `/` and `*` markers, `*args` alone, one that names `__request__`, none at all, and two that
/// name reserved or URL-parameter keys.
pub fn signatures() -> &'static [Sig] {
    use ParamKind::*;
    static SIGS: OnceLock<Vec<Sig>> = OnceLock::new();
    SIGS.get_or_init(|| {
        let sig = |python, func, params| Sig {
            python,
            func,
            sig: Signature::new(params),
        };
        vec![
            sig(
                "def foo(*args, **kwargs)",
                "foo",
                vec![
                    p("args", VarPositional, false),
                    p("kwargs", VarKeyword, false),
                ],
            ),
            sig("def f(**kwargs)", "f", vec![p("kwargs", VarKeyword, false)]),
            sig(
                "def f(a, b=2, c=3)",
                "f",
                vec![
                    p("a", PositionalOrKeyword, false),
                    p("b", PositionalOrKeyword, true),
                    p("c", PositionalOrKeyword, true),
                ],
            ),
            sig(
                "def f(x, /, y=1, *, z, w=0)",
                "f",
                vec![
                    p("x", PositionalOnly, false),
                    p("y", PositionalOrKeyword, true),
                    p("z", KeywordOnly, false),
                    p("w", KeywordOnly, true),
                ],
            ),
            sig(
                "def f(first, *args)",
                "f",
                vec![
                    p("first", PositionalOrKeyword, false),
                    p("args", VarPositional, false),
                ],
            ),
            sig(
                "def f(name='world', __request__=None)",
                "f",
                vec![
                    p("name", PositionalOrKeyword, true),
                    p("__request__", PositionalOrKeyword, true),
                ],
            ),
            sig("def bar2()", "bar2", vec![]),
            sig(
                "def echo(args, kwargs, **extra)",
                "echo",
                vec![
                    p("args", PositionalOrKeyword, false),
                    p("kwargs", PositionalOrKeyword, false),
                    p("extra", VarKeyword, false),
                ],
            ),
            sig(
                "def f(parm_1, p1=None, *, func=None, module=None, uuid=None, __body__=None)",
                "f",
                vec![
                    p("parm_1", PositionalOrKeyword, false),
                    p("p1", PositionalOrKeyword, true),
                    p("func", KeywordOnly, true),
                    p("module", KeywordOnly, true),
                    p("uuid", KeywordOnly, true),
                    p("__body__", KeywordOnly, true),
                ],
            ),
        ]
    })
}

/// `Config::url_parm_names` as a deployment would have it: the default `parm_1..parm_10`, the
/// old framework's `.env` (`URL_PARMn=pn`, 10 and 100 of them), `URL_PARMn` names, 3, none.
pub fn url_parm_names() -> &'static [Vec<&'static str>] {
    static NAMES: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    NAMES.get_or_init(|| {
        // Leaked once, as `Config` does.
        let names = |n: usize, f: fn(usize) -> String| {
            (1..=n)
                .map(|i| &*Box::leak(f(i).into_boxed_str()))
                .collect::<Vec<_>>()
        };
        vec![
            names(10, |n| format!("parm_{n}")),
            names(10, |n| format!("p{n}")),
            names(10, |n| format!("URL_PARM{n}")),
            names(3, |n| format!("parm_{n}")),
            Vec::new(),
            names(100, |n| format!("p{n}")),
        ]
    })
}

fn pick<T: Copy>(table: &[T], selector: Option<&u8>) -> T {
    table[index(table.len(), selector)]
}

fn index(len: usize, selector: Option<&u8>) -> usize {
    selector.map_or(0, |b| b.wrapping_sub(b'0') as usize % len)
}

/// Splits off the first line (without its `\n`); the whole input if there is none.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// One input, decoded into what `assemble` receives.
pub struct Decoded<'a> {
    pub method: &'static str,
    pub content_type: Option<&'static str>,
    pub sig: &'static Sig,
    pub names: &'static [&'static str],
    pub query: &'a [u8],
    pub body: &'a [u8],
    /// `split_path`'s answer for the raw path.
    pub segs: Result<Vec<String>, dpms::error::ApiError>,
    pub module_qualified: bool,
}

/// Splits an input by the format above.
pub fn decode(data: &[u8]) -> Decoded<'_> {
    let (header, rest) = line(data);
    let (raw_path, rest) = line(rest);
    let (query, body) = line(rest);
    // service.rs: strip the prefix, then split and decode.
    let raw_path: Cow<'_, str> = String::from_utf8_lossy(raw_path);
    let rest_path = match raw_path.strip_prefix(SERVICES_PREFIX) {
        Some(r) => r.strip_prefix('/').unwrap_or(r),
        None => &raw_path,
    };
    Decoded {
        method: pick(&METHODS, header.first()),
        content_type: pick(&CONTENT_TYPES, header.get(1)),
        sig: &signatures()[index(signatures().len(), header.get(2))],
        names: &url_parm_names()[index(url_parm_names().len(), header.get(3))],
        query,
        body,
        segs: marshal::split_path(rest_path),
        module_qualified: header.get(4).is_some_and(|b| b % 2 == 1),
    }
}

/// Runs one input. Panics (so libFuzzer records a crash) when an invariant is broken.
pub fn run(data: &[u8]) {
    run_with(data, |_, _| {});
}

/// A person-readable account of one input and its outcome (`examples/show.rs`).
pub fn explain(data: &[u8]) -> String {
    let d = decode(data);
    let mut out = format!(
        "{} {:?} `{}` names {}..{} ({})\nsegments {:?}\nquery {:?}\nbody {:?}\n",
        d.method,
        d.content_type,
        d.sig.python,
        d.names.first().copied().unwrap_or("-"),
        d.names.last().copied().unwrap_or("-"),
        d.names.len(),
        d.segs,
        String::from_utf8_lossy(d.query),
        String::from_utf8_lossy(d.body),
    );
    run_with(data, |req, result| {
        out.push_str(&format!(
            "module {:?} uuid {:?} params {:?}\n=> {result:#?}\n",
            req.module, req.uuid, req.params
        ));
    });
    out
}

fn run_with(
    data: &[u8],
    mut seen: impl FnMut(&RequestParts<'_>, &Result<marshal::Marshalled, dpms::error::ApiError>),
) {
    let d = decode(data);
    let mut segs = match d.segs {
        Ok(segs) => segs,
        Err(e) => {
            check_error_is_client_side(&e, "split_path");
            return;
        }
    };
    // service.rs: an optional uuid segment first, then `[<module>/]<api>/<params>…`.
    let uuid = match segs.first() {
        Some(first) if is_uuid_segment(first) => Some(segs.remove(0)),
        _ => None,
    };
    let (module, api, params): (Option<&str>, &str, &[String]) = match segs.as_slice() {
        [] => return, // the `__dir__` listing: no call to marshal
        [m, api, params @ ..] if d.module_qualified => (Some(m), api, params),
        [api, params @ ..] => (None, api, params),
    };

    let req = RequestParts {
        method: d.method,
        content_type: d.content_type,
        query: d.query,
        body: d.body,
        params,
        module,
        uuid: uuid.as_deref(),
    };
    let target = Target {
        api,
        func: d.sig.func,
        sig: &d.sig.sig,
        url_parm_names: d.names,
    };
    let ctx = Ctx {
        req: &req,
        target: &target,
        python: d.sig.python,
    };
    let result = marshal::assemble(&req, &target);
    seen(&req, &result);
    match &result {
        Ok(m) => ctx.check_ok(m),
        Err(e) => check_error_is_client_side(e, "assemble"),
    }
}

/// Every marshalling failure is the caller's: a 4xx with a code and a sentence.
fn check_error_is_client_side(e: &dpms::error::ApiError, step: &str) {
    let status = e.status();
    assert!(
        status.is_client_error(),
        "{step} answered {status} ({}): {e}",
        e.code()
    );
    assert!(
        !e.code().is_empty(),
        "{step}: an error without a code: {e:?}"
    );
    assert!(
        !e.to_string().is_empty(),
        "{step}: an error without a message: {e:?}"
    );
}

struct Ctx<'a> {
    req: &'a RequestParts<'a>,
    target: &'a Target<'a>,
    python: &'static str,
}

impl Ctx<'_> {
    fn check_ok(&self, m: &marshal::Marshalled) {
        let sig = self.target.sig;
        let call = &m.call;
        let takes_body = !matches!(self.req.method, "GET" | "HEAD" | "OPTIONS");
        // A body of a type dpms does not parse (`text/plain`…) gives no `__body__` (SPEC §5).
        let parsed = marshal::body_kind(self.req.content_type) != marshal::BodyKind::Raw;
        let has_body =
            takes_body && parsed && !self.req.body.iter().all(u8::is_ascii_whitespace);
        let keys: Vec<&str> = call.kwargs.iter().map(|(k, _)| k.as_ref()).collect();
        let kwarg = |name: &str| call.kwargs.iter().find(|(k, _)| k == name).map(|(_, v)| v);

        // Python would get each keyword once (a dict), and only ones the function can take.
        let mut seen = std::collections::HashSet::new();
        for k in &keys {
            assert!(seen.insert(*k), "kwarg `{k}` passed twice: {keys:?}");
            assert!(
                sig.accepts_keyword(k),
                "kwarg `{k}` passed to `{}`, which cannot take it",
                self.python
            );
        }

        // Reserved keys: only the server's values, and only when the server sets them.
        for name in RESERVED {
            let Some(v) = kwarg(name) else { continue };
            let expected: Option<&str> = match name {
                "func" => Some(self.target.api),
                "module" => self.req.module,
                "uuid" => self.req.uuid,
                "__body__" => {
                    assert!(has_body, "`__body__` passed without a body: {v}");
                    continue;
                }
                _ => None, // `__request__` travels as `pass_request`, never as a kwarg
            };
            assert!(
                expected.is_some_and(|e| v.as_str() == Some(e)),
                "reserved kwarg `{name}` = {v} came from the client (server value: {expected:?}); \
                 URL params {:?}, query {:?}",
                self.req.params,
                String::from_utf8_lossy(self.req.query),
            );
        }
        if sig.var_keyword {
            assert!(kwarg("func").is_some(), "`func` missing for **kwargs");
            assert_eq!(
                kwarg("module").is_some(),
                self.req.module.is_some(),
                "`module`"
            );
            assert_eq!(kwarg("uuid").is_some(), self.req.uuid.is_some(), "`uuid`");
            assert_eq!(kwarg("__body__").is_some(), has_body, "`__body__`");
        }
        assert_eq!(
            call.pass_request,
            sig.accepts_keyword("__request__"),
            "pass_request for `{}`",
            self.python
        );

        // Positional args: none without a body; exactly the body's list otherwise.
        assert!(
            sig.var_positional || call.args.len() <= positional_count(sig),
            "{} positional args passed to `{}`",
            call.args.len(),
            self.python
        );
        let expected_args = match (&m.json, takes_body) {
            (Some(serde_json::Value::Object(o)), true) => o
                .get("args")
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default(),
            (Some(serde_json::Value::Array(a)), true) => a
                .first()
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        assert_eq!(
            call.args, expected_args,
            "positional args differ from the body's"
        );
        if !takes_body {
            assert!(m.json.is_none(), "{} body parsed", self.req.method);
        }

        // `__request__` parses the query again: it must parse.
        if let Err(e) = marshal::parse_pairs(self.req.query, "query string") {
            panic!("assemble accepted a query parse_pairs refuses: {e}");
        }

        self.check_precedence(m, has_body);

        // And CPython would bind it without a TypeError (SPEC §5: never a 500 from that).
        let mut names: Vec<&str> = keys.clone();
        if call.pass_request {
            names.push("__request__");
        }
        if let Err(why) = python_binds(sig, call.args.len(), &names) {
            panic!(
                "`{}` called with {} positional args and keywords {names:?}: Python raises \
                 TypeError: {why}",
                self.python,
                call.args.len()
            );
        }
    }

    /// With `**kwargs`, URL parameters (after `__map__`) beat the query, which beats the body,
    /// and the server's reserved keys beat all three.
    fn check_precedence(&self, m: &marshal::Marshalled, has_body: bool) {
        if !self.target.sig.var_keyword {
            return;
        }
        let renames = m.json.as_ref().and_then(map_of).unwrap_or_default();
        let server_sets = |k: &str| match k {
            "func" => true,
            "module" => self.req.module.is_some(),
            "uuid" => self.req.uuid.is_some(),
            "__body__" => has_body,
            _ => false,
        };
        let mut expected: HashMap<String, String> = HashMap::new();
        let query = marshal::parse_pairs(self.req.query, "query string").unwrap_or_default();
        for (k, v) in &query {
            if !RESERVED.contains(&k.as_str()) {
                expected.insert(k.clone(), v.clone());
            }
        }
        for (name, value) in self.target.url_parm_names.iter().zip(self.req.params) {
            let name = renames
                .iter()
                .find(|(from, _)| from == name)
                .map_or(*name, |(_, to)| to.as_str());
            // A rename onto a reserved name is dropped by the server.
            if RESERVED.contains(&name) {
                continue;
            }
            expected.insert(name.to_string(), value.clone());
        }
        for (k, v) in expected {
            if server_sets(&k) {
                continue;
            }
            let got = m
                .call
                .kwargs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v);
            assert!(
                got.and_then(|g| g.as_str()) == Some(v.as_str()),
                "kwarg `{k}`: expected {v:?} from the URL or query, got {got:?}"
            );
        }
    }
}

/// `__map__` of a JSON body (object form, or the object of the `[args, kwargs]` form).
fn map_of(json: &serde_json::Value) -> Option<Vec<(String, String)>> {
    let obj = match json {
        serde_json::Value::Object(o) => o,
        serde_json::Value::Array(a) => a.get(1)?.as_object()?,
        _ => return None,
    };
    let map = obj.get("__map__")?.as_object()?;
    Some(
        map.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    )
}

fn positional_count(sig: &Signature) -> usize {
    sig.params
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                ParamKind::PositionalOnly | ParamKind::PositionalOrKeyword
            )
        })
        .count()
}

/// CPython's argument binding for `f(*<nargs values>, **{names…})`, reduced to names: the
/// reason it would raise `TypeError`, if it would.
pub fn python_binds(sig: &Signature, nargs: usize, names: &[&str]) -> Result<(), String> {
    let mut filled = vec![false; sig.params.len()];
    let positional: Vec<usize> = sig
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(
                p.kind,
                ParamKind::PositionalOnly | ParamKind::PositionalOrKeyword
            )
        })
        .map(|(i, _)| i)
        .collect();
    if nargs > positional.len() && !sig.var_positional {
        return Err(format!(
            "takes {} positional arguments but {nargs} were given",
            positional.len()
        ));
    }
    for &i in positional.iter().take(nargs) {
        filled[i] = true;
    }
    for name in names {
        let slot = sig.params.iter().position(|p| {
            p.name == *name
                && matches!(
                    p.kind,
                    ParamKind::PositionalOrKeyword | ParamKind::KeywordOnly
                )
        });
        match slot {
            Some(i) if filled[i] => {
                return Err(format!("got multiple values for argument '{name}'"))
            }
            Some(i) => filled[i] = true,
            None if sig.var_keyword => {}
            None => return Err(format!("got an unexpected keyword argument '{name}'")),
        }
    }
    for (p, filled) in sig.params.iter().zip(filled) {
        let var = matches!(p.kind, ParamKind::VarPositional | ParamKind::VarKeyword);
        if !filled && !var && !p.has_default {
            return Err(format!("missing a required argument: '{}'", p.name));
        }
    }
    Ok(())
}
