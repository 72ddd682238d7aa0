//! Turns an HTTP request into a plugin call, in plain Rust (SPEC §5): path segments, query
//! string, body, `__map__`, and binding to the function's signature. Every problem is a typed
//! 400 before any plugin runs. No Python here: the result is [`CallArgs`], which `pyhost`
//! converts on the Python thread.

use std::borrow::Cow;

use percent_encoding::percent_decode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// CPython's default limit on digits in an int parsed from text (`sys.int_info.default_max_str_digits`).
pub const MAX_INT_DIGITS: usize = 4300;

/// Splits a raw path on `/` and percent-decodes each segment as UTF-8, so `%2F` stays inside
/// one segment. One trailing empty segment (the optional trailing slash) is dropped; empty
/// segments elsewhere are kept as `""`.
pub fn split_path(raw: &str) -> Result<Vec<String>, ApiError> {
    let mut segs = raw
        .split('/')
        .map(|s| decode(s.as_bytes(), false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            ApiError::BadRequest("The path is not valid UTF-8 once percent-decoded.".into())
        })?;
    if segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    Ok(segs)
}

/// Percent-decodes one component; `plus_is_space` for `application/x-www-form-urlencoded` text.
fn decode(raw: &[u8], plus_is_space: bool) -> Result<String, std::str::Utf8Error> {
    if plus_is_space && raw.contains(&b'+') {
        let replaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        return percent_decode(&replaced)
            .decode_utf8()
            .map(|c| c.into_owned());
    }
    percent_decode(raw).decode_utf8().map(|c| c.into_owned())
}

/// Parses `a=1&b=2` (query strings and form bodies): `+` is a space, invalid UTF-8 is a 400,
/// empty pieces are skipped, a key without `=` has the value `""`.
pub fn parse_pairs(raw: &[u8], what: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for piece in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match piece.iter().position(|&b| b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &b""[..]),
        };
        let bad = |_| {
            ApiError::BadRequest(format!(
                "The {what} is not valid UTF-8 once percent-decoded."
            ))
        };
        pairs.push((decode(k, true).map_err(bad)?, decode(v, true).map_err(bad)?));
    }
    Ok(pairs)
}

/// What a request body held, after parsing.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body, an empty one, or one on GET/HEAD/OPTIONS (ignored).
    None,
    /// A JSON body (object or `[args, kwargs]` array form).
    Json(Value),
    /// `application/x-www-form-urlencoded` fields.
    Form(Vec<(String, String)>),
}

/// The parts of a body that feed the call.
#[derive(Debug, Default)]
pub struct BodyParts {
    pub args: Vec<Value>,
    /// Keys that become kwargs (lowest precedence).
    pub kwargs: Vec<(String, Value)>,
    /// `__map__`: URL parameter renames.
    pub rename: Vec<(String, String)>,
    /// `__body__`: the body without `__map__`, as sent.
    pub as_sent: Option<Value>,
}

/// Parses a body by its content type (SPEC §5): form fields for a form type (unless it is
/// JSON-looking and parses as JSON, as `curl -d` sends), JSON for anything else.
pub fn parse_body(bytes: &[u8], content_type: Option<&str>) -> Result<Body, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::None);
    }
    let is_form = content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if is_form {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if matches!(first, Some(b'{') | Some(b'[')) {
            if let Ok(v) = parse_json(bytes) {
                return Ok(Body::Json(v));
            }
        }
        return Ok(Body::Form(parse_pairs(bytes, "form body")?));
    }
    parse_json(bytes).map(Body::Json)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("The body is not valid JSON: {e}.")))?;
    check_numbers(&v)?;
    Ok(v)
}

/// Refuses integers longer than CPython will parse (a guard against quadratic-time conversion).
fn check_numbers(v: &Value) -> Result<(), ApiError> {
    match v {
        Value::Number(n) => {
            let text = n.to_string();
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            let is_int = !text.contains(['.', 'e', 'E']);
            if is_int && digits > MAX_INT_DIGITS {
                return Err(ApiError::BadRequest(format!(
                    "An integer in the body has {digits} digits; at most {MAX_INT_DIGITS} are accepted."
                )));
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_numbers),
        Value::Object(map) => map.values().try_for_each(check_numbers),
        _ => Ok(()),
    }
}

/// Splits a parsed body into positional args, kwargs, `__map__` and `__body__`.
pub fn body_parts(body: Body) -> Result<BodyParts, ApiError> {
    match body {
        Body::None => Ok(BodyParts::default()),
        Body::Form(fields) => {
            let as_sent = Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            );
            Ok(BodyParts {
                kwargs: fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
                as_sent: Some(as_sent),
                ..BodyParts::default()
            })
        }
        Body::Json(Value::Object(mut map)) => {
            let rename = take_map(&mut map)?;
            let args = match map.get("args") {
                None => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "The body's \"args\" must be a list.".into(),
                    ))
                }
            };
            let kwargs = map
                .iter()
                .filter(|(k, _)| k.as_str() != "args")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Ok(BodyParts {
                args,
                kwargs,
                rename,
                as_sent: Some(Value::Object(map)),
            })
        }
        Body::Json(Value::Array(items)) => array_form(items),
        Body::Json(_) => Err(ApiError::BadRequest(
            "The body must be a JSON object, or an array [args] or [args, kwargs].".into(),
        )),
    }
}

