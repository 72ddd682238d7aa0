//! Typed parameters (SPEC §13): a parameter's annotation as plain data, introspected at load
//! time, and the conversion of the strings a query, a form or a URL brings into the value the
//! annotation asks for — in Rust, before the call. A value that does not convert is 400
//! `bad_argument_type` naming the parameter. Values Python must build itself (`uuid.UUID`, dates,
//! Enum members) are checked and normalised here, then built by the module's converter `conv`
//! (an index into the callables `_host._describe` returned with the module).

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::error::{ApiError, TypeMismatch};
use crate::marshal::Arg;

/// An annotation the server converts by (`_host._param_type` writes these).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamType {
    Int,
    Float,
    Bool,
    Str,
    Uuid {
        conv: u32,
    },
    Date {
        conv: u32,
    },
    Datetime {
        conv: u32,
    },
    Enum {
        name: String,
        names: Vec<String>,
        /// The members' values, in the order of `names` (`str()` of those JSON cannot hold).
        values: Vec<Value>,
        conv: u32,
    },
    Literal {
        values: Vec<Value>,
    },
    Optional {
        item: Box<ParamType>,
    },
    List {
        item: Box<ParamType>,
    },
}

/// A converted value that Python finishes: `converters[conv](text)`, or a list holding some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Typed {
    Object { conv: u32, text: String },
    List(Vec<Typed>),
    Json(Value),
}

impl Typed {
    fn into_arg(self) -> Arg {
        match self {
            Typed::Json(v) => Arg::Json(v),
            other => Arg::Typed(other),
        }
    }
}

impl ParamType {
    /// The annotation as Python spells it, for `expected` in errors and for the docs.
    pub fn python(&self) -> String {
        match self {
            ParamType::Int => "int".into(),
            ParamType::Float => "float".into(),
            ParamType::Bool => "bool".into(),
            ParamType::Str => "str".into(),
            ParamType::Uuid { .. } => "uuid.UUID".into(),
            ParamType::Date { .. } => "datetime.date".into(),
            ParamType::Datetime { .. } => "datetime.datetime".into(),
            ParamType::Enum { name, .. } => name.clone(),
            ParamType::Literal { values } => {
                let shown: Vec<String> = values.iter().map(python_literal).collect();
                format!("Literal[{}]", shown.join(", "))
            }
            ParamType::Optional { item } => format!("Optional[{}]", item.python()),
            ParamType::List { item } => format!("list[{}]", item.python()),
        }
    }

    /// What a caller may send, for the error sentence.
    fn hint(&self) -> String {
        match self {
            ParamType::Int => "an integer".into(),
            ParamType::Float => "a number".into(),
            ParamType::Bool => "true or false (also 1/0, yes/no, on/off)".into(),
            ParamType::Str => "a string".into(),
            ParamType::Uuid { .. } => "a UUID".into(),
            ParamType::Date { .. } => "a date, YYYY-MM-DD".into(),
            ParamType::Datetime { .. } => "an ISO 8601 date and time".into(),
            ParamType::Enum { names, values, .. } => {
                let shown: Vec<String> = values.iter().map(text_of).collect();
                format!("one of {} (or {})", names.join(", "), shown.join(", "))
            }
            ParamType::Literal { values } => {
                let shown: Vec<String> = values.iter().map(text_of).collect();
                format!("one of {}", shown.join(", "))
            }
            ParamType::Optional { item } => format!("{}, or empty for None", item.hint()),
            ParamType::List { item } => format!("a repeated key, each {}", item.hint()),
        }
    }

    /// Whether repeated query keys gather into a list for this parameter.
    pub fn is_list(&self) -> bool {
        match self {
            ParamType::List { .. } => true,
            ParamType::Optional { item } => item.is_list(),
            _ => false,
        }
    }

    /// Converts one keyword argument bound for parameter `name`. Uploads and multipart bodies
    /// pass unchanged: the annotation is about values, not files.
    pub fn convert(&self, name: &str, arg: Arg) -> Result<Arg, ApiError> {
        match arg {
            Arg::Json(v) => self
                .value(&v)
                .map(Typed::into_arg)
                .ok_or_else(|| mismatch(name, self, &v)),
            other => Ok(other),
        }
    }

