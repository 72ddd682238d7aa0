//! Turns an HTTP request into a plugin call, in plain Rust (SPEC §5): path segments, query
//! string, body, `__map__`, and binding to the function's signature. Every problem is a typed
//! 400 before any plugin runs. No Python here: the result is [`CallArgs`], which `pyhost`
//! converts on the Python thread.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use percent_encoding::percent_decode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
pub use crate::typed::{ParamType, Typed};

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

/// A file part of a `multipart/form-data` body: a `dpms.Upload` in Python (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The part's `filename` parameter, as sent (may be empty).
    pub filename: String,
    /// The part's own `Content-Type`, if it sent one.
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// One field of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A part without a `filename`: a string, like a form field.
    Text(String),
    /// A part with a `filename`.
    File(Arc<Upload>),
}

/// A keyword argument's value: JSON (from a JSON body, or the strings of a form body, the query
/// and the URL) or what a multipart body brings.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Json(Value),
    Upload(Arc<Upload>),
    /// `__body__` of a multipart body: its fields in order, a repeated name once (last value).
    Fields(Vec<(String, Field)>),
    /// A value converted for its parameter's annotation that Python finishes (SPEC §13).
    Typed(Typed),
}

impl Arg {
    /// The value, if it is a JSON string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Arg::Json(v) => v.as_str(),
            _ => None,
        }
    }
}

impl From<Value> for Arg {
    fn from(v: Value) -> Arg {
        Arg::Json(v)
    }
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Json(v) => write!(f, "{v}"),
            Arg::Upload(u) => write!(f, "<upload {:?}, {} bytes>", u.filename, u.data.len()),
            Arg::Fields(fields) => write!(f, "<multipart body, {} fields>", fields.len()),
            Arg::Typed(t) => write!(f, "{t:?}"),
        }
    }
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
    /// `multipart/form-data` fields, in order.
    Multipart(Vec<(String, Field)>),
    /// Any other content type: not parsed; the plugin reads `__request__.body`.
    Raw,
}

/// How a body is read, by its content type (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No content type, `application/json` or `*/*+json`.
    Json,
    Form,
    Multipart,
    /// Anything else (`text/plain`, `application/octet-stream`, XML…).
    Raw,
}

/// Classifies a `Content-Type` value by its media type, case-insensitively; parameters other
/// than a multipart boundary do not matter. A missing or empty type is JSON, so clients that
/// forget the header still work.
pub fn body_kind(content_type: Option<&str>) -> BodyKind {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if essence.is_empty() {
        return BodyKind::Json;
    }
    let Some((kind, subtype)) = essence.split_once('/') else {
        return BodyKind::Raw;
    };
    let (kind, subtype) = (kind.trim().as_bytes(), subtype.trim().as_bytes());
    // `application/json`, or any `<type>/<name>+json` (`application/problem+json`).
    let suffixed = subtype.len() > 5
        && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json")
        && !kind.is_empty();
    if suffixed
        || kind.eq_ignore_ascii_case(b"application") && subtype.eq_ignore_ascii_case(b"json")
    {
        BodyKind::Json
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if essence.eq_ignore_ascii_case("multipart/form-data") {
        BodyKind::Multipart
    } else {
        BodyKind::Raw
    }
}

/// The body after a UTF-8 byte-order mark, if it starts with one (SPEC §5).
fn skip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// The parts of a body that feed the call.
#[derive(Debug, Default)]
pub struct BodyParts {
    pub args: Vec<Value>,
    /// Keys that become kwargs (lowest precedence).
    pub kwargs: Vec<(String, Arg)>,
    /// `__map__`: URL parameter renames.
    pub rename: Vec<(String, String)>,
    /// `__body__`: the body without `__map__`, as sent.
    pub as_sent: Option<Arg>,
}

/// Parses a body by its content type (SPEC §5): form fields for a form type (unless it is
/// JSON-looking and parses as JSON, as `curl -d` sends), multipart fields for
/// `multipart/form-data`, JSON for no type or a JSON type, and nothing at all for any other
/// type (the plugin reads the bytes from `__request__.body`).
pub fn parse_body(bytes: &[u8], content_type: Option<&str>) -> Result<Body, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::None);
    }
    match body_kind(content_type) {
        BodyKind::Json => parse_json(bytes).map(Body::Json),
        BodyKind::Form => {
            let json = skip_bom(bytes);
            let first = json.iter().find(|b| !b.is_ascii_whitespace());
            if matches!(first, Some(b'{') | Some(b'[')) {
                if let Ok(v) = parse_json(json) {
                    return Ok(Body::Json(v));
                }
            }
            Ok(Body::Form(parse_pairs(bytes, "form body")?))
        }
        BodyKind::Multipart => {
            parse_multipart(bytes, content_type.unwrap_or_default()).map(Body::Multipart)
        }
        BodyKind::Raw => Ok(Body::Raw),
    }
}

