//! Turns a config (the typed model, validated and with its defaults filled in) into the
//! concrete kernel objects to create: names, addresses, map entries. Pure: computing a plan touches nothing, so a bad config changes nothing.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use netns_ebpf_common::{acl, chosen_ifindex, mark, SLOT_AGENT_END, SLOT_NI_END};

use serde::{Deserialize, Serialize};

use crate::config::{Ace, Action, App, Config, Interface, Network, NetworkKind, Vpn, VpnBackend};

/// The /24 that the agent<->NI veth /30s are carved from.
pub const VETH_NET: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 0);
/// The prefix of each NI's veth pair (a /30 of VETH_NET).
pub const VETH_PREFIX: u8 = 30;
/// Name of the bridge inside every NI netns.
pub const BRIDGE: &str = "br";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub nat_ports: (u16, u16),
    pub dns_host_grace: std::time::Duration,
    /// The flow log's file (none: records go to `flows --follow` only), its rotation
    /// size, and the interval of interim records.
    pub flow_log: Option<PathBuf>,
    pub flow_log_max_bytes: u64,
    pub flow_interim: std::time::Duration,
    /// Where `/metrics` is served.
    pub metrics: Option<std::net::SocketAddr>,
    /// The redirect fast path for local NIs (`[agent] fast_path`).
    pub fast_path: bool,
    /// `[agent] expedite_rcu` (`rcu`).
    pub expedite_rcu: bool,
    pub uplinks: Vec<UplinkPlan>,
    pub nis: Vec<NiPlan>,
}

/// An uplink and the routing table the local NIs on it share (500 up; `Plan::keep_tables`
/// keeps an uplink's number while it is on record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkPlan {
    pub name: String,
    pub table: u32,
    /// Upstream DNS servers for its NIs; empty: the agent netns' resolv.conf.
    pub dns: Vec<Ipv4Addr>,
}

/// A port map: `lport` on the NI uplink's address (and on the NI veth address inside the
/// NI) leads to app_ip:target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortmapPlan {
    pub proto: u8,
    pub lport: u16,
    pub app_ip: Ipv4Addr,
    pub target: u16,
    /// The exposing ACE's mark: app number, user ACE, ACE id.
    pub mark: u32,
}

pub const UPLINK_TABLE_BASE: u32 = 500;
pub const EVE_TABLE_BASE: u32 = 600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NiPlan {
    pub name: String,
    pub kind: NetworkKind,
    /// N: names the veths and addresses, and is the conntrack zone.
    pub index: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// `vethN` in the agent's netns, with `agent_ip`.
    pub agent_veth: String,
    pub agent_ip: Ipv4Addr,
    /// `vethN.1` in the NI netns, with `ni_ip`.
    pub ni_veth: String,
    pub ni_ip: Ipv4Addr,
    pub uplink: Option<String>,
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub ports: Vec<PortPlan>,
    pub portmaps: Vec<PortmapPlan>,
    pub vpn: Option<VpnPlan>,
}

/// The IPsec tunnel of a VPN NI, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnPlan {
    /// IKE and ESP leave from the NI veth's address (SNATed again at the uplink).
    pub local_addr: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub local_id: String,
    pub remote_id: String,
    pub psk: String,
    pub local_ts: Vec<Ipv4Net>,
    pub remote_ts: Vec<Ipv4Net>,
    pub ike_proposals: String,
    pub esp_proposals: String,
    pub backend: VpnBackend,
}

