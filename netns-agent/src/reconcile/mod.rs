//! The applier: makes the kernel match a plan, whatever is there now.
//!
//! One code path serves the first start, a restart over a system an earlier agent applied
//! (also one killed midway), and every config change. The applier compares the plan with
//! the record of what it made (`state.json`, written before and after each NI is touched)
//! and with what it observes (netns, links, addresses, tc filters, map entries), then:
//! - removes what the record holds and the plan does not want (NIs, ports, port maps,
//!   uplinks), and rebuilds what only a rebuild can change (an NI's subnet, index,
//!   uplink...; a port's netns, address or MAC);
//! - ensures everything the plan wants: each object is created when missing and kept as
//!   it is when present, map entries are rewritten only where they differ, and programs
//!   already attached in a tc filter are replaced in that filter, atomically. Nothing
//!   that exists and matches is touched, so a restart disturbs no flow.
//!
//! A changed ACL is written under a new ACL id beside the live one and the port switched
//! to it in one map update; the programs judge every live flow of that port again on its
//! next packet. A plan that cannot apply (a missing uplink, a
//! name taken by something that is not ours) is refused before anything changes; a step
//! that fails while applying fails its NI (recorded with the error, shown by `status`),
//! the others go on. Teardown collects errors and goes on.

mod ni;
mod port;
mod uplink;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};
use netns_ebpf_common::fast::FastZone;
use tracing::{debug, info, warn};

use crate::{
    config::NetworkKind,
    datapath::{self, HostLayouts, Maps, Programs},
    netlink::{Netlink, Uplinks},
    netns::{self, Netns},
    plan::{NiPlan, Plan, PortPlan},
    state::{AppliedState, ApplyReport, ItemState, NiRecord},
};

pub(crate) use ni::{LocalNi, NiDriver, SwitchNi, VpnNi};

/// What an apply changed, for the services and the report.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub report: ApplyReport,
    /// NIs created or rebuilt (their services start anew: their sockets belong to the
    /// old netns).
    pub rebuilt: BTreeSet<String>,
}

/// Why a plan was refused: every problem, nothing changed.
#[derive(Debug)]
pub struct Refused(pub Vec<String>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot apply the config, nothing was changed:\n  {}", self.0.join("\n  "))
    }
}

impl std::error::Error for Refused {}

/// The applier's context: the agent netns' netlink handle, the pinned maps, the loaded
/// programs and the record, held for the agent's life.
pub struct Applier {
    agent_ns: Netns,
    agent: Netlink,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    record: AppliedState,
    uplinks: Uplinks,
    maps: Option<Maps>,
    /// Loaded at the first apply that needs them, for every NI and the agent netns.
    programs: ProgramSlot,
    /// The ports' live host-set layouts, shared with the DNS proxies.
    host_layouts: Arc<HostLayouts>,
}

impl Applier {
    /// The applier for `pin_dir` and `state_dir`, with the record an earlier agent left
    /// there (an unreadable record is an error: the agent does not guess what it made).
    pub fn open(pin_dir: &Path, state_dir: &Path) -> Result<Applier> {
        let agent_ns = Netns::current()?;
        let agent = Netlink::open(&agent_ns)?;
        let record = AppliedState::try_read(state_dir)?.unwrap_or_default();
        Ok(Applier {
            agent_ns,
            agent,
            pin_dir: pin_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            record,
            uplinks: Uplinks::new(),
            maps: None,
            programs: ProgramSlot::default(),
            host_layouts: Arc::default(),
        })
    }

    pub fn record(&self) -> &AppliedState {
        &self.record
    }