    /// `v` as this type wants it, or `None` when it does not convert.
    fn value(&self, v: &Value) -> Option<Typed> {
        if let Value::String(s) = v {
            return self.text(s);
        }
        let json = |ok: bool| ok.then(|| Typed::Json(v.clone()));
        match self {
            ParamType::Int => json(v.as_number().is_some_and(is_integer)),
            ParamType::Float => json(v.is_number()),
            ParamType::Bool => json(v.is_boolean()),
            ParamType::Str
            | ParamType::Uuid { .. }
            | ParamType::Date { .. }
            | ParamType::Datetime { .. } => None,
            ParamType::Enum {
                names,
                values,
                conv,
                ..
            } => values.iter().position(|m| m == v).map(|i| Typed::Object {
                conv: *conv,
                text: names[i].clone(),
            }),
            ParamType::Literal { values } => json(values.contains(v)),
            ParamType::Optional { item } => match v {
                Value::Null => Some(Typed::Json(Value::Null)),
                other => item.value(other),
            },
            ParamType::List { item } => match v {
                Value::Array(items) => gather(items.iter().map(|i| item.value(i))),
                other => gather(std::iter::once(item.value(other))),
            },
        }
    }

    /// A string from a query, a form, a URL (or a JSON string) as this type wants it.
    fn text(&self, s: &str) -> Option<Typed> {
        match self {
            ParamType::Int => int(s).map(Typed::Json),
            ParamType::Float => float(s).map(Typed::Json),
            ParamType::Bool => boolean(s).map(|b| Typed::Json(Value::Bool(b))),
            ParamType::Str => Some(Typed::Json(Value::String(s.to_string()))),
            ParamType::Uuid { conv } => {
                uuid::Uuid::parse_str(s.trim()).ok().map(|u| Typed::Object {
                    conv: *conv,
                    text: u.hyphenated().to_string(),
                })
            }
            ParamType::Date { conv } => {
                iso::date(s).map(|text| Typed::Object { conv: *conv, text })
            }
            ParamType::Datetime { conv } => {
                iso::datetime(s).map(|text| Typed::Object { conv: *conv, text })
            }
            ParamType::Enum {
                names,
                values,
                conv,
                ..
            } => names
                .iter()
                .position(|n| n == s)
                .or_else(|| values.iter().position(|v| text_of(v) == s))
                .map(|i| Typed::Object {
                    conv: *conv,
                    text: names[i].clone(),
                }),
            ParamType::Literal { values } => values
                .iter()
                .find(|v| match v {
                    Value::String(t) => t == s,
                    Value::Bool(b) => boolean(s) == Some(*b),
                    Value::Number(_) => int(s).as_ref() == Some(*v),
                    Value::Null => s.is_empty(),
                    _ => false,
                })
                .map(|v| Typed::Json(v.clone())),
            ParamType::Optional { .. } if s.is_empty() => Some(Typed::Json(Value::Null)),
            ParamType::Optional { item } => item.text(s),
            ParamType::List { item } => gather(std::iter::once(item.text(s))),
        }
    }
}

/// A list of converted items: plain JSON when none needs Python to finish it.
fn gather(items: impl Iterator<Item = Option<Typed>>) -> Option<Typed> {
    let items: Vec<Typed> = items.collect::<Option<_>>()?;
    if items.iter().all(|t| matches!(t, Typed::Json(_))) {
        let values = items
            .into_iter()
            .filter_map(|t| match t {
                Typed::Json(v) => Some(v),
                _ => None,
            })
            .collect();
        return Some(Typed::Json(Value::Array(values)));
    }
    Some(Typed::List(items))
}

fn mismatch(name: &str, ty: &ParamType, got: &Value) -> ApiError {
    ApiError::BadArgumentType(Box::new(TypeMismatch {
        parameter: name.to_string(),
        expected: ty.python(),
        hint: ty.hint(),
        got: got.clone(),
    }))
}

fn is_integer(n: &Number) -> bool {
    // With arbitrary precision a number keeps its text: an integer has no `.`, `e` or `E`.
    !n.to_string().contains(['.', 'e', 'E'])
}

/// Python's `int(s)` for plain decimal text: an optional sign, digits (and `_` between them),
/// surrounding whitespace ignored. Any size stays exact.
fn int(s: &str) -> Option<Value> {
    let t = s.trim();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    let digits = digits.trim_start_matches('0');
    let text = match (digits.is_empty(), negative) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_string(),
    };
    serde_json::from_str::<Number>(&text)
        .ok()
        .map(Value::Number)
}

