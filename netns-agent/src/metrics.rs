//! Prometheus metrics: `GET /metrics` at `[agent] metrics` (text format 0.0.4).
//!
//! A scrape reads the data path's counters from the pinned maps (datapath counters,
//! per-port packets and bytes, limit buckets, map fill) and the agent's own figures (the
//! flow table's per-ACE totals, the DNS proxies' counts, applies, VPN tunnels). Every
//! figure is built as a typed `Family` and rendered once; README lists them all.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{Context, Result};
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use netns_ebpf_common::{Stat, PORT_DIR_FROM_APP, PORT_DIR_TO_APP};
use tracing::{debug, info, warn};

use crate::{
    datapath::Maps,
    flowlog::{FlowTable, Names},
    services::{dns::DnsObserver, vpn},
};

/// The agent's own figures, kept current by its run loop.
#[derive(Clone, Default)]
pub struct AgentFigures {
    pub names: Arc<Names>,
    /// VPN NIs (their tunnels are asked at each scrape).
    pub vpn_nis: Vec<String>,
    pub applies_ok: u64,
    pub applies_refused: u64,
    pub applies_failed: u64,
    pub apply_seconds_total: f64,
    pub last_apply_seconds: f64,
    /// The shared flow maps' fill, as of the last sweep.
    pub map_fill: Vec<crate::datapath::MapFill>,
}

impl AgentFigures {
    /// Counts an apply: `refused` (nothing changed), `failed` (applied with errors) or ok.
    pub fn count_apply(&mut self, refused: bool, ok: bool, seconds: f64) {
        match (refused, ok) {
            (true, _) => self.applies_refused += 1,
            (false, true) => self.applies_ok += 1,
            (false, false) => self.applies_failed += 1,
        }
        if !refused {
            self.apply_seconds_total += seconds;
            self.last_apply_seconds = seconds;
        }
    }
}

