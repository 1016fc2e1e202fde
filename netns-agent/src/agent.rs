//! The running agent (`netns-agent run`): applies the config, then follows SIGHUP and
//! `apply` requests (each a new apply of a whole config, as a diff), uplink changes,
//! conntrack expiry, flow events and DNS requests, until SIGINT/SIGTERM. `down` removes
//! what the record names.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    control::{self, ApplyReply},
    datapath::{self, Maps},
    flowlog::{self, FlowLog, Lookups, Names},
    metrics::{self, AgentFigures},
    netlink::Uplinks,
    netns,
    plan::{self, Plan},
    reconcile::{self, Applier},
    services::{self, dns::DnsObserver, Services},
    source::ConfigSource,
    state::{self, AppliedState},
    status,
};

/// Flow events read from the ring buffer and not yet written (the agent's own backlog;
/// beyond it events are counted as lost, see `flowlog::spawn_reader`).
const EVENT_QUEUE: usize = 65536;
/// Flow events the run loop takes from the queue at once: one turn of the loop and one
/// lock of the flow table per batch, not per event (at tens of thousands of new flows a
/// second, a turn per event cost the agent more than the event itself).
const EVENT_BATCH: usize = 1024;
/// DNS requests answered and not yet written to the flow log (beyond: counted as lost).
const DNS_RECORD_QUEUE: usize = 4096;
/// How often expired conntrack entries are swept (LRU eviction bounds the map anyway)...
const CT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// ... and how often the agent looks whether an NI holds over half its share of the flow
/// maps, when it sweeps at once: at thousands of new flows a second, an NI's share
/// lasts seconds, and expired flows would hold it (and have the NI's new flows
/// refused) until the next sweep.
const CT_PRESSURE_CHECK: Duration = Duration::from_secs(1);
/// How often uplink addresses and gateways are compared with what was applied.
const UPLINK_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The agent between applies: what it applied and the parts that follow it.
pub struct Agent {
    source: ConfigSource,
    plan: Plan,
    applier: Applier,
    services: Services,
    /// The uplinks as last applied, shared with the DNS proxies (their upstreams).
    uplinks: Arc<RwLock<Uplinks>>,
    dns: Arc<DnsObserver>,
    flow_log: FlowLog,
    /// The pinned maps; none while nothing is applied.
    maps: Option<Maps>,
    names: Arc<Names>,
    figures: Arc<Mutex<AgentFigures>>,
    events: EventReader,
    metric_sources: metrics::Sources,
    metrics_server: Option<(SocketAddr, JoinHandle<()>)>,
}

/// What the agent's loop waits on besides timers and signals.
struct Inputs {
    control: mpsc::Receiver<control::Request>,
    events: mpsc::Receiver<netns_ebpf_common::event::FlowEvent>,
    dns_requests: mpsc::Receiver<services::dns::DnsLogEntry>,
}

/// The task reading the flow event ring buffer of the maps in `pin_dir`.
struct EventReader {
    tx: mpsc::Sender<netns_ebpf_common::event::FlowEvent>,
    lost: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EventReader {
    fn spawn(pin_dir: &Path, tx: mpsc::Sender<netns_ebpf_common::event::FlowEvent>, lost: Arc<AtomicU64>) -> EventReader {
        let task = flowlog::spawn_reader(pin_dir.to_path_buf(), tx.clone(), lost.clone());
        EventReader { tx, lost, task }
    }

    /// After an apply: the maps may have been unpinned (no NI left) and pinned anew.
    fn restart(&mut self, pin_dir: &Path) {
        self.task.abort();
        self.task = flowlog::spawn_reader(pin_dir.to_path_buf(), self.tx.clone(), self.lost.clone());
    }
}

/// Raises the agent's soft limit of open files toward its hard limit, as daemons do:
/// every NI's services hold sockets for its apps (up to 64 metadata and 64 DNS TCP
/// connections each, by design), and at the usual soft limit of 1,024 the apps of a few
/// dozen NIs together could leave the agent unable to open a file, a netlink socket or a
/// pin. At most to `OPEN_FILES_WANTED`: dnsmasq and charon inherit the limit, and a
/// daemon that closes every descriptor up to it at start would walk a container's
/// billion.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard.min(OPEN_FILES_WANTED) => {
            let raised = hard.min(OPEN_FILES_WANTED);
            match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
                Ok(()) => info!("open files limit raised from {soft} to {raised}"),
                Err(e) => warn!("raising the open files limit from {soft} to {raised}: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => warn!("reading the open files limit: {e}"),
    }
}

