//! `dpms tenant-proc`: one tenant's sandboxed process (SPEC §11). Started by a worker with a
//! cleared environment and one descriptor, the channel; it reads its [`Start`], enters the
//! sandbox (every layer, or it exits), starts the embedded Python and then serves the host's
//! loads and calls over the channel until the channel closes.
//!
//! Nothing of the host crosses into this process but the channel: its modules arrive as bytes
//! (it cannot read the plugin folders), each call as a plain-data request; what it answers is
//! checked by the host (`exec::sandboxed`), which kills it on anything unexpected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Overrides, Sources};
use crate::exec::wire::{FromTenant, Start, ToTenant, WireLoaded, WireRequest, WireResult};
use crate::exec::{FinderEntry, LoadRequest, Loaded};
use crate::ipc::{AsyncSender, Receiver};
use crate::pyhost::{Dispatch, PyHost, RequestInfo};
use crate::request_id::RequestId;
use crate::router::Module;

/// Frames a tenant process accepts: a call carries at most a body of `DPMS_MAX_BODY` plus its
/// copy in the arguments; the host sends no more than this.
pub const MAX_FRAME: u32 = 256 << 20;

/// Runs the tenant process on the inherited channel `fd`; returns only on failure or when
/// the host closed the channel.
pub fn run(fd: RawFd) -> Result<(), String> {
    // One malloc arena: glibc reserves 64 MiB of address space per thread's arena, which
    // RLIMIT_AS (DPMS_TENANT_MEMORY) counts in full; a tenant's threads share one.
    // SAFETY: mallopt with plain integers, before this process starts a thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // SAFETY: the worker passed this descriptor open, for this process alone.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let reader = stream.try_clone().map_err(|e| format!("channel: {e}"))?;
    let mut first: Receiver<Start> = Receiver::new(reader, MAX_FRAME);
    let start = first.recv().map_err(|e| format!("no start message: {e}"))?;
    // Closed now: the sandbox closes every descriptor but the channel, and a second close
    // of this number later would close whatever reused it.
    drop(first);
    // Found now: inside the sandbox Landlock hides /proc.
    let exec_env = crate::sandbox::exec_environment_span();
    let (missing, unfinished) = enter_sandbox(&start, fd)?;
    // Forked from the zygote, Python's `os.environ` is still the zygote's: make it the
    // tenant's (its secrets and the fixed set), before any tenant code runs. A pooled
    // process has no tenant yet: it gets its environment when it is specialised.
    let env: Vec<(String, String)> = if unfinished.is_some() {
        crate::sandbox::tenant_environment(&[])
    } else {
        std::env::vars().collect()
    };
    crate::pyhost::replace_environ(&env).map_err(|e| e.to_string())?;
    // The strings this process was started with (the zygote's allocator settings) stay in
    // /proc/<pid>/environ until overwritten (SPEC §11.2: only secrets and the fixed set).
    if let Some(span) = exec_env {
        // SAFETY: the C environment and `os.environ` were both replaced just above, so
        // nothing points into the span, and no thread of this process runs yet.
        unsafe { span.wipe() };
    }
    crate::telemetry::init_tenant("info");
    let config = tenant_config(&start)?;
    let host = Arc::new(PyHost::start(&config, 0).map_err(|e| e.to_string())?);
    let serving = Arc::clone(&host);
    let warm = unfinished.is_some();
    host.with_thread_state(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            if warm {
                // A pooled process does the first load's one-time work (the helper's
                // gc.freeze of everything made so far) before a tenant waits for it: a name
                // beginning with `__` is refused without running anything.
                let _ = serving
                    .load(
                        None,
                        Vec::new(),
                        vec![LoadRequest {
                            name: "__dpms_warm_up__".into(),
                            path: String::new(),
                            source: Arc::new(Vec::new()),
                        }],
                    )
                    .await;
            }
            serve(serving, stream, missing, unfinished).await
        })
    })
}

