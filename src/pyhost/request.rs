//! `__request__`: a read-only view of the HTTP request for plugins (SPEC §5). It wraps the Rust
//! request data and builds each Python attribute only when a plugin reads it, so passing it costs
//! one small allocation per call.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use serde_json::Value;

use super::convert::to_py;

/// The request data a plugin can read, in plain Rust.
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names in lower case, values as sent (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The parsed JSON body, if the body was JSON.
    pub json: Option<Value>,
    pub remote_addr: String,
    pub uuid: Option<String>,
    pub role: Option<&'static str>,
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
}

#[pymethods]
impl PyRequest {
    #[getter]
    fn method(&self) -> &str {
        &self.info.method
    }

    #[getter]
    fn path(&self) -> &str {
        &self.info.path
    }

    /// Query parameters; for a repeated key, the last value.
    #[getter]
    fn query_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.info.query {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Every query pair in order, repeats included.
    #[getter]
    fn query_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .info
            .query
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
    fn remote_addr(&self) -> &str {
        &self.info.remote_addr
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
        format!("<Request {} {}>", self.info.method, self.info.path)
    }
}

/// Request headers as a read-only, case-insensitive mapping.
#[pyclass(frozen, name = "Headers", module = "dpms", mapping)]
pub struct Headers {
    info: Arc<RequestInfo>,
}

impl Headers {
    fn find(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.info
            .headers
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[pymethods]
impl Headers {
    fn __getitem__(&self, name: &str) -> PyResult<String> {
        self.find(name)
            .map(str::to_string)
            .ok_or_else(|| PyKeyError::new_err(name.to_string()))
    }

    #[pyo3(signature = (name, default=None))]
    fn get(&self, name: &str, default: Option<Py<PyAny>>, py: Python<'_>) -> Py<PyAny> {
        match self.find(name) {
            Some(v) => v
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
        self.info.headers.iter().map(|(k, _)| k.clone()).collect()
    }

    fn values(&self) -> Vec<String> {
        self.info.headers.iter().map(|(_, v)| v.clone()).collect()
    }

    fn items(&self) -> Vec<(String, String)> {
        self.info.headers.clone()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys())?
            .try_iter()
            .map(|it| it.into_any())
    }

    fn __repr__(&self) -> String {
        format!("Headers({:?})", self.info.headers)
    }
}
