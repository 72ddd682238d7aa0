//! `dpms tenant …`: the tenant registry on the command line (SPEC §7 "CLI"), on the same file
//! and with the same configuration (`.env`, environment, `DPMS_DATA_DIR`, `ADMIN_ID`) as the
//! server, with or without one running. Output on stdout; an error is one line on stderr and
//! exit code 2 (bad input) or 1 (not found, conflict, registry unavailable).

use std::io::Read as _;
use std::process::ExitCode;

use clap::Subcommand;
use dpms::config::{Overrides, Sources};
use dpms::store::{Registry, StoreError, Tenant};
use uuid::Uuid;

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Register a tenant (enabled) and print it as JSON.
    #[command(
        after_help = "Example:\n  dpms tenant add alice@example.com\n  dpms tenant add bob --uuid 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11"
    )]
    Add {
        /// 1 to 128 characters, unique.
        userid: String,
        /// The tenant's uuid (made when absent); must not be ADMIN_ID.
        #[arg(long)]
        uuid: Option<String>,
    },
    /// List tenants in creation order (a table, or JSON with --json).
    #[command(after_help = "Example:\n  dpms tenant list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print one tenant as JSON.
    #[command(after_help = "Example:\n  dpms tenant show 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11")]
    Show { uuid: String },
    /// Let a tenant's calls through again (from the next request on); prints it as JSON.
    #[command(after_help = "Example:\n  dpms tenant enable 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11")]
    Enable { uuid: String },
    /// Refuse a tenant's calls (404, from the next request on); prints it as JSON.
    #[command(after_help = "Example:\n  dpms tenant disable 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11")]
    Disable { uuid: String },
    /// Remove a tenant and its secrets.
    #[command(after_help = "Example:\n  dpms tenant remove 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11")]
    Remove { uuid: String },
    /// A tenant's secrets (its sandbox's environment).
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value from the command line or, with --stdin, from standard input
    /// (one trailing newline dropped; keeps the value out of `ps` and shell history).
    #[command(
        after_help = "Example:\n  dpms tenant secret set 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11 REGION eu-west-1\n  printf %s \"$KEY\" | dpms tenant secret set 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11 API_KEY --stdin"
    )]
    Set {
        uuid: String,
        /// `[A-Z_][A-Z0-9_]{0,63}`.
        name: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        stdin: bool,
    },
    /// Remove a secret.
    #[command(
        after_help = "Example:\n  dpms tenant secret unset 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11 API_KEY"
    )]
    Unset { uuid: String, name: String },
    /// List a tenant's secret names (never the values), one a line.
    #[command(
        after_help = "Example:\n  dpms tenant secret list 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11"
    )]
    List { uuid: String },
}

/// Why a command failed, and so its exit code.
pub enum Failure {
    /// Exit code 2.
    BadInput(String),
    /// Exit code 1.
    Failed(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::BadRequest(m) => Failure::BadInput(m),
            StoreError::NotFound => Failure::Failed("not found".into()),
            StoreError::Conflict(m) => Failure::Failed(format!("conflict: {m}")),
            e @ StoreError::Unavailable(_) => Failure::Failed(e.to_string()),
        }
    }
}

/// `StoreError::NotFound` for `uuid` says which tenant was not found.
pub fn no_tenant(uuid: Uuid) -> impl FnOnce(StoreError) -> Failure {
    move |e| match e {
        StoreError::NotFound => Failure::Failed(format!("tenant {uuid} not found")),
        e => e.into(),
    }
}

pub fn run(command: TenantCommand) -> ExitCode {
    exit(execute(command))
}

/// The exit code of a command's result, its error on stderr.
pub fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(m)) => {
            eprintln!("dpms: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("dpms: {m}");
            ExitCode::FAILURE
        }
    }
}

pub fn parse_uuid(text: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(text).map_err(|_| Failure::BadInput(format!("`{text}` is not a UUID")))
}

fn print_tenant(t: &Tenant) {
    println!("{}", t.to_json());
}

/// The settings the registry needs, from the same sources as the server (`.env`, the
/// environment); only those are checked, so the CLI works where no plugin folder exists.
pub struct Setup {
    pub sources: Sources,
    pub workdir: std::path::PathBuf,
    pub admin_id: Option<Uuid>,
}

impl Setup {
    pub fn load() -> Result<Setup, Failure> {
        let workdir = std::env::current_dir()
            .map_err(|e| Failure::Failed(format!("cannot read the working folder: {e}")))?;
        let sources = Sources::load(&workdir, Overrides::default())
            .map_err(|e| Failure::BadInput(e.to_string()))?;
        let admin_id = sources
            .admin_id()
            .map_err(|e| Failure::BadInput(e.to_string()))?;
        Ok(Setup {
            sources,
            workdir,
            admin_id,
        })
    }

