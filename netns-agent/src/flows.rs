//! Flow records read back from the pinned conntrack map, for `netns-agent flows`.

use std::net::{Ipv4Addr, SocketAddrV4};

use netns_ebpf_common::{
    ct::{self, CtKey, CtValue, DIR_ORIG, DIR_REPLY, VERDICT_DROP},
    mark,
    nat::{NatKey, NatValue, DOMAIN_AGENT, NAT_FLAG_ORIG, REWRITE_SRC},
    PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{self, Maps},
    state::AppliedState,
    status::{self, LimitStatus},
};

/// `netns-agent flows --json`: the flow table, the NAT pairs, the `limit` buckets (as
/// `status` names them) and the data path's counters by name.
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowsReport {
    pub flows: Vec<FlowRecord>,
    pub nat: Vec<NatRecord>,
    pub limits: Vec<LimitStatus>,
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl FlowsReport {
    /// From the pinned maps and the record (no running agent needed).
    pub async fn read(maps: &Maps, state: &AppliedState) -> anyhow::Result<FlowsReport> {
        let now = datapath::monotonic_ns();
        let nat = maps.nat_entries();
        Ok(FlowsReport {
            flows: records(&maps.flows(), &nat, state, now),
            nat: nat_records(&nat, now),
            limits: status::limits(state, &maps.limits()).await?,
            counters: maps.stats().iter().map(|(s, n)| (s.name().to_string(), *n)).collect(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FlowRecord {
    pub ni: String,
    pub zone: u32,
    pub app: String,
    pub app_num: u32,
    pub proto: String,
    /// The initiator's end and the responder's end.
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    pub mark: String,
    pub ace_id: u32,
    pub user_ace: bool,
    pub verdict: Verdict,
    /// TCP's state ("ESTABLISHED", ...); "-" for other protocols.
    pub tcp_state: String,
    pub packets_orig: u64,
    pub packets_reply: u64,
    pub bytes_orig: u64,
    pub bytes_reply: u64,
    pub age_secs: f64,
    pub idle_secs: f64,
    /// The source as translated on the way out: NI veth address, then uplink address.
    pub translated: Vec<String>,
}

/// The conntrack entry's verdict on the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Drop,
}

/// One NAT entry, for `flows --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NatRecord {
    pub domain: u32,
    pub proto: String,
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    /// The address and port rewritten, and what they become.
    pub rewrite: Rewrite,
    pub to: String,
    pub original_direction: bool,
    pub idle_secs: f64,
}

/// Which end a NAT entry rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rewrite {
    Src,
    Dst,
}

pub fn nat_records(nat: &[(NatKey, NatValue)], now_ns: u64) -> Vec<NatRecord> {
    nat.iter()
        .map(|(k, v)| NatRecord {
            domain: k.domain,
            proto: proto_name(k.proto),
            src: Ipv4Addr::from(k.src).to_string(),
            sport: k.sport,
            dst: Ipv4Addr::from(k.dst).to_string(),
            dport: k.dport,
            rewrite: if v.rewrite == REWRITE_SRC { Rewrite::Src } else { Rewrite::Dst },
            to: format!("{}:{}", Ipv4Addr::from(v.addr), v.port),
            original_direction: v.flags & NAT_FLAG_ORIG != 0,
            idle_secs: secs(now_ns.saturating_sub(v.last_seen_ns)),
        })
        .collect()
}

/// An entry's flow as (initiator's end, responder's end): address and port.
pub fn ends(key: &CtKey, v: &CtValue) -> (([u8; 4], u16), ([u8; 4], u16)) {
    let (a, b) = ((key.addr_a, key.port_a), (key.addr_b, key.port_b));
    if v.orig_is_a != 0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// An entry's flow as (the app's end, the remote's end): a flow judged on its way to the
/// app was started by the remote.
pub fn app_and_remote(key: &CtKey, v: &CtValue) -> (([u8; 4], u16), ([u8; 4], u16)) {
    let (initiator, responder) = ends(key, v);
    if v.flags & ct::FLAG_JUDGED_TO_APP != 0 {
        (responder, initiator)
    } else {
        (initiator, responder)
    }
}

/// Follows the source translations of packets from the app's end `app` to the remote
/// `remote`: in its NI, then in the agent's netns (an app-initiated flow's SNATs, or the
/// replies of a port-mapped flow undoing its DNATs). Each step's result, in order.
fn translations(
    nat: impl Fn(&NatKey) -> Option<NatValue>,
    zone: u32,
    proto: u8,
    app: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) -> Vec<SocketAddrV4> {
    let mut out = Vec::new();
    let mut key = NatKey { domain: zone, src: app.0, dst: remote.0, sport: app.1, dport: remote.1, proto, _pad: [0; 3] };
    for domain in [zone, DOMAIN_AGENT] {
        key.domain = domain;
        match nat(&key) {
            Some(v) if v.rewrite == REWRITE_SRC => {
                out.push(SocketAddrV4::new(Ipv4Addr::from(v.addr), v.port));
                key = key.rewritten(&v);
            }
            _ => break,
        }
    }
    out
}

/// The app's end as the remote sees it (after every translation), if translated.
pub fn translated(
    nat: impl Fn(&NatKey) -> Option<NatValue>,
    zone: u32,
    proto: u8,
    app: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) -> Option<SocketAddrV4> {
    translations(nat, zone, proto, app, remote).pop()
}

pub fn records(entries: &[(CtKey, CtValue)], nat: &[(NatKey, NatValue)], state: &AppliedState, now_ns: u64) -> Vec<FlowRecord> {
    let nat: foldhash::HashMap<NatKey, NatValue> = nat.iter().copied().collect();
    let mut out: Vec<FlowRecord> = entries
        .iter()
        .map(|(k, v)| {
            let ((src, sport), (dst, dport)) = ends(k, v);
            let m = mark::decode(v.mark);
            FlowRecord {
                ni: state.zones.get(&k.zone).cloned().unwrap_or_else(|| format!("zone{}", k.zone)),
                zone: k.zone,
                app: state.apps.get(&m.app_num).cloned().unwrap_or_else(|| format!("app#{}", m.app_num)),
                app_num: m.app_num,
                proto: proto_name(k.proto),
                src: Ipv4Addr::from(src).to_string(),
                sport,
                dst: Ipv4Addr::from(dst).to_string(),
                dport,
                mark: format!("{:#010x}", v.mark),
                ace_id: m.ace_id,
                user_ace: m.user_ace,
                verdict: if v.verdict == VERDICT_DROP { Verdict::Drop } else { Verdict::Allow },
                tcp_state: if k.proto == PROTO_TCP { ct::tcp_state_name(v.tcp_state) } else { "-" }.to_string(),
                packets_orig: v.packets[DIR_ORIG],
                packets_reply: v.packets[DIR_REPLY],
                bytes_orig: v.bytes[DIR_ORIG],
                bytes_reply: v.bytes[DIR_REPLY],
                age_secs: secs(now_ns.saturating_sub(v.first_seen_ns)),
                idle_secs: secs(now_ns.saturating_sub(v.last_seen_ns)),
                translated: translations(|k| nat.get(k).copied(), k.zone, k.proto, (src, sport), (dst, dport))
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            }
        })
        .collect();
    // Per NI, oldest first.
    out.sort_by(|a, b| a.zone.cmp(&b.zone).then(b.age_secs.total_cmp(&a.age_secs)));
    out
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e8).round() / 10.0
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        2 => "igmp".into(),
        n => n.to_string(),
    }
}

pub fn print_table(records: &[FlowRecord]) {
    println!(
        "{:<8} {:<8} {:<5} {:<22} {:<22} {:<10} {:<6} {:<11} {:>13} {:>17} {:>7}",
        "NI", "APP", "PROTO", "SRC", "DST", "MARK", "VERDICT", "STATE", "PKTS ORIG/REP", "BYTES ORIG/REP", "AGE"
    );
    for r in records {
        println!(
            "{:<8} {:<8} {:<5} {:<22} {:<22} {:<10} {:<6}  {:<11} {:>13} {:>17} {:>6.1}s",
            r.ni,
            r.app,
            r.proto,
            format!("{}:{}", r.src, r.sport),
            format!("{}:{}", r.dst, r.dport),
            r.mark,
            status::lower(&r.verdict),
            r.tcp_state,
            format!("{}/{}", r.packets_orig, r.packets_reply),
            format!("{}/{}", r.bytes_orig, r.bytes_reply),
            r.age_secs
        );
        if !r.translated.is_empty() {
            println!("{:<23}source translated to {}", "", r.translated.join(" -> "));
        }
    }
    println!("{} flows", records.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_shows_initiator_first_and_decodes_mark() {
        let key =
            CtKey { zone: 2, addr_a: [10, 0, 0, 3], addr_b: [10, 0, 0, 9], port_a: 80, port_b: 40000, proto: PROTO_TCP, _pad: [0; 3] };
        let val = CtValue {
            first_seen_ns: 1_000_000_000,
            last_seen_ns: 2_000_000_000,
            packets: [3, 2],
            bytes: [180, 120],
            mark: 0x01bf_ffff,
            verdict: VERDICT_DROP,
            tcp_state: ct::TCP_SYN_SENT,
            orig_is_a: 0,
            ..CtValue::default()
        };
        let mut state = AppliedState::default();
        state.zones.insert(2, "ni2".into());
        state.apps.insert(1, "app1".into());
        let r = &records(&[(key, val)], &[], &state, 3_500_000_000)[0];
        assert_eq!((r.ni.as_str(), r.app.as_str()), ("ni2", "app1"));
        assert_eq!((r.src.as_str(), r.sport, r.dst.as_str(), r.dport), ("10.0.0.9", 40000, "10.0.0.3", 80));
        assert_eq!((r.mark.as_str(), r.ace_id, r.verdict), ("0x01bfffff", 0x3fffff, Verdict::Drop));
        assert_eq!((r.age_secs, r.idle_secs), (2.5, 1.5));
        assert!(r.translated.is_empty());
    }

    /// The tests and xtask read `flows --json`, `status --json` and the flow log back
    /// into these types: what the agent prints must parse as what it printed.
    #[test]
    fn reports_read_back() {
        let key = CtKey { zone: 1, addr_a: [10, 0, 0, 3], addr_b: [10, 0, 0, 9], port_a: 80, port_b: 4000, proto: PROTO_TCP, _pad: [0; 3] };
        let nat = [(
            NatKey { domain: 0, src: [10, 0, 0, 3], dst: [10, 0, 0, 9], sport: 80, dport: 4000, proto: PROTO_TCP, _pad: [0; 3] },
            NatValue { addr: [192, 168, 0, 2], port: 8080, rewrite: REWRITE_SRC, ..NatValue::default() },
        )];
        let limit = LimitStatus {
            network: "ni1".into(),
            app: "app1".into(),
            port: "nbu1x1".into(),
            ace_id: 5,
            rate: 10,
            unit: status::LimitUnit::Minute,
            burst: 20,
            passed: 7,
            dropped: 3,
        };
        let report = FlowsReport {
            flows: records(&[(key, CtValue::default())], &nat, &AppliedState::default(), 0),
            nat: nat_records(&nat, 0),
            limits: vec![limit],
            counters: [("ct_new".to_string(), 4)].into_iter().collect(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            (&json["flows"][0]["verdict"], &json["nat"][0]["rewrite"], &json["limits"][0]["unit"]),
            (&"allow".into(), &"src".into(), &"m".into())
        );
        let back: FlowsReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);

        let status = status::StatusReport {
            agent: status::AgentStatus { pid: None, config: None, eve_config: None, applies: 2 },
            last_apply: Some(crate::state::ApplyReport::default()),
            networks: vec![status::NetworkStatus {
                name: "ni4".into(),
                kind: crate::config::NetworkKind::Vpn,
                state: crate::state::ItemState::Applied,
                present: true,
                error: None,
                ports: vec![status::PortStatus {
                    port: "nbu4x1".into(),
                    app: "app1".into(),
                    state: crate::state::ItemState::Failed,
                    error: Some("no tap".into()),
                }],
                tunnel: Some(crate::services::vpn::TunnelStatus {
                    state: crate::services::vpn::TunnelState::Connecting,
                    supervision: Some(crate::services::vpn::Supervision { pid: Some(9), ..Default::default() }),
                    ike_state: Some("CONNECTING".into()),
                    local: None,
                    remote: None,
                    child_state: None,
                    encap: None,
                    bytes_in: 1,
                    packets_in: 2,
                    bytes_out: 3,
                    packets_out: 4,
                    local_ts: vec!["10.10.10.0/24".into()],
                    remote_ts: Vec::new(),
                }),
            }],
            limits: Vec::new(),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert!(json["agent"].get("eve_config").is_none());
        let back: status::StatusReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);

        let line = r#"{"kind":"dns","time":1.5,"ni":"ni1","app":"app1","name":"app2","qtype":"A","answers":["10.10.1.3"],"rcode":"NoError","source":"local"}"#;
        let Ok(crate::flowlog::LogRecord::Dns(dns)) = serde_json::from_str(line) else { panic!("not a DNS record: {line}") };
        assert_eq!(dns.request.rcode, crate::services::dns::Rcode::NoError);
        assert_eq!(serde_json::to_string(&crate::flowlog::LogRecord::Dns(dns)).unwrap(), line);
    }

    #[test]
    fn translations_follow_both_source_nats() {
        let app = ([10, 10, 1, 2], 40000u16);
        let remote = ([10, 99, 0, 10], 80u16);
        let k1 = NatKey { domain: 1, src: app.0, dst: remote.0, sport: app.1, dport: remote.1, proto: PROTO_TCP, _pad: [0; 3] };
        let v1 = NatValue { addr: [169, 254, 100, 2], port: 1111, rewrite: REWRITE_SRC, flags: NAT_FLAG_ORIG, ..NatValue::default() };
        let k2 = NatKey { domain: 0, src: [169, 254, 100, 2], sport: 1111, ..k1 };
        let v2 = NatValue { addr: [192, 168, 0, 2], port: 2222, ..v1 };
        let nat: std::collections::HashMap<_, _> = [(k1, v1), (k2, v2)].into_iter().collect();
        let lookup = |k: &NatKey| nat.get(k).copied();
        let steps: Vec<String> = translations(lookup, 1, PROTO_TCP, app, remote).iter().map(|a| a.to_string()).collect();
        assert_eq!(steps, ["169.254.100.2:1111", "192.168.0.2:2222"]);
        assert_eq!(translated(lookup, 1, PROTO_TCP, app, remote), Some("192.168.0.2:2222".parse().unwrap()));
        assert!(translations(lookup, 2, PROTO_TCP, app, remote).is_empty());
    }
}
