//! The `dpms` binary: parses the command line, sets up logging, binds the listener and hands
//! over to the supervisor (`serve`), a worker (`worker`, started by the supervisor) or, with
//! `--single-process`, [`dpms::run`] in this process, or runs `dpms tenant` (`tenant_cli.rs`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dpms::config::{Config, Overrides, Sources};
use dpms::supervisor::{self, Plan, WorkerEnv};

mod dev_cli;
mod tenant_cli;
mod token_cli;

/// mimalloc for Rust's allocations (Python keeps its own allocator): see `Cargo.toml`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dpms",
    version,
    about = "Serve plain Python files as REST microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the plugin folders (the default command).
    Serve(ServeArgs),
    /// Print every setting with its default, as a Markdown table.
    Settings,
    /// List what is callable: method, path, function, auth (a table, or --json).
    Routes(dev_cli::RoutesArgs),
    /// Load the plugins exactly as the server would and print each problem as `file:line:`;
    /// exit 1 if there is any (for CI and pre-commit hooks).
    Check(dev_cli::CheckArgs),
    /// Make a plugin file and its plain-pytest test, both passing as written.
    New(dev_cli::NewArgs),
    /// Run one call locally, without a server, and print what the server would send (like
    /// `sam local invoke`).
    Call(dev_cli::CallArgs),
    /// Manage the tenant registry (DPMS_DATA_DIR), with or without a running server.
    ///
    /// Exit codes: 0 done; 2 bad input (a malformed uuid, userid or secret name, or a bad
    /// command line); 1 not found, conflict (uuid or userid taken, uuid = ADMIN_ID) or the
    /// registry unavailable (unreadable, corrupt, locked).
    #[command(subcommand)]
    Tenant(tenant_cli::TenantCommand),
    /// Signing keys and single-use tokens (SPEC §12), on the registry directly.
    ///
    /// Exit codes as `dpms tenant`.
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// A worker process; started by `dpms serve`, not by hand.
    #[command(hide = true)]
    Worker(ServeArgs),
    /// Runs CMD inside every sandbox layer (the sandbox tests' entry point).
    #[command(hide = true)]
    SandboxExec(SandboxExecArgs),
    /// Prints which sandbox layers this kernel supports, then the missing ones.
    #[command(hide = true)]
    SandboxProbe,
    /// The tenant zygote; started by a worker, not by hand.
    #[command(hide = true)]
    Zygote {
        /// The inherited control socket.
        #[arg(long)]
        channel: i32,
    },
    /// A tenant's sandboxed process; started by a worker, not by hand.
    #[command(hide = true)]
    TenantProc {
        /// The inherited channel to the worker.
        #[arg(long)]
        channel: i32,
    },
}