/// The RPC form `[args]` or `[args, kwargs]`.
fn array_form(items: Vec<Value>) -> Result<BodyParts, ApiError> {
    let shape_error = || {
        ApiError::BadRequest(
            "An array body must be [args] or [args, kwargs]: a list, then an optional object."
                .into(),
        )
    };
    let mut it = items.into_iter();
    let args = match it.next() {
        Some(Value::Array(args)) => args,
        _ => return Err(shape_error()),
    };
    let mut as_sent = vec![Value::Array(args.clone())];
    let (kwargs, rename) = match it.next() {
        None => (Vec::new(), Vec::new()),
        Some(Value::Object(mut map)) => {
            let rename = take_map(&mut map)?;
            if map.contains_key("args") {
                return Err(ApiError::BadRequest(
                    "In an [args, kwargs] body the object must not have an \"args\" key.".into(),
                ));
            }
            let kwargs = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            as_sent.push(Value::Object(map));
            (kwargs, rename)
        }
        Some(_) => return Err(shape_error()),
    };
    if it.next().is_some() {
        return Err(shape_error());
    }
    Ok(BodyParts {
        args,
        kwargs,
        rename,
        as_sent: Some(Value::Array(as_sent)),
    })
}

/// Removes and checks `__map__` (an object of strings).
fn take_map(map: &mut Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    match map.shift_remove("__map__") {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(ApiError::BadRequest(
                    "\"__map__\" must be an object whose values are strings.".into(),
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::BadRequest(
            "\"__map__\" must be an object whose values are strings.".into(),
        )),
    }
}

/// How Python's `inspect.Parameter.kind` classifies a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    PositionalOnly,
    PositionalOrKeyword,
    VarPositional,
    KeywordOnly,
    VarKeyword,
}

/// One parameter, as introspected at load time.
#[derive(Debug, Clone, Deserialize)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub has_default: bool,
}

/// A function's signature in plain data, introspected once per load.
#[derive(Debug, Clone, Default)]
pub struct Signature {
    pub params: Vec<Param>,
    pub var_positional: bool,
    pub var_keyword: bool,
}

impl Signature {
    pub fn new(params: Vec<Param>) -> Signature {
        let var_positional = params.iter().any(|p| p.kind == ParamKind::VarPositional);
        let var_keyword = params.iter().any(|p| p.kind == ParamKind::VarKeyword);
        Signature {
            params,
            var_positional,
            var_keyword,
        }
    }

    fn positional(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| {
            matches!(
                p.kind,
                ParamKind::PositionalOnly | ParamKind::PositionalOrKeyword
            )
        })
    }

    /// Whether a keyword argument `name` reaches the function.
    pub fn accepts_keyword(&self, name: &str) -> bool {
        self.var_keyword
            || self.params.iter().any(|p| {
                p.name == name
                    && matches!(
                        p.kind,
                        ParamKind::PositionalOrKeyword | ParamKind::KeywordOnly
                    )
            })
    }
}

/// A kwargs name: the server's own names (reserved keys, `URL_PARMn`) are borrowed for every
/// call, names a client sent are owned.
pub type Key = Cow<'static, str>;

/// Everything one call passes to the plugin function, bound to its signature.
#[derive(Debug, Default)]
pub struct CallArgs {
    pub args: Vec<Value>,
    pub kwargs: Vec<(Key, Value)>,
    /// Whether `__request__` is passed (always with `**kwargs`, else only if named).
    pub pass_request: bool,
}

/// Binds assembled kwargs and args to `sig` (SPEC §5): drops kwargs the function cannot take,
/// and answers 400 where Python would raise `TypeError`.
pub fn bind(
    func: &str,
    sig: &Signature,
    args: Vec<Value>,
    kwargs: Vec<(Key, Value)>,
) -> Result<CallArgs, ApiError> {
    let positional: Vec<&Param> = sig.positional().collect();
    if !sig.var_positional && args.len() > positional.len() {
        return Err(ApiError::BadArguments(format!(
            "{func}() takes {} positional argument{} but {} were given.",
            positional.len(),
            if positional.len() == 1 { "" } else { "s" },
            args.len()
        )));
    }
    let kwargs: Vec<(Key, Value)> = if sig.var_keyword {
        kwargs
    } else {
        kwargs
            .into_iter()
            .filter(|(k, _)| sig.accepts_keyword(k))
            .collect()
    };
    for p in positional.iter().take(args.len()) {
        // `__request__` is always passed by keyword when the function names it.
        let clash = p.kind == ParamKind::PositionalOrKeyword
            && (kwargs.iter().any(|(k, _)| *k == p.name) || p.name == "__request__");
        if clash {
            return Err(ApiError::BadArguments(format!(
                "{func}() got multiple values for argument `{}`: positionally and by keyword.",
                p.name
            )));
        }
    }
    let mut position = 0;
    for p in &sig.params {
        let named = |p: &Param| kwargs.iter().any(|(k, _)| *k == p.name) || p.name == "__request__";
        let given = match p.kind {
            ParamKind::PositionalOnly | ParamKind::PositionalOrKeyword => {
                position += 1;
                position <= args.len() || (p.kind == ParamKind::PositionalOrKeyword && named(p))
            }
            ParamKind::KeywordOnly => named(p),
            ParamKind::VarPositional | ParamKind::VarKeyword => true,
        };
        if !given && !p.has_default {
            return Err(ApiError::MissingArgument(format!(
                "{func}() is missing the required argument `{}`.",
                p.name
            )));
        }
    }
    let pass_request = sig.accepts_keyword("__request__");
    Ok(CallArgs {
        args,
        kwargs,
        pass_request,
    })
}