/// One app interface: a veth whose bridge side is in the NI and whose other side is in
/// the app's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    pub app: String,
    pub app_num: u32,
    /// The app's netns ("" for a tap: the VM's side is the hypervisor's business).
    pub app_netns: String,
    /// A VM's tap, taken from the agent's netns; it is the bridge port.
    pub tap: Option<String>,
    /// `nbu<k>x<app_num>`: the bridge port, where the programs attach.
    pub bridge_port: String,
    /// The bridge port's ifindex (`netns_ebpf_common::chosen_ifindex`); `None` for a tap,
    /// which keeps the one it had in the agent's netns.
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// `nbu<k>x<app_num>.1`: the app's end.
    pub app_ifname: String,
    pub ip: Ipv4Addr,
    /// The app side's MAC: the key of its static DHCP lease.
    pub mac: [u8; 6],
    /// The app's frames must come from `mac`: a veth the agent made, or a VM's tap with
    /// `mac` configured (else the VM's NIC picks its own).
    #[serde(default)]
    pub check_mac: bool,
    /// The app configures its address itself, by DHCP.
    pub dhcp: bool,
    /// `ip` was configured (else the agent picked it: on a switch NI the port then learns
    /// the app's real address from the DHCP server's reply).
    #[serde(default)]
    pub ip_configured: bool,
    /// The app's first interface, configured by the agent: the app's default route goes
    /// through it.
    #[serde(default)]
    pub default_route: bool,
    /// The ACL as the programs read it, in config order (`classify` compiles it).
    #[serde(with = "pod_hex::vec")]
    pub acl: Vec<acl::Ace>,
    /// Host ACEs in ACL order: (index in the ACL, domain suffix, lower case, no trailing
    /// dot). The k-th has bit base+k of the host sets' masks (`datapath::HostLayout`).
    pub hosts: Vec<(usize, String)>,
    pub user_data: Option<String>,
    /// ACE id -> the ACE's `name` (the flow log's `acl_name`; ACEs without one are absent).
    #[serde(default)]
    pub ace_names: BTreeMap<u32, String>,
    /// `limit` ACEs: (index in the ACL, their bucket).
    #[serde(with = "pod_hex::pairs")]
    pub limits: Vec<(usize, netns_ebpf_common::limit::Bucket)>,
}

impl NiPlan {
    pub fn zone(&self) -> u32 {
        self.index
    }

    /// The bridge's MAC (`config::bridge_mac`) where it is the apps' gateway (local and
    /// VPN NIs): the agent sets it, the ports never move it.
    pub fn bridge_mac(&self) -> [u8; 6] {
        crate::config::bridge_mac(self.index)
    }

    /// The NI veth's NI end's ifindex (see `netns_ebpf_common::chosen_ifindex`).
    pub fn ni_veth_ifindex(&self) -> u32 {
        chosen_ifindex(self.zone(), SLOT_NI_END)
    }

    /// The NI veth's agent end's ifindex (see `netns_ebpf_common::chosen_ifindex`).
    pub fn agent_veth_ifindex(&self) -> u32 {
        chosen_ifindex(self.zone(), SLOT_AGENT_END)
    }

    /// The /30 of the NI's veth pair.
    pub fn veth_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.agent_ip, VETH_PREFIX).expect("a valid prefix").trunc()
    }

    pub fn is_switch(&self) -> bool {
        self.kind == NetworkKind::Switch
    }

    /// A local NI reaching out through an uplink (with NAT), as opposed to a switch NI
    /// that bridges its uplink.
    pub fn routed_uplink(&self) -> Option<&str> {
        if self.is_switch() {
            None
        } else {
            self.uplink.as_deref()
        }
    }

    /// The table through which the agent's netns reaches this NI's apps (600+N).
    pub fn eve_table(&self) -> u32 {
        EVE_TABLE_BASE + self.index
    }
}

impl NiPlan {
    /// Whether `other` is the same NI as far as its netns, bridge, veths, addresses and
    /// routing go: what only a rebuild can change. Ports, port maps and the VPN's
    /// parameters are compared on their own, so that their changes touch less.
    pub fn same_shape(&self, other: &NiPlan) -> bool {
        let strip = |n: &NiPlan| NiPlan { ports: Vec::new(), portmaps: Vec::new(), vpn: None, ..n.clone() };
        let selectors = |n: &NiPlan| n.vpn.as_ref().map(|v| v.remote_ts.clone());
        strip(self) == strip(other) && selectors(self) == selectors(other)
    }