/// A [`dpms::sandbox::Spec`] from flags, for `sandbox-exec`.
#[derive(clap::Args)]
struct SandboxExecArgs {
    #[arg(long, default_value_t = dpms::sandbox::TENANT_UID_BASE)]
    uid: u32,
    #[arg(long, default_value = "dpms-t-00000000")]
    comm: String,
    /// A readable tree (repeatable).
    #[arg(long = "ro")]
    read_only: Vec<std::path::PathBuf>,
    #[arg(long, default_value_t = 1 << 20)]
    scratch_bytes: u64,
    #[arg(long)]
    memory_bytes: Option<u64>,
    #[arg(long, default_value_t = 64)]
    nofile: u64,
    #[arg(long, default_value_t = 1 << 20)]
    fsize_bytes: u64,
    #[arg(long, default_value_t = 32)]
    nproc: u64,
    /// NAME=VALUE given to the tenant (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Print the time `enter` took to stderr as `sandbox-enter-us N`.
    #[arg(long)]
    time: bool,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on (DPMS_HOST).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (DPMS_PORT).
    #[arg(long)]
    port: Option<String>,
    /// `:`-separated plugin folders (`plugins` / DPMS_PLUGINS).
    #[arg(long)]
    plugins: Option<String>,
    /// changed | always | never (DPMS_RELOAD).
    #[arg(long)]
    reload: Option<String>,
    /// Python threads running plugin calls in each worker (DPMS_PY_THREADS).
    #[arg(long)]
    py_threads: Option<String>,
    /// Worker processes (DPMS_WORKERS; default: number of CPUs).
    #[arg(long)]
    workers: Option<String>,
    /// Run everything in this one process (debugging: a crashing plugin takes the server down).
    #[arg(long)]
    single_process: bool,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host.clone(),
            port: self.port.clone(),
            plugins: self.plugins.clone(),
            reload: self.reload.clone(),
            py_threads: self.py_threads.clone(),
            workers: self.workers.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Settings) => {
            print!("{}", dpms::config::settings_table());
            return ExitCode::SUCCESS;
        }
        Some(Command::Routes(args)) => return dev_cli::routes(&args),
        Some(Command::Check(args)) => return dev_cli::check(&args),
        Some(Command::New(args)) => return dev_cli::new(&args),
        Some(Command::Call(args)) => exit_now(dev_cli::call(&args)),
        Some(Command::Tenant(command)) => return tenant_cli::run(command),
        Some(Command::Token(command)) => return token_cli::run(command),
        // Its flags are ignored: a worker's settings all come in the supervisor's handoff.
        Some(Command::Worker(_)) => worker(),
        Some(Command::SandboxExec(args)) => sandbox_exec(&args),
        Some(Command::SandboxProbe) => {
            let layers = dpms::sandbox::probe();
            println!("{layers:?}");
            println!("missing: {:?}", layers.missing());
            return ExitCode::SUCCESS;
        }
        Some(Command::TenantProc { channel }) => dpms::tenant_proc::run(channel),
        Some(Command::Zygote { channel }) => dpms::zygote::run(channel),
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
    };
    match result {
        Ok(()) => {
            dpms::telemetry::flush();
            // Python threads may still be inside a plugin: exit without waiting for them.
            std::process::exit(0);
        }
        Err(message) => {
            dpms::telemetry::flush();
            eprintln!("dpms: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Exits at once with `code` (Python threads of a finished call may still run).
fn exit_now(code: i32) -> ! {
    dpms::telemetry::flush();
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Enters the sandbox (this process is still single-threaded: nothing has started a thread
/// yet) and replaces itself with the command. Returns only on failure.
fn sandbox_exec(args: &SandboxExecArgs) -> Result<(), String> {
    use std::os::unix::process::CommandExt as _;
    let mut env = Vec::new();
    for item in &args.env {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`--env {item}` is not NAME=VALUE"))?;
        env.push((key.to_owned(), value.to_owned()));
    }
    let spec = dpms::sandbox::Spec {
        host_uid: args.uid,
        host_gid: args.uid,
        comm: args.comm.clone(),
        read_only: args.read_only.clone(),
        scratch_bytes: args.scratch_bytes,
        memory_bytes: args.memory_bytes,
        nofile: args.nofile,
        fsize_bytes: args.fsize_bytes,
        nproc: args.nproc,
        env,
        keep_fds: vec![0, 1, 2],
        apply: dpms::sandbox::Layers::ALL,
    };
    let started = std::time::Instant::now();
    dpms::sandbox::enter(&spec).map_err(|e| e.to_string())?;
    if args.time {
        eprintln!("sandbox-enter-us {}", started.elapsed().as_micros());
    }
    let (program, rest) = args.command.split_first().ok_or("no command")?;
    if program == "__hold__" {
        // Stays in this process, as the zygote's child will: a second thread (seccomp must
        // cover it too) waits for stdin to close while the host inspects /proc.
        println!("ready");
        let waiter =
            std::thread::spawn(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()));
        let _ = waiter.join();
        return Ok(());
    }
    let err = std::process::Command::new(program)
        .args(rest)
        .env_clear()
        .envs(dpms::sandbox::environment(&spec))
        .exec();
    Err(format!("cannot run `{program}`: {err}"))
}

/// Reads and checks the settings, then starts logging.
fn configure(args: &ServeArgs) -> Result<Config, String> {
    let workdir =
        std::env::current_dir().map_err(|e| format!("cannot read the working folder: {e}"))?;
    let sources = Sources::load(&workdir, args.overrides()).map_err(|e| e.to_string())?;
    let config = sources.config(&workdir).map_err(|e| e.to_string())?;
    dpms::telemetry::init(&config.log_filter, config.log_json);
    Ok(config)
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let config = configure(args)?;
    let addr = SocketAddr::new(config.host, config.port);
    if args.single_process {
        let listener = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?
            .block_on(async { bind(addr) })?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        return dpms::run(
            config,
            0,
            listener,
            move || announce(local),
            None,
            shutdown_signal(),
        )
        .map_err(|e| e.to_string());
    }

    // The supervisor: no Python here, and tokio only to wait for a signal.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let listener = signals.block_on(async { bind(addr) })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("dpms-signals".into())
        .spawn(move || {
            signals.block_on(shutdown_signal());
            stop_on_signal.store(true, Ordering::Release);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    tracing::info!(workers = config.workers, "supervisor starting workers");
    // The workers get this very Config (`supervisor::Handoff`): none reads `.env` again.
    let plan = Plan { config };
    supervisor::run(plan, listener, stop, move || announce(local))
}

/// A worker runs with the settings its supervisor checked, never reading `.env` or the
/// environment for them itself: an `.env` edited since the supervisor started must not make
/// this worker differ from its siblings.
fn worker() -> Result<(), String> {
    let env = WorkerEnv::from_env()?;
    let mut config = env.handoff.config.clone();
    dpms::telemetry::init(&config.log_filter, config.log_json);
    config.state_dir = env.state_dir.clone();
    let (index, listener, mut ready) = env.split();
    let retire = ready.retire_notice();
    dpms::run(
        config,
        index,
        listener,
        move || ready.send(),
        Some(retire),
        shutdown_signal(),
    )
    .map_err(|e| e.to_string())
}

/// Binds with a deep accept queue (std's default of 128 drops connections under bursts).
/// Needs a tokio runtime context; the result is a plain std listener.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("cannot create a socket: {e}"))?;
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    socket
        .bind(addr)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let listener = socket
        .listen(1024)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener.into_std().map_err(|e| e.to_string())
}

/// The one line on stdout: where the server listens, once the plugins are loaded.
fn announce(local: SocketAddr) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on http://{local}");
    let _ = out.flush();
    tracing::info!(address = %local, "listening");
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