/// Python's `float(s)`, finite values only (JSON holds no NaN or infinity).
fn float(s: &str) -> Option<Value> {
    let t = s.trim();
    if t.is_empty()
        || t.bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'))
    {
        return None;
    }
    let f: f64 = t.replace('_', "").parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

fn boolean(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn python_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// ISO 8601 dates and times, normalised to what Python 3.11's `fromisoformat` reads.
mod iso {
    use time::format_description::well_known::Iso8601;
    use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

    pub fn date(s: &str) -> Option<String> {
        Date::parse(s.trim(), &Iso8601::DEFAULT).ok().map(show_date)
    }

    pub fn datetime(s: &str) -> Option<String> {
        let t = s.trim();
        // `2024-05-01 10:00` (a space, as Python and SQL write it) reads as the `T` form.
        let t = match t.as_bytes().get(10) {
            Some(b' ') if t.is_char_boundary(10) && t.is_char_boundary(11) => {
                format!("{}T{}", &t[..10], &t[11..])
            }
            _ => t.to_string(),
        };
        if let Ok(at) = OffsetDateTime::parse(&t, &Iso8601::DEFAULT) {
            return Some(format!(
                "{}T{}{}",
                show_date(at.date()),
                show_time(at.time()),
                show_offset(at.offset())
            ));
        }
        if let Ok(at) = PrimitiveDateTime::parse(&t, &Iso8601::DEFAULT) {
            return Some(format!("{}T{}", show_date(at.date()), show_time(at.time())));
        }
        date(&t).map(|d| format!("{d}T00:00:00"))
    }

    fn show_date(d: Date) -> String {
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    }

    fn show_time(t: Time) -> String {
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }

    fn show_offset(o: UtcOffset) -> String {
        let secs = o.whole_seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let secs = secs.unsigned_abs();
        format!(
            "{sign}{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(ty: &ParamType, v: Value) -> Result<Arg, ApiError> {
        ty.convert("p", Arg::Json(v))
    }

    fn json_of(r: Result<Arg, ApiError>) -> Value {
        match r.unwrap() {
            Arg::Json(v) => v,
            other => panic!("not JSON: {other:?}"),
        }
    }

    #[test]
    fn ints() {
        let t = ParamType::Int;
        assert_eq!(json_of(conv(&t, json!("42"))), json!(42));
        assert_eq!(json_of(conv(&t, json!(" -7 "))), json!(-7));
        assert_eq!(json_of(conv(&t, json!("+007"))), json!(7));
        assert_eq!(json_of(conv(&t, json!("1_000"))), json!(1000));
        assert_eq!(json_of(conv(&t, json!("0"))), json!(0));
        let big = json_of(conv(&t, json!("123456789012345678901234567890")));
        assert_eq!(big.to_string(), "123456789012345678901234567890");
        assert_eq!(json_of(conv(&t, json!(5))), json!(5));
        for bad in [
            json!("abc"),
            json!(""),
            json!("1.5"),
            json!("1e3"),
            json!("_1"),
            json!("1__0"),
            json!("-"),
            json!(1.5),
            json!(true),
            json!([1]),
        ] {
            let err = conv(&t, bad.clone()).unwrap_err();
            assert_eq!(err.code(), "bad_argument_type", "{bad}");
        }
    }

    #[test]
    fn floats_and_bools() {
        assert_eq!(json_of(conv(&ParamType::Float, json!("2.5"))), json!(2.5));
        assert_eq!(
            json_of(conv(&ParamType::Float, json!("1e3"))),
            json!(1000.0)
        );
        assert_eq!(json_of(conv(&ParamType::Float, json!(3))), json!(3));
        for bad in ["nan", "inf", "-infinity", "x", "", "1e999"] {
            assert!(conv(&ParamType::Float, json!(bad)).is_err(), "{bad}");
        }
        for (s, b) in [
            ("true", true),
            ("On", true),
            ("1", true),
            ("no", false),
            ("FALSE", false),
        ] {
            assert_eq!(json_of(conv(&ParamType::Bool, json!(s))), json!(b));
        }
        assert!(conv(&ParamType::Bool, json!("maybe")).is_err());
        assert!(conv(&ParamType::Bool, json!(1)).is_err());
        assert!(conv(&ParamType::Str, json!(1)).is_err());
        assert_eq!(json_of(conv(&ParamType::Str, json!("x"))), json!("x"));
    }

    #[test]
    fn objects_python_finishes() {
        let u = ParamType::Uuid { conv: 3 };
        let got = conv(&u, json!("{12345678-1234-5678-1234-567812345678}")).unwrap();
        assert_eq!(
            got,
            Arg::Typed(Typed::Object {
                conv: 3,
                text: "12345678-1234-5678-1234-567812345678".into()
            })
        );
        assert!(conv(&u, json!("nope")).is_err());
        let d = ParamType::Date { conv: 0 };
        let text = |r: Result<Arg, ApiError>| match r.unwrap() {
            Arg::Typed(Typed::Object { text, .. }) => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(conv(&d, json!("2024-02-29"))), "2024-02-29");
        assert!(conv(&d, json!("2023-02-29")).is_err());
        assert!(conv(&d, json!("yesterday")).is_err());
        let dt = ParamType::Datetime { conv: 1 };
        assert_eq!(
            text(conv(&dt, json!("2024-05-01T10:20:30Z"))),
            "2024-05-01T10:20:30.000000+00:00:00"
        );
        assert_eq!(
            text(conv(&dt, json!("2024-05-01 10:20:30.5+02:00"))),
            "2024-05-01T10:20:30.500000+02:00:00"
        );
        assert_eq!(
            text(conv(&dt, json!("2024-05-01T10:20"))),
            "2024-05-01T10:20:00.000000"
        );
        assert_eq!(text(conv(&dt, json!("2024-05-01"))), "2024-05-01T00:00:00");
        assert!(conv(&dt, json!("2024-05-01T25:00")).is_err());
    }

    #[test]
    fn enums_literals_lists_optionals() {
        let e = ParamType::Enum {
            name: "Color".into(),
            names: vec!["RED".into(), "GREEN".into()],
            values: vec![json!("red"), json!(2)],
            conv: 5,
        };
        let member = |r: Result<Arg, ApiError>| match r.unwrap() {
            Arg::Typed(Typed::Object { text, conv: 5 }) => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(member(conv(&e, json!("RED"))), "RED");
        assert_eq!(member(conv(&e, json!("red"))), "RED");
        assert_eq!(member(conv(&e, json!("2"))), "GREEN");
        assert_eq!(member(conv(&e, json!(2))), "GREEN");
        let err = conv(&e, json!("blue")).unwrap_err();
        assert_eq!(err.body()["expected"], json!("Color"));
        assert_eq!(err.body()["got"], json!("blue"));
        assert_eq!(err.body()["parameter"], json!("p"));

        let l = ParamType::Literal {
            values: vec![json!("asc"), json!("desc"), json!(1)],
        };
        assert_eq!(json_of(conv(&l, json!("desc"))), json!("desc"));
        assert_eq!(json_of(conv(&l, json!("1"))), json!(1));
        assert!(conv(&l, json!("up")).is_err());
        assert_eq!(l.python(), "Literal[\"asc\", \"desc\", 1]");

        let li = ParamType::List {
            item: Box::new(ParamType::Int),
        };
        assert!(li.is_list());
        assert_eq!(json_of(conv(&li, json!(["1", "2"]))), json!([1, 2]));
        assert_eq!(json_of(conv(&li, json!("3"))), json!([3]));
        assert!(conv(&li, json!(["1", "x"])).is_err());
        let lu = ParamType::List {
            item: Box::new(ParamType::Uuid { conv: 0 }),
        };
        assert!(matches!(
            conv(&lu, json!(["12345678-1234-5678-1234-567812345678"])).unwrap(),
            Arg::Typed(Typed::List(_))
        ));

        let o = ParamType::Optional {
            item: Box::new(ParamType::Int),
        };
        assert_eq!(json_of(conv(&o, json!(""))), Value::Null);
        assert_eq!(json_of(conv(&o, json!(null))), Value::Null);
        assert_eq!(json_of(conv(&o, json!("4"))), json!(4));
        assert!(conv(&o, json!("x")).is_err());
        assert_eq!(o.python(), "Optional[int]");
    }

    #[test]
    fn uploads_pass() {
        let up = Arg::Fields(vec![]);
        assert_eq!(ParamType::Int.convert("p", up.clone()).unwrap(), up);
    }

    #[test]
    fn types_deserialize_from_the_helper() {
        let t: ParamType = serde_json::from_value(
            json!({"type": "optional", "item": {"type": "list", "item": {"type": "date", "conv": 2}}}),
        )
        .unwrap();
        assert_eq!(t.python(), "Optional[list[datetime.date]]");
        assert!(t.is_list());
    }
}