/// Every layer of SPEC §11 but those the host says to skip (`DPMS_SANDBOX=relaxed` on a
/// kernel that lacks them; SPEC §11.9); a layer that still fails here ends the process.
fn enter_sandbox(
    start: &Start,
    fd: RawFd,
) -> Result<(Vec<String>, Option<crate::sandbox::Unfinished>), String> {
    let missing = start.skip_layers.clone();
    let apply = crate::sandbox::Layers::all_but(&missing)
        .ok_or_else(|| format!("unknown sandbox layers to skip: {missing:?}"))?;
    let spec = crate::sandbox::Spec {
        host_uid: start.host_uid,
        host_gid: start.host_uid,
        comm: start.comm.clone(),
        read_only: start.read_only.iter().map(Into::into).collect(),
        scratch_bytes: start.scratch_bytes,
        memory_bytes: start.memory_bytes,
        nofile: start.nofile,
        fsize_bytes: start.fsize_bytes,
        nproc: start.nproc,
        env: start.secrets.clone(),
        // stderr is the server's log: what the tenant prints reaches it tagged.
        keep_fds: vec![0, 1, 2, fd],
        apply,
    };
    if start.pooled {
        let unfinished = crate::sandbox::enter_unspecialised(&spec).map_err(|e| e.to_string())?;
        return Ok((missing, Some(unfinished)));
    }
    crate::sandbox::enter(&spec).map_err(|e| e.to_string())?;
    Ok((missing, None))
}

/// The settings the embedded Python needs here, from the start message only (this process
/// has no `.env` and no environment of the server).
fn tenant_config(start: &Start) -> Result<crate::config::Config, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("plugins".into(), crate::sandbox::SCRATCH_DIR.into());
    env.insert("DPMS_PY_THREADS".into(), start.py_threads.to_string());
    env.insert("DPMS_MAX_QUEUE".into(), start.max_queued.to_string());
    env.insert(
        "MAX_FUNCTION_SECS".into(),
        format!("{}", start.max_function_ms as f64 / 1000.0),
    );
    env.insert(
        "DPMS_LOAD_SECS".into(),
        format!("{}", start.load_ms as f64 / 1000.0),
    );
    if let Some(venv) = &start.venv {
        env.insert("DPMS_VENV".into(), venv.clone());
    }
    Sources::new(HashMap::new(), env, Overrides::default())
        .config(Path::new("/"))
        .map_err(|e| e.to_string())
}

/// Serves the host's messages; loads one at a time, calls concurrently.
async fn serve(
    host: Arc<PyHost>,
    stream: UnixStream,
    missing: Vec<String>,
    unfinished: Option<crate::sandbox::Unfinished>,
) -> Result<(), String> {
    let writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut rx = Receiver::<ToTenant>::new(stream, MAX_FRAME)
        .into_async()
        .map_err(|e| e.to_string())?;
    let mut tx: AsyncSender<FromTenant> = crate::ipc::Sender::new(writer, MAX_FRAME)
        .into_async()
        .map_err(|e| e.to_string())?;
    // One writer: frames from concurrent calls never interleave.
    let (out, mut queue) = tokio::sync::mpsc::unbounded_channel::<FromTenant>();
    let writing = tokio::spawn(async move {
        let _ = tx.pump(&mut queue).await;
    });
    let _ = out.send(FromTenant::Ready {
        layers_missing: missing,
    });
    if let Some(unfinished) = unfinished {
        // A pooled process: the first message makes it one tenant's, before anything else.
        match rx.recv().await {
            Ok(ToTenant::Specialise { id, comm, secrets }) => {
                crate::pyhost::replace_environ(&crate::sandbox::tenant_environment(&secrets))
                    .map_err(|e| e.to_string())?;
                unfinished.finish(&comm).map_err(|e| e.to_string())?;
                let _ = out.send(FromTenant::Specialised { id });
            }
            Ok(_) => return Err("a pooled process must be specialised first".into()),
            Err(crate::ipc::Error::Closed) => return Ok(()),
            Err(e) => return Err(format!("channel: {e}")),
        }
    }
    let mut modules: HashMap<String, Arc<Module>> = HashMap::new();
    loop {
        let message = match rx.recv().await {
            Ok(m) => m,
            Err(crate::ipc::Error::Closed) => break,
            Err(e) => return Err(format!("channel: {e}")),
        };
        match message {
            ToTenant::Specialise { .. } => {
                return Err(
                    "specialised twice: a process is never reused for another tenant".into(),
                )
            }
            ToTenant::Load {
                id,
                files,
                forget,
                requests,
            } => {
                let result = load(&host, &mut modules, files, forget, requests).await;
                let _ = out.send(FromTenant::Loaded { id, result });
            }
            ToTenant::Call {
                id,
                module,
                endpoint,
                args,
                request,
            } => {
                let Some(module) = modules.get(&module).map(Arc::clone) else {
                    let result = WireResult::Internal {
                        detail: format!("module `{module}` is not loaded in this process"),
                    };
                    let _ = out.send(FromTenant::Done { id, result });
                    continue;
                };
                let info = Arc::new(request_info(request));
                match host.call(module, endpoint, args.into_call(), info) {
                    Dispatch::Done(result) => {
                        let result = WireResult::from_result(result);
                        let _ = out.send(FromTenant::Done { id, result });
                    }
                    Dispatch::Pending(rx, _interrupt) => {
                        // The host keeps the deadline (and kills this process past it).
                        let out = out.clone();
                        tokio::spawn(async move {
                            let result = match rx.await {
                                Ok(result) => WireResult::from_result(result),
                                Err(_) => WireResult::Internal {
                                    detail: "the Python thread dropped the call".into(),
                                },
                            };
                            let _ = out.send(FromTenant::Done { id, result });
                        });
                    }
                }
            }
        }
    }
    drop(out);
    let _ = writing.await;
    Ok(())
}

