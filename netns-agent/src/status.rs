//! `netns-agent status`: per NI and per app port, whether it is applied, pending or
//! failed (with the error), the last apply, the VPN tunnels and the `limit` ACEs. Built
//! from the record and the pinned maps (no running agent needed) as one typed report,
//! rendered as a table or as JSON.

use std::path::{Path, PathBuf};

use anyhow::Result;
use netns_ebpf_common::limit::{Bucket, LimitKey, UNIT_MINUTE_NS, UNIT_SECOND_NS};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    config::NetworkKind,
    datapath, netlink, netns,
    plan::NiPlan,
    services::vpn::{self, TunnelStatus},
    state::{AppliedState, ApplyReport, ItemState},
};

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent: AgentStatus,
    pub last_apply: Option<ApplyReport>,
    pub networks: Vec<NetworkStatus>,
    pub limits: Vec<LimitStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The pid of the agent that follows the record, if it runs.
    pub pid: Option<u32>,
    pub config: Option<PathBuf>,
    /// The EdgeDevConfig last applied (file and `id.version`), if the last apply was of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eve_config: Option<crate::state::EveConfigRecord>,
    /// Applies this agent finished since it started.
    pub applies: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub kind: NetworkKind,
    pub state: ItemState,
    /// Its netns exists.
    pub present: bool,
    pub error: Option<String>,
    pub ports: Vec<PortStatus>,
    pub tunnel: Option<TunnelStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: String,
    pub app: String,
    pub state: ItemState,
    pub error: Option<String>,
}

/// One `limit` ACE's bucket, named.
#[derive(Debug, Serialize, Deserialize)]
pub struct LimitStatus {
    pub network: String,
    pub app: String,
    pub port: String,
    pub ace_id: u32,
    pub rate: u64,
    pub unit: LimitUnit,
    pub burst: u64,
    pub passed: u64,
    pub dropped: u64,
}

/// A `limit` ACE's time unit, spelled as in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitUnit {
    #[serde(rename = "s")]
    Second,
    #[serde(rename = "m")]
    Minute,
    #[serde(rename = "h")]
    Hour,
}

/// Whether `pid` is a live netns-agent process.
pub fn agent_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("netns-agent")))
            .unwrap_or(false)
}

pub async fn build(state_dir: &Path) -> Result<StatusReport> {
    let record = AppliedState::read(state_dir);
    let buckets = datapath::Maps::open(Path::new(&record.pin_dir)).map(|m| m.limits()).unwrap_or_default();
    let mut networks = Vec::new();
    for rec in record.nis.values() {
        let ni = &rec.plan;
        let present = netns::exists(&ni.name);
        let tunnel = match &ni.vpn {
            Some(_) => Some(vpn::tunnel_status(state_dir, &ni.name).await),
            None => None,
        };
        let ports = ni
            .ports
            .iter()
            .map(|p| {
                let error = rec.port_errors.get(&p.bridge_port).cloned();
                let state = if error.is_some() {
                    ItemState::Failed
                } else if rec.state == ItemState::Pending {
                    ItemState::Pending
                } else {
                    rec.state
                };
                PortStatus { port: p.bridge_port.clone(), app: p.app.clone(), state, error }
            })
            .collect();
        networks.push(NetworkStatus {
            name: ni.name.clone(),
            kind: ni.kind,
            state: rec.state,
            present,
            error: rec.error.clone(),
            ports,
            tunnel,
        });
    }
    Ok(StatusReport {
        agent: AgentStatus {
            pid: agent_alive(record.agent_pid).then_some(record.agent_pid),
            config: record.config_path.clone(),
            eve_config: record.eve_config.clone(),
            applies: record.applies,
        },
        last_apply: record.last_apply.clone(),
        limits: limits(&record, &buckets).await?,
        networks,
    })
}

/// The `limit` ACEs' buckets (`Maps::limits`) named by the record: NI, app, port, ACE id
/// (the port's ifindex is looked up in its NI). Buckets the record does not name are left
/// out; an NI that cannot be read is skipped with a warning, so a report never fails for
/// one NI.
pub async fn limits(record: &AppliedState, buckets: &[(LimitKey, Bucket)]) -> Result<Vec<LimitStatus>> {
    let mut limits = Vec::new();
    for ni in record.nis.values().map(|rec| &rec.plan).filter(|ni| netns::exists(&ni.name)) {
        if let Err(e) = ni_limits(ni, buckets, &mut limits).await {
            warn!("{}: reading its limit buckets: {e:#}", ni.name);
        }
    }
    Ok(limits)
}

