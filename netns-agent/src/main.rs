//! netns-agent: builds network instances in their own namespaces and enforces their ACLs
//! with eBPF. See ARCHITECTURE.md for how a config becomes kernel state.

mod config;
mod control;
mod datapath;
mod eve;
mod flowlog;
mod flows;
mod metrics;
mod netlink;
mod netns;
mod plan;
mod reconcile;
mod services;
mod source;
mod state;
mod status;

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
            let plan = plan::build(&cfg);
            for ni in &plan.nis {
                println!(
                    "network {} (zone {}): {} gateway {}, {} {} <-> {} {}",
                    ni.name,
                    ni.zone(),
                    ni.subnet,
                    ni.gateway,
                    ni.agent_veth,
                    ni.agent_ip,
                    ni.ni_veth,
                    ni.ni_ip
                );
                for p in &ni.ports {
                    println!(
                        "  {} -> app {} #{} ({}) {} {}, {} ACEs",
                        p.bridge_port, p.app, p.app_num, p.app_netns, p.app_ifname, p.ip, p.acl.count
                    );
                }
            }
            println!("config is valid");
            Ok(())
        }
        Command::Run { source } => run(source.source()?.canonical()).await,
        Command::Convert { eve_config, bindings } => {
            let state_dir = eve::state_dir(bindings.as_deref())?;
            let converted = eve::load(&eve_config, bindings.as_deref(), eve::EveIds::read(&state_dir)?)?;
            let text = converted.to_toml(&eve_config)?;
            // What `run --eve-config` would refuse, `convert` refuses too (but the apps'
            // namespaces need not exist here).
            config::parse(&format!("{} (as converted)", eve_config.display()), &text, &config::AnyNetns)?;
            print!("{text}");
            Ok(())
        }
        Command::Apply { source } => {
            let source = source.source()?;
            let reply = control::request_apply(&source.state_dir()?, &source).await?;
            if let Some(r) = &reply.report {
                for c in &r.changes {
                    println!("{c}");
                }
                println!("applied in {:.1} ms", r.duration_ms);
            }
            if reply.ok {
                return Ok(());
            }
            let what = if reply.refused { "refused (nothing changed)" } else { "applied with errors" };
            anyhow::bail!("{what}:\n  {}", reply.errors.join("\n  "))
        }
        Command::Down { config, mut state_dir } => {
            if let Some(path) = config {
                state_dir = config::agent_dirs(&path)?.1;
            }
            down(&state_dir).await
        }
        Command::DnsLog { config, mut state_dir, json } => {
            if let Some(path) = config {
                state_dir = config::agent_dirs(&path)?.1;
            }
            // The rotated older half first, then the current file.
            let path = services::dns_log_path(&state_dir);
            let text = [services::dns::rotated_log(&path), path].iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect::<String>();
            let entries: Vec<services::dns::DnsLogEntry> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                println!("{:<14} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} ANSWERS", "TIME", "NI", "APP", "NAME", "TYPE", "RCODE", "SOURCE");
                for e in &entries {
                    println!(
                        "{:<14.3} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} {}",
                        e.time,
                        e.ni,
                        e.app,
                        e.name,
                        e.qtype,
                        e.rcode,
                        e.source,
                        e.answers.join(",")
                    );
                }
                println!("{} requests", entries.len());
            }
            Ok(())
        }
        Command::Status { config, mut state_dir, json } => {
            if let Some(path) = config {
                state_dir = config::agent_dirs(&path)?.1;
            }
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
            let now = datapath::monotonic_ns();
            let nat = maps.nat_entries();
            let records = flows::records(&maps.flows(), &nat, &state::AppliedState::read(&state_dir), now);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "flows": records,
                        "nat": flows::nat_records(&nat, now),
                        "limits": maps.limits().iter().map(|(k, b)| serde_json::json!({
                            "zone": k.zone, "ifindex": k.ifindex, "ace_index": k.ace_index,
                            "rate": b.rate, "burst": b.burst, "unit_ns": b.unit_ns,
                            "passed": b.passed, "dropped": b.dropped,
                        })).collect::<Vec<_>>(),
                        "counters": maps.stats().iter().map(|(s, n)| (s.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                    }))?
                );
            } else {
                flows::print_table(&records);
            }
            Ok(())
        }
    }
}

