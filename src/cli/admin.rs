//! `sokana user …`, `sokana key …`, `sokana audit …`, `sokana privacy …` and `sokana warehouse
//! …`: managing users, second factors and API keys, checking the audit trail, answering a person's
//! privacy requests and encrypting the warehouse, from the command line, which has the metadata
//! store's file and so acts as an administrator.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use sokana::auth::audit::{Copy, Event};
use sokana::auth::{Auth, Role};
use sokana::config::Config;
use sokana::pipeline::{self, Project};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from standard input (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Every user, with role, state and whether a second factor is set up.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their sessions and API keys stop working at once.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// Give a user another role; their sessions and wire connections have it at their next request.
    SetRole {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Set a new password (from standard input) and end the user's sessions.
    ResetPassword {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Remove a user's second factor (a lost phone); they set one up at their next login.
    ResetMfa { name: String },
    /// A user's sessions, with device and address prefix.
    Sessions { name: String },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a machine client; the key is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// The user the key acts as (its requests are logged under this name; disabling the
        /// user stops the key).
        #[arg(long, default_value = "admin")]
        owner: String,
    },
    /// Every key (never the key itself).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain; fails naming the first record that was changed or removed.
    Verify,
    /// Records, oldest first, after a sequence number.
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum WarehouseCommand {
    /// Encrypt every file of the warehouse in place with the configured key (`SOKANA_WAREHOUSE_KEY`
    /// or `warehouse.key_file`), or, after a new key was put first, move every file to it (key
    /// rotation). Safe to run again after an interruption; pipelines wait meanwhile.
    Encrypt,
}

#[derive(Subcommand)]
pub enum PrivacyCommand {
    /// Everything the warehouse holds about one client, as JSON (raw rows, and mart rows that
    /// carry their keys or pseudonym).
    Export {
        #[arg(long)]
        client: String,
        /// Write the JSON here instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Remove one client from the raw tables and marts, with every older version of them; later
    /// loads keep them out. Recorded in the audit trail.
    Erase {
        #[arg(long)]
        client: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not one of admin, manager, billing, analyst, viewer"))
}

fn read_password() -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

pub async fn user(config: &Config, command: UserCommand) -> Result<()> {
    let auth = Auth::open(config).await?;
    match command {
        UserCommand::Add { name, role, .. } => {
            auth.add_user(&name, role, &read_password()?).await?;
            eprintln!("added user {name} with role {role}");
            if role.requires_mfa() {
                eprintln!("{role} accounts set up a second factor at their first login (POST /api/v1/auth/mfa/setup)");
            }
        }
        UserCommand::List { json } => {
            let users = auth.users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!("{:<24} {:<8} {:<9} {:<4}", "user", "role", "state", "mfa");
                for u in users {
                    let state = if u.disabled { "disabled" } else { "active" };
                    println!("{:<24} {:<8} {:<9} {:<4}", u.name, u.role, state, if u.mfa { "yes" } else { "no" });
                }
            }
        }
        UserCommand::Disable { name } => {
            auth.set_disabled(&name, true).await?;
            eprintln!("disabled {name}; their sessions are revoked");
        }
        UserCommand::Enable { name } => {
            auth.set_disabled(&name, false).await?;
            eprintln!("enabled {name}");
        }
        UserCommand::SetRole { name, role } => {
            auth.set_role(&name, role).await?;
            eprintln!("{name} is now {role}");
        }
        UserCommand::ResetPassword { name, .. } => {
            auth.reset_password(&name, &read_password()?).await?;
            eprintln!("new password set for {name}; their sessions are revoked");
        }
        UserCommand::ResetMfa { name } => {
            auth.mfa_reset(&name).await?;
            eprintln!("second factor removed for {name}; they set up a new one at their next login");
        }
        UserCommand::Sessions { name } => {
            for s in auth.sessions(Some(&name)).await? {
                let state = s.revoked_reason.as_deref().map_or("active".to_string(), |r| format!("revoked ({r})"));
                println!("{}  {}  {}  {}  {}", s.id, format_time(s.created_at), s.ip_prefix, s.user_agent, state);
            }
        }
    }
    Ok(())
}

pub async fn key(config: &Config, command: KeyCommand) -> Result<()> {
    let auth = Auth::open(config).await?;
    match command {
        KeyCommand::Create { name, role, days, owner } => {
            let key = auth.create_api_key(&name, role, days, &owner).await?;
            eprintln!("API key {} ({role}), expires {}; it is shown only now:", key.id, format_time(key.expires_at));
            println!("{}", key.key);
        }
        KeyCommand::List => {
            for k in auth.api_keys().await? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{}  {:<20} {:<8} expires {}  {state}", k.id, k.name, k.role, format_time(k.expires_at));
            }
        }
        KeyCommand::Revoke { id } => {
            auth.revoke_api_key(&id).await?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

fn format_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map_or_else(|| seconds.to_string(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

pub async fn audit(config: &Config, command: AuditCommand) -> Result<()> {
    let auth = Auth::open(config).await?;
    match command {
        AuditCommand::Verify => {
            let verified = auth.verify_audit().await?;
            let copy = copied_head(config).await?;
            let copied_to = match &copy {
                Copy::Newest(seq, _) => Some(*seq),
                Copy::Missing | Copy::Empty => None,
            };
            sokana::auth::audit::check_copy(auth.store(), copy).await?;
            println!("audit trail intact: {} records, head {}", verified.records, verified.head);
            if let Some(seq) = copied_to {
                println!("matches the warehouse's copy (raw.sokana_audit) up to record {seq}");
            }
        }
        AuditCommand::List { after, limit, user } => {
            for entry in auth.audit().entries(after, limit, user.as_deref()).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    Ok(())
}

/// What the warehouse's copy of the audit trail holds: its newest record, if any.
async fn copied_head(config: &Config) -> Result<Copy> {
    let warehouse = sokana::pipeline::warehouse(config)?;
    let table: sokana::warehouse::TableName = "raw.sokana_audit".parse().map_err(|e: String| anyhow::anyhow!(e))?;
    if warehouse.open(&table).await?.is_none() {
        return Ok(Copy::Missing);
    }
    let ctx = sokana::query::unmasked_session(&warehouse).await?;
    let sql = "SELECT seq, hash FROM raw.sokana_audit ORDER BY seq DESC LIMIT 1";
    let batches = sokana::query::run(&ctx, sql).await?;
    let json = sokana::query::format(&batches, sokana::query::OutputFormat::Json)?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json)?;
    Ok(rows
        .first()
        .and_then(|r| Some(Copy::Newest(r["seq"].as_i64()?, r["hash"].as_str()?.to_string())))
        .unwrap_or(Copy::Empty))
}

pub async fn privacy(
    project: &Project,
    command: PrivacyCommand,
    progress: std::sync::Arc<dyn sokana::progress::Progress>,
) -> Result<()> {
    let auth = Auth::open(project.config()).await?;
    match command {
        PrivacyCommand::Export { client, output } => {
            let export = sokana::privacy::export(project, &client).await?;
            let json = serde_json::to_string_pretty(&export)?;
            match &output {
                Some(path) => std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?,
                None => println!("{json}"),
            }
            auth.audit().record(Event {
                tables: export.tables.keys().cloned().collect(),
                rows: export.rows(),
                ..cli_event("privacy.export", format!("client {client}"))
            });
        }
        PrivacyCommand::Erase { client } => {
            let erasure = sokana::privacy::erase(project, &client, &progress).await?;
            auth.audit().record(Event {
                tables: erasure.deleted.keys().chain(&erasure.rebuilt).cloned().collect(),
                rows: erasure.deleted.values().sum(),
                ..cli_event("privacy.erase", format!("client {client}, erasure {}", erasure.id))
            });
            println!("{}", serde_json::to_string_pretty(&erasure)?);
            if erasure.source_still_holds {
                eprintln!(
                    "warning: the source still holds client {client}; later loads keep them out of the warehouse, \
                     but erase them at the source too"
                );
            }
        }
    }
    auth.audit().flush().await?;
    Ok(())
}

pub async fn warehouse(
    project: &Project,
    command: WarehouseCommand,
    progress: std::sync::Arc<dyn sokana::progress::Progress>,
) -> Result<()> {
    let WarehouseCommand::Encrypt = command;
    let auth = Auth::open(project.config()).await?;
    let _locks = pipeline::lock_all(project).await?;
    let report = sokana::warehouse::seal_all(project.warehouse(), progress.as_ref()).await?;
    auth.audit().record(cli_event(
        "warehouse.encrypt",
        format!(
            "key {}: {} files encrypted, {} moved from older keys, {} already current",
            report.key_id, report.encrypted, report.rekeyed, report.current
        ),
    ));
    auth.audit().flush().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// An audit record of an administrator's command, made as the person at the terminal (who, like
/// [`sokana::query::engine::Caller::cli`], acts as an admin: they hold the store's files).
fn cli_event(action: &str, detail: String) -> Event {
    let caller = sokana::query::engine::Caller::cli();
    Event {
        user: caller.user,
        role: caller.scope,
        origin: caller.origin.into(),
        request_id: caller.request_id,
        action: action.into(),
        detail,
        outcome: "ok".into(),
        ..Event::now()
    }
}