async fn ni_limits(ni: &NiPlan, buckets: &[(LimitKey, Bucket)], out: &mut Vec<LimitStatus>) -> Result<()> {
    let nl = netlink::Netlink::open(&netns::Netns::open(&netns::resolve(&ni.name))?)?;
    for port in ni.ports.iter().filter(|p| !p.limits.is_empty()) {
        let Some(ifindex) = nl.link_index(&port.bridge_port).await? else { continue };
        for (index, _) in &port.limits {
            let key = |k: &LimitKey| k.zone == ni.zone() && k.ifindex == ifindex && k.ace_index == *index as u32;
            if let Some((_, b)) = buckets.iter().find(|(k, _)| key(k)) {
                out.push(LimitStatus {
                    network: ni.name.clone(),
                    app: port.app.clone(),
                    port: port.bridge_port.clone(),
                    ace_id: port.acl[*index].id,
                    rate: b.rate,
                    unit: match b.unit_ns {
                        UNIT_SECOND_NS => LimitUnit::Second,
                        UNIT_MINUTE_NS => LimitUnit::Minute,
                        _ => LimitUnit::Hour,
                    },
                    burst: b.burst,
                    passed: b.passed,
                    dropped: b.dropped,
                });
            }
        }
    }
    Ok(())
}

/// A unit enum as its JSON spells it ("applied", "s", ...).
pub(crate) fn lower<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub fn print_table(r: &StatusReport) {
    match r.agent.pid {
        Some(pid) => println!("agent: running (pid {pid}), {} applies", r.agent.applies),
        None => println!("agent: not running (the data path stays as applied)"),
    }
    if let Some(eve) = &r.agent.eve_config {
        println!("config: EdgeDevConfig {} version {:?}", eve.path.display(), eve.version);
    }
    if let Some(a) = &r.last_apply {
        println!(
            "last apply: {} ({}), {:.1} ms, {} changes, {} errors",
            fmt_time(a.started_unix),
            a.trigger,
            a.duration_ms,
            a.changes.len(),
            a.errors.len()
        );
        for e in &a.errors {
            println!("  error: {e}");
        }
    }
    println!("{:<16} {:<7} {:<9} {:<11} DETAILS", "NETWORK", "KIND", "STATE", "TUNNEL");
    for n in &r.networks {
        let state = if n.present { lower(&n.state) } else { "absent".into() };
        let mut details = String::new();
        if let Some(e) = &n.error {
            details += &format!("error: {e}");
        }
        if let Some(t) = &n.tunnel {
            details += &tunnel_details(t);
        }
        let tunnel = n.tunnel.as_ref().map(|t| t.state.as_str()).unwrap_or("-");
        println!("{:<16} {:<7} {:<9} {:<11} {details}", n.name, lower(&n.kind), state, tunnel);
        for p in &n.ports {
            let err = p.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default();
            println!("  {:<14} {:<10} {}{err}", p.port, p.app, lower(&p.state));
        }
    }
    if !r.limits.is_empty() {
        println!(
            "\n{:<16} {:<10} {:<10} {:>6} {:>10} {:>7} {:>10} {:>10}",
            "NETWORK", "APP", "PORT", "ACE", "RATE", "BURST", "PASSED", "DROPPED"
        );
        for l in &r.limits {
            println!(
                "{:<16} {:<10} {:<10} {:>6} {:>10} {:>7} {:>10} {:>10}",
                l.network,
                l.app,
                l.port,
                l.ace_id,
                format!("{}/{}", l.rate, lower(&l.unit)),
                l.burst,
                l.passed,
                l.dropped
            );
        }
    }
}

fn tunnel_details(t: &TunnelStatus) -> String {
    let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let sup = t.supervision.as_ref();
    let mut d = sup.map(|s| format!("peer {} ({})", s.remote, s.backend)).unwrap_or_default();
    if t.ike_state.is_some() {
        d += &format!(", IKE {} {} -> {}, child {} {}", s(&t.ike_state), s(&t.local), s(&t.remote), s(&t.child_state), s(&t.encap));
        d += &format!(", in {} B/{} pkts, out {} B/{} pkts", t.bytes_in, t.packets_in, t.bytes_out, t.packets_out);
    }
    if let Some(pid) = sup.and_then(|s| s.pid) {
        d += &format!(", charon pid {pid}");
    }
    d += &format!(", {} restarts", sup.map(|s| s.restarts).unwrap_or(0));
    if let (false, Some(e)) = (t.state == vpn::TunnelState::Up, sup.and_then(|s| s.last_error.as_ref())) {
        d += &format!("; last error: {e}");
    }
    d
}

fn fmt_time(unix: f64) -> String {
    let secs = unix as i64;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02} UTC")
}
