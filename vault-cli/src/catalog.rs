//! `vaultctl catalog`: the catalog of approved data and the access policy.

use anyhow::Result;
use clap::Subcommand;

use crate::ctx::Ctx;
use crate::output::{outln, review_line};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Validate the catalog and the access policy, and summarise them.
    ///
    /// Example: vaultctl catalog check --policies policies
    Check,
}

pub fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    match cmd {
        Cmd::Check => {
            let policy = ctx.policy();
            let catalog = policy.catalog();
            outln!(
                out,
                "catalog OK: {} record types, {} categories ({} collected), {} purposes",
                catalog.record_types().count(),
                catalog.categories().count(),
                catalog.collected_categories().count(),
                catalog.purposes().count()
            );
            outln!(out, "policy OK: {} grants", policy.grants().len());
            outln!(out, "{}", review_line(catalog));
        }
    }
    Ok(())
}