/// Keys a client can never supply through the body or the query string (SPEC §5).
pub const RESERVED: [&str; 5] = ["func", "module", "uuid", "__body__", "__request__"];

/// What one request brings to marshalling, already taken out of HTTP.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub content_type: Option<&'a str>,
    /// The raw query string, without `?`.
    pub query: &'a [u8],
    pub body: &'a [u8],
    /// The decoded URL parameters after the API name.
    pub params: &'a [String],
    /// The module segment of `/rest/services/<module>/<api>/`, if the URL named one.
    pub module: Option<&'a str>,
    pub uuid: Option<&'a str>,
}

/// The function a request was routed to, and the names URL parameters get.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub api: &'a str,
    pub func: &'a str,
    pub sig: &'a Signature,
    /// `URL_PARM1..n`: one name per allowed URL parameter.
    pub url_parm_names: &'a [&'static str],
}

/// A request marshalled into a call, plus what `__request__` shows of it.
#[derive(Debug)]
pub struct Marshalled {
    pub call: CallArgs,
    /// The parsed JSON body, when the body was JSON.
    pub json: Option<Value>,
}

/// The kwargs being assembled: insertion order, a later source replacing an earlier one's value
/// in place (SPEC §5). Sized for a typical call up front; hashed with foldhash, as the keys are
/// hashed once per request.
type KwargsMap = indexmap::IndexMap<Key, Value, foldhash::fast::RandomState>;

/// Builds the call for one request (SPEC §5): kwargs from body < query < URL parameters <
/// reserved keys, renamed by `__map__`, then bound to the signature. Every problem is a 4xx.
pub fn assemble(req: &RequestParts<'_>, target: &Target<'_>) -> Result<Marshalled, ApiError> {
    if req.params.len() > target.url_parm_names.len() {
        return Err(ApiError::TooManyUrlParams {
            api: target.api.to_string(),
            max: target.url_parm_names.len(),
            given: req.params.len(),
        });
    }
    let takes_body = !matches!(req.method, "GET" | "HEAD" | "OPTIONS");
    let parsed = if takes_body {
        parse_body(req.body, req.content_type)?
    } else {
        Body::None
    };
    let json = match &parsed {
        Body::Json(v) => Some(v.clone()),
        _ => None,
    };
    let body = body_parts(parsed)?;
    let query = parse_pairs(req.query, "query string")?;

    let mut kwargs = KwargsMap::with_capacity_and_hasher(
        body.kwargs.len() + query.len() + req.params.len() + 4,
        foldhash::fast::RandomState::default(),
    );
    let not_reserved = |k: &String| !RESERVED.contains(&k.as_str());
    for (k, v) in body.kwargs.into_iter().filter(|(k, _)| not_reserved(k)) {
        kwargs.insert(Cow::Owned(k), v);
    }
    for (k, v) in query.into_iter().filter(|(k, _)| not_reserved(k)) {
        kwargs.insert(Cow::Owned(k), Value::String(v));
    }
    for (&name, value) in target.url_parm_names.iter().zip(req.params) {
        let renamed = body.rename.iter().find(|(from, _)| from == name);
        let key = match renamed {
            // A rename onto a reserved name is dropped: the client cannot supply those.
            Some((_, to)) if RESERVED.contains(&to.as_str()) => continue,
            Some((_, to)) => Cow::Owned(to.clone()),
            None if RESERVED.contains(&name) => continue,
            None => Cow::Borrowed(name),
        };
        kwargs.insert(key, Value::String(value.clone()));
    }
    kwargs.insert(Cow::Borrowed("func"), Value::String(target.api.to_string()));
    if let Some(m) = req.module {
        kwargs.insert(Cow::Borrowed("module"), Value::String(m.to_string()));
    }
    if let Some(u) = req.uuid {
        kwargs.insert(Cow::Borrowed("uuid"), Value::String(u.to_string()));
    }
    if let Some(sent) = body.as_sent {
        kwargs.insert(Cow::Borrowed("__body__"), sent);
    }
    let call = bind(
        target.func,
        target.sig,
        body.args,
        kwargs.into_iter().collect(),
    )?;
    Ok(Marshalled { call, json })
}