    pub fn port(&self, bridge_port: &str) -> Option<&PortPlan> {
        self.ports.iter().find(|p| p.bridge_port == bridge_port)
    }
}

impl PortPlan {
    /// The domains of its host ACEs in ACL order: the layout of its host-set bits
    /// (`datapath::HostLayouts`).
    pub fn host_layout(&self) -> Vec<String> {
        self.hosts.iter().map(|(_, domain)| domain.clone()).collect()
    }

    /// Whether `other` is the same link with the same app end (netns, name, address,
    /// MAC): what only re-creating the port can change. The ACL, host ACEs, limits and
    /// user data are rewritten in place.
    pub fn same_link(&self, other: &PortPlan) -> bool {
        let link = |p: &PortPlan| PortPlan {
            acl: Vec::new(),
            hosts: Vec::new(),
            user_data: None,
            limits: Vec::new(),
            ace_names: BTreeMap::new(),
            ..p.clone()
        };
        link(self) == link(other)
    }
}

impl Plan {
    /// Gives each uplink on record (`recorded`, the applied state's) the routing table it
    /// has, and each other one the lowest table number no uplink on record or of this plan
    /// holds. `build` numbers them by their place in the config: an uplink added before
    /// another would take the other's table, whose routes its own would replace while the
    /// other's NIs kept their rule to it.
    pub fn keep_tables(&mut self, recorded: &[UplinkPlan]) {
        let mut taken: Vec<u32> = recorded.iter().map(|r| r.table).collect();
        for u in &mut self.uplinks {
            u.table = match recorded.iter().find(|r| r.name == u.name) {
                Some(r) => r.table,
                None => {
                    let free = (UPLINK_TABLE_BASE..).find(|t| !taken.contains(t)).expect("a free table number");
                    taken.push(free);
                    free
                }
            };
        }
    }

    /// The uplink `name` (an NI's `uplink` always names one: the config checked it).
    pub fn uplink(&self, name: &str) -> anyhow::Result<&UplinkPlan> {
        self.uplinks.iter().find(|u| u.name == name).ok_or_else(|| anyhow::anyhow!("the plan has no uplink {name:?}"))
    }

    /// `netns-agent validate`: what the plan would create, a line per NI and app port.
    pub fn print_summary(&self) {
        for ni in &self.nis {
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
                    p.bridge_port,
                    p.app,
                    p.app_num,
                    p.app_netns,
                    p.app_ifname,
                    p.ip,
                    p.acl.len()
                );
            }
        }
    }
}

/// The agent-side and NI-side addresses of NI `n`'s veth: 169.254.100.(4N-3) and (4N-2).
pub fn veth_addresses(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(VETH_NET);
    (Ipv4Addr::from(base + 4 * n - 3), Ipv4Addr::from(base + 4 * n - 2))
}

pub fn build(config: &Config) -> Plan {
    let uplinks = config
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| UplinkPlan { name: u.name.clone(), table: UPLINK_TABLE_BASE + i as u32, dns: u.dns.clone() })
        .collect();
    let agent = &config.agent;
    Plan {
        pin_dir: agent.pin_dir.clone(),
        state_dir: agent.state_dir.clone(),
        nat_ports: agent.nat_ports,
        dns_host_grace: agent.dns_host_grace,
        flow_log: agent.flow_log.clone(),
        flow_log_max_bytes: agent.flow_log_max_bytes,
        flow_interim: agent.flow_interim,
        metrics: agent.metrics,
        fast_path: agent.fast_path,
        expedite_rcu: agent.expedite_rcu,
        uplinks,
        nis: config.networks.iter().map(|n| ni_plan(n, &config.apps)).collect(),
    }
}