/// Flow events read from the ring buffer and not yet written (the agent's own backlog;
/// beyond it events are counted as lost, see `flowlog::spawn_reader`).
const EVENT_QUEUE: usize = 65536;

/// DNS requests answered and not yet written to the flow log (beyond: counted as lost).
const DNS_RECORD_QUEUE: usize = 4096;

/// How often expired conntrack entries are swept (LRU eviction bounds the map anyway).
const CT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often uplink addresses and gateways are compared with what was applied.
const UPLINK_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `down`: removes what the record names. Refused while an agent runs over the record.
async fn down(state_dir: &std::path::Path) -> Result<()> {
    let Some(record) = state::AppliedState::try_read(state_dir)? else {
        info!("down: nothing on record in {}", state_dir.display());
        return Ok(());
    };
    if status::agent_alive(record.agent_pid) {
        anyhow::bail!("an agent (pid {}) runs over {}: stop it first", record.agent_pid, state_dir.display());
    }
    let vpn_nis: Vec<String> = record.nis.values().filter(|n| n.plan.vpn.is_some()).map(|n| n.plan.name.clone()).collect();
    services::reap_leftovers(state_dir, &vpn_nis);
    let mut applier = reconcile::Applier::open(std::path::Path::new(&record.pin_dir), state_dir)?;
    reconcile::all_or_nothing(applier.down().await)?;
    info!("down: done");
    Ok(())
}

