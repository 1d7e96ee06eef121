//! The subcommands that answer a question and exit (`stub-adc`, `routes`, `ca`,
//! `healthcheck`): none starts the proxy, and none needs a valid proxy configuration
//! beyond the settings it reads.

pub mod ca;
pub mod healthcheck;
pub mod routes;

use std::process::ExitCode;

use crate::config::{Args, Command};

/// sysexits.h EX_USAGE: what the command was asked to read is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// Runs COMMAND and returns the process's exit code; messages go to stdout/stderr.
pub fn run(command: &Command, args: &Args) -> ExitCode {
    let outcome = match command {
        Command::Policy(cmd) => crate::policy_cli::run(args, cmd).map(|out| {
            print!("{}", out.text);
            if out.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::StubAdc => {
            print!("{}", crate::providers::stub(crate::config::StubKind::Adc));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stub { which } => {
            print!("{}", crate::providers::stub(*which));
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes { vars } => routes::print(args, *vars).map(|()| ExitCode::SUCCESS),
        Command::Ca { command } => ca::run(command, args).map(|()| ExitCode::SUCCESS),
        Command::Healthcheck => healthcheck::run(args).map(|health| match health {
            Ok(()) => ExitCode::SUCCESS,
            Err(healthcheck::Unhealthy(why)) => {
                eprintln!("paude-proxy: unhealthy: {why}");
                ExitCode::FAILURE
            }
        }),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("paude-proxy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}