/// The soft limit of open files the agent asks for (see `raise_open_files_limit`).
const OPEN_FILES_WANTED: u64 = 1 << 16;

/// Runs the agent until SIGINT or SIGTERM; the data path stays (`down` removes it).
pub async fn run(source: ConfigSource) -> Result<()> {
    raise_open_files_limit();
    let (mut agent, mut inputs) = Agent::start(source).await?;
    info!(
        "running; SIGHUP or `netns-agent apply` applies a changed config, SIGINT/SIGTERM stop the agent (the data path stays until `down`)"
    );
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // (Made once: `tokio::signal::ctrl_c()` in the loop registered anew on every turn.)
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut events = Vec::with_capacity(EVENT_BATCH);
    let mut sweep_check = tokio::time::interval(CT_PRESSURE_CHECK);
    let mut last_sweep = tokio::time::Instant::now();
    let mut uplink_poll = tokio::time::interval(UPLINK_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = uplink_poll.tick() => agent.follow_uplinks().await,
            _ = sighup.recv() => {
                info!("SIGHUP: applying {}", agent.source.path().display());
                let source = agent.source.clone();
                for e in agent.reload(&source, "sighup").await.errors {
                    warn!("{e}");
                }
            }
            Some(request) = inputs.control.recv() => {
                info!("apply request: {}", request.apply.config.display());
                let reply = agent.reload(&request.apply.source(), "apply").await;
                let _ = request.reply.send(reply);
            }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            // (0 only once the queue closed, which the sender the agent holds prevents:
            // the branch is then off, as `Some(_)` was for a single event.)
            n @ 1.. = inputs.events.recv_many(&mut events, EVENT_BATCH) => {
                let lookups = Lookups { names: &agent.names, maps: agent.maps.as_ref(), dns: &agent.dns };
                agent.flow_log.events(&events[..n], lookups);
                events.clear();
            }
            Some(request) = inputs.dns_requests.recv() => agent.flow_log.dns(request),
            _ = sweep_check.tick() => {
                if last_sweep.elapsed() >= CT_SWEEP_INTERVAL || agent.flow_maps_pressed() {
                    agent.sweep();
                    last_sweep = tokio::time::Instant::now();
                }
            }
        }
    }
    agent.stop().await;
    Ok(())
}

impl Agent {
    /// Applies the config in `source` (refused: nothing of ours stays behind) and starts
    /// the services, the flow log's event reader, the control socket and the metrics.
    async fn start(source: ConfigSource) -> Result<(Agent, Inputs)> {
        let source = source.canonical();
        let loaded = source.load()?;
        let mut plan = plan::build(&loaded.config);
        let mut applier = Applier::open(&plan.pin_dir, &plan.state_dir)?;
        plan.keep_tables(&applier.record().uplinks);
        applier.publish_recorded_host_layouts();
        let record = applier.record();
        if status::agent_alive(record.agent_pid) && record.agent_pid != std::process::id() {
            bail!("an agent (pid {}) already runs over {}", record.agent_pid, plan.state_dir.display());
        }
        // Services an earlier agent left running (killed: it could not stop them).
        services::reap_leftovers(&plan.state_dir, &vpn_nis(record));
        let uplinks = Arc::new(RwLock::new(Uplinks::new()));
        let (dns_tx, dns_requests) = mpsc::channel(DNS_RECORD_QUEUE);
        let dns = Arc::new(DnsObserver::new(Some(dns_tx), Some(services::dns_log_path(&plan.state_dir))));
        let mut services = Services::new(uplinks.clone(), dns.clone(), applier.host_layouts());
        adopt_services(&mut services, &plan, record).await;
        let flow_log = FlowLog::new(plan.flow_log.as_deref(), plan.flow_log_max_bytes, plan.flow_interim)?;
        // Listening before the first apply: an `apply` that comes while it runs waits its turn.
        let control = control::listen(&plan.state_dir, flow_log.sender())?;
        applier.set_agent(std::process::id(), Some(source.path().to_path_buf()))?;
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
        *uplinks.write().unwrap() = applier.uplinks().clone();
        for e in services.reconcile(&plan, &outcome.rebuilt).await {
            warn!("{e:#}");
        }
        let figures = Arc::new(Mutex::new(AgentFigures::default()));
        figures.lock().unwrap().count_apply(false, outcome.report.errors.is_empty(), outcome.report.duration_ms / 1e3);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let events_lost = Arc::new(AtomicU64::new(0));
        let metric_sources = metrics::Sources {
            pin_dir: plan.pin_dir.clone(),
            state_dir: plan.state_dir.clone(),
            agent: figures.clone(),
            flows: flow_log.table(),
            dns: dns.clone(),
            events_lost_in_agent: events_lost.clone(),
        };
        let mut agent = Agent {
            maps: Maps::open(&plan.pin_dir).ok(),
            names: Arc::new(Names::default()),
            events: EventReader::spawn(&plan.pin_dir, event_tx, events_lost),
            source,
            plan,
            applier,
            services,
            uplinks,
            dns,
            flow_log,
            figures,
            metric_sources,
            metrics_server: None,
        };
        agent.names = agent.applied_names();
        agent.flows_removed_by_apply();
        agent.move_metrics_server().await;
        Ok((agent, Inputs { control, events, dns_requests }))
    }