    /// Tells the DNS proxies each live port's host layout as the record and the maps say
    /// (a data path left by an earlier agent), before the first apply publishes each
    /// port's anew: an answer that comes while the agent starts goes in under it.
    pub fn publish_recorded_host_layouts(&mut self) {
        let record: Vec<NiPlan> = self.record.nis.values().map(|r| r.plan.clone()).collect();
        let layouts = self.host_layouts();
        let Ok(maps) = self.maps() else { return };
        for (key, info) in maps.ports() {
            // A veth port by the ifindex the agent gave it, a VM's tap by its MAC (when no
            // other port of the NI has it).
            let mut ports = record
                .iter()
                .filter(|ni| ni.zone() == key.zone)
                .flat_map(|ni| &ni.ports)
                .filter(|p| p.ifindex.map_or(p.mac == info.app_mac, |ifindex| ifindex == key.ifindex));
            let (Some(port), None) = (ports.next(), ports.next()) else { continue };
            if let Some(layout) = port::recorded_host_layout(maps, &info, port) {
                layouts.publish(key, layout);
            }
        }
    }

    /// The ports' live host-set layouts, for the DNS proxies that write the host sets.
    pub fn host_layouts(&self) -> Arc<HostLayouts> {
        self.host_layouts.clone()
    }

    pub fn uplinks(&self) -> &Uplinks {
        &self.uplinks
    }

    /// Records the EdgeDevConfig just applied (its file and `id.version`; None: a TOML
    /// config).
    pub fn set_eve_config(&mut self, applied: Option<crate::state::EveConfigRecord>) -> Result<()> {
        if self.record.eve_config != applied {
            self.record.eve_config = applied;
            self.save()?;
        }
        Ok(())
    }

    /// Marks the record as followed by this process (or by none: pid 0); its apply count
    /// starts again.
    pub fn set_agent(&mut self, pid: u32, config: Option<PathBuf>) -> Result<()> {
        self.record.agent_pid = pid;
        self.record.config_path = config;
        if pid != 0 {
            self.record.applies = 0;
        }
        // With no record yet, the first apply writes it (after its preflight: a refused
        // config leaves nothing behind).
        if crate::state::StateDir::record(&self.state_dir).exists() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        self.record.pin_dir = self.pin_dir.display().to_string();
        self.record.refresh_names();
        self.record.write(&self.state_dir)
    }

    /// The conntrack entries that applies removed since the last call (their flows'
    /// end records).
    pub fn take_removed_flows(&mut self) -> Vec<(netns_ebpf_common::ct::CtKey, netns_ebpf_common::ct::CtValue)> {
        self.maps.as_mut().map(|m| m.take_removed_flows()).unwrap_or_default()
    }

    /// The pinned maps (opened once; they exist after the first programs are loaded).
    fn maps(&mut self) -> Result<&mut Maps> {
        if self.maps.is_none() {
            self.maps = Some(Maps::open(&self.pin_dir)?);
        }
        Ok(self.maps.as_mut().expect("opened above"))
    }

    /// Everything that must hold before the applier touches the kernel: the uplinks the
    /// plan needs are there, and nothing it would create exists unless the record says it
    /// is ours. All problems are reported together.
    async fn preflight(&self, plan: &Plan) -> Result<Uplinks> {
        let mut problems = Vec::new();
        if self.pin_dir != plan.pin_dir || self.state_dir != plan.state_dir {
            problems.push(format!(
                "pin_dir and state_dir cannot change while the agent runs (running with {} and {})",
                self.pin_dir.display(),
                self.state_dir.display()
            ));
        }
        let uplinks = uplink::preflight(plan, &self.agent, &mut problems).await?;
        let recorded = |name: &str| self.record.nis.get(name).map(|r| &r.plan);
        for ni in &plan.nis {
            if let Some(r) = recorded(&ni.name) {
                if r.same_shape(ni) {
                    // Ours and staying: only its ports may bring new names.
                    self.preflight_ports(ni, Some(r), &mut problems).await?;
                    continue;
                }
            } else {
                if netns::exists(&ni.name) {
                    problems.push(format!("netns {:?} already exists and is not on the agent's record (made by someone else?)", ni.name));
                }
                if self.pin_dir.join(&ni.name).exists() {
                    problems.push(format!("pins of {:?} already exist under {} and are not on record", ni.name, self.pin_dir.display()));
                }
            }
            // The agent-side veth must be free, or belong to a recorded NI that goes.
            let owner = self.record.nis.values().any(|r| r.plan.agent_veth == ni.agent_veth && r.plan.kind != NetworkKind::Switch);
            if ni.kind != NetworkKind::Switch && !owner && self.agent.link_index(&ni.agent_veth).await?.is_some() {
                problems.push(format!("interface {} already exists in the agent's netns and is not on record", ni.agent_veth));
            }
            self.preflight_ports(ni, None, &mut problems).await?;
        }
        if !problems.is_empty() {
            return Err(Refused(problems).into());
        }
        Ok(uplinks)
    }

