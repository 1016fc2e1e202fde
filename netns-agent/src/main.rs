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
    /// Print each network's state: VPN tunnels (SAs, bytes, supervision) and the counters
    /// of `limit` ACEs (works without a running agent).
    Status {
        #[arg(long)]
        config: PathBuf,
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
        Command::Status { config, json } => status(&config, json).await,
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

/// One `limit` ACE's bucket, named.
#[derive(serde::Serialize)]
struct LimitStatus {
    network: String,
    app: String,
    port: String,
    ace_id: u32,
    rate: u64,
    unit: &'static str,
    burst: u64,
    passed: u64,
    dropped: u64,
}

async fn status(config_path: &std::path::Path, json: bool) -> Result<()> {
    let plan = plan::build(&config::Config::load_for_removal(config_path)?);
    let buckets = datapath::Maps::open(&plan.pin_dir).map(|m| m.limits()).unwrap_or_default();
    let mut networks = Vec::new();
    let mut limits = Vec::new();
    for ni in &plan.nis {
        let present = netns::exists(&ni.name);
        let tunnel = match &ni.vpn {
            Some(_) => Some(services::vpn::tunnel_status(&plan.state_dir, &ni.name).await),
            None => None,
        };
        if present {
            let nl = netlink::Netlink::open(&netns::Netns::open(&netns::resolve(&ni.name))?)?;
            for port in ni.ports.iter().filter(|p| !p.limits.is_empty()) {
                let Some(ifindex) = nl.link_index(&port.bridge_port).await? else { continue };
                for (index, _) in &port.limits {
                    let key = |k: &netns_ebpf_common::limit::LimitKey| k.zone == ni.zone() && k.ifindex == ifindex && k.ace_index == *index as u32;
                    if let Some((_, b)) = buckets.iter().find(|(k, _)| key(k)) {
                        limits.push(LimitStatus {
                            network: ni.name.clone(),
                            app: port.app.clone(),
                            port: port.bridge_port.clone(),
                            ace_id: port.acl.aces[*index].id,
                            rate: b.rate,
                            unit: match b.unit_ns {
                                netns_ebpf_common::limit::UNIT_SECOND_NS => "s",
                                netns_ebpf_common::limit::UNIT_MINUTE_NS => "m",
                                _ => "h",
                            },
                            burst: b.burst,
                            passed: b.passed,
                            dropped: b.dropped,
                        });
                    }
                }
            }
        }
        networks.push(serde_json::json!({
            "name": ni.name,
            "kind": format!("{:?}", ni.kind).to_lowercase(),
            "present": present,
            "tunnel": tunnel,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "networks": networks, "limits": limits }))?);
        return Ok(());
    }
    println!("{:<16} {:<7} {:<11} DETAILS", "NETWORK", "KIND", "STATE");
    for (n, ni) in networks.iter().zip(&plan.nis) {
        let state = if !n["present"].as_bool().unwrap_or(false) { "absent" } else { "applied" };
        let Some(t) = n["tunnel"].as_object() else {
            println!("{:<16} {:<7} {:<11}", ni.name, n["kind"].as_str().unwrap_or(""), state);
            continue;
        };
        let vpn = ni.vpn.as_ref().expect("a tunnel status belongs to a VPN NI");
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let sup = &t["supervision"];
        let mut details = format!("peer {} ({:?})", vpn.remote, vpn.backend).to_lowercase();
        if t["ike_state"].is_string() {
            details += &format!(", IKE {} {} -> {}, child {} {}", s("ike_state"), s("local"), s("remote"), s("child_state"), s("encap"));
            details += &format!(", in {} B/{} pkts, out {} B/{} pkts", t["bytes_in"], t["packets_in"], t["bytes_out"], t["packets_out"]);
        }
        if let Some(pid) = sup["pid"].as_u64() {
            details += &format!(", charon pid {pid}");
        }
        details += &format!(", {} restarts", sup["restarts"].as_u64().unwrap_or(0));
        if let (false, Some(e)) = (t["state"] == "up", sup["last_error"].as_str()) {
            details += &format!("; last error: {e}");
        }
        println!("{:<16} {:<7} {:<11} {details}", ni.name, "vpn", s("state"));
    }
    if !limits.is_empty() {
        println!("\n{:<16} {:<10} {:<10} {:>6} {:>10} {:>7} {:>10} {:>10}", "NETWORK", "APP", "PORT", "ACE", "RATE", "BURST", "PASSED", "DROPPED");
        for l in &limits {
            println!("{:<16} {:<10} {:<10} {:>6} {:>10} {:>7} {:>10} {:>10}", l.network, l.app, l.port, l.ace_id, format!("{}/{}", l.rate, l.unit), l.burst, l.passed, l.dropped);
        }
    }
    Ok(())
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