    /// Applies the config from `source` on the running agent: validated first (a bad config
    /// is refused with every error and changes nothing), then applied as a diff, then the
    /// services follow. The applied plan becomes the agent's; the flow log, names, event
    /// reader and metrics follow it.
    async fn reload(&mut self, source: &ConfigSource, trigger: &str) -> ApplyReply {
        let reply = self.apply(source, trigger).await;
        *self.uplinks.write().unwrap() = self.applier.uplinks().clone();
        // An apply may have unpinned the maps (no NI left) and pinned new ones.
        self.maps = Maps::open(&self.plan.pin_dir).ok();
        self.flows_removed_by_apply();
        let seconds = reply.report.as_ref().map(|r| r.duration_ms / 1e3).unwrap_or(0.0);
        self.figures.lock().unwrap().count_apply(reply.refused, reply.ok, seconds);
        self.move_metrics_server().await;
        self.names = self.applied_names();
        self.events.restart(&self.plan.pin_dir);
        reply
    }

    async fn apply(&mut self, source: &ConfigSource, trigger: &str) -> ApplyReply {
        let refused = |e: anyhow::Error| ApplyReply { refused: true, errors: vec![format!("{e:#}")], ..Default::default() };
        let loaded = match source.load() {
            Ok(l) => l,
            Err(e) => {
                warn!("config refused, nothing changed: {e:#}");
                return refused(e);
            }
        };
        let mut new_plan = plan::build(&loaded.config);
        new_plan.keep_tables(&self.applier.record().uplinks);
        let outcome = match self.applier.apply(&new_plan, trigger).await {
            Ok(o) => o,
            Err(e) => {
                warn!("config refused: {e:#}");
                return refused(e);
            }
        };
        let mut errors = outcome.report.errors.clone();
        if let Err(e) = loaded.applied(&mut self.applier) {
            errors.push(format!("{e:#}"));
        }
        errors.extend(self.services.reconcile(&new_plan, &outcome.rebuilt).await.iter().map(|e| format!("{e:#}")));
        self.plan = new_plan;
        ApplyReply { ok: errors.is_empty(), refused: false, report: Some(outcome.report), errors }
    }

    async fn follow_uplinks(&mut self) {
        if let Err(e) = self.applier.refresh_uplinks(&self.plan).await {
            warn!("following uplink changes: {e:#}");
        }
        *self.uplinks.write().unwrap() = self.applier.uplinks().clone();
    }

    /// Whether some NI holds over half its share of the conntrack or NAT map.
    fn flow_maps_pressed(&self) -> bool {
        self.maps.as_ref().is_some_and(|m| m.some_zone_pressed())
    }

    /// Expired conntrack entries out; the flow log and the map fill figures follow. The
    /// DNS request log takes the requests its rates held back from apps gone quiet.
    fn sweep(&mut self) {
        self.dns.flush_request_log();
        if self.maps.is_none() {
            self.maps = Maps::open(&self.plan.pin_dir).ok();
        }
        let now = datapath::monotonic_ns();
        let started = std::time::Instant::now();
        // No maps (nothing applied): no sweep, and nothing to tell the flow log.
        let Some(swept) = self.maps.as_mut().map(|m| m.expire_flows(now)) else { return };
        let walked = started.elapsed();
        let lookups = Lookups { names: &self.names, maps: self.maps.as_ref(), dns: &self.dns };
        self.flow_log.after_sweep(&swept.expired_flows, &swept.live_flows, lookups, now);
        debug!(
            walk_ms = walked.as_secs_f64() * 1e3,
            ms = started.elapsed().as_secs_f64() * 1e3,
            flows = swept.live_flows.len(),
            "swept the flow maps"
        );
        self.figures.lock().unwrap().map_fill = swept.fill;
        if swept.removed > 0 {
            info!("conntrack: expired {} idle entries", swept.removed);
        }
    }