    async fn preflight_ports(&self, ni: &NiPlan, recorded: Option<&NiPlan>, problems: &mut Vec<String>) -> Result<()> {
        // Ports of the same link on record are ours; so are those of any recorded NI
        // (a port may move between NIs in one change).
        let ours = |p: &PortPlan| {
            recorded.and_then(|r| r.port(&p.bridge_port)).is_some_and(|r| r.same_link(p))
                || self
                    .record
                    .nis
                    .values()
                    .flat_map(|n| &n.plan.ports)
                    .any(|r| r.tap == p.tap && r.app_ifname == p.app_ifname && r.app_netns == p.app_netns)
        };
        for port in ni.ports.iter().filter(|p| !ours(p)) {
            if let Some(tap) = &port.tap {
                if self.agent.link_index(tap).await?.is_none() {
                    problems.push(format!("tap {tap} of app {:?} does not exist in the agent's netns", port.app));
                }
                continue;
            }
            let path = netns::resolve(&port.app_netns);
            let app_ns = Netns::open(&path).with_context(|| format!("app {:?}: opening netns {}", port.app, path.display()))?;
            if Netlink::open(&app_ns)?.link_index(&port.app_ifname).await?.is_some() {
                problems.push(format!("interface {} already exists in netns of app {:?} and is not on record", port.app_ifname, port.app));
            }
        }
        Ok(())
    }

    /// Makes the kernel match `plan`. Err: refused (nothing changed) or the record could
    /// not be written; Ok: applied, with the errors of the NIs that failed in the report.
    pub async fn apply(&mut self, plan: &Plan, trigger: &str) -> Result<ApplyOutcome> {
        let started = Instant::now();
        let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let uplinks = self.preflight(plan).await?;
        let _rcu = crate::rcu::Expedited::begin(plan.expedite_rcu);
        datapath::prepare_pin_dir(&self.pin_dir)?;
        self.uplinks = uplinks;
        self.record.nat_ports = Some(plan.nat_ports);
        self.record.expedite_rcu = plan.expedite_rcu;
        let mut out = ApplyOutcome::default();
        let mut errors = Vec::new();
        self.programs.new_apply();

        // The removals below open the pinned maps, which this agent's programs name: an
        // earlier agent's data path lacks the pins of any map new in this version until
        // the programs are loaded (loading pins them). Nothing on record: nothing to
        // remove. A load that fails leaves the removals to fail on their own, one by one.
        if !self.record.nis.is_empty() {
            if let Err(e) = self.programs.get(&self.pin_dir) {
                warn!("{e:#}");
                errors.push(format!("{e:#}"));
            }
        }
        self.remove_reshaped_nis(plan, &mut out, &mut errors).await?;
        self.remove_leaving_parts(plan, &mut out, &mut errors).await?;
        let agent_level = uplink::ensure_agent_level(self, plan).await;
        if let Err(e) = &agent_level {
            warn!("the agent netns' NAT and routing: {e:#}");
            errors.push(format!("the agent netns' NAT and routing: {e:#}"));
        }
        self.ensure_nis(plan, agent_level.is_ok(), &mut out, &mut errors).await?;
        // Each NI's share of the flow maps follows the number of NIs; each port's part of
        // it, the number of its NI's ports.
        if let Some(maps) = self.maps.as_mut() {
            let zones: Vec<u32> = plan.nis.iter().map(|n| n.zone()).collect();
            if let Err(e) = maps.set_flow_shares(&zones) {
                warn!("{e:#}");
                errors.push(format!("{e:#}"));
            }
            let orphans = maps.remove_unnamed_acls();
            if orphans > 0 {
                info!("removed {orphans} ACLs that no port names (left by an apply that stopped half way)");
            }
        }
        if agent_level.is_ok() {
            if let Err(e) = uplink::remove_unused(self, plan).await {
                warn!("removing unused uplinks: {e:#}");
                errors.push(format!("removing unused uplinks: {e:#}"));
            }
        }
        // No NI left: the shared maps go too.
        if self.record.nis.is_empty() {
            if let Err(e) = self.release_shared_maps() {
                errors.push(format!("{e:#}"));
            }
        }
        out.report.started_unix = started_unix;
        out.report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        out.report.trigger = trigger.to_string();
        out.report.errors = errors;
        self.record.applies += 1;
        self.record.last_apply = Some(out.report.clone());
        self.save()?;
        info!(
            "applied {} network instances in {:.1} ms ({} changes, {} errors)",
            plan.nis.len(),
            out.report.duration_ms,
            out.report.changes.len(),
            out.report.errors.len()
        );
        Ok(out)
    }