/// Everything a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub agent: Arc<Mutex<AgentFigures>>,
    pub flows: Arc<Mutex<FlowTable>>,
    pub dns: Arc<DnsObserver>,
    /// Flow events the agent's own queue had no room for.
    pub events_lost_in_agent: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its name, help, type and samples.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Debug)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family { name, help, kind, samples: Vec::new() }
    }

    fn add(&mut self, labels: &[(&'static str, &str)], value: impl Into<f64>) {
        self.samples.push(Sample { labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), value: value.into() });
    }

    fn add_u64(&mut self, labels: &[(&'static str, &str)], value: u64) {
        // Counters far below 2^53: exact as f64.
        self.add(labels, value as f64);
    }
}

/// The text exposition of `families`.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

/// Every family, from the pinned maps (absent when nothing is applied) and the agent.
pub fn collect(src: &Sources, maps: Option<&Maps>, tunnels: &[(String, vpn::TunnelStatus)]) -> Vec<Family> {
    // A copy: the run loop never waits on a scrape's map walks.
    let agent = src.agent.lock().unwrap().clone();
    let names = agent.names.clone();
    let mut out = Vec::new();
    let mut up = Family::new(
        "netns_agent_datapath_up",
        Kind::Gauge,
        "1 when the pinned maps could be read (else the data-path figures are missing from this scrape).",
    );
    up.add(&[], if maps.is_some() { 1.0 } else { 0.0 });
    out.push(up);
    if let Some(maps) = maps {
        out.extend(datapath_families(maps, &names));
    }
    let mut entries =
        Family::new("netns_agent_map_entries", Kind::Gauge, "Entries in the shared flow maps, as of the last sweep (every 10 s).");
    let mut capacity = Family::new("netns_agent_map_capacity_entries", Kind::Gauge, "What the shared flow maps can hold.");
    for f in &agent.map_fill {
        entries.add_u64(&[("map", f.map)], f.entries);
        capacity.add_u64(&[("map", f.map)], f.capacity);
    }
    out.extend([entries, capacity]);
    out.extend(ace_families(&src.flows.lock().unwrap(), &names));

    out.extend(flow_log_families(src, maps));
    out.extend(dns_families(src));
    out.extend(vpn_families(tunnels));
    out.extend(apply_families(&agent));
    out
}

/// Flow events lost (data path, agent queue), records written by kind, flows followed.
fn flow_log_families(src: &Sources, maps: Option<&Maps>) -> Vec<Family> {
    let mut out = Vec::new();
    let mut lost = Family::new(
        "netns_agent_flow_events_lost_total",
        Kind::Counter,
        "Flow events lost: the ring buffer was full (datapath) or the agent's queue was (agent).",
    );
    let datapath_lost = maps.map(|m| m.stats().iter().find(|(s, _)| *s == Stat::EventLost).map(|(_, n)| *n).unwrap_or(0)).unwrap_or(0);
    lost.add_u64(&[("where", "datapath")], datapath_lost);
    lost.add_u64(&[("where", "agent")], src.events_lost_in_agent.load(Ordering::Relaxed));
    out.push(lost);
    let mut records = Family::new(
        "netns_agent_flow_records_total",
        Kind::Counter,
        "Flow log records written, by kind (end records by how the flow ended).",
    );
    let mut live = Family::new("netns_agent_flows_followed", Kind::Gauge, "Allowed flows the agent follows from start to end now.");
    {
        let table = src.flows.lock().unwrap();
        for (kind, n) in table.records_written() {
            records.add_u64(&[("kind", kind.label())], n);
        }
        live.add(&[], table.live_flows() as f64);
    }
    out.push(records);
    out.push(live);
    out
}

/// The DNS proxies' requests by NI, rcode and source; those the flow log lost.
fn dns_families(src: &Sources) -> Vec<Family> {
    let mut out = Vec::new();
    let mut dns = Family::new(
        "netns_agent_dns_queries_total",
        Kind::Counter,
        "DNS requests the NIs' proxies handled, by NI, answer code and where the answer came from.",
    );
    for (k, n) in src.dns.query_counts() {
        dns.add_u64(&[("ni", &k.ni), ("rcode", &k.rcode.to_string()), ("source", k.source.as_str())], n);
    }
    out.push(dns);
    let mut dns_lost = Family::new("netns_agent_dns_records_lost_total", Kind::Counter, "DNS requests that the flow log had no room for.");
    dns_lost.add_u64(&[], src.dns.requests_lost());
    out.push(dns_lost);
    out
}

/// Each VPN NI's tunnel: up, and its CHILD_SA's bytes and packets.
fn vpn_families(tunnels: &[(String, vpn::TunnelStatus)]) -> Vec<Family> {
    let mut out = Vec::new();
    let mut up = Family::new("netns_agent_vpn_tunnel_up", Kind::Gauge, "1 when the VPN NI's tunnel has an installed CHILD_SA.");
    let mut vbytes = Family::new(
        "netns_agent_vpn_child_sa_bytes",
        Kind::Gauge,
        "Bytes through the VPN NI's current CHILD_SA (in: decrypted, out: encrypted); restarts at each rekey.",
    );
    let mut vpackets = Family::new(
        "netns_agent_vpn_child_sa_packets",
        Kind::Gauge,
        "Packets through the VPN NI's current CHILD_SA; restarts at each rekey.",
    );
    for (ni, t) in tunnels {
        up.add(&[("ni", ni)], if t.state == vpn::TunnelState::Up { 1.0 } else { 0.0 });
        vbytes.add_u64(&[("ni", ni), ("direction", "in")], t.bytes_in);
        vbytes.add_u64(&[("ni", ni), ("direction", "out")], t.bytes_out);
        vpackets.add_u64(&[("ni", ni), ("direction", "in")], t.packets_in);
        vpackets.add_u64(&[("ni", ni), ("direction", "out")], t.packets_out);
    }
    out.extend([up, vbytes, vpackets]);
    out
}

/// The applies: how many by result, their time, the last one's.
fn apply_families(agent: &AgentFigures) -> Vec<Family> {
    let mut out = Vec::new();
    let mut applies = Family::new(
        "netns_agent_applies_total",
        Kind::Counter,
        "Config applies: ok, failed (applied with errors) or refused (nothing changed).",
    );
    applies.add_u64(&[("result", "ok")], agent.applies_ok);
    applies.add_u64(&[("result", "failed")], agent.applies_failed);
    applies.add_u64(&[("result", "refused")], agent.applies_refused);
    let mut secs = Family::new("netns_agent_apply_seconds_total", Kind::Counter, "Time spent applying configs (refused ones excluded).");
    secs.add(&[], agent.apply_seconds_total);
    let mut last = Family::new("netns_agent_last_apply_duration_seconds", Kind::Gauge, "How long the last apply took.");
    last.add(&[], agent.last_apply_seconds);
    out.extend([applies, secs, last]);
    out
}

/// The data path's own counters: decisions, drops by reason, per-port traffic, limit
/// buckets, NAT port exhaustion.
fn datapath_families(maps: &Maps, names: &Names) -> Vec<Family> {
    let stats = maps.stats();
    let mut decisions = Family::new(
        "netns_agent_datapath_decisions_total",
        Kind::Counter,
        "Every counter of the programs (STATS_V13), by name; README says what each counts.",
    );
    let mut drops =
        Family::new("netns_agent_datapath_drops_total", Kind::Counter, "Packets the programs dropped, by reason (the drop_* counters).");
    for (s, n) in &stats {
        decisions.add_u64(&[("counter", s.name())], *n);
        if let Some(reason) = s.name().strip_prefix("drop_") {
            drops.add_u64(&[("reason", reason)], *n);
        }
    }
    let mut exhausted =
        Family::new("netns_agent_nat_port_exhausted_total", Kind::Counter, "New flows that source NAT found no free port for (dropped).");
    exhausted.add_u64(&[], stats.iter().find(|(s, _)| *s == Stat::NatNoPort).map(|(_, n)| *n).unwrap_or(0));

    // Ports by their key: the app (IFACE_V3) and the bridge port (the plan).
    let ports: HashMap<_, _> = maps.ports().into_iter().collect();
    let port_labels = |zone: u32, ifindex: u32| -> Option<(String, String, String)> {
        let info = ports.get(&netns_ebpf_common::IfaceKey { zone, ifindex })?;
        Some((names.ni(zone), names.app(info.app_num), names.port(zone, info.app_num, ifindex)))
    };
    let mut packets = Family::new(
        "netns_agent_port_packets_total",
        Kind::Counter,
        "Packets through an app port, by direction (from_app, to_app) and verdict.",
    );
    let mut bytes =
        Family::new("netns_agent_port_bytes_total", Kind::Counter, "Bytes (whole frames) through an app port, by direction and verdict.");
    for (key, c) in maps.port_counters() {
        let Some((ni, app, port)) = port_labels(key.zone, key.ifindex) else { continue };
        for (dir, d) in [("from_app", PORT_DIR_FROM_APP), ("to_app", PORT_DIR_TO_APP)] {
            for (verdict, p, b) in [("pass", c.passed_packets[d], c.passed_bytes[d]), ("drop", c.dropped_packets[d], c.dropped_bytes[d])] {
                let labels =
                    [("ni", ni.as_str()), ("app", app.as_str()), ("port", port.as_str()), ("direction", dir), ("verdict", verdict)];
                packets.add_u64(&labels, p);
                bytes.add_u64(&labels, b);
            }
        }
    }

    let mut limit = Family::new(
        "netns_agent_limit_packets_total",
        Kind::Counter,
        "Packets a limit ACE let through (pass) or dropped over its rate (drop).",
    );
    for (k, b) in maps.limits() {
        let Some((ni, app, port)) = port_labels(k.zone, k.ifindex) else { continue };
        let ace = maps
            .port(netns_ebpf_common::IfaceKey { zone: k.zone, ifindex: k.ifindex })
            .and_then(|info| maps.acls.ace(info.acl_id, k.ace_index).map(|a| a.id))
            .map(|id| id.to_string())
            .unwrap_or_else(|| format!("index{}", k.ace_index));
        for (verdict, n) in [("pass", b.passed), ("drop", b.dropped)] {
            limit.add_u64(&[("ni", &ni), ("app", &app), ("port", &port), ("ace", &ace), ("verdict", verdict)], n);
        }
    }
    vec![decisions, drops, exhausted, packets, bytes, limit]
}

/// Flows, packets and bytes per ACE (the flow table's).
fn ace_families(table: &FlowTable, names: &Names) -> Vec<Family> {
    let mut flows =
        Family::new("netns_agent_ace_flows_total", Kind::Counter, "Flows an ACE judged (allowed or dropped), by NI, app and ACE id.");
    let mut packets =
        Family::new("netns_agent_ace_packets_total", Kind::Counter, "Packets (both ways) of the allowed flows an ACE judged.");
    let mut bytes = Family::new("netns_agent_ace_bytes_total", Kind::Counter, "Bytes (both ways) of the allowed flows an ACE judged.");
    for (k, t) in table.ace_totals() {
        let (ni, app, ace) = (names.ni(k.zone), names.app(k.app_num), k.ace_id.to_string());
        let labels =
            [("ni", ni.as_str()), ("app", app.as_str()), ("ace", ace.as_str()), ("user", if k.user_ace { "true" } else { "false" })];
        flows.add_u64(&labels, t.flows);
        packets.add_u64(&labels, t.packets);
        bytes.add_u64(&labels, t.bytes);
    }
    vec![flows, packets, bytes]
}

async fn scrape(State(src): State<Sources>) -> axum::response::Response {
    let vpn_nis = src.agent.lock().unwrap().vpn_nis.clone();
    let tunnels = futures::future::join_all(vpn_nis.into_iter().map(|ni| {
        let state_dir = src.state_dir.clone();
        async move {
            let t = vpn::tunnel_status(&state_dir, &ni).await;
            (ni, t)
        }
    }))
    .await;
    // Map walks are syscalls: off the async workers.
    let collected = tokio::task::spawn_blocking(move || {
        let maps = match Maps::open(&src.pin_dir) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!("metrics without the data path: {e:#}");
                None
            }
        };
        render(&collect(&src, maps.as_ref(), &tunnels))
    })
    .await;
    match collected {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => {
            warn!("metrics: collecting failed: {e}");
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("collecting failed: {e}\n")).into_response()
        }
    }
}

/// Serves `/metrics` on `addr` until the task is aborted.
pub async fn serve(addr: SocketAddr, src: Sources) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
    info!("metrics on http://{addr}/metrics");
    let router = Router::new().route("/metrics", get(scrape)).with_state(src);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!("metrics server: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut f = Family::new("netns_agent_x_total", Kind::Counter, "An x.");
        f.add(&[("ni", "a\"b\\c\nd"), ("dir", "in")], 3.0);
        f.add(&[], 0.5);
        assert_eq!(
            render(&[f]),
            "# HELP netns_agent_x_total An x.\n# TYPE netns_agent_x_total counter\nnetns_agent_x_total{ni=\"a\\\"b\\\\c\\nd\",dir=\"in\"} 3\nnetns_agent_x_total 0.5\n"
        );
    }
}
