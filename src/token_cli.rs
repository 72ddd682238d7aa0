//! `dpms token …` (SPEC §12): signing keys and tokens on the command line, on the registry
//! directly (with or without a running server), with the same configuration as the server.
//! Exit codes as `dpms tenant`: 2 bad input, 1 not found or registry unavailable.

use std::process::ExitCode;

use clap::Subcommand;
use dpms::tokens::{self, MintRequest};

use crate::tenant_cli::{self, parse_uuid, Failure, Setup};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new signing key for a tenant (or, with ADMIN_ID, the admin) and print it as
    /// `{"kid", "secret"}`, the only time it is shown. The previous key still verifies for
    /// DPMS_KEY_GRACE_SECS, then never again.
    #[command(after_help = "Example:\n  dpms token rotate 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11")]
    Rotate { uuid: String },
    /// Print one single-use token for a tenant (or the admin), signed with its current key.
    #[command(
        after_help = "Example:\n  dpms token mint 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11\n  curl -H \"Authorization: Bearer $(dpms token mint $U --ttl 30)\" http://127.0.0.1:8088/rest/services/$U/hello/"
    )]
    Mint {
        uuid: String,
        /// Lifetime in seconds, 1 to 60.
        #[arg(long, default_value_t = tokens::jwt::MAX_LIFETIME)]
        ttl: i64,
        /// Bind the token to this method (`htm`).
        #[arg(long)]
        method: Option<String>,
        /// Bind the token to this path (`htu`).
        #[arg(long)]
        path: Option<String>,
    },
}

pub fn run(command: TokenCommand) -> ExitCode {
    tenant_cli::exit(execute(command))
}

fn execute(command: TokenCommand) -> Result<(), Failure> {
    let setup = Setup::load()?;
    match command {
        TokenCommand::Rotate { uuid } => {
            let uuid = parse_uuid(&uuid)?;
            let key = setup
                .registry()?
                .rotate_key(uuid, setup.admin_id)
                .map_err(tenant_cli::no_tenant(uuid))?;
            println!("{}", key.to_json());
        }
        TokenCommand::Mint {
            uuid,
            ttl,
            method,
            path,
        } => {
            let uuid = parse_uuid(&uuid)?;
            let ask = MintRequest {
                ttl: Some(ttl),
                htm: method,
                htu: path,
            };
            if !(1..=tokens::jwt::MAX_LIFETIME).contains(&ttl) {
                return Err(Failure::BadInput(
                    tokens::MintError::BadTtl(ttl).to_string(),
                ));
            }
            let (kid, secret) = setup
                .registry()?
                .current_key(uuid, setup.admin_id)
                .map_err(tenant_cli::no_tenant(uuid))?
                .ok_or_else(|| Failure::Failed(tokens::MintError::NoKey(uuid).to_string()))?;
            let (token, _) = tokens::mint_with(uuid, &kid, &secret, &ask, tokens::unix_now())
                .map_err(|e| Failure::Failed(e.to_string()))?;
            println!("{token}");
        }
    }
    Ok(())
}