    /// NIs that leave, or change what only a rebuild changes, go first: their names,
    /// indexes and veths free up for what comes.
    async fn remove_reshaped_nis(&mut self, plan: &Plan, out: &mut ApplyOutcome, errors: &mut Vec<String>) -> Result<()> {
        let recorded: Vec<NiRecord> = self.record.nis.values().cloned().collect();
        for rec in &recorded {
            let wanted = plan.nis.iter().find(|n| n.name == rec.plan.name);
            if wanted.is_some_and(|n| n.same_shape(&rec.plan)) {
                continue;
            }
            let verb = if wanted.is_some() { "rebuilding" } else { "removing" };
            info!("{verb} network instance {}", rec.plan.name);
            out.report.changes.push(format!("{verb} network {}", rec.plan.name));
            errors.extend(self.remove_ni(&rec.plan).await.into_iter().map(|e| format!("removing {}: {e:#}", rec.plan.name)));
            self.record.nis.remove(&rec.plan.name);
            self.save()?;
        }
        Ok(())
    }

    /// Then what leaves the NIs that stay (ports, port maps), all before anything is
    /// made: a port that goes may carry its app's default route, which the app's first
    /// port (maybe in another NI) then takes.
    async fn remove_leaving_parts(&mut self, plan: &Plan, out: &mut ApplyOutcome, errors: &mut Vec<String>) -> Result<()> {
        for ni in &plan.nis {
            let Some(rec) = self.record.nis.get(&ni.name).map(|r| r.plan.clone()) else { continue };
            port::remove_leaving(self, &rec, ni, out, errors).await;
            if let Err(e) = ni::flush_changed_portmaps(self, &rec, ni, out) {
                errors.push(format!("{}: port maps: {e:#}", ni.name));
            }
            self.save()?;
        }
        Ok(())
    }

    /// Every NI of the plan made to match it, each through its kind's type; an NI that
    /// fails is recorded as failed and the others go on. Routed NIs wait for the agent
    /// netns' NAT and routing (`agent_level_ok`).
    async fn ensure_nis(&mut self, plan: &Plan, agent_level_ok: bool, out: &mut ApplyOutcome, errors: &mut Vec<String>) -> Result<()> {
        let total = plan.nis.len();
        for (i, ni) in plan.nis.iter().enumerate() {
            if !agent_level_ok && ni.routed_uplink().is_some() {
                self.fail_ni(ni, "the agent netns' NAT and routing failed (see the apply's errors)".into())?;
                continue;
            }
            let fresh = !self.record.nis.contains_key(&ni.name);
            info!("[{}/{total}] network instance {} (zone {}, {} app ports)", i + 1, ni.name, ni.zone(), ni.ports.len());
            let result = ni::with_driver!(ni.kind, kind => self.ensure_ni(kind, plan, ni, out).await);
            if fresh {
                out.rebuilt.insert(ni.name.clone());
            }
            match result.and_then(|port_errors| self.record_ni_applied(ni, port_errors)) {
                Ok(port_errors) => errors.extend(port_errors.iter().map(|(port, e)| format!("{} port {port}: {e}", ni.name))),
                Err(e) => {
                    let e = format!("{e:#}");
                    warn!("network instance {}: {e}", ni.name);
                    errors.push(format!("{}: {e}", ni.name));
                    self.fail_ni(ni, e)?;
                }
            }
        }
        Ok(())
    }

