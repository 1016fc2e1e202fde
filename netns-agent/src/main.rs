//! netns-agent: the command line over the `netns_agent` library (clap and dispatch; each
//! command renders its typed report as a table or as JSON).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use netns_agent::{agent, config, control, datapath, eve, flows, plan, services, source, state, status};

#[derive(Parser)]
#[command(name = "netns-agent", version, about = "eBPF data plane for per-namespace network instances")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the config and stay in the foreground; SIGINT/SIGTERM stop the agent and leave
    /// the data path enforcing (`down` removes it).
    Run {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Check the config and print what it would create; changes nothing.
    Validate {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print the TOML config an EdgeDevConfig (with its bindings) amounts to; changes
    /// nothing (NI indexes and app numbers: those on record, new ones as they would be).
    Convert {
        #[arg(long)]
        eve_config: PathBuf,
        #[arg(long)]
        bindings: Option<PathBuf>,
    },
    /// Hand a changed config to the running agent; exits 0 once it is applied, 1 with
    /// every error when it is refused (nothing changed) or an NI failed.
    Apply {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Remove everything the agent's record names (namespaces, links, pins, map entries,
    /// leftover service processes), with or without the config.
    Down {
        /// Take the state directory from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print the DNS request log of the NIs' DNS proxies.
    DnsLog {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print each network's and app port's state (applied, pending, failed, with the
    /// error), the last apply, VPN tunnels and `limit` counters (no running agent needed).
    Status {
        /// Take the state directory from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the flow table from the pinned conntrack map (works without a running agent).
    Flows {
        /// Take pin and state directories from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// One JSON document for machines (with --follow: one JSON record per line).
        #[arg(long)]
        json: bool,
        /// Stream the running agent's flow records (starts, drops, interim, ends) as they
        /// come, instead of a snapshot of the flow table.
        #[arg(long)]
        follow: bool,
    },
}

/// The config: our TOML, or EVE's EdgeDevConfig with a bindings file.
#[derive(clap::Args)]
struct SourceArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// An EdgeDevConfig (JSON), converted as `convert` shows.
    #[arg(long)]
    eve_config: Option<PathBuf>,
    /// With --eve-config: app runtimes, VPN parameters, uplink DNS, [agent] settings.
    #[arg(long)]
    bindings: Option<PathBuf>,
}

impl SourceArgs {
    fn source(self) -> Result<source::ConfigSource> {
        source::ConfigSource::from_args(self.config, self.eve_config, self.bindings)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // netlink-packet-route warns about every kernel attribute newer than itself.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(dispatch(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Validate { source } => {
            let cfg = source.source()?.load()?.config;
            plan::build(&cfg).print_summary();
            println!("config is valid");
            Ok(())
        }
        Command::Run { source } => agent::run(source.source()?).await,
        Command::Convert { eve_config, bindings } => {
            print!("{}", eve::convert_to_toml(&eve_config, bindings.as_deref())?);
            Ok(())
        }
        Command::Apply { source } => {
            let source = source.source()?;
            control::request_apply(&source.state_dir()?, &source).await?.print()
        }
        Command::Down { config, state_dir } => agent::down(&state_dir_of(config, state_dir)?).await,
        Command::DnsLog { config, state_dir, json } => {
            let state_dir = state_dir_of(config, state_dir)?;
            let entries = services::dns::read_log(&state_dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                services::dns::print_log_table(&entries);
            }
            Ok(())
        }
        Command::Status { config, state_dir, json } => {
            let state_dir = state_dir_of(config, state_dir)?;
            let report = status::build(&state_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                status::print_table(&report);
            }
            Ok(())
        }
        Command::Flows { config, mut pin_dir, mut state_dir, json, follow } => {
            if let Some(path) = config {
                (pin_dir, state_dir) = config::agent_dirs(&path)?;
            }
            if follow {
                return control::follow_flows(&state_dir, json).await;
            }
            let maps = datapath::Maps::open(&pin_dir)?;
            let report = flows::FlowsReport::read(&maps, &state::AppliedState::read(&state_dir)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                flows::print_table(&report.flows);
            }
            Ok(())
        }
    }
}

/// The state directory a command names: the config's (`--config`), else `--state-dir`.
fn state_dir_of(config: Option<PathBuf>, state_dir: PathBuf) -> Result<PathBuf> {
    match config {
        Some(path) => Ok(config::agent_dirs(&path)?.1),
        None => Ok(state_dir),
    }
}