/// Network `n`: its names and addresses, and the ports and port maps of the apps'
/// interfaces on it (in the order of the apps, then of their interfaces).
fn ni_plan(n: &Network, apps: &[App]) -> NiPlan {
    let (agent_ip, ni_ip) = veth_addresses(n.index);
    let mut ni = NiPlan {
        name: n.name.clone(),
        kind: n.kind,
        index: n.index,
        subnet: n.subnet,
        gateway: n.gateway,
        agent_veth: format!("veth{}", n.index),
        agent_ip,
        ni_veth: format!("veth{}.1", n.index),
        ni_ip,
        uplink: n.uplink.clone(),
        dhcp_range: n.dhcp_range,
        ports: Vec::new(),
        portmaps: Vec::new(),
        vpn: n.vpn.as_ref().map(|v| vpn_plan(v, n.subnet, ni_ip)),
    };
    for app in apps {
        for (k, iface) in app.interfaces.iter().enumerate().filter(|(_, i)| i.network == n.name) {
            ni.portmaps.extend(portmap_plans(app.num, iface));
            ni.ports.push(port_plan(app, k, iface, &ni));
        }
    }
    ni
}

/// A VPN NI's tunnel: the NI veth's address is the local end; ids and the local selector
/// default to the addresses and the NI's subnet.
fn vpn_plan(v: &Vpn, subnet: Ipv4Net, ni_ip: Ipv4Addr) -> VpnPlan {
    VpnPlan {
        local_addr: ni_ip,
        remote: v.remote,
        local_id: v.local_id.clone().unwrap_or_else(|| ni_ip.to_string()),
        remote_id: v.remote_id.clone().unwrap_or_else(|| v.remote.to_string()),
        psk: v.psk.clone(),
        local_ts: v.local_ts.clone().unwrap_or_else(|| vec![subnet.trunc()]),
        remote_ts: v.remote_ts.clone(),
        ike_proposals: v.ike_proposals.clone(),
        esp_proposals: v.esp_proposals.clone(),
        backend: v.backend,
    }
}

/// The `k`-th interface of `app`, on `ni`.
fn port_plan(app: &App, k: usize, iface: &Interface, ni: &NiPlan) -> PortPlan {
    let bridge_port = iface.tap.clone().unwrap_or_else(|| format!("nbu{}x{}", k + 1, app.num));
    let switch = ni.is_switch();
    PortPlan {
        ifindex: iface.tap.is_none().then(|| chosen_ifindex(ni.zone(), (k as u32 + 1) << 8 | app.num)),
        app: app.name.clone(),
        app_num: app.num,
        app_netns: app.netns.clone().unwrap_or_default(),
        tap: iface.tap.clone(),
        app_ifname: format!("{bridge_port}.1"),
        bridge_port,
        ip: iface.ip,
        mac: iface.mac,
        // A switch NI's apps take their address from the DHCP server behind the
        // uplink; `ip` then names the lease expected from it (for eidsets).
        check_mac: iface.tap.is_none() || iface.mac_configured,
        dhcp: iface.dhcp || switch,
        ip_configured: iface.ip_configured,
        default_route: k == 0 && !(iface.dhcp || switch) && iface.tap.is_none(),
        acl: aces(&iface.acl),
        hosts: iface.acl.iter().enumerate().filter_map(|(i, ace)| Some((i, ace.matches.host.clone()?))).collect(),
        user_data: app.user_data.clone(),
        ace_names: iface.acl.iter().filter_map(|ace| Some((ace.id, ace.name.clone()?))).collect(),
        limits: iface
            .acl
            .iter()
            .enumerate()
            .filter_map(|(i, ace)| match ace.action {
                Action::Limit { rate, unit_ns, burst } => Some((i, netns_ebpf_common::limit::Bucket::new(rate, burst, unit_ns))),
                _ => None,
            })
            .collect(),
    }
}