    /// Opens (creating when absent) the registry.
    pub fn registry(&self) -> Result<Registry, Failure> {
        Ok(Registry::open(&self.sources.data_dir(&self.workdir))?)
    }
}

fn execute(command: TenantCommand) -> Result<(), Failure> {
    let setup = Setup::load()?;
    let admin_id = setup.admin_id;
    // Checked before opening, so bad input never creates a registry.
    let command = Checked::new(command)?;
    let registry = setup.registry()?;
    match command {
        Checked::Add { userid, uuid } => {
            // Its first signing key is shown here and never again (SPEC §12).
            let (tenant, key) = registry.add_tenant(&userid, uuid, admin_id)?;
            let mut out = tenant.to_json();
            if let serde_json::Value::Object(m) = &mut out {
                m.insert("key".into(), key.to_json());
            }
            println!("{out}");
        }
        Checked::List { json } => {
            let tenants = registry.list()?;
            if json {
                let all: Vec<_> = tenants.iter().map(Tenant::to_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                print!("{}", table(&tenants));
            }
        }
        Checked::Show(uuid) => print_tenant(&registry.get(uuid).map_err(no_tenant(uuid))?),
        Checked::Enabled(uuid, on) => {
            print_tenant(&registry.set_enabled(uuid, on).map_err(no_tenant(uuid))?)
        }
        Checked::Remove(uuid) => registry.remove(uuid).map_err(no_tenant(uuid))?,
        Checked::SecretSet { uuid, name, value } => registry.set_secret(uuid, &name, &value)?,
        Checked::SecretUnset { uuid, name } => registry.unset_secret(uuid, &name)?,
        Checked::SecretList(uuid) => {
            for name in registry.secret_names(uuid)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// A command with its uuids parsed and its secret value read.
enum Checked {
    Add {
        userid: String,
        uuid: Option<Uuid>,
    },
    List {
        json: bool,
    },
    Show(Uuid),
    Enabled(Uuid, bool),
    Remove(Uuid),
    SecretSet {
        uuid: Uuid,
        name: String,
        value: String,
    },
    SecretUnset {
        uuid: Uuid,
        name: String,
    },
    SecretList(Uuid),
}

impl Checked {
    fn new(command: TenantCommand) -> Result<Checked, Failure> {
        Ok(match command {
            TenantCommand::Add { userid, uuid } => Checked::Add {
                userid,
                uuid: uuid.as_deref().map(parse_uuid).transpose()?,
            },
            TenantCommand::List { json } => Checked::List { json },
            TenantCommand::Show { uuid } => Checked::Show(parse_uuid(&uuid)?),
            TenantCommand::Enable { uuid } => Checked::Enabled(parse_uuid(&uuid)?, true),
            TenantCommand::Disable { uuid } => Checked::Enabled(parse_uuid(&uuid)?, false),
            TenantCommand::Remove { uuid } => Checked::Remove(parse_uuid(&uuid)?),
            TenantCommand::Secret(SecretCommand::Set {
                uuid,
                name,
                value,
                stdin,
            }) => {
                let uuid = parse_uuid(&uuid)?;
                let value = match (value, stdin) {
                    (Some(v), false) => v,
                    (None, true) => {
                        let mut v = String::new();
                        std::io::stdin().read_to_string(&mut v).map_err(|e| {
                            Failure::BadInput(format!("cannot read the value from stdin: {e}"))
                        })?;
                        if v.ends_with('\n') {
                            v.pop();
                        }
                        v
                    }
                    _ => return Err(Failure::BadInput("give a VALUE or --stdin".into())),
                };
                Checked::SecretSet { uuid, name, value }
            }
            TenantCommand::Secret(SecretCommand::Unset { uuid, name }) => Checked::SecretUnset {
                uuid: parse_uuid(&uuid)?,
                name,
            },
            TenantCommand::Secret(SecretCommand::List { uuid }) => {
                Checked::SecretList(parse_uuid(&uuid)?)
            }
        })
    }
}

/// The tenants as an aligned text table.
fn table(tenants: &[Tenant]) -> String {
    let width = tenants
        .iter()
        .map(|t| t.userid.chars().count())
        .max()
        .unwrap_or(0)
        .max("USERID".len());
    let mut out = format!(
        "{:<36}  {:<width$}  {:<7}  CREATED\n",
        "UUID", "USERID", "ENABLED"
    );
    for t in tenants {
        out.push_str(&format!(
            "{:<36}  {:<width$}  {:<7}  {}\n",
            t.uuid,
            t.userid,
            if t.enabled { "yes" } else { "no" },
            t.created
        ));
    }
    out
}
