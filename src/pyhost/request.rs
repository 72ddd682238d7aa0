//! `__request__`: a read-only view of the HTTP request for plugins (SPEC §5). It wraps the Rust
//! request data as hyper parsed it (nothing is copied per request) and builds each Python
//! attribute only when a plugin reads it, so passing it costs one small allocation per call.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use serde_json::Value;

use super::convert::to_py;

/// The request data a plugin can read, in plain Rust.
#[derive(Debug)]
pub struct RequestInfo {
    pub method: hyper::Method,
    /// The query string is parsed again only if the plugin reads `query_params`/`query_list`
    /// (it was checked when the call was marshalled).
    pub uri: hyper::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The parsed JSON body, if the body was JSON.
    pub json: Option<Value>,
    pub remote: SocketAddr,
    pub uuid: Option<String>,
    pub role: Option<&'static str>,
    /// The request id (`X-Request-Id`), which also tags what the plugin prints.
    pub id: crate::request_id::RequestId,
}

/// A header value as Python sees it (invalid UTF-8 replaced).
fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The object plugins receive as `__request__`.
#[pyclass(frozen, name = "Request", module = "dpms")]
pub struct PyRequest {
    info: Arc<RequestInfo>,
}

impl PyRequest {
    pub fn new(info: Arc<RequestInfo>) -> PyRequest {
        PyRequest { info }
    }

    fn query(&self) -> PyResult<Vec<(String, String)>> {
        let raw = self.info.uri.query().unwrap_or("");
        crate::marshal::parse_pairs(raw.as_bytes(), "query string")
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

#[pymethods]
impl PyRequest {
    #[getter]
    fn method(&self) -> &str {
        self.info.method.as_str()
    }

    #[getter]
    fn path(&self) -> &str {
        self.info.uri.path()
    }

    /// Query parameters; for a repeated key, the last value.
    #[getter]
    fn query_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.query()? {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Every query pair in order, repeats included.
    #[getter]
    fn query_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .query()?
            .iter()
            .map(|(k, v)| PyTuple::new(py, [k, v]))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    #[getter]
    fn headers(&self) -> Headers {
        Headers {
            info: Arc::clone(&self.info),
        }
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.info.body)
    }

    #[getter]
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.info.json {
            Some(v) => to_py(py, v),
            None => Ok(py.None().into_bound(py)),
        }
    }

    #[getter]
    fn remote_addr(&self) -> String {
        self.info.remote.to_string()
    }

    #[getter]
    fn uuid(&self) -> Option<&str> {
        self.info.uuid.as_deref()
    }

    #[getter]
    fn role(&self) -> Option<&str> {
        self.info.role
    }

    fn __repr__(&self) -> String {
        format!("<Request {} {}>", self.info.method, self.info.uri.path())
    }
}

/// Request headers as a read-only, case-insensitive mapping.
#[pyclass(frozen, name = "Headers", module = "dpms", mapping)]
pub struct Headers {
    info: Arc<RequestInfo>,
}

impl Headers {
    /// The last value sent under `name`, matched case-insensitively.
    fn find(&self, name: &str) -> Option<&HeaderValue> {
        self.info.headers.get_all(name).iter().next_back()
    }

    fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.info
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), text(v)))
    }
}

#[pymethods]
impl Headers {
    fn __getitem__(&self, name: &str) -> PyResult<String> {
        self.find(name)
            .map(text)
            .ok_or_else(|| PyKeyError::new_err(name.to_string()))
    }

    #[pyo3(signature = (name, default=None))]
    fn get(&self, name: &str, default: Option<Py<PyAny>>, py: Python<'_>) -> Py<PyAny> {
        match self.find(name) {
            Some(v) => text(v)
                .into_pyobject(py)
                .map(|s| s.into_any().unbind())
                .unwrap_or_else(|_| py.None()),
            None => default.unwrap_or_else(|| py.None()),
        }
    }

    fn __contains__(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn __len__(&self) -> usize {
        self.info.headers.len()
    }

    fn keys(&self) -> Vec<String> {
        self.pairs().map(|(k, _)| k).collect()
    }

    fn values(&self) -> Vec<String> {
        self.pairs().map(|(_, v)| v).collect()
    }

    fn items(&self) -> Vec<(String, String)> {
        self.pairs().collect()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys())?
            .try_iter()
            .map(|it| it.into_any())
    }

    fn __repr__(&self) -> String {
        format!("Headers({:?})", self.items())
    }
}