/// The port-map ACEs of an interface as its NI's port maps.
fn portmap_plans(app_num: u32, iface: &Interface) -> impl Iterator<Item = PortmapPlan> + '_ {
    iface.acl.iter().filter_map(move |ace| match ace.action {
        Action::Portmap { lport, target } => Some(PortmapPlan {
            proto: ace.matches.protocol.unwrap_or(0),
            lport,
            app_ip: iface.ip,
            target,
            mark: mark::compose(app_num, ace.id, true, false),
        }),
        _ => None,
    })
}

/// The ACL as the programs read it, in config order.
pub fn aces(config: &[Ace]) -> Vec<acl::Ace> {
    config.iter().map(ace).collect()
}

fn ace(ace: &Ace) -> acl::Ace {
    let m = &ace.matches;
    let mut out = acl::Ace { id: ace.id, ..acl::Ace::default() };
    if let Some(ip) = m.ip {
        out.matches |= acl::MATCH_IP;
        out.prefix = ip.network().octets();
        out.prefix_len = ip.prefix_len();
    }
    if let Some(p) = m.protocol {
        out.matches |= acl::MATCH_PROTO;
        out.proto = p;
    }
    if let Some(port) = m.fport {
        out.matches |= acl::MATCH_FPORT;
        out.fport = port;
    }
    if m.eidset {
        out.matches |= acl::MATCH_EIDSET;
    }
    if m.host.is_some() {
        out.matches |= acl::MATCH_HOST;
    }
    out.action = match ace.action {
        Action::Accept => acl::ACTION_ACCEPT,
        Action::Drop => acl::ACTION_DROP,
        Action::Portmap { .. } => acl::ACTION_PORTMAP,
        Action::Limit { .. } => acl::ACTION_LIMIT,
    };
    out
}

/// Map value types (`aya::Pod`: plain bytes, no padding holes) in the state record as
/// hex, so that an applied plan can be read back and compared field for field.
mod pod_hex {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn to_hex<T: aya::Pod>(v: &T) -> String {
        // SAFETY: Pod types are plain old data of exactly size_of::<T>() bytes.
        let bytes = unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex<T: aya::Pod>(s: &str) -> Option<T> {
        if s.len() != 2 * size_of::<T>() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
        // SAFETY: the length matches and every bit pattern is a valid Pod value.
        bytes.map(|b| unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
    }

    pub mod vec {
        use super::*;

        pub fn serialize<T: aya::Pod, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(to_hex))
        }

