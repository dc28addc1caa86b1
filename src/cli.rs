//! CLI: argument parsing and the commands. The only module that prints.
//!
//! Owns clap definitions, loading connectors and `sluice.yaml` for a command, and rendering
//! results for people (text) and programs (`--json`, JSON lines). Runtime behaviour is in flags;
//! pipeline meaning is in YAML. Exit codes: 0 ok, 1 problems found or the command failed,
//! 2 cannot run (usage, unreadable files, bad configuration).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::diag::{self, Diagnostic};
use crate::http::Connection;
use crate::plan::{self, Connector};
use crate::runtime::Runtime;
use crate::spec;
use crate::store::Store;
use crate::telemetry::{self, LogFormat};

pub use crate::plan::BUILTIN_INTERCOM;

mod connections;
pub use connections::ConnectionsCommand;

/// `println!` that returns an error instead of panicking when stdout is gone (`sluice … |
/// head`): [`main`] ends such a run quietly. Every line the CLI prints to stdout goes
/// through this macro or [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// `print!` through the same path as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        write!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// Whether an error is a write to a closed pipe (the reader, e.g. `head`, has exited).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// sluice: YAML connectors and recipes that poll SaaS APIs and run actions.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// Runtime configuration file with connections.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONFIG",
        default_value = "sluice.yaml"
    )]
    pub config: PathBuf,
    /// Whether `--config` (or SLUICE_CONFIG) was given: then a missing file is an error
    /// wherever the config is read; the default `sluice.yaml` may be absent.
    #[arg(skip)]
    pub config_given: bool,
    /// Directory of connector definitions (default: ./connectors if present, else built-in).
    #[arg(long, global = true, env = "SLUICE_CONNECTORS")]
    pub connectors: Option<PathBuf>,
    /// Directory of recipe files.
    #[arg(long, global = true, env = "SLUICE_RECIPES", default_value = "recipes")]
    pub recipes: PathBuf,
    /// Directory of connection files: each `<name>.yaml` is one connection (the fields of a
    /// `sluice.yaml` connection), added to those of `sluice.yaml`. Default: none.
    #[arg(long, global = true, env = "SLUICE_CONNECTIONS_DIR")]
    pub connections_dir: Option<PathBuf>,
    /// State directory (the sled store: cursors, dedupe keys, journal, dead letters).
    #[arg(long, global = true, env = "SLUICE_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`warn`, `info`, `debug`, `sluice=debug`); default `info` for
    /// `run`, `warn` for the other commands.
    #[arg(long, global = true, env = "SLUICE_LOG")]
    pub log: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The files `sluice schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFile {
    /// Recipe files (`recipes/*.yaml`).
    Recipe,
    /// The configuration file (`sluice.yaml`).
    Config,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one action and print its output: `sluice call intercom.find_contact --with '{"id":"…"}'`.
    Call {
        /// `<connector>.<action>`.
        action: String,
        /// Connection name from the config file.
        #[arg(long)]
        connection: String,
        /// Inputs as a JSON object.
        #[arg(long = "with", default_value = "{}")]
        with: String,
        /// Print the request that would be sent instead of sending it.
        #[arg(long)]
        dry_run: bool,
        /// One JSON value per line (the output, or each request with `--dry-run`) instead
        /// of indented JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one trigger and print matching records as JSON lines.
    Poll {
        /// `<connector>.<trigger>`.
        trigger: String,
        /// Connection name from the config file.
        #[arg(long)]
        connection: String,
        /// Records changed at or after this time: Unix seconds, `YYYY-MM-DD` (UTC) or RFC 3339.
        /// Default: now (on the server's clock) minus the trigger's lookback.
        #[arg(long)]
        since: Option<String>,
        /// Trigger options as a JSON object.
        #[arg(long = "with", default_value = "{}")]
        with: String,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// List and describe connectors.
    Connectors {
        /// What to show.
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// Check connector and recipe files and report every problem with file:line:col.
    Validate {
        /// Files or directories (default: `connectors/` and `recipes/`).
        paths: Vec<PathBuf>,
        /// Print problems as JSON.
        #[arg(long)]
        json: bool,
        /// Fail (exit 1) on warnings too, for CI.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Dry-run a recipe for a sample record: print every request it would send, send nothing.
    Test {
        /// The recipe file.
        recipe: PathBuf,
        /// A JSON file: the trigger record, or `{"record": …, "steps": {<id>: <output>}}`.
        #[arg(
            long,
            conflicts_with = "sample_from",
            required_unless_present = "sample_from"
        )]
        sample: Option<PathBuf>,
        /// Take a real record of the trigger from this connection instead: the newest one
        /// that passes the recipe's filter (or the newest of all when none does).
        #[arg(long)]
        sample_from: Option<String>,
        /// With `--sample-from`: the record with this id (among those the trigger returns
        /// in the last year).
        #[arg(long, requires = "sample_from")]
        record: Option<String>,
        /// For a recipe that runs for several connections: the instance to show (default:
        /// the first).
        #[arg(long)]
        connection: Option<String>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of recipe files, completed with the connectors' triggers, actions
    /// and inputs (for editors: yaml-language-server), or of `sluice.yaml`.
    Schema {
        /// Which file: `recipe` (default) or `config` (`sluice.yaml`).
        #[arg(value_enum, default_value = "recipe")]
        file: SchemaFile,
        /// Only this connector's triggers and actions (default: every loaded connector).
        #[arg(long)]
        connector: Option<String>,
    },
    /// Run recipes: as a long-running sidecar that keeps every recipe on its schedule (with
    /// `/livez`, `/readyz`, `/metrics` on `--listen`), or `--once`: one cycle of every recipe
    /// (or of `--recipe`) with a summary per recipe.
    Run {
        /// One cycle, then exit. While a sidecar holds the state, `--once --recipe X` asks it
        /// to run X now.
        #[arg(long)]
        once: bool,
        /// Only this recipe (with `--once`).
        #[arg(long, requires = "once")]
        recipe: Option<String>,
        /// Print the reports as JSON on stdout, on its last line (with `--once`).
        #[arg(long, requires = "once")]
        json: bool,
        /// Exit 1 when the run created dead letters (with `--once`; for CI).
        #[arg(long, requires = "once")]
        fail_on_dead_letters: bool,
        /// Where the sidecar serves `/livez`, `/readyz`, `/metrics` and its admin API. Any
        /// address other than loopback needs SLUICE_ADMIN_TOKEN.
        #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:9187")]
        listen: String,
        /// The sidecar's URL as a browser reaches it (through a proxy, say), when not
        /// `http://<listen address>`: the status page's OAuth "Connect" sends the provider
        /// `<URL>/oauth/callback` as the redirect URL, which the app must list.
        #[arg(long, env = "SLUICE_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
        /// After SIGTERM or SIGINT, how long cycles under way may take to finish and commit.
        #[arg(long, env = "SLUICE_SHUTDOWN_TIMEOUT", default_value = "25s")]
        shutdown_timeout: String,
        /// Do not watch the files for changes (reload on SIGHUP only).
        #[arg(long, conflicts_with = "once")]
        no_watch: bool,
        /// At most this many recipe cycles run at once (a burst of catch-ups after downtime
        /// waits for its turn).
        #[arg(long, env = "SLUICE_MAX_CYCLES", default_value_t = 64)]
        max_cycles: usize,
    },
    /// Show or reset recipe state (cursors, dedupe keys, journal).
    State {
        /// What to do.
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Records whose chain failed for good.
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Authorize an `auth: oauth2` connection: prints (and on a desktop opens) the
    /// provider's authorize URL, waits for the browser on a loopback port, stores the token
    /// encrypted in the state directory.
    Connect {
        /// The connection's name in the config file.
        name: String,
        /// Only print the URL (also when no display is available).
        #[arg(long)]
        no_browser: bool,
        /// The loopback port the browser comes back to (default: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// How long to wait for the browser.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Connections of the config file: list, check against the API, rotate the token key.
    Connections {
        /// What to do.
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Run the built-in Intercom simulator on loopback.
    Sim(crate::sim::SimArgs),
    /// Show sluice working against the built-in Intercom simulator (no account needed).
    Demo,
    /// Print a shell completion script: `sluice completions bash > ~/.local/share/bash-completion/completions/sluice`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Cursors, key counts and the records under way.
    Show {
        /// Only this recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Forget a recipe's cursor, dedupe keys and journal (its next run starts afresh from
    /// `start_from`). Dead letters are kept.
    Reset {
        /// The recipe.
        #[arg(long)]
        recipe: String,
    },
}

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// One line per dead letter, oldest first.
    List {
        /// Only this recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// A JSON array of the letters (with their ids).
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter (record, failed step, error, request).
    Show {
        /// Its id (from `list`).
        id: u64,
        /// The stored letter as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the record's chain again from the step that failed.
    Replay {
        /// Its id.
        id: u64,
    },
    /// Delete a dead letter.
    Drop {
        /// Its id.
        id: u64,
    },
}

/// `connectors` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// One line per connector.
    List {
        /// A JSON array: id, title, trigger and action names.
        #[arg(long)]
        json: bool,
    },
    /// Every trigger and action of a connector, with inputs and outputs; or one of them
    /// (`intercom.create_contact`).
    Show {
        /// Connector id, or `<connector>.<trigger or action>`.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// The sidecar's options on the command line of `run --once` are a mistake; from the
/// environment they are not (`run --once` beside a sidecar's environment file), so clap's
/// `conflicts_with`, which counts both, is not used for them.
fn sidecar_options_given_to_once(m: &clap::ArgMatches) -> Result<(), clap::Error> {
    let Some(("run", run)) = m.subcommand() else {
        return Ok(());
    };
    if !run.get_flag("once") {
        return Ok(());
    }
    for (id, flag) in [
        ("listen", "--listen"),
        ("public_url", "--public-url"),
        ("shutdown_timeout", "--shutdown-timeout"),
        ("max_cycles", "--max-cycles"),
    ] {
        if run.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Built, so the usage line names `sluice run`.
            cmd.build();
            let run_cmd = cmd.find_subcommand_mut("run").map(|c| c.clone());
            let e = run_cmd.unwrap_or(cmd).error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("the argument '--once' cannot be used with '{flag}' (a sidecar option)"),
            );
            return Err(e);
        }
    }
    Ok(())
}

/// Parses arguments from the process and runs the command.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| sidecar_options_given_to_once(&m).map(|()| m))
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let mut cli = match parsed {
        Ok((mut c, m)) => {
            c.config_given = m
                .value_source("config")
                .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
            c
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let level = cli.log.take().unwrap_or_else(|| {
        match cli.command {
            Command::Run { .. } => "info",
            _ => "warn",
        }
        .to_string()
    });
    if let Err(why) = telemetry::check_filter(&level) {
        eprintln!("error: --log `{level}`: {why}");
        return ExitCode::from(2);
    }
    cli.log = Some(level.clone());
    telemetry::init(cli.log_format, &level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let format = cli.log_format;
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of our stdout has gone (`| head`): it has what it wanted.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::line(format, "ERROR", &format!("error: {e:#}"), None);
            ExitCode::from(2)
        }
    }
}

/// Runs a parsed command. `Err` means the command could not run (exit 2).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Call {
            action,
            connection,
            with,
            dry_run,
            json,
        } => cmd_call(&cli, action, connection, with, *dry_run, *json).await,
        Command::Poll {
            trigger,
            connection,
            since,
            with,
            limit,
        } => cmd_poll(&cli, trigger, connection, since.as_deref(), with, *limit).await,
        Command::Connectors { command } => {
            let connectors = load_connectors(&cli)?;
            match command {
                ConnectorsCommand::List { json } => {
                    if *json {
                        let list: Vec<Value> = connectors
                            .iter()
                            .map(|c| {
                                json!({
                                    "id": c.id,
                                    "title": c.api.title,
                                    "triggers": c.triggers.keys().collect::<Vec<_>>(),
                                    "actions": c.actions.keys().collect::<Vec<_>>(),
                                })
                            })
                            .collect();
                        outln!("{}", serde_json::to_string_pretty(&list)?);
                        return Ok(ExitCode::SUCCESS);
                    }
                    for c in &connectors {
                        outln!(
                            "{:<12} {} ({} triggers, {} actions)",
                            c.id,
                            c.api.title,
                            c.triggers.len(),
                            c.actions.len()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                ConnectorsCommand::Show { id, json } => {
                    // The reference is the connector file's own documentation: its spec.
                    let (cid, entry) = match id.split_once('.') {
                        Some((c, e)) => (c, Some(e)),
                        None => (id.as_str(), None),
                    };
                    let c = connector_spec(&cli, find_connector(&connectors, cid)?)?;
                    let c = &c;
                    match entry {
                        None if *json => {
                            outln!("{}", serde_json::to_string_pretty(&describe(c))?)
                        }
                        None => out!("{}", describe_text(c)),
                        Some(name) => {
                            let Some((v, text)) = describe_one(c, name) else {
                                let names = c.triggers.keys().chain(c.actions.keys());
                                let hint = spec::did_you_mean(name, names.map(String::as_str))
                                    .map(|s| format!("; did you mean `{cid}.{s}`?"))
                                    .unwrap_or_else(|| {
                                        format!("; see `sluice connectors show {cid}`")
                                    });
                                bail!("connector `{cid}` has no trigger or action `{name}`{hint}");
                            };
                            if *json {
                                outln!("{}", serde_json::to_string_pretty(&v)?);
                            } else {
                                out!("{text}");
                            }
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Validate {
            paths,
            json,
            deny_warnings,
        } => cmd_validate(&cli, paths, *json, *deny_warnings),
        Command::Test {
            recipe,
            sample,
            sample_from,
            record,
            connection,
            json,
        } => {
            cmd_test(
                &cli,
                recipe,
                connection.as_deref(),
                sample.as_deref(),
                sample_from.as_deref().map(|c| (c, record.as_deref())),
                *json,
            )
            .await
        }
        Command::Run {
            once: true,
            recipe,
            json,
            fail_on_dead_letters,
            ..
        } => cmd_run_once(&cli, recipe.as_deref(), *json, *fail_on_dead_letters).await,
        Command::Run {
            listen,
            public_url,
            shutdown_timeout,
            no_watch,
            max_cycles,
            ..
        } => {
            if cli.config_given && !cli.config.exists() {
                bail!("the config file `{}` does not exist", cli.config.display());
            }
            let secs = plan::parse_duration(shutdown_timeout)
                .map_err(|m| anyhow!("--shutdown-timeout: {m}"))?;
            crate::sidecar::run(crate::sidecar::Options {
                config: cli.config.clone(),
                connections: cli.connections_dir.clone(),
                connectors: connectors_dir(&cli),
                recipes: cli.recipes.clone(),
                state_dir: cli.state_dir.clone(),
                listen: listen.clone(),
                public_url: public_url.clone(),
                shutdown_timeout: std::time::Duration::from_secs(secs.max(0) as u64),
                watch: !no_watch,
                max_cycles: *max_cycles,
            })
            .await
        }
        Command::State { command } => cmd_state(&cli, command).await,
        Command::Connect {
            name,
            no_browser,
            port,
            timeout,
        } => connections::cmd_connect(&cli, name, *no_browser, *port, timeout).await,
        Command::Connections { command } => connections::cmd_connections(&cli, command).await,
        Command::DeadLetters { command } => cmd_dead_letters(&cli, command).await,
        Command::Schema { file, connector } => {
            let mut connectors = load_connectors(&cli)?;
            if let Some(id) = connector {
                connectors = vec![find_connector(&connectors, id)?.clone()];
            }
            let schema = match file {
                SchemaFile::Recipe => crate::schema::recipe(&connectors),
                SchemaFile::Config => crate::schema::config(&connectors),
            };
            outln!("{}", crate::schema::to_text(&schema));
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let connectors = load_connectors(&cli)?;
            let report = crate::demo::run(&connectors, &cli.recipes).await?;
            out!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Generated into memory, then written like any output (a closed pipe is quiet).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "sluice", &mut script);
            std::io::stdout().lock().write_all(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => {
            let config = args.config()?;
            let tokens = config.tokens.join(", ");
            // Seed before listening, so the first request finds the data in place.
            let sim = crate::sim::Sim::new(config);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
                .await
                .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
            let addr = listener.local_addr()?;
            eprintln!(
                "Intercom simulator listening on http://{addr} (tokens: {tokens}). Ctrl-C stops it."
            );
            crate::sim::serve(listener, sim, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config file's path and text; `None` when it does not exist.
fn config_source(cli: &Cli) -> Result<Option<(PathBuf, String)>> {
    match std::fs::read_to_string(&cli.config) {
        Ok(text) => Ok(Some((cli.config.clone(), text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cli.config_given => Err(anyhow!(
            "the config file `{}` does not exist (--config / SLUICE_CONFIG)",
            cli.config.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(
            "cannot read the config file `{}`: {e}",
            cli.config.display()
        )),
    }
}

/// The connection files in `--connections-dir` (none when it is not given).
fn connection_sources(cli: &Cli) -> Result<Vec<(PathBuf, String)>> {
    let Some(dir) = &cli.connections_dir else {
        return Ok(Vec::new());
    };
    if !dir.is_dir() {
        bail!(
            "the connections directory `{}` does not exist (--connections-dir / SLUICE_CONNECTIONS_DIR)",
            dir.display()
        );
    }
    yaml_files(std::slice::from_ref(dir))?
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read `{}`", f.display()))?;
            Ok((f, text))
        })
        .collect()
}

/// The recipe files in `--recipes` (only recipe `only` when given).
fn recipe_sources(cli: &Cli, only: Option<&str>) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for f in yaml_files(std::slice::from_ref(&cli.recipes))? {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if only.is_some_and(|o| o != stem) {
            continue;
        }
        let text = std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read `{}`", f.display()))?;
        out.push((f, text));
    }
    if let Some(o) = only {
        if out.is_empty() {
            bail!("no recipe `{o}` in `{}`", cli.recipes.display());
        }
    }
    Ok(out)
}

/// Builds the plan — connectors, `sluice.yaml` and the given recipe files — with secrets
/// from the environment. Every problem is listed.
fn load_plan(
    cli: &Cli,
    recipes: Vec<(PathBuf, String)>,
    secrets: plan::Secrets,
) -> Result<plan::Plan> {
    let connectors = load_connectors(cli)?;
    let env = |k: &str| std::env::var(k).ok();
    plan::build(plan::Sources {
        connectors,
        config: config_source(cli)?,
        connection_files: connection_sources(cli)?,
        recipes,
        env: &env,
        secrets,
    })
    .map_err(|mut diags| {
        diag::sort(&mut diags);
        let list: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        anyhow!(
            "the configuration has problems; run `sluice validate`:\n{}",
            list.join("\n")
        )
    })
}

fn fmt_ts(ts: Option<i64>) -> String {
    match ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
        Some(d) => d.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "-".into(),
    }
}

/// Where state commands reach the store: directly, or through the sidecar that holds it.
enum Backend {
    Local(Arc<dyn Store>),
    Sidecar(crate::sidecar::client::Client),
}

async fn backend(cli: &Cli) -> Result<Backend> {
    if let Some(c) = crate::sidecar::client::running(&cli.state_dir).await {
        return Ok(Backend::Sidecar(c));
    }
    match crate::store::SledStore::open(&cli.state_dir) {
        Ok(s) => Ok(Backend::Local(Arc::new(s))),
        Err(e) if crate::sidecar::client::store_in_use(&e) => Ok(Backend::Sidecar(
            crate::sidecar::client::Client::find(&cli.state_dir)?,
        )),
        Err(e) => Err(e),
    }
}

/// `?recipe=…`, encoded.
fn recipe_query(recipe: Option<&str>) -> String {
    recipe
        .map(|r| {
            format!(
                "?recipe={}",
                percent_encoding::utf8_percent_encode(r, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .unwrap_or_default()
}

async fn cmd_run_once(
    cli: &Cli,
    only: Option<&str>,
    json: bool,
    fail_on_dead_letters: bool,
) -> Result<ExitCode> {
    let reports: Vec<crate::engine::CycleReport> = match backend(cli).await? {
        Backend::Local(store) => run_once_here(cli, only, store).await?,
        Backend::Sidecar(client) => {
            let Some(recipe) = only else {
                bail!("a sidecar on {} holds the state and runs every recipe on its schedule: give --recipe ID to have it run one now", client.base());
            };
            let v = client
                .post(&format!("/api/run{}", recipe_query(Some(recipe))))
                .await?;
            serde_json::from_value(v).context("the sidecar's reports")?
        }
    };
    let failed = reports.iter().any(|r| r.error.is_some());
    let dead: u64 = reports.iter().map(|r| r.dead_letters).sum();
    if json {
        // On stdout's last line, after any `emit` lines: `| tail -n 1 | jq`.
        outln!("{}", serde_json::to_string(&reports)?);
    } else if cli.log_format == LogFormat::Json {
        for r in &reports {
            telemetry::line(
                LogFormat::Json,
                "INFO",
                "cycle report",
                Some(json!({ "report": r })),
            );
        }
    } else {
        for r in &reports {
            // A recipe run for several connections: one line per instance.
            let several = reports.iter().filter(|o| o.recipe == r.recipe).count() > 1;
            eprintln!(
                "{}: polled {}, already seen {}, filtered {}, fired {} ({} resumed), finished {}, steps ok {} / failed {} / skipped {}, dead letters {}, unfinished {}, cursor {} -> {}",
                if several && !r.instance.is_empty() { &r.instance } else { &r.recipe }, r.polled, r.skipped_seen, r.filtered, r.fired, r.resumed, r.finished, r.steps_ok, r.steps_failed, r.steps_skipped, r.dead_letters, r.unfinished,
                fmt_ts(r.cursor_before), fmt_ts(r.cursor_after)
            );
            if let Some(e) = &r.error {
                eprintln!("  error: {e}");
            }
        }
    }
    if fail_on_dead_letters && dead > 0 {
        if !failed {
            telemetry::line(
                cli.log_format,
                "ERROR",
                &format!("error: the run created {dead} dead letter(s) (--fail-on-dead-letters); see `sluice dead-letters list`"),
                None,
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One cycle of each recipe (of `only`) on this process, with a progress bar on a terminal.
async fn run_once_here(
    cli: &Cli,
    only: Option<&str>,
    store: Arc<dyn Store>,
) -> Result<Vec<crate::engine::CycleReport>> {
    let plan = load_plan(cli, recipe_sources(cli, only)?, plan::Secrets::Required)?;
    let rt = Runtime::with_credentials(
        plan,
        store,
        Arc::new(crate::oauth::Credentials::new(&cli.state_dir)),
    )?;
    // SIGINT or SIGTERM: take no new record, finish the steps under way, commit, exit. A
    // second signal exits at once (the journal makes that safe too).
    let (stop, shutdown) = crate::runtime::shutdown_channel();
    let mut signals = crate::sidecar::StopSignals::new();
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("Stopping: the steps under way finish and are committed; a second signal exits at once.");
        stop.trigger();
        signals.next().await;
        std::process::exit(130);
    });
    let meters: Vec<Arc<crate::engine::Meter>> =
        rt.plan().recipes.iter().map(|_| Arc::default()).collect();
    let bar = progress_bar(cli, &rt, &meters);
    // Every recipe's cycle at once: they share the connections (and their rate budgets).
    // Polled together on this task (not spawned): the connections' I/O runs on the runtime's
    // workers meanwhile, and a cycle's page handling overlaps its fetches best that way.
    let cycles = rt.plan().recipes.iter().zip(&meters).map(|(r, m)| {
        let opts = crate::engine::CycleOptions {
            meter: Some(m.clone()),
            ..crate::engine::CycleOptions::new(shutdown.clone())
        };
        crate::engine::run_cycle(rt.clone(), r.clone(), opts)
    });
    let mut reports = futures_util::future::join_all(cycles).await;
    // An instance left out with its connection (a recipe for several connections runs for
    // the others) fails the run all the same.
    for (instance, why) in &rt.plan().skipped {
        reports.push(crate::engine::CycleReport {
            recipe: instance.split('@').next().unwrap_or_default().to_string(),
            instance: instance.clone(),
            error: Some(why.clone()),
            ..Default::default()
        });
    }
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    // Keep the run history to its bounds (a sidecar does this in the background).
    let store = rt.store()?;
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(e) = crate::history::prune_all(store, now, &rt.plan().retention, 1_000) {
        tracing::warn!(error = %format!("{e:#}"), "The run history could not be pruned.");
    }
    rt.log_rate_budgets();
    Ok(reports)
}

/// On a terminal: a line that shows the cycles' progress (records, rate, cursor), redrawn
/// every 200 ms.
fn progress_bar(
    cli: &Cli,
    rt: &Runtime,
    meters: &[Arc<crate::engine::Meter>],
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    if cli.log_format == LogFormat::Json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let names: Vec<String> = rt.plan().recipes.iter().map(|r| r.id.clone()).collect();
    let meters = meters.to_vec();
    let started = std::time::Instant::now();
    let b = bar.clone();
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            every.tick().await;
            let (mut polled, mut fired, mut finished) = (0, 0, 0);
            let mut oldest: Option<(i64, &str)> = None;
            for (m, name) in meters.iter().zip(&names) {
                let r = m.read();
                polled += r.polled;
                fired += r.fired;
                finished += r.finished;
                if r.cursor > 0 && oldest.is_none_or(|(c, _)| r.cursor < c) {
                    oldest = Some((r.cursor, name));
                }
            }
            let rate = polled as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let cursor = oldest
                .map(|(c, n)| format!(", cursor {} ({n})", crate::engine::fmt_cursor(c)))
                .unwrap_or_default();
            b.set_message(format!(
                "{polled} records polled ({rate:.0}/s), {fired} fired, {finished} finished{cursor}"
            ));
            b.tick();
        }
    });
    Some((bar, task))
}

async fn cmd_state(cli: &Cli, command: &StateCommand) -> Result<ExitCode> {
    let backend = backend(cli).await?;
    match command {
        StateCommand::Show { recipe, json } => {
            let states: Vec<crate::admin::StateView> = match &backend {
                Backend::Local(store) => crate::admin::state(store.as_ref(), recipe.as_deref())?,
                Backend::Sidecar(c) => serde_json::from_value(
                    c.get(&format!("/api/state{}", recipe_query(recipe.as_deref())))
                        .await?,
                )?,
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&states)?);
            } else if states.is_empty() {
                outln!(
                    "no recipe has run yet (state directory `{}`)",
                    cli.state_dir.display()
                );
            } else {
                for v in &states {
                    let s = &v.state;
                    outln!(
                        "{}: cursor {} (floor {}), {} dedupe keys, {} under way, {} dead letters",
                        s["recipe"].as_str().unwrap_or(""),
                        fmt_ts(s["checkpoint"]["cursor"].as_i64()),
                        fmt_ts(s["checkpoint"]["floor"].as_i64()),
                        s["dedupe_keys"],
                        s["in_journal"],
                        s["dead_letters"]
                    );
                    for e in &v.journal {
                        outln!("  under way: {} (done: {})", e.key, json!(e.steps_done));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Reset { recipe } => {
            let reset: Vec<String> = match &backend {
                Backend::Local(store) => {
                    let ns = crate::admin::instances_with_state(store.as_ref(), recipe)?;
                    for n in &ns {
                        store.reset(n)?;
                    }
                    ns
                }
                Backend::Sidecar(c) => {
                    let v = c
                        .post(&format!("/api/state/reset{}", recipe_query(Some(recipe))))
                        .await?;
                    serde_json::from_value(v["reset"].clone())?
                }
            };
            if reset.is_empty() {
                eprintln!(
                    "error: recipe `{recipe}` has no state to reset (see `sluice state show`)"
                );
                return Ok(ExitCode::from(1));
            }
            outln!("reset `{recipe}`: its next run starts from its `start_from`");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn cmd_dead_letters(cli: &Cli, command: &DeadLetterCommand) -> Result<ExitCode> {
    let backend = backend(cli).await?;
    match command {
        DeadLetterCommand::List { recipe, json } => {
            let all: Vec<crate::admin::Letter> = match &backend {
                Backend::Local(store) => {
                    crate::admin::dead_letters(store.as_ref(), recipe.as_deref())?
                }
                Backend::Sidecar(c) => serde_json::from_value(
                    c.get(&format!(
                        "/api/dead-letters{}",
                        recipe_query(recipe.as_deref())
                    ))
                    .await?,
                )?,
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            if all.is_empty() {
                outln!("no dead letters");
            }
            for l in all {
                let d = &l.letter;
                outln!(
                    "{:>6}  {}  {}  step `{}`  {}  {}",
                    l.id,
                    fmt_ts(Some(d.at)),
                    d.recipe,
                    d.failed_step,
                    d.key,
                    d.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLetterCommand::Show { id, json } => {
            let found = match &backend {
                Backend::Local(store) => store.dead_letter(*id)?.map(serde_json::to_value),
                Backend::Sidecar(c) => match c.get(&format!("/api/dead-letters/{id}")).await {
                    Ok(mut v) => {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("id");
                        }
                        Some(Ok(v))
                    }
                    Err(e) if crate::sidecar::client::not_found(&e) => None,
                    Err(e) => return Err(e),
                },
            };
            match found {
                Some(d) => {
                    let d = d?;
                    if *json {
                        outln!("{}", serde_json::to_string_pretty(&d)?);
                    } else {
                        let letter: crate::store::DeadLetter = serde_json::from_value(d)?;
                        out!("{}", dead_letter_text(*id, &letter));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("error: no dead letter {id} (see `sluice dead-letters list`)");
                    Ok(ExitCode::from(1))
                }
            }
        }
        DeadLetterCommand::Drop { id } => {
            let dropped = match &backend {
                Backend::Local(store) => store.drop_dead_letter(*id)?,
                Backend::Sidecar(c) => {
                    match c.post(&format!("/api/dead-letters/{id}/drop")).await {
                        Ok(_) => true,
                        Err(e) if crate::sidecar::client::not_found(&e) => false,
                        Err(e) => return Err(e),
                    }
                }
            };
            if dropped {
                outln!("dropped dead letter {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no dead letter {id}");
                Ok(ExitCode::from(1))
            }
        }
        DeadLetterCommand::Replay { id } => {
            let outcome = match backend {
                Backend::Local(store) => {
                    let Some(d) = store.dead_letter(*id)? else {
                        eprintln!("error: no dead letter {id}");
                        return Ok(ExitCode::from(1));
                    };
                    let plan = load_plan(
                        cli,
                        // The letter names its recipe instance, `recipe@connection`.
                        recipe_sources(cli, Some(d.recipe.split('@').next().unwrap_or(&d.recipe)))?,
                        plan::Secrets::Required,
                    )?;
                    let rt = Runtime::with_credentials(
                        plan,
                        store,
                        Arc::new(crate::oauth::Credentials::new(&cli.state_dir)),
                    )?;
                    let Some(recipe) = rt
                        .plan()
                        .recipes
                        .iter()
                        .find(|r| r.instance == d.recipe)
                        .cloned()
                    else {
                        eprintln!("error: recipe instance `{}` no longer exists (its recipe now uses another connection); run the record again by hand", d.recipe);
                        return Ok(ExitCode::from(1));
                    };
                    crate::admin::replay(&rt, &recipe, *id).await?
                }
                Backend::Sidecar(c) => {
                    match c.post(&format!("/api/dead-letters/{id}/replay")).await {
                        Ok(v) => serde_json::from_value(v)?,
                        Err(e) => {
                            eprintln!("error: {e:#}");
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
            };
            if outcome.finished {
                outln!("{}", outcome.message);
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{}", outcome.message);
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// `dead-letters show ID` for people: what failed and why, the request, the steps that had
/// finished, then the record.
pub fn dead_letter_text(id: u64, d: &crate::store::DeadLetter) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "dead letter {id}");
    let _ = writeln!(out, "  recipe      {}", d.recipe);
    let _ = writeln!(
        out,
        "  record      {} (cursor {})",
        d.key,
        fmt_ts(Some(d.ts))
    );
    let _ = writeln!(out, "  failed at   {}", fmt_ts(Some(d.at)));
    let _ = writeln!(out, "  step        {}", d.failed_step);
    let class = serde_json::to_value(d.class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(out, "  class       {class}");
    if let Some(r) = &d.request {
        let status = d.status.map(|s| format!(" -> {s}")).unwrap_or_default();
        let _ = writeln!(out, "  request     {r}{status}");
    }
    let _ = writeln!(out, "  error       {}", d.error);
    if d.done.is_empty() {
        let _ = writeln!(out, "  done before none (replay starts at the first step)");
    } else {
        let done: Vec<String> = d
            .done
            .iter()
            .map(|s| {
                if s.skipped {
                    format!("{} (skipped)", s.step)
                } else {
                    s.step.clone()
                }
            })
            .collect();
        let _ = writeln!(out, "  done before {}", done.join(", "));
    }
    let record = serde_json::to_string_pretty(&d.record).unwrap_or_default();
    let _ = writeln!(out, "  record:");
    for l in record.lines() {
        let _ = writeln!(out, "    {l}");
    }
    let _ = writeln!(
        out,
        "next: `sluice dead-letters replay {id}` runs it again from step `{}`; `sluice dead-letters drop {id}` forgets it",
        d.failed_step
    );
    out
}

async fn cmd_test(
    cli: &Cli,
    file: &Path,
    connection: Option<&str>,
    sample: Option<&Path>,
    sample_from: Option<(&str, Option<&str>)>,
    json: bool,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let connectors = load_connectors(cli)?;
    let env = |k: &str| std::env::var(k).ok();
    // A dry run sends nothing: a secret that is not set is noted, not an error (except for
    // the connection a sample is read from).
    let built = plan::build(plan::Sources {
        connectors,
        config: config_source(cli)?,
        connection_files: connection_sources(cli)?,
        recipes: vec![(file.to_path_buf(), text)],
        env: &env,
        secrets: plan::Secrets::Optional,
    });
    let the_plan = match built {
        Ok(p) => p,
        Err(mut diags) => {
            diags.retain(Diagnostic::is_error);
            diag::sort(&mut diags);
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!(
                "{} error(s): fix them first (`sluice validate {}`)",
                diags.len(),
                file.display()
            );
            return Ok(ExitCode::from(1));
        }
    };
    for d in &the_plan.unset {
        eprintln!("note: {}; showing requests anyway", d.message);
    }
    let rt = Runtime::stateless(the_plan)?;
    let recipe = match connection {
        None => rt.plan().recipes.first().cloned().ok_or_else(|| {
            anyhow!(
                "`{}` runs for no connection that can be used (see `sluice validate`)",
                file.display()
            )
        })?,
        Some(c) => match rt.plan().recipes.iter().find(|r| r.connection == c) {
            Some(r) => r.clone(),
            None => {
                let names: Vec<&str> = rt
                    .plan()
                    .recipes
                    .iter()
                    .map(|r| r.connection.as_str())
                    .collect();
                bail!(
                    "`{}` does not run for connection `{c}`; it runs for: {}",
                    file.display(),
                    names.join(", ")
                )
            }
        },
    };
    let sample = match (sample, sample_from) {
        (Some(p), _) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the sample `{}`", p.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("the sample `{}` is not valid JSON", p.display()))?;
            crate::dryrun::Sample::from_json(v).map_err(|e| anyhow!("{}: {e}", p.display()))?
        }
        (None, Some((name, wanted))) => {
            let conn = open_connection(cli, name)?;
            let t = format!("{}.{}", recipe.connector.id, recipe.trigger_id);
            match (pick_record(&conn, &recipe, wanted).await?, wanted) {
                (Picked::Passing(record), _) => crate::dryrun::Sample {
                    record,
                    steps: Map::new(),
                },
                (Picked::NonePasses(record), _) => {
                    eprintln!("note: no record of `{t}` in the last year passes the filter; showing the newest");
                    crate::dryrun::Sample {
                        record,
                        steps: Map::new(),
                    }
                }
                (Picked::Nothing, Some(id)) => {
                    eprintln!("error: trigger `{t}` returned no record `{id}` in the last year on connection `{name}`");
                    return Ok(ExitCode::from(1));
                }
                (Picked::Nothing, None) => {
                    eprintln!("error: trigger `{t}` returned no record in the last year on connection `{name}`");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        (None, None) => bail!("give --sample FILE or --sample-from CONNECTION"),
    };
    let plan = match crate::dryrun::run(&rt, &recipe, &sample).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let id = crate::trigger::id_of(recipe.trigger(), &sample.record).unwrap_or_else(|| "?".into());
    let on = if recipe.single {
        String::new()
    } else {
        format!(" on connection {}", recipe.connection)
    };
    writeln!(
        out,
        "recipe {}{on}: trigger {}.{}, record {id}",
        recipe.id, recipe.connector.id, recipe.trigger_id
    )?;
    if !plan.passes_filter {
        writeln!(out, "filter: false for this record, so no step would run")?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &plan.steps {
        let mocked = if s.mocked_output {
            " (output mocked by the sample)"
        } else {
            ""
        };
        match &s.skipped {
            Some(why) => writeln!(out, "\nstep {} ({}): skipped, {why}", s.step, s.action)?,
            None => writeln!(out, "\nstep {} ({}){mocked}", s.step, s.action)?,
        }
        for r in &s.requests {
            if let Some(v) = r.get("emit") {
                writeln!(
                    out,
                    "  emit to {}: {v}",
                    r["to"].as_str().unwrap_or("stdout")
                )?;
                continue;
            }
            writeln!(
                out,
                "  {} {}",
                r["method"].as_str().unwrap_or(""),
                r["url"].as_str().unwrap_or("")
            )?;
            if let Some(h) = r["headers"].as_object() {
                for (k, v) in h {
                    writeln!(out, "    {k}: {}", v.as_str().unwrap_or(""))?;
                }
            }
            if !r["body"].is_null() {
                writeln!(out, "    {}", r["body"])?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--sample-from` found.
enum Picked {
    /// The record asked for, or the newest that passes the filter.
    Passing(Value),
    /// No record passes the filter: the newest of all.
    NonePasses(Value),
    /// No record (with that id).
    Nothing,
}

/// The record `--sample-from` shows: the one with id `wanted`, else the newest the recipe's
/// trigger returns that passes its filter, looking back one hour, then a day, a week, a month
/// and a year; when none passes, the newest of all.
async fn pick_record(
    conn: &Connection,
    recipe: &plan::Recipe,
    wanted: Option<&str>,
) -> Result<Picked> {
    let now = conn.server_now().await;
    let mut newest = None;
    for window in [3600, 86_400, 7 * 86_400, 30 * 86_400, 365 * 86_400] {
        let mut poll = crate::trigger::Poll::start(
            conn,
            recipe.trigger(),
            now - window,
            recipe.options.clone(),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        // Oldest first: the last passing record seen is the newest.
        let mut passing = None;
        while let Some(page) = poll.next_page().await.map_err(|e| anyhow!("{e}"))? {
            for r in page {
                let v = r.to_value().map_err(|e| anyhow!(e))?;
                if let Some(id) = wanted {
                    if crate::trigger::id_of(recipe.trigger(), &v).as_deref() == Some(id) {
                        return Ok(Picked::Passing(v));
                    }
                    continue;
                }
                if crate::dryrun::passes(recipe, &v).unwrap_or(false) {
                    passing = Some(v.clone());
                }
                newest = Some(v);
            }
        }
        if let Some(v) = passing {
            return Ok(Picked::Passing(v));
        }
    }
    Ok(newest.map_or(Picked::Nothing, Picked::NonePasses))
}

/// The connectors directory: `--connectors`, else `./connectors` if it exists (`None`: the
/// built-in connector).
fn connectors_dir(cli: &Cli) -> Option<PathBuf> {
    cli.connectors.clone().or_else(|| {
        let d = PathBuf::from("connectors");
        d.is_dir().then_some(d)
    })
}

/// Loads connectors: the `--connectors` directory, else `./connectors` if it exists, else the
/// built-in Intercom connector.
pub fn load_connectors(cli: &Cli) -> Result<Vec<Arc<Connector>>> {
    let dir = connectors_dir(cli);
    plan::load_connectors_from(dir.as_deref()).map_err(|mut diags| {
        diag::sort(&mut diags);
        let list: Vec<String> = diags.iter().map(ToString::to_string).collect();
        anyhow!(
            "the connector definitions have problems; run `sluice validate {}`:\n{}",
            dir.as_deref().unwrap_or(Path::new("connectors")).display(),
            list.join("\n")
        )
    })
}

/// A loaded connector's spec, for its reference (`connectors show`): read again from the
/// `--connectors` directory (the file is named after the id) or the built-in text.
fn connector_spec(cli: &Cli, c: &Connector) -> Result<spec::ConnectorSpec> {
    let (file, text) = match connectors_dir(cli) {
        Some(d) => {
            let file = ["yaml", "yml"]
                .iter()
                .map(|ext| d.join(format!("{}.{ext}", c.id)))
                .find(|f| f.is_file())
                .ok_or_else(|| anyhow!("the file of connector `{}` is gone", c.id))?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            (file, text)
        }
        None => (
            PathBuf::from("<built-in>/intercom.yaml"),
            BUILTIN_INTERCOM.to_string(),
        ),
    };
    spec::parse_connector(&file, &text)
        .0
        .ok_or_else(|| anyhow!("connector `{}` cannot be read", c.id))
}

fn find_connector<'a>(connectors: &'a [Arc<Connector>], id: &str) -> Result<&'a Arc<Connector>> {
    connectors.iter().find(|c| c.id == id).ok_or_else(|| {
        let ids: Vec<&str> = connectors.iter().map(|c| c.id.as_str()).collect();
        match spec::did_you_mean(id, ids.iter().copied()) {
            Some(s) => anyhow!("no connector `{id}`; did you mean `{s}`?"),
            None => anyhow!("no connector `{id}`; available: {}", ids.join(", ")),
        }
    })
}

/// Splits `connector.name` and finds the connector.
fn resolve_ref<'a>(
    connectors: &'a [Arc<Connector>],
    r: &str,
    what: &str,
) -> Result<(&'a Arc<Connector>, String)> {
    let (c, name) = r.split_once('.').ok_or_else(|| {
        anyhow!(
            "`{r}` must be written `<connector>.<{what}>`, e.g. `intercom.{}`",
            if what == "action" {
                "create_contact"
            } else {
                "new_contact"
            }
        )
    })?;
    Ok((find_connector(connectors, c)?, name.to_string()))
}

/// Finds a trigger or action by name, suggesting the closest one when it does not exist.
fn find_named<'a, T>(
    map: &'a indexmap::IndexMap<String, T>,
    name: &str,
    what: &str,
    connector: &str,
) -> Result<&'a T> {
    map.get(name).ok_or_else(|| {
        let hint = spec::did_you_mean(name, map.keys().map(String::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!("; see `sluice connectors show {connector}`"));
        anyhow!("connector `{connector}` has no {what} `{name}`{hint}")
    })
}

/// Opens the named connection of the config file.
pub fn open_connection(cli: &Cli, name: &str) -> Result<Connection> {
    let plan = load_plan(cli, Vec::new(), plan::Secrets::Required)?;
    let found = plan.connection_named(name);
    match found {
        Some(c) => Connection::new(c),
        None => match plan.unavailable.iter().find(|(n, _)| n == name) {
            Some((_, why)) => Err(anyhow!("{why}")),
            None if !cli.config.exists() => Err(anyhow!(
                "no connection `{name}`: the config file `{}` does not exist (--config, SLUICE_CONFIG)",
                cli.config.display()
            )),
            None => {
                let names: Vec<&str> = plan
                    .connections
                    .iter()
                    .map(|c| c.name.as_str())
                    .chain(plan.unavailable.iter().map(|(n, _)| n.as_str()))
                    .collect();
                let hint = spec::did_you_mean(name, names.iter().copied())
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("defined: {}", names.join(", ")));
                Err(anyhow!(
                    "no connection `{name}` in `{}`; {hint}",
                    cli.config.display()
                ))
            }
        },
    }
}

fn parse_json_object(s: &str, flag: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            bail!("{flag} must be a JSON object like '{{\"email\": \"a@b.c\"}}', not {other}")
        }
        Err(e) => bail!("{flag} is not valid JSON: {e}"),
    }
}

async fn cmd_call(
    cli: &Cli,
    action_ref: &str,
    connection: &str,
    with: &str,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let show = |v: &Value| {
        if json {
            serde_json::to_string(v)
        } else {
            serde_json::to_string_pretty(v)
        }
    };
    let connectors = load_connectors(cli)?;
    let (connector, name) = resolve_ref(&connectors, action_ref, "action")?;
    let action = find_named(&connector.actions, &name, "action", &connector.id)?;
    let input = parse_json_object(with, "--with")?;
    if dry_run {
        let prepared = match crate::action::prepare(action, &input) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {action_ref}: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        let conn = open_connection(cli, connection)?;
        for r in &prepared.requests {
            let shown = crate::dryrun::describe_request(&conn, r).map_err(|e| anyhow!(e))?;
            outln!("{}", show(&shown)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let conn = open_connection(cli, connection)?;
    match crate::action::execute(&conn, action, &input).await {
        Ok(out) => {
            outln!("{}", show(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {action_ref}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Parses `--since`: Unix seconds, `YYYY-MM-DD` (UTC midnight) or RFC 3339.
pub fn parse_since(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or(0));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp())
        .map_err(|_| anyhow!("--since `{s}` is not Unix seconds, a date (2026-11-22) or RFC 3339 (2026-11-22T10:00:00Z)"))
}

async fn cmd_poll(
    cli: &Cli,
    trigger_ref: &str,
    connection: &str,
    since: Option<&str>,
    with: &str,
    limit: Option<usize>,
) -> Result<ExitCode> {
    let connectors = load_connectors(cli)?;
    let (connector, name) = resolve_ref(&connectors, trigger_ref, "trigger")?;
    let trigger = find_named(&connector.triggers, &name, "trigger", &connector.id)?;
    let options = parse_json_object(with, "--with")?;
    let since = since.map(parse_since).transpose()?;
    let conn = open_connection(cli, connection)?;
    // Default: the lookback before "now" on the server's clock.
    let since = match since {
        Some(s) => s,
        None => conn.server_now().await - trigger.lookback_secs,
    };
    let mut poll = match crate::trigger::Poll::start(&conn, trigger, since, options).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {trigger_ref}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut emitted = 0usize;
    'pages: loop {
        match poll.next_page().await {
            Ok(Some(records)) => {
                for r in records {
                    if limit.is_some_and(|l| emitted >= l) {
                        break 'pages;
                    }
                    crate::record::write_line(&mut out, r.raw())?;
                    emitted += 1;
                }
            }
            Ok(None) => break,
            Err(e) => {
                out.flush()?;
                eprintln!("error: {trigger_ref}: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    out.flush()?;
    eprintln!(
        "{emitted} records from {} pages ({} received; since {since}, server filter {})",
        poll.pages, poll.received, poll.server_since
    );
    Ok(ExitCode::SUCCESS)
}

/// Lists the YAML files under `paths` (directories are read one level deep, sorted).
fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(
                spec::yaml_files_in(p).with_context(|| format!("cannot read `{}`", p.display()))?,
            );
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bail!("`{}` does not exist", p.display());
        }
    }
    Ok(files)
}

/// For `validate`: the runtime's connectors and the connections of `sluice.yaml` as recipes
/// see them; every problem of `sluice.yaml` (and of the connectors it names) goes to `diags`.
/// `None` when the connectors themselves do not load (their problems are in `diags`).
type ValidateContext = Option<(Vec<Arc<Connector>>, Option<plan::recipe::ConnectionTable>)>;

fn validate_context(cli: &Cli, diags: &mut Vec<Diagnostic>) -> ValidateContext {
    let dir = connectors_dir(cli);
    let connectors = match plan::load_connectors_from(dir.as_deref()) {
        Ok(c) => c,
        Err(d) => {
            diags.extend(d);
            return None;
        }
    };
    let files = match connection_sources(cli) {
        Ok(f) => f,
        Err(e) => {
            let at = cli.connections_dir.clone().unwrap_or_default();
            diags.push(Diagnostic::error(&at, format!("{e:#}")));
            Vec::new()
        }
    };
    if !cli.config.is_file() && cli.connections_dir.is_none() {
        return Some((connectors, None));
    }
    let text = if cli.config.is_file() {
        match spec::read_source(&cli.config) {
            Ok(t) => Some(t),
            Err(d) => {
                diags.push(d);
                return Some((connectors, Some(Default::default())));
            }
        }
    } else {
        None
    };
    let path = cli.config.clone();
    // The connections are checked as a run would, a secret that is not set aside
    // (validate runs where secrets are not).
    let env = |k: &str| std::env::var(k).ok();
    let parsed = text.as_deref().map(|text| {
        let (parsed, problems) = spec::parse_config(&path, text);
        diags.extend(problems);
        parsed
    });
    let known = |c: &str| connectors.iter().any(|k| k.id == c);
    let mut table: Vec<(String, Option<String>, Vec<String>)> = match &parsed {
        // The file has problems of its own (reported): recipes are still checked against
        // the connections it names.
        Some(None) => serde_yaml::from_str::<serde_yaml::Value>(text.as_deref().unwrap_or(""))
            .ok()
            .and_then(|v| v.get("connections").and_then(|c| c.as_mapping()).cloned())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let connector = v.get("connector").and_then(|c| c.as_str());
                        let labels = v
                            .get("labels")
                            .and_then(|l| l.as_sequence())
                            .map(|l| {
                                l.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        Some((
                            k.as_str()?.to_string(),
                            connector.map(str::to_string),
                            labels,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let config = match parsed {
        Some(Some((config, index))) => {
            if let Some(h) = &config.history {
                plan::build_retention(&path, &index, h, diags);
            }
            Some((config, Arc::new(index)))
        }
        _ => None,
    };
    let gathered = plan::connection::gather(
        config.as_ref().map(|(c, i)| (path.as_path(), c, i.clone())),
        &files,
    );
    diags.extend(gathered.problems);
    let built = plan::connection::build_connection_list(
        &gathered.sources,
        &connectors,
        &env,
        plan::Secrets::Optional,
    );
    diags.extend(built.problems);
    table.extend(gathered.sources.iter().map(|s| {
        (
            s.name.clone(),
            Some(s.spec.connector.clone()),
            s.spec.labels.clone(),
        )
    }));
    let mut table: plan::recipe::ConnectionTable = table
        .into_iter()
        .map(|(name, connector, labels)| {
            // Problems of the connection itself (an unknown connector too) are reported in
            // its file; the recipes naming it are still checked, and not blamed for them.
            let entry = plan::recipe::ConnEntry {
                connector: connector.filter(|c| known(c)),
                labels,
                id: Some(plan::ConnId::CHECK_ONLY),
                why: None,
            };
            (name, entry)
        })
        .collect();
    // A connection file that does not parse (or a name defined twice) is reported there;
    // recipes naming it are still checked.
    for (name, _) in gathered.broken {
        table.entry(name).or_insert(plan::recipe::ConnEntry {
            connector: None,
            labels: Vec::new(),
            id: Some(plan::ConnId::CHECK_ONLY),
            why: None,
        });
    }
    Some((connectors, Some(table)))
}

fn cmd_validate(cli: &Cli, paths: &[PathBuf], json: bool, deny_warnings: bool) -> Result<ExitCode> {
    // A config file given (`--config`, SLUICE_CONFIG) but missing cannot be validated.
    if cli.config_given && !cli.config.exists() {
        config_source(cli)?;
    }
    let paths: Vec<PathBuf> = if paths.is_empty() {
        ["connectors", "recipes"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect()
    } else {
        paths.to_vec()
    };
    let files = yaml_files(&paths)?;
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut counts = (0usize, 0usize, 0usize, 0usize);
    // `sluice.yaml` and the connectors recipes are checked against, read once (and checked
    // even when no recipe is given).
    let context = validate_context(cli, &mut diags);
    // Recipe ids are the keys of their state: two files with one id are an error, across
    // folders too.
    let mut ids: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    for f in &files {
        let text = match spec::read_source(f) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        if spec::looks_like_connector(&text) {
            match plan::load_connector_text(f, &text) {
                Ok(c) => {
                    counts.0 += 1;
                    counts.1 += c.triggers.len();
                    counts.2 += c.actions.len();
                }
                Err(d) => diags.extend(d),
            }
            continue;
        }
        let Some((connectors, table)) = &context else {
            continue; // the connectors do not load: reported above
        };
        match plan::recipe::load_recipe(f, &text, connectors, table.as_ref()) {
            Ok(mut instances) if !instances.recipes.is_empty() => {
                let r = instances.recipes.swap_remove(0);
                counts.3 += 1;
                if let Some(first) = ids.get(&r.id) {
                    diags.push(
                        Diagnostic::error(
                            f,
                            format!("recipe id `{}` is also used by `{}`", r.id, first.display()),
                        )
                        .at(&diag::LocationIndex::build(&text), "id")
                        .help("every recipe needs its own id: its state is kept under it"),
                    );
                } else {
                    ids.insert(r.id.clone(), f.clone());
                }
                diags.extend(r.warnings);
            }
            Ok(_) => counts.3 += 1,
            Err(d) => diags.extend(d),
        }
    }
    diag::sort(&mut diags);
    // A connectors directory both given and loaded reports its problems once.
    diags.dedup();
    if json {
        outln!("{}", serde_json::to_string_pretty(&diags)?);
    } else {
        for d in &diags {
            eprintln!("{d}");
        }
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        eprintln!("{errors} error(s) in {} file(s)", files.len());
        return Ok(ExitCode::from(1));
    }
    if deny_warnings && warnings > 0 {
        eprintln!("{warnings} warning(s), denied by --deny-warnings");
        return Ok(ExitCode::from(1));
    }
    if !json {
        outln!(
            "ok: {} connector(s), {} trigger(s), {} action(s), {} recipe(s) in {} file(s)",
            counts.0,
            counts.1,
            counts.2,
            counts.3,
            files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn field_json(f: &spec::FieldSpec) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(f.ty));
    m.insert("required".into(), json!(f.required));
    m.insert("description".into(), json!(f.description));
    if let Some(e) = &f.example {
        m.insert("example".into(), e.clone());
    }
    if let Some(a) = &f.allowed {
        m.insert("enum".into(), json!(a));
    }
    if let Some(i) = &f.items {
        m.insert("items".into(), json!(i));
    }
    Value::Object(m)
}

fn fields_json(fields: &indexmap::IndexMap<String, spec::FieldSpec>) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(k, f)| (k.clone(), field_json(f)))
            .collect(),
    )
}

/// The machine-readable reference of a connector.
pub fn describe(c: &spec::ConnectorSpec) -> Value {
    let triggers: Vec<Value> = c
        .triggers
        .iter()
        .map(|(id, t)| {
            json!({
                "id": id,
                "title": t.title,
                "description": t.description,
                "kind": t.kind,
                "cursor": t.cursor,
                "lookback": t.lookback,
                "dedupe_key": t.dedupe_key,
                "options": fields_json(&t.options),
                "outputs": fields_json(&t.outputs),
            })
        })
        .collect();
    let actions: Vec<Value> = c
        .actions
        .iter()
        .map(|(id, a)| {
            let requests: Vec<Value> = a
                .variants
                .iter()
                .map(
                    |v| json!({"when": v.when, "method": v.request.method, "path": v.request.path}),
                )
                .chain(
                    a.request
                        .iter()
                        .map(|r| json!({"method": r.method, "path": r.path})),
                )
                .collect();
            json!({
                "id": id,
                "title": a.title,
                "description": a.description,
                "inputs": fields_json(&a.inputs),
                "outputs": fields_json(&a.outputs),
                "for_each": a.for_each,
                "requests": requests,
            })
        })
        .collect();
    json!({
        "id": c.header.id,
        "title": c.header.title,
        "description": c.header.description,
        "docs_url": c.header.docs_url,
        "regions": c.header.regions,
        "default_region": c.header.default_region,
        "auth": c.header.auth,
        "api_version": c.header.api_version,
        "triggers": triggers,
        "actions": actions,
    })
}

fn describe_fields(
    out: &mut String,
    title: &str,
    fields: &indexmap::IndexMap<String, spec::FieldSpec>,
) {
    use std::fmt::Write as _;
    if fields.is_empty() {
        return;
    }
    let _ = writeln!(out, "    {title}:");
    for (k, f) in fields {
        let req = if title == "inputs" {
            if f.required {
                "required"
            } else {
                "optional"
            }
        } else {
            ""
        };
        let ty = crate::action::type_name(f.ty.into());
        let mut line = format!("      {k:<22} {req:<9}{ty}");
        if let Some(a) = &f.allowed {
            let vals: Vec<String> = a.iter().map(Value::to_string).collect();
            let _ = write!(line, " ({})", vals.join(" | "));
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if !f.description.is_empty() {
            let _ = writeln!(out, "          {}", f.description);
        }
        if let Some(e) = &f.example {
            let _ = writeln!(out, "          example: {e}");
        }
    }
}

/// One trigger or action of a connector (`connectors show intercom.create_contact`): its
/// machine-readable entry and its text, as in the whole reference.
pub fn describe_one(c: &spec::ConnectorSpec, name: &str) -> Option<(Value, String)> {
    let full = describe(c);
    let cid = &c.header.id;
    let mut text = String::new();
    let entry = if let Some(t) = c.triggers.get(name) {
        describe_trigger(&mut text, cid, name, t);
        full["triggers"]
            .as_array()?
            .iter()
            .find(|t| t["id"] == name)?
            .clone()
    } else if let Some(a) = c.actions.get(name) {
        describe_action(&mut text, cid, name, a);
        full["actions"]
            .as_array()?
            .iter()
            .find(|a| a["id"] == name)?
            .clone()
    } else {
        return None;
    };
    // The entry stands alone: drop the blank line that separates entries in the reference.
    Some((entry, text.trim_start_matches('\n').to_string()))
}

fn describe_trigger(out: &mut String, cid: &str, id: &str, t: &spec::TriggerSpec) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\n  {cid}.{id} — {}", t.title);
    let _ = writeln!(out, "    {}", t.description.trim());
    let _ = writeln!(
        out,
        "    fires once per key `{}`; looks back {}",
        t.dedupe_key, t.lookback
    );
    describe_fields(out, "options", &t.options);
    describe_fields(out, "outputs", &t.outputs);
}

fn describe_action(out: &mut String, cid: &str, id: &str, a: &spec::ActionSpec) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\n  {cid}.{id} — {}", a.title);
    let _ = writeln!(out, "    {}", a.description.trim());
    describe_fields(out, "inputs", &a.inputs);
    describe_fields(out, "outputs", &a.outputs);
}

/// The human-readable reference of a connector.
pub fn describe_text(c: &spec::ConnectorSpec) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let h = &c.header;
    let cid = &h.id;
    let _ = writeln!(out, "{} ({cid})", h.title);
    if !h.description.is_empty() {
        let _ = writeln!(out, "{}", h.description.trim());
    }
    let regions: Vec<String> = h
        .regions
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let _ = writeln!(
        out,
        "regions: {} (default {})",
        regions.join(", "),
        h.default_region
    );
    if let Some(v) = &h.api_version {
        let _ = writeln!(
            out,
            "api version: {} {} (override per connection with `api_version`)",
            v.header, v.default
        );
    }
    let _ = writeln!(out, "\nTRIGGERS ({})", c.triggers.len());
    for (id, t) in &c.triggers {
        describe_trigger(&mut out, cid, id, t);
    }
    let _ = writeln!(out, "\nACTIONS ({})", c.actions.len());
    for (id, a) in &c.actions {
        describe_action(&mut out, cid, id, a);
    }
    let _ = writeln!(
        out,
        "\nOne entry: `sluice connectors show {cid}.<trigger or action>`."
    );
    out
}
