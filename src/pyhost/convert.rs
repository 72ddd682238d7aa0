//! Conversions across the boundary. The way in uses pythonize (JSON values → Python objects,
//! big integers exact). The way out is a hand-written walk that writes a plugin's result
//! straight into the response buffer (SPEC §6) — measured ~5× faster than pythonize on the hot
//! path — with a depth cap and cycle tracking so `x = [x]` is an error, never a stack overflow.

use base64::Engine as _;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDate, PyDateTime, PyDelta, PyDeltaAccess, PyDict, PyFloat,
    PyFrozenSet, PyInt, PyIterator, PyList, PyRange, PySet, PyString, PyTime, PyTuple, PyType,
};
use pyo3::{intern, IntoPyObjectExt};
use serde_json::Value;

use crate::marshal::{Arg, Field, Typed, Upload};

/// Deepest nesting a result may have (SPEC §6).
pub const MAX_DEPTH: usize = 256;

/// Most items taken from a generator or iterator result: an endless one is an error, not a
/// response that grows until memory runs out.
pub const MAX_ITERATED: usize = 1_000_000;

/// Converts a JSON value into a Python object (integers of any size stay exact).
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        // The common cases skip serde's machinery.
        Value::String(s) => Ok(PyString::new(py, s).into_any()),
        Value::Null => Ok(py.None().into_bound(py)),
        Value::Bool(b) => b.into_bound_py_any(py),
        other => pythonize::pythonize(py, other).map_err(PyErr::from),
    }
}

/// Converts a keyword argument: JSON as [`to_py`], a multipart file as a `dpms.Upload`, a
/// multipart `__body__` as a dict of its fields (SPEC §5), a typed value through the module's
/// `converters` (SPEC §13).
pub fn arg_to_py<'py>(
    py: Python<'py>,
    arg: &Arg,
    converters: &[Py<PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    match arg {
        Arg::Json(v) => to_py(py, v),
        Arg::Typed(t) => typed(py, t, converters),
        Arg::Upload(u) => upload(py, u),
        Arg::Fields(fields) => {
            let d = PyDict::new(py);
            for (name, field) in fields {
                match field {
                    Field::Text(s) => d.set_item(name, s)?,
                    Field::File(u) => d.set_item(name, upload(py, u)?)?,
                }
            }
            Ok(d.into_any())
        }
    }
}

fn typed<'py>(py: Python<'py>, t: &Typed, converters: &[Py<PyAny>]) -> PyResult<Bound<'py, PyAny>> {
    match t {
        Typed::Json(v) => to_py(py, v),
        Typed::Object { conv, text } => {
            let func = converters.get(*conv as usize).ok_or_else(|| {
                pyo3::exceptions::PyLookupError::new_err(format!("no converter {conv}"))
            })?;
            func.bind(py).call1((text,))
        }
        Typed::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(typed(py, item, converters)?)?;
            }
            Ok(list.into_any())
        }
    }
}

fn upload<'py>(py: Python<'py>, u: &Upload) -> PyResult<Bound<'py, PyAny>> {
    static UPLOAD: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    UPLOAD.import(py, "dpms", "Upload")?.call1((
        &u.filename,
        u.content_type.as_deref(),
        PyBytes::new(py, &u.data),
    ))
}

/// Why a result could not be converted.
#[derive(Debug)]
pub struct Unserializable(pub String);

/// Writes `obj` as JSON into `out`.
pub fn write_json(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
) -> Result<(), Unserializable> {
    Walker {
        py,
        out,
        path: Vec::new(),
    }
    .value(obj)
}

fn decimal_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static DECIMAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    DECIMAL.import(py, "decimal", "Decimal").ok()
}

fn enum_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static ENUM: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    ENUM.import(py, "enum", "Enum").ok()
}

/// A `timedelta` as an ISO 8601 duration (`PT1M30S`, `P2DT3H`, `-PT0.5S`, `PT0S`), from its
/// normalised parts (`seconds` in 0..86400, `micros` in 0..1_000_000, `days` signed).
pub fn iso_duration(days: i64, seconds: i64, micros: i64) -> String {
    let total = (days as i128 * 86_400 + seconds as i128) * 1_000_000 + micros as i128;
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    let (whole, frac) = (total / 1_000_000, total % 1_000_000);
    let (d, h, m, sec) = (
        whole / 86_400,
        whole % 86_400 / 3600,
        whole % 3600 / 60,
        whole % 60,
    );
    let mut out = format!("{sign}P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h > 0 || m > 0 || sec > 0 || frac > 0 || d == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if sec > 0 || frac > 0 || (h == 0 && m == 0) {
            if frac > 0 {
                let digits = format!("{frac:06}");
                out.push_str(&format!("{sec}.{}S", digits.trim_end_matches('0')));
            } else {
                out.push_str(&format!("{sec}S"));
            }
        }
    }
    out
}

struct Walker<'a, 'py> {
    py: Python<'py>,
    out: &'a mut Vec<u8>,
    /// Containers on the path from the root to the current value (their addresses): a value
    /// that is its own ancestor is a cycle.
    path: Vec<usize>,
}