        pub fn deserialize<'de, T: aya::Pod, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|h| from_hex(h).ok_or_else(|| D::Error::custom("bad hex or wrong size for a map value")))
                .collect()
        }
    }

    pub mod pairs {
        use super::*;

        pub fn serialize<T: aya::Pod, S: Serializer>(v: &[(usize, T)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(i, t)| (*i, to_hex(t))))
        }

        pub fn deserialize<'de, T: aya::Pod, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, T)>, D::Error> {
            Vec::<(usize, String)>::deserialize(d)?
                .into_iter()
                .map(|(i, h)| from_hex(&h).map(|t| (i, t)).ok_or_else(|| D::Error::custom("bad hex for a map value")))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ni_plans_survive_the_state_record() {
        let text = r#"
[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
[[app]]
name = "app1"
netns = "a1"
[[app.interface]]
network = "ni1"
acl = [{ id = 3, match = { ip = "10.10.0.0/16", protocol = "tcp", fport = 80 } },
       { id = 4, match = { host = "github.com" }, action = { limit = { rate = 5, unit = "s", burst = 15 } } }]
"#;
        let plan = build(&crate::config::parse("t", text, &crate::config::AnyNetns).unwrap());
        let json = serde_json::to_string(&plan.nis[0]).unwrap();
        let back: NiPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan.nis[0]);
        assert!(back.same_shape(&plan.nis[0]));
        assert!(back.ports[0].same_link(&plan.nis[0].ports[0]));
    }

    #[test]
    fn veth_addressing_follows_the_seed() {
        assert_eq!(veth_addresses(1), (Ipv4Addr::new(169, 254, 100, 1), Ipv4Addr::new(169, 254, 100, 2)));
        assert_eq!(veth_addresses(2), (Ipv4Addr::new(169, 254, 100, 5), Ipv4Addr::new(169, 254, 100, 6)));
        assert_eq!(veth_addresses(63), (Ipv4Addr::new(169, 254, 100, 249), Ipv4Addr::new(169, 254, 100, 250)));
    }

    #[test]
    fn names_and_acl_tables() {
        let text = r#"
[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
[[network]]
name = "ni2"
kind = "local"
index = 5
subnet = "192.168.1.0/24"
gateway = "192.168.1.1"
[[app]]
name = "app1"
netns = "a1"
[[app.interface]]
network = "ni1"
ip = "10.10.1.2"
acl = [{ id = 3, match = { ip = "10.10.1.0/24", protocol = "tcp", fport = 80 } }, { id = 4, action = "drop" }]
[[app.interface]]
network = "ni2"
ip = "192.168.1.2"
[[app]]
name = "app2"
num = 7
netns = "a2"
[[app.interface]]
network = "ni2"
ip = "192.168.1.3"
"#;
        let config = crate::config::parse("t", text, &crate::config::AnyNetns).unwrap();
        let plan = build(&config);
        let ni2 = &plan.nis[1];
        assert_eq!((ni2.index, ni2.agent_veth.as_str(), ni2.ni_veth.as_str()), (5, "veth5", "veth5.1"));
        assert_eq!(ni2.agent_ip, Ipv4Addr::new(169, 254, 100, 17));
        let ports: Vec<_> = ni2.ports.iter().map(|p| (p.bridge_port.as_str(), p.app_ifname.as_str())).collect();
        assert_eq!(ports, [("nbu2x1", "nbu2x1.1"), ("nbu1x7", "nbu1x7.1")]);
        let t = &plan.nis[0].ports[0].acl;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].matches, acl::MATCH_IP | acl::MATCH_PROTO | acl::MATCH_FPORT);
        assert_eq!((t[0].prefix, t[0].prefix_len, t[0].fport), ([10, 10, 1, 0], 24, 80));
        assert_eq!((t[1].id, t[1].matches, t[1].action), (4, 0, acl::ACTION_DROP));
    }

    #[test]
    fn an_uplink_keeps_its_table_when_others_come_and_go() {
        let uplinks = |names: &[&str]| {
            let text: String = names.iter().map(|n| format!("[[uplink]]\nname = \"{n}\"\n")).collect();
            build(&crate::config::parse("t", &text, &crate::config::AnyNetns).unwrap())
        };
        let tables = |p: &Plan| p.uplinks.iter().map(|u| (u.name.clone(), u.table)).collect::<Vec<_>>();
        let first = uplinks(&["eth1"]);
        assert_eq!(tables(&first), [("eth1".to_string(), 500)]);
        // eth0 comes before eth1 in the config: by place it would take 500.
        let mut second = uplinks(&["eth0", "eth1"]);
        second.keep_tables(&first.uplinks);
        assert_eq!(tables(&second), [("eth0".to_string(), 501), ("eth1".to_string(), 500)]);
        // eth1 leaves (its table still on record until it is removed); eth2 comes.
        let mut third = uplinks(&["eth0", "eth2"]);
        third.keep_tables(&second.uplinks);
        assert_eq!(tables(&third), [("eth0".to_string(), 501), ("eth2".to_string(), 502)]);
        // Nothing on record: by place.
        let mut fresh = uplinks(&["eth0", "eth2"]);
        fresh.keep_tables(&[]);
        assert_eq!(tables(&fresh), [("eth0".to_string(), 500), ("eth2".to_string(), 501)]);
    }
}