    /// Flows an apply removed (a port gone, an ACL changed) end in the flow log.
    fn flows_removed_by_apply(&mut self) {
        let removed = self.applier.take_removed_flows();
        let lookups = Lookups { names: &self.names, maps: self.maps.as_ref(), dns: &self.dns };
        self.flow_log.removed(&removed, lookups);
    }

    /// The names records and metrics use, from the state the last apply wrote; the metrics
    /// learn the VPN NIs too.
    fn applied_names(&self) -> Arc<Names> {
        let names = Arc::new(Names::of(&AppliedState::read(&self.plan.state_dir)));
        let mut f = self.figures.lock().unwrap();
        f.names = names.clone();
        f.vpn_nis = self.plan.nis.iter().filter(|n| n.vpn.is_some()).map(|n| n.name.clone()).collect();
        names
    }

    /// The metrics server where the plan wants it: started, moved, stopped. A metrics
    /// address that cannot bind is no reason to leave the NIs unserved: it warns, and a
    /// running server stays where it was.
    async fn move_metrics_server(&mut self) {
        if self.metrics_server.as_ref().map(|(a, _)| *a) == self.plan.metrics {
            return;
        }
        match self.plan.metrics {
            Some(addr) => match metrics::serve(addr, self.metric_sources.clone()).await {
                Ok(task) => {
                    if let Some((_, old)) = self.metrics_server.replace((addr, task)) {
                        old.abort();
                    }
                }
                Err(e) => warn!("metrics: {e:#}"),
            },
            None => {
                if let Some((_, task)) = self.metrics_server.take() {
                    task.abort();
                }
            }
        }
    }

    /// SIGINT/SIGTERM: the services stop, the data path stays; the record says no agent runs.
    async fn stop(mut self) {
        self.events.task.abort();
        if let Some((_, server)) = self.metrics_server.take() {
            server.abort();
        }
        self.services.stop().await;
        let _ = std::fs::remove_file(state::StateDir::control_socket(&self.plan.state_dir));
        if let Err(e) = self.applier.set_agent(0, Some(self.source.path().to_path_buf())) {
            warn!("recording state: {e:#}");
        }
    }
}

/// A restart: the NIs that stay as they are get their services back before the apply
/// (which loads every program again): DNS answers within moments of the start.
async fn adopt_services(services: &mut Services, plan: &Plan, record: &AppliedState) {
    let adoptable: Vec<plan::NiPlan> = plan
        .nis
        .iter()
        .filter(|n| record.nis.get(&n.name).is_some_and(|r| r.plan.same_shape(n)) && netns::exists(&n.name))
        .cloned()
        .collect();
    if adoptable.is_empty() {
        return;
    }
    let early = Plan { nis: adoptable, ..plan.clone() };
    for e in services.reconcile(&early, &Default::default()).await {
        warn!("before the apply: {e:#}");
    }
}

/// The VPN NIs on record (their charons may outlive a killed agent).
fn vpn_nis(record: &AppliedState) -> Vec<String> {
    record.nis.values().filter(|n| n.plan.vpn.is_some()).map(|n| n.plan.name.clone()).collect()
}

/// `down`: removes what the record names. Refused while an agent runs over the record.
pub async fn down(state_dir: &Path) -> Result<()> {
    let Some(record) = AppliedState::try_read(state_dir)? else {
        info!("down: nothing on record in {}", state_dir.display());
        return Ok(());
    };
    if status::agent_alive(record.agent_pid) {
        bail!("an agent (pid {}) runs over {}: stop it first", record.agent_pid, state_dir.display());
    }
    services::reap_leftovers(state_dir, &vpn_nis(&record));
    let mut applier = Applier::open(&PathBuf::from(&record.pin_dir), state_dir)?;
    reconcile::all_or_nothing(applier.down().await)?;
    info!("down: done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    #[test]
    fn the_open_files_limit_is_raised_toward_the_hard_limit() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // (Not below what it was by much: the other tests run beside this one.)
        setrlimit(Resource::RLIMIT_NOFILE, soft.min(4096).min(hard), hard).unwrap();
        super::raise_open_files_limit();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard.min(super::OPEN_FILES_WANTED), hard));
    }
}
