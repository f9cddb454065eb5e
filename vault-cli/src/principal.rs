//! `vaultctl principal`: staff and school apps, their roles and tokens.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use vault_core::{PrincipalId, Role, Scope};

use crate::ctx::Ctx;
use crate::output::{Format, json_line, outln};
use crate::parse;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a principal; its token is printed once and never again.
    ///
    /// The first principal of a new vault is made with the custodian's identity alone; every
    /// later one by a principal who administers principals in each school named (a director;
    /// the general director for ROLE@*), given with --token-file or VAULT_TOKEN.
    ///
    /// Example: vaultctl principal add --name "Nurse Aigul" --role nurse@school-1 --identity custodian.txt --token-file director.token
    Add {
        #[arg(long)]
        name: String,
        /// ROLE@SCHOOL, or ROLE@* for the whole network; repeatable.
        #[arg(long = "role", required = true, value_parser = parse::role_at)]
        roles: Vec<(Scope, Role)>,
    },
    /// The list of persons with access (Order 179/НҚ): names, roles, created, revoked.
    ///
    /// Example: vaultctl principal list --format json --identity custodian.txt
    List {
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Revoke a principal's token at once, on every server.
    ///
    /// Example: vaultctl principal revoke 67e55044-10b1-426f-9247-bb680e5fe0c8 --identity custodian.txt
    Revoke {
        #[arg(value_parser = parse::principal_id)]
        id: PrincipalId,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    let vault = ctx.vault().await?;
    match cmd {
        Cmd::Add { name, roles } => {
            let (p, token) = if ctx.has_token() {
                ctx.session(&vault)
                    .await?
                    .create_principal(&name, &roles)
                    .await?
            } else {
                vault.bootstrap_principal(&name, &roles).await?
            };
            outln!(out, "principal {} created", p.id());
            outln!(
                out,
                "token (shown once; give it to its holder now): {}",
                token.expose()
            );
        }
        Cmd::List {
            format: Format::Json,
        } => {
            for e in vault.list_principals().await? {
                let roles: Vec<serde_json::Value> = e
                    .roles
                    .iter()
                    .map(|(s, r)| json!({"role": r.to_string(), "school": s.as_str()}))
                    .collect();
                json_line(
                    out,
                    &json!({"id": e.id.to_string(), "name": e.name, "created_at": e.created_at,
                            "revoked_at": e.revoked_at, "roles": roles}),
                );
            }
        }
        Cmd::List {
            format: Format::Text,
        } => {
            outln!(
                out,
                "{:<36}  {:<30}  {:<10}  {:<10}  ROLES",
                "ID",
                "NAME",
                "CREATED",
                "REVOKED"
            );
            for e in vault.list_principals().await? {
                let roles: Vec<String> = e
                    .roles
                    .iter()
                    .map(|(s, r)| format!("{r}@{}", s.as_str()))
                    .collect();
                outln!(
                    out,
                    "{:<36}  {:<30}  {:<10}  {:<10}  {}",
                    e.id,
                    e.name,
                    e.created_at.format("%Y-%m-%d"),
                    e.revoked_at
                        .map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| "-".into()),
                    roles.join(" ")
                );
            }
        }
        Cmd::Revoke { id } => {
            vault.revoke_principal(id).await?;
            outln!(out, "principal {id} revoked");
        }
    }
    Ok(())
}