/// Parses a `multipart/form-data` body with multer. The body is already whole in memory (and
/// within `DPMS_MAX_BODY`), so the stream multer reads is one ready chunk and none of its
/// futures ever waits: each is polled once, to completion.
fn parse_multipart(bytes: &[u8], content_type: &str) -> Result<Vec<(String, Field)>, ApiError> {
    let bad =
        |why: String| ApiError::BadRequest(format!("The multipart body is malformed: {why}."));
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::BadRequest(
            "A multipart/form-data body needs a `boundary` parameter in its Content-Type.".into(),
        )
    })?;
    let chunk = Bytes::copy_from_slice(bytes);
    let stream = futures_util::stream::iter([Ok::<Bytes, std::convert::Infallible>(chunk)]);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let next = poll_ready(multipart.next_field())
            .ok_or_else(|| bad("the parser waited for more input".into()))?;
        let Some(field) = next.map_err(|e| bad(e.to_string()))? else {
            break;
        };
        let name = field
            .name()
            .map(str::to_string)
            .ok_or_else(|| bad("a part has no `name` in its Content-Disposition".into()))?;
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = poll_ready(field.bytes())
            .ok_or_else(|| bad("the parser waited for more input".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let value = match filename {
            Some(filename) => Field::File(Arc::new(Upload {
                filename,
                content_type,
                data,
            })),
            None => Field::Text(String::from_utf8(data.to_vec()).map_err(|_| {
                ApiError::BadRequest(format!(
                    "The multipart field `{name}` is not valid UTF-8; send binary data as a \
                     file (a part with a filename)."
                ))
            })?),
        };
        fields.push((name, value));
    }
    Ok(fields)
}

/// Polls a future once. Used only on futures that read from an in-memory stream, which are
/// ready at once; `None` if one ever is not (a parser change), answered as a bad body.
fn poll_ready<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(skip_bom(bytes))
        .map_err(|e| ApiError::BadRequest(format!("The body is not valid JSON: {e}.")))?;
    check_numbers(&v)?;
    Ok(v)
}

