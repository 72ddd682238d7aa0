//! The `dpms` binary: parses the command line, sets up logging, binds the listener and hands
//! over to [`dpms::run`]. Nothing else lives here.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dpms::config::{Overrides, Sources};

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
    /// Python threads running plugin calls (DPMS_PY_THREADS).
    #[arg(long)]
    py_threads: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Settings) => {
            print!("{}", dpms::config::settings_table());
            return ExitCode::SUCCESS;
        }
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dpms: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let workdir =
        std::env::current_dir().map_err(|e| format!("cannot read the working folder: {e}"))?;
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        plugins: args.plugins,
        reload: args.reload,
        py_threads: args.py_threads,
    };
    let sources = Sources::load(&workdir, overrides).map_err(|e| e.to_string())?;
    let config = sources.config(&workdir).map_err(|e| e.to_string())?;
    dpms::telemetry::init(&config.log_filter);
    for warning in &sources.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let addr = std::net::SocketAddr::new(config.host, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let announce = move || {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on http://{local}");
            let _ = out.flush();
            tracing::info!(address = %local, "listening");
        };
        dpms::run(config, listener, announce, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })?;
    // Python threads may still be inside a plugin: exit without waiting for them.
    std::process::exit(0);
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