    /// Records NI `ni` as applied, or as failed when some of its ports failed (returned).
    fn record_ni_applied(&mut self, ni: &NiPlan, port_errors: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
        let rec = self.record.nis.get_mut(&ni.name).with_context(|| format!("{} is not on record after its apply", ni.name))?;
        rec.state = if port_errors.is_empty() { ItemState::Applied } else { ItemState::Failed };
        rec.error = None;
        rec.port_errors = port_errors.clone();
        self.save()?;
        Ok(port_errors)
    }

    fn fail_ni(&mut self, ni: &NiPlan, error: String) -> Result<()> {
        let rec = self.record.nis.entry(ni.name.clone()).or_insert_with(|| NiRecord {
            plan: ni.clone(),
            state: ItemState::Failed,
            error: None,
            port_errors: Default::default(),
        });
        rec.state = ItemState::Failed;
        rec.error = Some(error);
        self.save()
    }

    /// Ensures one NI with the driver of its kind (what left it is gone already): the
    /// record says pending with the new plan, then every object is ensured.
    /// Returns the errors of ports that failed (the NI itself applied).
    async fn ensure_ni<K: NiDriver>(
        &mut self,
        kind: &K,
        plan: &Plan,
        ni: &NiPlan,
        out: &mut ApplyOutcome,
    ) -> Result<BTreeMap<String, String>> {
        let previous = self.record.nis.get(&ni.name).map(|r| r.plan.clone());
        self.record.nis.insert(
            ni.name.clone(),
            NiRecord { plan: ni.clone(), state: ItemState::Pending, error: None, port_errors: Default::default() },
        );
        self.save()?;
        let (ns, nl) = kind.ensure(self, plan, ni).await?;
        let mut port_errors = BTreeMap::new();
        for p in &ni.ports {
            let before = previous.as_ref().and_then(|r| r.port(&p.bridge_port)).filter(|r| r.same_link(p));
            if let Err(e) = port::ensure(self, kind, ni, p, before, &ns, &nl, out).await {
                let e = format!("{e:#}");
                warn!("{} port {}: {e}", ni.name, p.bridge_port);
                port_errors.insert(p.bridge_port.clone(), e);
            }
        }
        port::remove_strays(self, ni, &nl).await?;
        self.ensure_fast_path(kind, plan, ni, &nl).await?;
        Ok(port_errors)
    }

    /// Writes where NI `ni`'s fast path leads, or that it has none (its kind, no uplink,
    /// `[agent] fast_path = false`).
    async fn ensure_fast_path<K: NiDriver>(&mut self, kind: &K, plan: &Plan, ni: &NiPlan, nl: &Netlink) -> Result<()> {
        let fast = match ni.routed_uplink().filter(|_| plan.fast_path && kind.fast_path()) {
            Some(uplink) => {
                let ni_end = nl.link_index_and_mac(&ni.ni_veth).await?.1;
                let agent_end = self.agent.link_index_and_mac(&ni.agent_veth).await?.1;
                // (Destination, then source, as they stand in the header.)
                let macs = |dst: &[u8; 6], src: &[u8; 6]| {
                    let mut both = [0u8; 12];
                    both[..6].copy_from_slice(dst);
                    both[6..].copy_from_slice(src);
                    both
                };
                let (into_ni_macs, into_agent_macs) = (macs(&ni_end, &agent_end), macs(&agent_end, &ni_end));
                FastZone {
                    enabled: 1,
                    ni_veth_ifindex: ni.ni_veth_ifindex(),
                    agent_veth_ifindex: ni.agent_veth_ifindex(),
                    uplink_table: if datapath::fib_lookup_by_table() { plan.uplink(uplink)?.table } else { 0 },
                    into_ni_macs,
                    into_agent_macs,
                    bridge_mac: ni.bridge_mac(),
                    subnet_len: ni.subnet.prefix_len(),
                    _pad: 0,
                    subnet: ni.subnet.network().octets(),
                }
            }
            None => FastZone::default(),
        };
        debug!("{}: fast path {}", ni.name, if fast.enabled != 0 { "on" } else { "off" });
        self.maps()?.set_fast_zone(ni.zone(), fast)
    }