async fn load(
    host: &PyHost,
    modules: &mut HashMap<String, Arc<Module>>,
    files: Option<Vec<(String, String, crate::exec::wire::B64)>>,
    forget: Vec<String>,
    requests: Vec<(String, String, crate::exec::wire::B64)>,
) -> Result<Vec<WireLoaded>, String> {
    let files = files.map(|files| {
        files
            .into_iter()
            .map(|(name, path, source)| FinderEntry {
                name,
                path,
                source: Some(Arc::new(source.0)),
            })
            .collect()
    });
    for name in &forget {
        modules.remove(name);
    }
    let requests: Vec<LoadRequest> = requests
        .into_iter()
        .map(|(name, path, source)| LoadRequest {
            name,
            path,
            source: Arc::new(source.0),
        })
        .collect();
    let loaded = host.load(files, forget, requests.clone()).await?;
    let mut out = Vec::with_capacity(loaded.len());
    for (request, loaded) in requests.iter().zip(loaded) {
        out.push(match loaded {
            Loaded::Ok {
                description,
                json,
                code,
            } => {
                let module = crate::plugins::module_from(
                    &request.name,
                    Path::new(&request.path),
                    Arc::clone(&request.source),
                    description,
                    code,
                );
                modules.insert(request.name.clone(), Arc::new(module));
                WireLoaded::Ok { json }
            }
            Loaded::ImportError { error, traceback } => {
                modules.remove(&request.name);
                WireLoaded::ImportError { error, traceback }
            }
            Loaded::Refused { error } => {
                modules.remove(&request.name);
                WireLoaded::Refused { error }
            }
        });
    }
    Ok(out)
}

/// The request as the embedded `__request__` reads it, rebuilt from plain data.
fn request_info(w: WireRequest) -> RequestInfo {
    let mut headers = HeaderMap::new();
    for (name, value) in w.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value.0),
        ) {
            headers.append(n, v);
        }
    }
    let id = HeaderValue::from_str(&w.id)
        .ok()
        .and_then(|v| RequestId::from_client(&v))
        .unwrap_or_else(RequestId::generate);
    RequestInfo {
        method: hyper::Method::from_bytes(w.method.as_bytes()).unwrap_or(hyper::Method::GET),
        uri: w
            .target
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/")),
        headers,
        body: bytes::Bytes::from(w.body.0),
        json: w.json,
        remote: w
            .remote
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
        uuid: w.uuid,
        role: match w.role.as_deref() {
            Some("admin") => Some("admin"),
            Some(_) => Some("tenant"),
            None => None,
        },
        id,
    }
}
