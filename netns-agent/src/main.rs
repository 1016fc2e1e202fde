//! netns-agent: builds network instances in their own namespaces and enforces their ACLs
//! with eBPF. See ARCHITECTURE.md for how a config becomes kernel state.

mod config;
mod datapath;
mod flows;
mod netlink;
mod netns;
mod plan;
mod reconcile;
mod services;
mod state;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

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
        #[arg(long)]
        config: PathBuf,
    },
    /// Check the config and print what it would create; changes nothing.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove everything the config created: namespaces, links, pins, map entries.
    Down {
        #[arg(long)]
        config: PathBuf,
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
    /// Print the flow table from the pinned conntrack map (works without a running agent).
    Flows {
        /// Take pin and state directories from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// One JSON document for machines.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // netlink-packet-route warns about every kernel attribute newer than itself.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(dispatch(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Validate { config } => {
            let cfg = config::Config::load(&config)?;
            let plan = plan::build(&cfg);
            for ni in &plan.nis {
                println!(
                    "network {} (zone {}): {} gateway {}, {} {} <-> {} {}",
                    ni.name, ni.zone(), ni.subnet, ni.gateway, ni.agent_veth, ni.agent_ip, ni.ni_veth, ni.ni_ip
                );
                for p in &ni.ports {
                    println!("  {} -> app {} #{} ({}) {} {}, {} ACEs", p.bridge_port, p.app, p.app_num, p.app_netns, p.app_ifname, p.ip, p.acl.count);
                }
            }
            println!("config is valid");
            Ok(())
        }
        Command::Run { config } => run(&config).await,
        Command::Down { config } => {
            let plan = plan::build(&config::Config::load_for_removal(&config)?);
            reconcile::down(&plan).await?;
            info!("down: done");
            Ok(())
        }
        Command::DnsLog { config, mut state_dir, json } => {
            if let Some(path) = config {
                state_dir = config::Config::load_for_removal(&path)?.agent.state_dir;
            }
            let path = services::dns_log_path(&state_dir);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let entries: Vec<services::dns::DnsLogEntry> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                println!("{:<14} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} ANSWERS", "TIME", "NI", "APP", "NAME", "TYPE", "RCODE", "SOURCE");
                for e in &entries {
                    println!("{:<14.3} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} {}", e.time, e.ni, e.app, e.name, e.qtype, e.rcode, e.source, e.answers.join(","));
                }
                println!("{} requests", entries.len());
            }
            Ok(())
        }
        Command::Flows { config, mut pin_dir, mut state_dir, json } => {
            if let Some(path) = config {
                let cfg = config::Config::load_for_removal(&path)?;
                pin_dir = cfg.agent.pin_dir;
                state_dir = cfg.agent.state_dir;
            }
            let maps = datapath::Maps::open(&pin_dir)?;
            let now = datapath::monotonic_ns();
            let nat = maps.nat_entries();
            let records = flows::records(&maps.flows(), &nat, &state::AppliedState::read(&state_dir), now);
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "flows": records,
                    "nat": flows::nat_records(&nat, now),
                    "limits": maps.limits().iter().map(|(k, b)| serde_json::json!({
                        "zone": k.zone, "ifindex": k.ifindex, "ace_index": k.ace_index,
                        "rate": b.rate, "burst": b.burst, "unit_ns": b.unit_ns,
                        "passed": b.passed, "dropped": b.dropped,
                    })).collect::<Vec<_>>(),
                    "counters": maps.stats().iter().map(|(s, n)| (s.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                }))?);
            } else {
                flows::print_table(&records);
            }
            Ok(())
        }
    }
}

/// How often expired conntrack entries are swept (LRU eviction bounds the map anyway).
const CT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often uplink addresses and gateways are compared with what was applied.
const UPLINK_POLL_INTERVAL: Duration = Duration::from_secs(2);

async fn run(config_path: &std::path::Path) -> Result<()> {
    let cfg = config::Config::load(config_path)?;
    let plan = plan::build(&cfg);
    let mut uplinks = reconcile::apply(&plan).await?;
    let agent_nl = netlink::Netlink::open(&netns::Netns::current()?)?;
    let shared_uplinks = std::sync::Arc::new(std::sync::RwLock::new(uplinks.clone()));
    let services = services::start(&plan, shared_uplinks.clone()).await.context("starting the NI services")?;
    let mut maps = datapath::Maps::open(&plan.pin_dir)?;
    info!("running; SIGINT/SIGTERM stops the agent (the data path stays until `down`)");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut sweep = tokio::time::interval(CT_SWEEP_INTERVAL);
    let mut uplink_poll = tokio::time::interval(UPLINK_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = uplink_poll.tick() => {
                if let Err(e) = reconcile::refresh_uplinks(&plan, &mut uplinks, &agent_nl).await {
                    warn!("following uplink changes: {e:#}");
                }
                *shared_uplinks.write().unwrap() = uplinks.clone();
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sweep.tick() => {
                let n = maps.expire_flows(datapath::monotonic_ns());
                if n > 0 {
                    info!("conntrack: expired {n} idle entries");
                }
            }
        }
    }
    services.stop().await;
    if let Err(e) = state::AppliedState::from_plan(&plan).write(&plan.state_dir) {
        warn!("recording state: {e:#}");
    }
    Ok(())
}