    /// Once no NI is left: the shared maps' pins removed (when no pin directory of an NI
    /// or the agent's netns is left either), and the programs and maps this applier holds
    /// let go, so that the next NI loads them anew (and pins them again).
    fn release_shared_maps(&mut self) -> Result<()> {
        self.maps = None;
        self.programs.release();
        if datapath::remove_shared_pins_if_unused(&self.pin_dir)? {
            info!("removed shared maps under {}", self.pin_dir.display());
        }
        Ok(())
    }

    /// Removes one NI as recorded: its kind's objects, its ports, its pins and map
    /// entries, its netns. Goes on past errors and returns them all.
    async fn remove_ni(&mut self, ni: &NiPlan) -> Vec<anyhow::Error> {
        ni::with_driver!(ni.kind, kind => ni::remove(self, kind, ni).await)
    }

    /// Removes everything on record: every NI, the agent netns' level, the shared pins
    /// once no NI is left, the record. Goes on past errors and returns them all.
    pub async fn down(&mut self) -> Vec<anyhow::Error> {
        let _rcu = crate::rcu::Expedited::begin(self.record.expedite_rcu);
        let mut errors = Vec::new();
        let nis: Vec<NiPlan> = self.record.nis.values().map(|r| r.plan.clone()).collect();
        errors.extend(ni::remove_all(self, &nis).await);
        self.record.nis.clear();
        self.maps = None;
        self.programs.release();
        errors.extend(uplink::remove_agent_level(self).await);
        if let Err(e) = self.release_shared_maps() {
            errors.push(e);
        }
        if errors.is_empty() {
            if let Err(e) = crate::state::StateDir::remove(&self.state_dir) {
                errors.push(e);
            }
        } else if let Err(e) = self.save() {
            errors.push(e);
        }
        errors
    }

    /// Follows uplink changes (see `uplink::refresh`).
    pub async fn refresh_uplinks(&mut self, plan: &Plan) -> Result<()> {
        uplink::refresh(self, plan).await
    }
}

/// Turns collected errors into one (all of them listed), or Ok.
pub fn all_or_nothing(errors: Vec<anyhow::Error>) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    Err(anyhow!("{} errors:\n  {}", list.len(), list.join("\n  ")))
}

/// The programs (app ports' and NAT), loaded once per agent and kept; loading them
/// creates the pinned maps. A load that failed is not tried again in the same apply:
/// every NI after the first would run the verifier again (seconds each on a small
/// device) and report the same log; the next apply tries again.
#[derive(Default)]
struct ProgramSlot {
    loaded: Option<Programs>,
    /// A load failed in this apply (its error is the first one reported).
    refused: bool,
}

impl ProgramSlot {
    /// The programs, loaded now if they are not yet.
    fn get(&mut self, pin_dir: &Path) -> Result<&mut Programs> {
        let programs = match self.loaded.take() {
            Some(p) => p,
            None if self.refused => bail!("the programs did not load earlier in this apply (that error says why)"),
            None => Programs::load(pin_dir).context("loading the programs").inspect_err(|_| self.refused = true)?,
        };
        Ok(self.loaded.insert(programs))
    }

    /// An apply begins: a load that failed in the last one is tried again.
    fn new_apply(&mut self) {
        self.refused = false;
    }

    /// Lets the programs go (the next NI loads them anew).
    fn release(&mut self) {
        self.loaded = None;
    }
}

/// App port `p` of `ni` as its IFACE_V3 entry (what `apply` writes for a new port), for
/// whoever fills the maps without the applier (the program tests).
pub fn port_iface_info(ni: &NiPlan, p: &PortPlan, acl_id: u32) -> netns_ebpf_common::IfaceInfo {
    ni::with_driver!(ni.kind, kind => port::iface_info(kind, ni, p, acl_id))
}