impl<'py> Walker<'_, 'py> {
    fn value(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        // Exact types first: the common results never reach the slower checks below.
        if obj.is_exact_instance_of::<PyString>() {
            return self.string(obj);
        }
        if obj.is_exact_instance_of::<PyDict>() {
            return self.container(obj, |w| w.dict(obj));
        }
        if obj.is_exact_instance_of::<PyList>() || obj.is_exact_instance_of::<PyTuple>() {
            return self.container(obj, |w| w.sequence(obj));
        }
        if obj.is_none() {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        // bool before int: `True` is an int too.
        if obj.is_exact_instance_of::<PyBool>() {
            let b = obj.is_truthy().unwrap_or(false);
            self.out
                .extend_from_slice(if b { b"true" } else { b"false" });
            return Ok(());
        }
        if obj.is_instance_of::<PyInt>() {
            return self.int(obj);
        }
        if obj.is_instance_of::<PyFloat>() {
            let f: f64 = obj
                .extract()
                .map_err(|e: PyErr| self.fail(obj, &e.to_string()))?;
            self.float(f);
            return Ok(());
        }
        if obj.is_instance_of::<PyString>() {
            return self.string(obj);
        }
        if obj.is_instance_of::<PyDict>() {
            return self.container(obj, |w| w.dict(obj));
        }
        if obj.is_instance_of::<PyList>()
            || obj.is_instance_of::<PyTuple>()
            || obj.is_instance_of::<PySet>()
            || obj.is_instance_of::<PyFrozenSet>()
        {
            return self.container(obj, |w| w.sequence(obj));
        }
        if obj.is_instance_of::<PyDateTime>()
            || obj.is_instance_of::<PyDate>()
            || obj.is_instance_of::<PyTime>()
        {
            let iso = obj
                .call_method0(intern!(self.py, "isoformat"))
                .map_err(|e| self.fail(obj, &e.to_string()))?;
            return self.string(&iso);
        }
        if let Ok(delta) = obj.cast::<PyDelta>() {
            let iso = iso_duration(
                i64::from(delta.get_days()),
                i64::from(delta.get_seconds()),
                i64::from(delta.get_microseconds()),
            );
            self.str_slice(&iso);
            return Ok(());
        }
        if enum_type(self.py).is_some_and(|t| obj.is_instance(t).unwrap_or(false)) {
            let value = obj
                .getattr(intern!(self.py, "value"))
                .map_err(|e| self.fail(obj, &e.to_string()))?;
            return self.container(obj, |w| w.value(&value));
        }
        if obj.is_instance_of::<PyRange>() || obj.is_instance_of::<PyIterator>() {
            return self.container(obj, |w| w.iterated(obj));
        }
        if decimal_type(self.py).is_some_and(|t| obj.is_instance(t).unwrap_or(false)) {
            let s = obj.str().map_err(|e| self.fail(obj, &e.to_string()))?;
            return self.string(s.as_any());
        }
        if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
            let bytes: Vec<u8> = obj
                .extract()
                .map_err(|e: PyErr| self.fail(obj, &e.to_string()))?;
            match std::str::from_utf8(&bytes) {
                Ok(s) => self.str_slice(s),
                Err(_) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    self.str_slice(&encoded);
                }
            }
            return Ok(());
        }
        self.container(obj, |w| w.object(obj))
    }

    /// Runs `f` with `obj` on the path, refusing cycles and excessive depth.
    fn container(
        &mut self,
        obj: &Bound<'py, PyAny>,
        f: impl FnOnce(&mut Self) -> Result<(), Unserializable>,
    ) -> Result<(), Unserializable> {
        let id = obj.as_ptr() as usize;
        if self.path.contains(&id) {
            return Err(self.fail(obj, "it contains itself (a cycle)"));
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(self.fail(obj, &format!("it is nested deeper than {MAX_DEPTH} levels")));
        }
        self.path.push(id);
        let result = f(self);
        self.path.pop();
        result
    }

    fn dict(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        let dict = obj
            .cast::<PyDict>()
            .map_err(|e| self.fail(obj, &e.to_string()))?;
        self.out.push(b'{');
        let mut first = true;
        for (k, v) in dict.iter() {
            if !first {
                self.out.push(b',');
            }
            first = false;
            self.key(&k)?;
            self.out.push(b':');
            self.value(&v)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn sequence(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        self.out.push(b'[');
        let iter = obj.try_iter().map_err(|e| self.fail(obj, &e.to_string()))?;
        let mut first = true;
        for item in iter {
            let item = item.map_err(|e| self.fail(obj, &e.to_string()))?;
            if !first {
                self.out.push(b',');
            }
            first = false;
            self.value(&item)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// A generator, iterator or `range`, as a list of at most [`MAX_ITERATED`] items.
    fn iterated(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        self.out.push(b'[');
        let iter = obj.try_iter().map_err(|e| self.fail(obj, &e.to_string()))?;
        for (n, item) in iter.enumerate() {
            if n >= MAX_ITERATED {
                return Err(self.fail(obj, &format!("it yields more than {MAX_ITERATED} items")));
            }
            let item = item.map_err(|e| self.fail(obj, &format!("iterating it raised {e}")))?;
            if n > 0 {
                self.out.push(b',');
            }
            self.value(&item)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// Anything else: `toJSON()`, then `__dict__`, then `str(obj)`.
    fn object(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        if let Ok(method) = obj.getattr(intern!(self.py, "toJSON")) {
            if method.is_callable() {
                let converted = method
                    .call0()
                    .map_err(|e| self.fail(obj, &format!("toJSON() raised {e}")))?;
                return self.value(&converted);
            }
        }
        if let Ok(attrs) = obj.getattr(intern!(self.py, "__dict__")) {
            if attrs.is_instance_of::<PyDict>() {
                return self.dict(&attrs);
            }
        }
        let s = obj.str().map_err(|e| self.fail(obj, &e.to_string()))?;
        self.string(s.as_any())
    }

    fn int(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        if let Ok(i) = obj.extract::<i64>() {
            self.out
                .extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            return Ok(());
        }
        // Beyond 64 bits: Python's own decimal digits (exact), as `int.__repr__` writes them.
        let digits = self
            .py
            .get_type::<PyInt>()
            .call_method1(intern!(self.py, "__repr__"), (obj,))
            .map_err(|e| self.fail(obj, &e.to_string()))?;
        let digits: String = digits
            .extract()
            .map_err(|e: PyErr| self.fail(obj, &e.to_string()))?;
        self.out.extend_from_slice(digits.as_bytes());
        Ok(())
    }

    fn float(&mut self, f: f64) {
        if f.is_finite() {
            self.out
                .extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    fn string(&mut self, obj: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        let s = obj
            .cast::<PyString>()
            .map_err(|e| self.fail(obj, &e.to_string()))?;
        let text = s.to_string_lossy();
        self.str_slice(&text);
        Ok(())
    }

    fn str_slice(&mut self, s: &str) {
        // serde_json's escaping: the only JSON string writer we need.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    /// A dict key, written as `json.dumps` would: strings as they are, `True` → `"true"`,
    /// `None` → `"null"`, numbers as their text; anything else as `str(key)`.
    fn key(&mut self, key: &Bound<'py, PyAny>) -> Result<(), Unserializable> {
        if key.is_instance_of::<PyString>() {
            return self.string(key);
        }
        let text: String = if key.is_none() {
            "null".into()
        } else if key.is_exact_instance_of::<PyBool>() {
            if key.is_truthy().unwrap_or(false) {
                "true"
            } else {
                "false"
            }
            .into()
        } else if key.is_instance_of::<PyFloat>() {
            let f: f64 = key.extract().unwrap_or(f64::NAN);
            if f.is_nan() {
                "NaN".into()
            } else if f.is_infinite() {
                if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
            } else {
                let repr = key.repr().map_err(|e| self.fail(key, &e.to_string()))?;
                repr.to_string_lossy().into_owned()
            }
        } else if key.is_instance_of::<PyInt>() {
            let mut buf = Vec::new();
            self.swap_out(&mut buf, |w| w.int(key))?;
            String::from_utf8_lossy(&buf).into_owned()
        } else {
            let s = key.str().map_err(|e| self.fail(key, &e.to_string()))?;
            s.to_string_lossy().into_owned()
        };
        self.str_slice(&text);
        Ok(())
    }

    /// Runs `f` writing into `buf` instead of the output.
    fn swap_out(
        &mut self,
        buf: &mut Vec<u8>,
        f: impl FnOnce(&mut Self) -> Result<(), Unserializable>,
    ) -> Result<(), Unserializable> {
        std::mem::swap(self.out, buf);
        let r = f(self);
        std::mem::swap(self.out, buf);
        r
    }

    fn fail(&self, obj: &Bound<'py, PyAny>, why: &str) -> Unserializable {
        let type_name = obj
            .get_type()
            .name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        Unserializable(format!("a `{type_name}` value cannot be converted: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::iso_duration;

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration(0, 90, 0), "PT1M30S");
        assert_eq!(iso_duration(0, 0, 0), "PT0S");
        assert_eq!(iso_duration(2, 3 * 3600, 0), "P2DT3H");
        assert_eq!(iso_duration(1, 0, 0), "P1D");
        assert_eq!(iso_duration(0, 1, 500_000), "PT1.5S");
        assert_eq!(iso_duration(0, 0, 250), "PT0.00025S");
        // timedelta(seconds=-0.5) is days=-1, seconds=86399, microseconds=500000
        assert_eq!(iso_duration(-1, 86_399, 500_000), "-PT0.5S");
        assert_eq!(iso_duration(-1, 0, 0), "-P1D");
        assert_eq!(iso_duration(0, 3661, 0), "PT1H1M1S");
    }
}
