//! `vaultctl`: the key custodian's and privacy officer's command line. It works on the stores
//! and the keyring directly; no server needs to run, and it is safe while servers serve.
//!
//! `cli` holds the command tree, one module per command group its subcommands and their work,
//! `ctx` what they share (stores, unlock, the principal acted as), `parse` the value parsers.
#![forbid(unsafe_code)]

mod audit;
mod backup;
mod catalog;
mod cli;
mod ctx;
mod incident;
mod keyring;
mod output;
mod parse;
mod principal;
mod retention;
mod transfer;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // A value our parsers refuse is wrong input like any other: one line and exit code 1.
        // Everything else (usage errors, --help, --version) is clap's, with clap's exit codes.
        Err(e) => match parse::BadValue::in_clap_error(&e) {
            Some(bad) => {
                report(bad);
                return ExitCode::FAILURE;
            }
            None => e.exit(),
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = String::new();
    let result = rt.block_on(async {
        let r = cli.run(&mut out).await;
        // The vault is dropped by now: let its anchor task anchor what this command appended.
        vault_core::settle_audit_anchors(std::time::Duration::from_secs(10)).await;
        r
    });
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("error: cannot write output: {e}");
            return ExitCode::FAILURE;
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<transfer::Refused>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(e) => {
            report(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

/// `error: ...`, then a `  caused by: ...` line for each underlying error.
fn report(e: &(dyn std::error::Error + 'static)) {
    eprintln!("error: {e}");
    for cause in anyhow::Chain::new(e).skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