/// Refuses integers longer than CPython will parse (a guard against quadratic-time conversion).
pub fn check_numbers(v: &Value) -> Result<(), ApiError> {
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
        Body::None | Body::Raw => Ok(BodyParts::default()),
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
                    .map(|(k, v)| (k, Arg::Json(Value::String(v))))
                    .collect(),
                as_sent: Some(Arg::Json(as_sent)),
                ..BodyParts::default()
            })
        }
        Body::Multipart(fields) => {
            let kwargs = fields
                .iter()
                .map(|(k, v)| {
                    let arg = match v {
                        Field::Text(s) => Arg::Json(Value::String(s.clone())),
                        Field::File(u) => Arg::Upload(Arc::clone(u)),
                    };
                    (k.clone(), arg)
                })
                .collect();
            // A repeated name appears once, with its last value, as in a form body's object.
            let mut once: indexmap::IndexMap<String, Field> = indexmap::IndexMap::new();
            once.extend(fields);
            Ok(BodyParts {
                kwargs,
                as_sent: Some(Arg::Fields(once.into_iter().collect())),
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
                .map(|(k, v)| (k.clone(), Arg::Json(v.clone())))
                .collect();
            Ok(BodyParts {
                args,
                kwargs,
                rename,
                as_sent: Some(Arg::Json(Value::Object(map))),
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
            let kwargs = map
                .iter()
                .map(|(k, v)| (k.clone(), Arg::Json(v.clone())))
                .collect();
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
        as_sent: Some(Arg::Json(Value::Array(as_sent))),
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
    /// The annotation, when it is one the server converts by (SPEC §13).
    #[serde(rename = "type", default)]
    pub ty: Option<ParamType>,
    /// The default value, when it is plain JSON (for the API description).
    #[serde(default)]
    pub default: Option<Value>,
}

/// A function's signature in plain data, introspected once per load.
#[derive(Debug, Clone, Default)]
pub struct Signature {
    pub params: Vec<Param>,
    pub var_positional: bool,
    pub var_keyword: bool,
    /// Whether any parameter a keyword can reach has a converted annotation.
    pub typed: bool,
}

impl Signature {
    pub fn new(params: Vec<Param>) -> Signature {
        let var_positional = params.iter().any(|p| p.kind == ParamKind::VarPositional);
        let var_keyword = params.iter().any(|p| p.kind == ParamKind::VarKeyword);
        let typed = params.iter().any(|p| p.ty.is_some() && p.by_keyword());
        Signature {
            params,
            var_positional,
            var_keyword,
            typed,
        }
    }

    /// The converted annotation of the parameter keyword `name` reaches.
    pub fn type_of(&self, name: &str) -> Option<&ParamType> {
        if !self.typed {
            return None;
        }
        self.params
            .iter()
            .find(|p| p.name == name && p.by_keyword())
            .and_then(|p| p.ty.as_ref())
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

impl Param {
    /// Whether a keyword argument can reach this parameter.
    pub fn by_keyword(&self) -> bool {
        matches!(
            self.kind,
            ParamKind::PositionalOrKeyword | ParamKind::KeywordOnly
        )
    }
}

/// A kwargs name: the server's own names (reserved keys, `URL_PARMn`) are borrowed for every
/// call, names a client sent are owned.
pub type Key = Cow<'static, str>;

/// Everything one call passes to the plugin function, bound to its signature.
#[derive(Debug, Default)]
pub struct CallArgs {
    pub args: Vec<Value>,
    pub kwargs: Vec<(Key, Arg)>,
    /// Whether `__request__` is passed (always with `**kwargs`, else only if named).
    pub pass_request: bool,
}

/// Binds assembled kwargs and args to `sig` (SPEC §5): drops kwargs the function cannot take,
/// and answers 400 where Python would raise `TypeError`.
pub fn bind(
    func: &str,
    sig: &Signature,
    args: Vec<Value>,
    kwargs: Vec<(Key, Arg)>,
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
    let kwargs: Vec<(Key, Arg)> = if sig.var_keyword {
        kwargs
    } else {
        kwargs
            .into_iter()
            .filter(|(k, _)| sig.accepts_keyword(k))
            .collect()
    };
    let kwargs = if sig.typed {
        kwargs
            .into_iter()
            .map(|(k, v)| match sig.type_of(&k) {
                Some(ty) => ty.convert(&k, v).map(|v| (k, v)),
                None => Ok((k, v)),
            })
            .collect::<Result<Vec<_>, ApiError>>()?
    } else {
        kwargs
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
type KwargsMap = indexmap::IndexMap<Key, Arg, foldhash::fast::RandomState>;

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
    // A repeated key is its last value, except for a `list[X]` parameter, which takes them all.
    let mut listed: Vec<String> = Vec::new();
    for (k, v) in query.into_iter().filter(|(k, _)| not_reserved(k)) {
        if target.sig.type_of(&k).is_some_and(ParamType::is_list) {
            if listed.contains(&k) {
                if let Some(Arg::Json(Value::Array(items))) = kwargs.get_mut(k.as_str()) {
                    items.push(Value::String(v));
                }
                continue;
            }
            listed.push(k.clone());
            kwargs.insert(
                Cow::Owned(k),
                Arg::Json(Value::Array(vec![Value::String(v)])),
            );
            continue;
        }
        kwargs.insert(Cow::Owned(k), Arg::Json(Value::String(v)));
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
        kwargs.insert(key, Arg::Json(Value::String(value.clone())));
    }
    let text = |s: &str| Arg::Json(Value::String(s.to_string()));
    kwargs.insert(Cow::Borrowed("func"), text(target.api));
    if let Some(m) = req.module {
        kwargs.insert(Cow::Borrowed("module"), text(m));
    }
    if let Some(u) = req.uuid {
        kwargs.insert(Cow::Borrowed("uuid"), text(u));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_kinds() {
        use BodyKind::*;
        for (ct, kind) in [
            (None, Json),
            (Some(""), Json),
            (Some(" ; charset=utf-8"), Json),
            (Some("application/json"), Json),
            (Some("Application/JSON; charset=utf-8"), Json),
            (Some("application/problem+json"), Json),
            (Some("application/vnd.api+JSON"), Json),
            (Some("application/+json"), Raw),
            (Some("/x+json"), Raw),
            (Some("application/x-www-form-urlencoded"), Form),
            (Some(" APPLICATION/X-WWW-FORM-URLENCODED ;"), Form),
            (Some("multipart/form-data; boundary=x"), Multipart),
            (Some("multipart/form-data"), Multipart),
            (Some("multipart/mixed; boundary=x"), Raw),
            (Some("text/plain"), Raw),
            (Some("text/json"), Raw),
            (Some("application/octet-stream"), Raw),
            (Some("application/xml"), Raw),
            (Some("garbage"), Raw),
            (Some("ü/ü+json"), Json),
        ] {
            assert_eq!(body_kind(ct), kind, "{ct:?}");
        }
    }

    #[test]
    fn multipart_fields_in_order() -> Result<(), ApiError> {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\nhi\r\n\
            --b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\
            Content-Type: application/octet-stream\r\n\r\n\x00\xff\r\n--b--\r\n";
        let Body::Multipart(fields) = parse_body(body, Some("multipart/form-data; boundary=b"))?
        else {
            return Err(ApiError::Internal("not multipart".into()));
        };
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0], ("t".to_string(), Field::Text("hi".into())));
        let upload = Upload {
            filename: "a.bin".into(),
            content_type: Some("application/octet-stream".into()),
            data: Bytes::from_static(b"\x00\xff"),
        };
        assert_eq!(fields[1], ("f".to_string(), Field::File(Arc::new(upload))));
        Ok(())
    }

    #[test]
    fn bad_multipart_is_400() {
        for (ct, body) in [
            ("multipart/form-data", &b"--b\r\n\r\nx\r\n--b--\r\n"[..]),
            (
                "multipart/form-data; boundary=b",
                b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1",
            ),
            ("multipart/form-data; boundary=b", b"nothing"),
        ] {
            let got = parse_body(body, Some(ct));
            assert!(
                matches!(got, Err(ApiError::BadRequest(_))),
                "{ct} {body:?}: {got:?}"
            );
        }
    }

    #[test]
    fn raw_and_bom() -> Result<(), ApiError> {
        assert!(matches!(
            parse_body(b"{\"a\": 1}", Some("text/plain"))?,
            Body::Raw
        ));
        assert!(matches!(
            parse_body(b"\xEF\xBB\xBF{\"a\": 1}", None)?,
            Body::Json(_)
        ));
        Ok(())
    }
}