/// The running agent: applies the config, then follows SIGHUP and `apply` requests
/// (each a new apply of a whole config), uplink changes and conntrack expiry.
async fn run(source: source::ConfigSource) -> Result<()> {
    let loaded = source.load()?;
    let mut plan = plan::build(&loaded.config);
    let mut applier = reconcile::Applier::open(&plan.pin_dir, &plan.state_dir)?;
    let record = applier.record();
    if status::agent_alive(record.agent_pid) && record.agent_pid != std::process::id() {
        anyhow::bail!("an agent (pid {}) already runs over {}", record.agent_pid, plan.state_dir.display());
    }
    // Services an earlier agent left running (killed: it could not stop them).
    let vpn_nis: Vec<String> = record.nis.values().filter(|n| n.plan.vpn.is_some()).map(|n| n.plan.name.clone()).collect();
    services::reap_leftovers(&plan.state_dir, &vpn_nis);
    let config_path = source.path().to_path_buf();
    let shared_uplinks = std::sync::Arc::new(std::sync::RwLock::new(netlink::Uplinks::new()));
    let (dns_tx, mut dns_requests) = tokio::sync::mpsc::channel(DNS_RECORD_QUEUE);
    let dns = std::sync::Arc::new(services::dns::DnsObserver::new(Some(dns_tx)));
    let mut services = services::Services::new(shared_uplinks.clone(), dns.clone());
    // A restart: the NIs that stay as they are get their services back before the apply
    // (which loads every program again): DNS answers within moments of the start.
    let adoptable: Vec<plan::NiPlan> = plan
        .nis
        .iter()
        .filter(|n| record.nis.get(&n.name).is_some_and(|r| r.plan.same_shape(n)) && netns::exists(&n.name))
        .cloned()
        .collect();
    if !adoptable.is_empty() {
        let early = plan::Plan { nis: adoptable, ..plan.clone() };
        for e in services.reconcile(&early, &Default::default()).await {
            warn!("before the apply: {e:#}");
        }
    }
    let mut flow_log = flowlog::FlowLog::new(plan.flow_log.as_deref(), plan.flow_log_max_bytes, plan.flow_interim)?;
    // Listening before the first apply: an `apply` that comes while it runs waits its turn.
    let mut control = control::listen(&plan.state_dir, flow_log.sender())?;
    applier.set_agent(std::process::id(), Some(config_path.clone()))?;
    let figures = std::sync::Arc::new(std::sync::Mutex::new(metrics::AgentFigures::default()));
    let outcome = match applier.apply(&plan, "start").await {
        Ok(o) => o,
        Err(e) => {
            services.stop().await;
            // Refused: nothing of ours stays behind (the state dir only if it is empty).
            let _ = std::fs::remove_file(state::StateDir::control_socket(&plan.state_dir));
            let _ = std::fs::remove_dir(&plan.state_dir);
            return Err(e);
        }
    };
    if let Err(e) = loaded.applied(&mut applier) {
        warn!("{e:#}");
    }
    *shared_uplinks.write().unwrap() = applier.uplinks().clone();
    for e in services.reconcile(&plan, &outcome.rebuilt).await {
        warn!("{e:#}");
    }
    let mut maps = datapath::Maps::open(&plan.pin_dir).ok();
    let mut names = applied_names(&plan, &figures);
    figures.lock().unwrap().count_apply(false, outcome.report.errors.is_empty(), outcome.report.duration_ms / 1e3);
    flow_log.removed(&applier.take_removed_flows(), flowlog::Lookups { names: &names, maps: maps.as_ref(), dns: &dns });
    let (event_tx, mut events) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let events_lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut event_reader = flowlog::spawn_reader(plan.pin_dir.clone(), event_tx.clone(), events_lost.clone());
    let metric_sources = metrics::Sources {
        pin_dir: plan.pin_dir.clone(),
        state_dir: plan.state_dir.clone(),
        agent: figures.clone(),
        flows: flow_log.table(),
        dns: dns.clone(),
        events_lost_in_agent: events_lost.clone(),
    };
    // A metrics address that cannot bind is no reason to leave the NIs unserved.
    let mut metrics_server = match plan.metrics {
        Some(addr) => match metrics::serve(addr, metric_sources.clone()).await {
            Ok(task) => Some((addr, task)),
            Err(e) => {
                warn!("metrics: {e:#}");
                None
            }
        },
        None => None,
    };
    info!(
        "running; SIGHUP or `netns-agent apply` applies a changed config, SIGINT/SIGTERM stop the agent (the data path stays until `down`)"
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut sweep = tokio::time::interval(CT_SWEEP_INTERVAL);
    let mut uplink_poll = tokio::time::interval(UPLINK_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = uplink_poll.tick() => {
                if let Err(e) = applier.refresh_uplinks(&plan).await {
                    warn!("following uplink changes: {e:#}");
                }
                *shared_uplinks.write().unwrap() = applier.uplinks().clone();
            }
            _ = sighup.recv() => {
                info!("SIGHUP: applying {}", config_path.display());
                let reply = reload(&mut applier, &mut services, &mut plan, &source, "sighup").await;
                *shared_uplinks.write().unwrap() = applier.uplinks().clone();
                // An apply may have unpinned the maps (no NI left) and pinned new ones.
                maps = datapath::Maps::open(&plan.pin_dir).ok();
                flow_log.removed(&applier.take_removed_flows(), flowlog::Lookups { names: &names, maps: maps.as_ref(), dns: &dns });
                names = after_reload(&plan, &figures, &reply, &mut metrics_server, &metric_sources).await;
                event_reader.abort();
                event_reader = flowlog::spawn_reader(plan.pin_dir.clone(), event_tx.clone(), events_lost.clone());
                for e in &reply.errors {
                    warn!("{e}");
                }
            }
            Some(request) = control.recv() => {
                info!("apply request: {}", request.apply.config.display());
                let reply = reload(&mut applier, &mut services, &mut plan, &request.apply.source(), "apply").await;
                *shared_uplinks.write().unwrap() = applier.uplinks().clone();
                maps = datapath::Maps::open(&plan.pin_dir).ok();
                flow_log.removed(&applier.take_removed_flows(), flowlog::Lookups { names: &names, maps: maps.as_ref(), dns: &dns });
                names = after_reload(&plan, &figures, &reply, &mut metrics_server, &metric_sources).await;
                event_reader.abort();
                event_reader = flowlog::spawn_reader(plan.pin_dir.clone(), event_tx.clone(), events_lost.clone());
                let _ = request.reply.send(reply);
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            Some(event) = events.recv() => {
                flow_log.event(&event, flowlog::Lookups { names: &names, maps: maps.as_ref(), dns: &dns });
            }
            Some(request) = dns_requests.recv() => flow_log.dns(request),
            _ = sweep.tick() => {
                if maps.is_none() {
                    maps = datapath::Maps::open(&plan.pin_dir).ok();
                }
                let now = datapath::monotonic_ns();
                // No maps (nothing applied): no sweep, and nothing to tell the flow log.
                let Some(swept) = maps.as_mut().map(|m| m.expire_flows(now)) else { continue };
                flow_log.after_sweep(&swept.expired_flows, &swept.live_flows, flowlog::Lookups { names: &names, maps: maps.as_ref(), dns: &dns }, now);
                figures.lock().unwrap().map_fill = swept.fill;
                if swept.removed > 0 {
                    info!("conntrack: expired {} idle entries", swept.removed);
                }
            }
        }
    }
    event_reader.abort();
    if let Some((_, server)) = metrics_server {
        server.abort();
    }
    services.stop().await;
    let _ = std::fs::remove_file(state::StateDir::control_socket(&plan.state_dir));
    if let Err(e) = applier.set_agent(0, Some(config_path)) {
        warn!("recording state: {e:#}");
    }
    Ok(())
}

/// The names records and metrics use, from the state the last apply wrote; the metrics
/// learn the VPN NIs too.
fn applied_names(plan: &plan::Plan, figures: &std::sync::Mutex<metrics::AgentFigures>) -> std::sync::Arc<flowlog::Names> {
    let names = std::sync::Arc::new(flowlog::Names::of(&state::AppliedState::read(&plan.state_dir)));
    let mut f = figures.lock().unwrap();
    f.names = names.clone();
    f.vpn_nis = plan.nis.iter().filter(|n| n.vpn.is_some()).map(|n| n.name.clone()).collect();
    names
}

/// After an apply on the running agent: the apply counted, names refreshed, the metrics
/// server moved if its address changed (kept where it was if the new one cannot bind).
async fn after_reload(
    plan: &plan::Plan,
    figures: &std::sync::Mutex<metrics::AgentFigures>,
    reply: &control::ApplyReply,
    server: &mut Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    sources: &metrics::Sources,
) -> std::sync::Arc<flowlog::Names> {
    let seconds = reply.report.as_ref().map(|r| r.duration_ms / 1e3).unwrap_or(0.0);
    figures.lock().unwrap().count_apply(reply.refused, reply.ok, seconds);
    if server.as_ref().map(|(a, _)| *a) != plan.metrics {
        match plan.metrics {
            Some(addr) => match metrics::serve(addr, sources.clone()).await {
                Ok(task) => {
                    if let Some((_, old)) = server.replace((addr, task)) {
                        old.abort();
                    }
                }
                Err(e) => warn!("metrics: {e:#}"),
            },
            None => {
                if let Some((_, task)) = server.take() {
                    task.abort();
                }
            }
        }
    }
    applied_names(plan, figures)
}

/// Applies the config from `source` on the running agent: validated first (a bad config is
/// refused with every error and changes nothing), then applied as a diff, then the
/// services follow. `plan` becomes the new plan once it is applied.
async fn reload(
    applier: &mut reconcile::Applier,
    services: &mut services::Services,
    plan: &mut plan::Plan,
    source: &source::ConfigSource,
    trigger: &str,
) -> control::ApplyReply {
    let refused = |e: anyhow::Error| control::ApplyReply { refused: true, errors: vec![format!("{e:#}")], ..Default::default() };
    let loaded = match source.load() {
        Ok(l) => l,
        Err(e) => {
            warn!("config refused, nothing changed: {e:#}");
            return refused(e);
        }
    };
    let new_plan = plan::build(&loaded.config);
    let outcome = match applier.apply(&new_plan, trigger).await {
        Ok(o) => o,
        Err(e) => {
            warn!("config refused: {e:#}");
            return refused(e);
        }
    };
    let mut errors = outcome.report.errors.clone();
    if let Err(e) = loaded.applied(applier) {
        errors.push(format!("{e:#}"));
    }
    errors.extend(services.reconcile(&new_plan, &outcome.rebuilt).await.iter().map(|e| format!("{e:#}")));
    *plan = new_plan;
    control::ApplyReply { ok: errors.is_empty(), refused: false, report: Some(outcome.report), errors }
}
