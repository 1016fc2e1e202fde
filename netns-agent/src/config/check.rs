//! Validation: the file as written (`file.rs`) checked one section at a time and turned
//! into the typed model as it goes, defaults filled in once (NI index, app number,
//! addresses from the pools, MACs). Every error is reported with the span it points at
//! and checking goes on, so that one run names them all; `super::parse` hands the model
//! out only when no error was found.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use ipnet::Ipv4Net;
use toml::Spanned;

use netns_ebpf_common::{
    classify::{ACES_PER_GROUP, ACE_GROUPS_MAX_ENTRIES, MAX_CLASSIFIED_ACES, MAX_HOST_ACES, MAX_LIVE_ACES},
    limit::LIMIT_MAX_ENTRIES,
    map_names,
    mark::ACE_ID_MASK,
    nat::{NAT_IFACES_MAX_ENTRIES, PORTMAP_MAX_ENTRIES},
    MAX_APP_PORTS,
};

use super::{
    bridge_mac, default_nat_ports, file, parse_mac, Ace, Action, AgentSettings, App, Config, Interface, Match, NetnsLookup, Network,
    NetworkKind, Uplink, Vpn, MAX_NI_INDEX,
};
use crate::{plan::VETH_NET, pool};

/// Where an error points: a byte range of the file.
pub(super) type Span = std::ops::Range<usize>;

// NATIF_V1 holds every translating interface there can be: per NI with an uplink the two
// ends of its veth, and its uplink.
const _: () = assert!(NAT_IFACES_MAX_ENTRIES >= 3 * MAX_NI_INDEX);
// ACE_V4 holds the live ACLs' groups and as many again (their replacements): at most a
// group per 16 ACEs plus a partly used one per port. Checking ACEs and ports is enough.
const _: () = assert!(2 * (MAX_LIVE_ACES / ACES_PER_GROUP as u32 + MAX_APP_PORTS) <= ACE_GROUPS_MAX_ENTRIES);

/// The whole config: each section in turn, then the data path's capacity.
pub(super) fn config(raw: &file::Config, netns: &dyn NetnsLookup, err: &mut impl FnMut(Span, String)) -> Config {
    let uplinks = uplinks(raw, err);
    let agent = agent(&raw.agent, netns, err);
    let networks = networks(raw, &uplinks, err);
    let apps = apps(raw, &networks, netns, err);
    capacity(raw, err);
    Config { agent, uplinks, networks, apps }
}

/// `[[uplink]]`: names, each once.
fn uplinks(raw: &file::Config, err: &mut impl FnMut(Span, String)) -> Vec<Uplink> {
    let mut seen = HashSet::new();
    for u in &raw.uplinks {
        let name = u.name.get_ref().as_str();
        if !valid_ifname_like(name) {
            err(u.name.span(), format!("uplink.name {name:?}: not an interface name"));
        }
        if !seen.insert(name) {
            err(u.name.span(), format!("uplink.name {name:?} is used twice"));
        }
    }
    raw.uplinks.iter().map(|u| Uplink { name: u.name.get_ref().clone(), dns: u.dns.clone() }).collect()
}

/// `[agent]`: the source NAT port range (given, or the default outside the kernel's
/// ephemeral ports), the flow log's limits.
fn agent(a: &file::AgentSection, netns: &dyn NetnsLookup, err: &mut impl FnMut(Span, String)) -> AgentSettings {
    if *a.flow_log_max_bytes.get_ref() < 4096 {
        err(a.flow_log_max_bytes.span(), format!("agent.flow_log_max_bytes {} is below 4096", a.flow_log_max_bytes.get_ref()));
    }
    if *a.flow_interim_secs.get_ref() == 0 {
        err(a.flow_interim_secs.span(), "agent.flow_interim_secs must be at least 1".to_string());
    }
    AgentSettings {
        pin_dir: a.pin_dir.clone(),
        state_dir: a.state_dir.clone(),
        nat_ports: nat_ports(a.nat_port_range.as_ref(), netns, err),
        dns_host_grace: Duration::from_secs(a.dns_host_grace_secs),
        flow_log: a.flow_log.clone(),
        flow_log_max_bytes: *a.flow_log_max_bytes.get_ref(),
        flow_interim: Duration::from_secs(*a.flow_interim_secs.get_ref()),
        metrics: a.metrics,
        fast_path: a.fast_path,
        expedite_rcu: a.expedite_rcu,
    }
}

/// Source NAT must never hand out a port the device's own connections may use: their
/// replies would be taken for an app's flow (and the other way round).
fn nat_ports(range: Option<&Spanned<[u16; 2]>>, netns: &dyn NetnsLookup, err: &mut impl FnMut(Span, String)) -> (u16, u16) {
    let (eph_lo, eph_hi) = netns.ephemeral_ports();
    let Some(range) = range else {
        return default_nat_ports((eph_lo, eph_hi)).unwrap_or_else(|| {
            err(0..0, format!("the kernel's ephemeral ports [{eph_lo}, {eph_hi}] leave source NAT no ports: set agent.nat_port_range"));
            (0, 0)
        });
    };
    let [port_min, port_max] = *range.get_ref();
    if port_min == 0 || port_min > port_max {
        err(range.span(), format!("agent.nat_port_range [{port_min}, {port_max}] must be [low, high] with 1 <= low <= high"));
    } else if port_min <= eph_hi && eph_lo <= port_max {
        err(
            range.span(),
            format!(
                "agent.nat_port_range [{port_min}, {port_max}] overlaps the kernel's ephemeral ports [{eph_lo}, {eph_hi}] \
                 (net.ipv4.ip_local_port_range): the device's own connections use those; pick a range outside it"
            ),
        );
    }
    (port_min, port_max)
}

/// `[[network]]`: names, kinds and their sections, indexes, subnets, gateways, DHCP
/// ranges, uplinks.
fn networks(raw: &file::Config, uplinks: &[Uplink], err: &mut impl FnMut(Span, String)) -> Vec<Network> {
    let mut names = HashSet::new();
    let mut indexes: HashMap<u32, &str> = HashMap::new();
    let mut networks = Vec::new();
    for (pos, n) in raw.networks.iter().enumerate() {
        let name = n.name.get_ref().as_str();
        if !valid_ifname_like(name) {
            err(n.name.span(), format!("network.name {name:?}: use 1-15 characters of [A-Za-z0-9_-]"));
        }
        if !names.insert(name) {
            err(n.name.span(), format!("network.name {name:?} is used twice"));
        }
        let vpn = network_kind(raw, n, err);
        // Unnumbered networks are numbered by their place in the file.
        let index = n.index.as_ref().map(|i| *i.get_ref()).unwrap_or(pos as u32 + 1);
        let index_span = n.index.as_ref().map(|i| i.span()).unwrap_or(n.name.span());
        if !(1..=MAX_NI_INDEX).contains(&index) {
            err(index_span.clone(), format!("network.index {index} of {name:?} is out of range 1-{MAX_NI_INDEX}"));
        }
        if let Some(other) = indexes.insert(index, name) {
            err(index_span, format!("network.index {index} of {name:?} is already used by {other:?}"));
        }
        let (subnet, gateway) = (*n.subnet.get_ref(), *n.gateway.get_ref());
        if subnet.prefix_len() > 30 {
            err(n.subnet.span(), format!("network.subnet {subnet} is too small for a gateway and an app"));
        }
        if !is_host_of(gateway, &subnet) {
            err(n.gateway.span(), format!("network.gateway {gateway} is not a host address of subnet {subnet}"));
        }
        // The device's own addresses: the NI veths' network, the metadata server's. (A
        // switch NI has neither: its subnet is its LAN's, link-local ones too.)
        let veths = Ipv4Net::new(VETH_NET, netns_ebpf_common::VETH_NET_LEN).expect("a valid prefix");
        let metadata = Ipv4Addr::from(netns_ebpf_common::acl::METADATA_IP);
        let own = subnet.contains(&veths.network()) || veths.contains(&subnet.network()) || subnet.contains(&metadata);
        if own && *n.kind.get_ref() != NetworkKind::Switch {
            err(
                n.subnet.span(),
                format!("network.subnet {subnet} of {name:?} overlaps the device's own addresses ({veths}, the NI veths; {metadata}, the metadata server)"),
            );
        }
        let dhcp_range = n.dhcp_range.as_ref().map(|range| {
            let [first, last] = *range.get_ref();
            if !is_host_of(first, &subnet) || !is_host_of(last, &subnet) || first > last {
                err(
                    range.span(),
                    format!("network.dhcp_range [{first}, {last}] of {name:?} must be host addresses of {subnet}, first <= last"),
                );
            }
            (first, last)
        });
        if let Some(u) = &n.uplink {
            if !uplinks.iter().any(|known| known.name == *u.get_ref()) {
                err(u.span(), format!("network.uplink {:?} of {name:?} names no [[uplink]]", u.get_ref()));
            }
        }
        networks.push(Network {
            name: name.to_string(),
            kind: *n.kind.get_ref(),
            index,
            subnet,
            gateway,
            uplink: n.uplink.as_ref().map(|u| u.get_ref().clone()),
            dhcp_range,
            vpn,
        });
    }
    networks
}

/// What a network's kind asks of it: a switch its own uplink, a VPN NI an uplink and a
/// `[network.vpn]` section (returned), which no other kind may have.
fn network_kind(raw: &file::Config, n: &file::Network, err: &mut impl FnMut(Span, String)) -> Option<Vpn> {
    let name = n.name.get_ref();
    if let (Some(vpn), false) = (&n.vpn, *n.kind.get_ref() == NetworkKind::Vpn) {
        err(vpn.span(), format!("network {name:?}: [network.vpn] is only for kind = \"vpn\""));
    }
    match *n.kind.get_ref() {
        NetworkKind::Local => None,
        NetworkKind::Switch => {
            match &n.uplink {
                None => err(n.kind.span(), format!("network {name:?}: a switch NI needs an uplink to bridge")),
                Some(u) => {
                    let shared = raw.networks.iter().filter(|o| o.uplink.as_ref().map(|x| x.get_ref()) == Some(u.get_ref())).count();
                    if shared > 1 {
                        err(
                            u.span(),
                            format!("network {name:?}: uplink {:?} moves into this switch NI, so no other network can use it", u.get_ref()),
                        );
                    }
                }
            }
            None
        }
        NetworkKind::Vpn => {
            let Some(vpn) = &n.vpn else {
                err(n.kind.span(), format!("network {name:?}: a vpn NI needs a [network.vpn] section (remote, psk, remote_ts)"));
                return None;
            };
            if n.uplink.is_none() {
                err(n.kind.span(), format!("network {name:?}: a vpn NI needs an uplink for IKE and ESP"));
            }
            self::vpn(name, vpn, n.subnet.get_ref(), err)
        }
    }
}

/// `[network.vpn]`: the keys it needs (all missing ones named at once), selectors that
/// stay off the NI's own subnet, identities and proposals strongSwan accepts.
fn vpn(ni: &str, vpn: &Spanned<file::VpnSection>, subnet: &Ipv4Net, err: &mut impl FnMut(Span, String)) -> Option<Vpn> {
    let v = vpn.get_ref();
    let mut missing = Vec::new();
    if v.remote.is_none() {
        missing.push("remote");
    }
    match &v.psk {
        None => missing.push("psk"),
        Some(psk) if psk.get_ref().is_empty() => err(psk.span(), format!("network {ni:?}: vpn.psk is empty")),
        Some(_) => {}
    }
    match &v.remote_ts {
        None => missing.push("remote_ts"),
        Some(ts) if ts.get_ref().is_empty() => err(ts.span(), format!("network {ni:?}: vpn.remote_ts is empty")),
        Some(ts) => {
            for t in ts.get_ref() {
                // The tunnel's route would cover the NI's own apps.
                if t.contains(subnet) || subnet.contains(t) {
                    err(ts.span(), format!("network {ni:?}: vpn.remote_ts {t} overlaps the NI's subnet {subnet}"));
                }
            }
        }
    }
    if !missing.is_empty() {
        err(vpn.span(), format!("network {ni:?}: [network.vpn] lacks {}", missing.join(", ")));
    }
    if let Some(ts) = &v.local_ts {
        if ts.get_ref().is_empty() {
            err(ts.span(), format!("network {ni:?}: vpn.local_ts is empty (leave it out for the NI's subnet)"));
        }
    }
    for id in [&v.local_id, &v.remote_id].into_iter().flatten() {
        let ok = !id.get_ref().is_empty() && id.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || ".@_:-".contains(c));
        if !ok {
            err(id.span(), format!("network {ni:?}: vpn identity {:?}: use letters, digits and . @ _ : -", id.get_ref()));
        }
    }
    for (key, p) in [("ike_proposals", &v.ike_proposals), ("esp_proposals", &v.esp_proposals)] {
        let ok = !p.get_ref().is_empty() && p.get_ref().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-,".contains(c));
        if !ok {
            err(
                p.span(),
                format!(
                    "network {ni:?}: vpn.{key} {:?}: strongSwan proposals like \"aes256-sha256-modp2048\", comma-separated",
                    p.get_ref()
                ),
            );
        }
    }
    let value = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.get_ref().clone());
    Some(Vpn {
        remote: *v.remote.as_ref()?.get_ref(),
        psk: value(&v.psk)?,
        local_id: value(&v.local_id),
        remote_id: value(&v.remote_id),
        local_ts: v.local_ts.as_ref().map(|t| t.get_ref().clone()),
        remote_ts: v.remote_ts.as_ref()?.get_ref().clone(),
        ike_proposals: v.ike_proposals.get_ref().clone(),
        esp_proposals: v.esp_proposals.get_ref().clone(),
        backend: v.backend,
    })
}

/// What checking the apps keeps across them: names, numbers, taps, addresses and port
/// maps are each unique, and addresses not configured come from the networks' pools.
struct AppsSeen<'c> {
    names: HashSet<&'c str>,
    nums: HashMap<u32, &'c str>,
    taps: HashSet<&'c str>,
    /// (network, address) -> app: configured addresses, each once per network.
    addresses: HashMap<(&'c str, Ipv4Addr), &'c str>,
    /// (uplink, protocol, lport) -> app: a port can be exposed once per uplink.
    portmaps: HashMap<(&'c str, u8, u16), &'c str>,
    pools: Pools<'c>,
}

/// `[[app]]`: names, numbers, namespaces, taps, interfaces (networks, addresses, MACs),
/// ACLs, port maps; then whether the pools had an address for every interface that
/// needed one.
fn apps<'c>(raw: &'c file::Config, networks: &'c [Network], netns: &dyn NetnsLookup, err: &mut impl FnMut(Span, String)) -> Vec<App> {
    let mut seen = AppsSeen {
        names: HashSet::new(),
        nums: HashMap::new(),
        taps: HashSet::new(),
        addresses: HashMap::new(),
        portmaps: HashMap::new(),
        pools: Pools::new(raw),
    };
    let apps = raw.apps.iter().enumerate().map(|(pos, a)| app(pos, a, networks, netns, &mut seen, err)).collect();
    seen.pools.report_exhausted(raw, err);
    apps
}

/// App `a`, the `pos`-th of the file.
fn app<'c>(
    pos: usize,
    a: &'c file::App,
    networks: &'c [Network],
    netns: &dyn NetnsLookup,
    seen: &mut AppsSeen<'c>,
    err: &mut impl FnMut(Span, String),
) -> App {
    let name = a.name.get_ref().as_str();
    if !seen.names.insert(name) {
        err(a.name.span(), format!("app.name {name:?} is used twice"));
    }
    // Unnumbered apps are numbered by their place in the file.
    let num = a.num.as_ref().map(|n| *n.get_ref()).unwrap_or(pos as u32 + 1);
    let num_span = a.num.as_ref().map(|n| n.span()).unwrap_or(a.name.span());
    if !(1..=255).contains(&num) {
        err(num_span.clone(), format!("app.num {num} of {name:?} is out of range 1-255 (it is the top byte of the connection mark)"));
    }
    if let Some(other) = seen.nums.insert(num, name) {
        err(num_span, format!("app.num {num} of {name:?} is already used by {other:?}"));
    }
    match &a.netns {
        Some(ns) if networks.iter().any(|n| n.name == *ns.get_ref()) => err(
            ns.span(),
            format!("app.netns {:?} of {name:?} is the netns of network {0:?}, which the agent makes and owns", ns.get_ref()),
        ),
        Some(ns) if !netns.netns_exists(ns.get_ref()) => err(
            ns.span(),
            format!("app.netns {:?} of {name:?} does not exist (the app's netns must exist before the agent attaches it)", ns.get_ref()),
        ),
        None if a.interfaces.iter().any(|i| i.tap.is_none()) => {
            err(a.name.span(), format!("app {name:?} needs app.netns (only apps whose interfaces are all taps can do without)"))
        }
        _ => {}
    }
    if a.interfaces.len() > 99 {
        err(a.name.span(), format!("app {name:?} has more than 99 interfaces"));
    }
    App {
        name: name.to_string(),
        num,
        netns: a.netns.as_ref().map(|n| n.get_ref().clone()),
        user_data: a.user_data.clone(),
        interfaces: a.interfaces.iter().enumerate().map(|(k, i)| interface(k, i, name, num, networks, seen, err)).collect(),
    }
}

/// The `k`-th interface of app `name` (number `num`): its tap, network, address (free,
/// once per network), MAC, ACL and port maps (once per uplink, protocol and port).
fn interface<'c>(
    k: usize,
    i: &'c file::Interface,
    name: &'c str,
    num: u32,
    networks: &'c [Network],
    seen: &mut AppsSeen<'c>,
    err: &mut impl FnMut(Span, String),
) -> Interface {
    if let Some(tap) = &i.tap {
        if !valid_ifname_like(tap.get_ref()) {
            err(tap.span(), format!("app.interface.tap {:?} of {name:?} is not an interface name", tap.get_ref()));
        }
        if !seen.taps.insert(tap.get_ref()) {
            err(tap.span(), format!("app.interface.tap {:?} is used twice", tap.get_ref()));
        }
    }
    let mac = i.mac.as_ref().and_then(|mac| {
        let parsed = parse_mac(mac.get_ref());
        if parsed.is_none() {
            err(mac.span(), format!("app.interface.mac {:?} of {name:?}: use six hex bytes like 02:16:3e:00:00:01", mac.get_ref()));
        }
        parsed
    });
    let net_name = i.network.get_ref().as_str();
    let network = networks.iter().find(|n| n.name == net_name);
    if network.is_none() {
        err(i.network.span(), format!("app.interface.network {net_name:?} of {name:?} names no [[network]]"));
    }
    let ip = match (network, &i.ip) {
        (Some(n), Some(ip)) => check_address(n, ip, name, seen, err),
        (Some(n), None) => seen.pools.take(n),
        (None, ip) => ip.as_ref().map(|ip| *ip.get_ref()),
    };
    let acl = acl(&i.acl, name, err);
    if let Some(n) = network {
        network_aces(n, &i.acl, name, &mut seen.portmaps, err);
    }
    // The default MAC says where the port is: 02:16:3e:<NI index>:<app>:<k>.
    let index = network.map(|n| n.index).unwrap_or(0);
    if let (Some(configured), Some(n)) = (&i.mac, network) {
        if n.kind != NetworkKind::Switch && mac == Some(bridge_mac(n.index)) {
            err(
                configured.span(),
                format!("app.interface.mac {:?} of {name:?} is the MAC of {net_name:?}'s bridge (its gateway's)", configured.get_ref()),
            );
        }
    }
    Interface {
        network: net_name.to_string(),
        // No address only with an error reported (unknown network, empty pool): the
        // model is then never handed out.
        ip: ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        ip_configured: i.ip.is_some(),
        mac: mac.unwrap_or([0x02, 0x16, 0x3e, index as u8, num as u8, k as u8 + 1]),
        mac_configured: i.mac.is_some(),
        dhcp: i.dhcp,
        tap: i.tap.as_ref().map(|t| t.get_ref().clone()),
        acl,
    }
}

/// A configured address: a host of the network other than its gateway, once per network.
fn check_address<'c>(
    n: &'c Network,
    ip: &Spanned<Ipv4Addr>,
    app: &'c str,
    seen: &mut AppsSeen<'c>,
    err: &mut impl FnMut(Span, String),
) -> Option<Ipv4Addr> {
    let (addr, subnet, gateway) = (*ip.get_ref(), n.subnet, n.gateway);
    if !is_host_of(addr, &subnet) || addr == gateway {
        let net = &n.name;
        err(ip.span(), format!("app.interface.ip {addr} of {app:?} is not a free host address of {net:?} ({subnet}, gateway {gateway})"));
    }
    if let Some(other) = seen.addresses.insert((&n.name, addr), app) {
        err(ip.span(), format!("app.interface.ip {addr} on {:?} is already used by {other:?}", n.name));
    }
    Some(addr)
}

/// What an interface's ACEs ask of its network: host sets need the NI's DNS server (a
/// switch has none); port maps need a local NI with an uplink, and a port once per uplink.
fn network_aces<'c>(
    n: &'c Network,
    aces: &[file::Ace],
    app: &'c str,
    portmaps: &mut HashMap<(&'c str, u8, u16), &'c str>,
    err: &mut impl FnMut(Span, String),
) {
    let (net_name, switch) = (&n.name, n.kind == NetworkKind::Switch);
    for ace in aces {
        let id = ace.id.get_ref();
        if let (true, Some(host)) = (switch, &ace.matches.host) {
            err(host.span(), format!("acl id {id} of {app:?}: match.host needs the NI's DNS server; {net_name:?} is a switch"));
        }
        let (file::Action::Portmap(_), Some(lport)) = (ace.action, &ace.matches.lport) else { continue };
        let proto = ace.matches.protocol.as_ref().map(|p| p.get_ref().0).unwrap_or(0);
        match &n.uplink {
            _ if switch => {
                err(ace.id.span(), format!("acl id {id} of {app:?}: port maps are for local networks; {net_name:?} is a switch"))
            }
            None => err(ace.id.span(), format!("acl id {id} of {app:?}: a port map needs network {net_name:?} to have an uplink")),
            Some(u) => {
                if let Some(other) = portmaps.insert((u, proto, *lport.get_ref()), app) {
                    let (port, proto) = (lport.get_ref(), proto_name(proto));
                    err(
                        lport.span(),
                        format!("acl id {id} of {app:?}: port {port} ({proto}) on uplink {u:?} is already mapped by {other:?}"),
                    );
                }
            }
        }
    }
}

/// An interface's ACL: ids, hosts, ports that need a protocol, port maps whole.
fn acl(aces: &[file::Ace], app: &str, err: &mut impl FnMut(Span, String)) -> Vec<Ace> {
    if let Some(ace) = aces.get(MAX_CLASSIFIED_ACES) {
        err(ace.id.span(), format!("app {app:?}: an interface holds at most {MAX_CLASSIFIED_ACES} ACEs"));
    }
    // The host set's masks have a bit per host ACE.
    if let Some(ace) = aces.iter().filter(|a| a.matches.host.is_some()).nth(MAX_HOST_ACES) {
        err(ace.id.span(), format!("app {app:?}: an interface holds at most {MAX_HOST_ACES} ACEs with match.host"));
    }
    let mut ids = HashSet::new();
    aces.iter()
        .map(|ace| {
            let id = *ace.id.get_ref();
            // ACE_ID_MASK itself is the implicit default-drop rule.
            if id == 0 || id >= ACE_ID_MASK {
                err(ace.id.span(), format!("acl id {id} of {app:?} is out of range 1-{}", ACE_ID_MASK - 1));
            }
            if !ids.insert(id) {
                err(ace.id.span(), format!("acl id {id} is used twice on one interface of {app:?}"));
            }
            Ace { id, name: ace.name.clone(), matches: ace_match(id, &ace.matches, app, err), action: action(id, ace, app, err) }
        })
        .collect()
}

/// An ACE's `match`; a host is kept as DNS compares it: lower case, no trailing dot.
fn ace_match(id: u32, m: &file::Match, app: &str, err: &mut impl FnMut(Span, String)) -> Match {
    if let Some(host) = &m.host {
        if !valid_domain(host.get_ref()) {
            err(host.span(), format!("acl id {id} of {app:?}: match.host {:?} is not a domain name", host.get_ref()));
        }
    }
    let protocol = m.protocol.as_ref().map(|p| p.get_ref().0);
    for (key, port) in [("fport", &m.fport), ("lport", &m.lport)] {
        if let (Some(port), false) = (port, matches!(protocol, Some(6) | Some(17))) {
            err(port.span(), format!("acl id {id} of {app:?}: match.{key} needs match.protocol \"tcp\" or \"udp\""));
        }
    }
    Match {
        ip: m.ip,
        protocol,
        fport: m.fport.as_ref().map(|p| *p.get_ref()),
        eidset: m.eidset,
        host: m.host.as_ref().map(|h| h.get_ref().trim_end_matches('.').to_ascii_lowercase()),
    }
}

/// An ACE's action; a port map takes its external port from `match.lport`, which no
/// other action may have.
fn action(id: u32, ace: &file::Ace, app: &str, err: &mut impl FnMut(Span, String)) -> Action {
    match (ace.action, &ace.matches.lport) {
        (file::Action::Portmap(0), Some(_)) => err(ace.id.span(), format!("acl id {id} of {app:?}: portmap target port 0")),
        (file::Action::Portmap(_), None) => {
            err(ace.id.span(), format!("acl id {id} of {app:?}: action portmap needs match.lport (the external port)"))
        }
        (file::Action::Accept | file::Action::Drop | file::Action::Limit { .. }, Some(lport)) => {
            err(lport.span(), format!("acl id {id} of {app:?}: match.lport is only meaningful with action {{ portmap = <app port> }}"))
        }
        _ => {}
    }
    match ace.action {
        file::Action::Accept => Action::Accept,
        file::Action::Drop => Action::Drop,
        file::Action::Portmap(target) => Action::Portmap { lport: ace.matches.lport.as_ref().map(|p| *p.get_ref()).unwrap_or(0), target },
        file::Action::Limit { rate, unit_ns, burst } => Action::Limit { rate, unit_ns, burst },
    }
}

/// The addresses the agent hands interfaces that configure none: from each network's
/// pool, in the file's order, never one that some interface configures.
struct Pools<'c> {
    configured: HashSet<(&'c str, Ipv4Addr)>,
    taken: HashSet<(&'c str, Ipv4Addr)>,
    /// Network -> (interfaces that wanted an address, how many got one).
    wanted: HashMap<&'c str, (usize, usize)>,
}

impl<'c> Pools<'c> {
    fn new(raw: &'c file::Config) -> Self {
        let configured = raw
            .apps
            .iter()
            .flat_map(|a| &a.interfaces)
            .filter_map(|i| Some((i.network.get_ref().as_str(), *i.ip.as_ref()?.get_ref())))
            .collect();
        Pools { configured, taken: HashSet::new(), wanted: HashMap::new() }
    }

    /// The next free address of `n`'s pool.
    fn take(&mut self, n: &'c Network) -> Option<Ipv4Addr> {
        let name = n.name.as_str();
        let ip = pool::addresses(n.subnet, n.gateway, n.dhcp_range)
            .find(|ip| !self.configured.contains(&(name, *ip)) && !self.taken.contains(&(name, *ip)));
        let wanted = self.wanted.entry(name).or_default();
        wanted.0 += 1;
        if let Some(ip) = ip {
            wanted.1 += 1;
            self.taken.insert((name, ip));
        }
        ip
    }

    /// One error per network whose pool ran out, at the network's name.
    fn report_exhausted(&self, raw: &file::Config, err: &mut impl FnMut(Span, String)) {
        for n in &raw.networks {
            let name = n.name.get_ref();
            if let Some((wanted, free)) = self.wanted.get(name.as_str()).filter(|(wanted, got)| got < wanted) {
                err(n.name.span(), format!("network {name:?}: {wanted} interfaces need an address but only {free} are free in its pool"));
            }
        }
    }
}

/// What the data path's maps hold (their sizes live in netns-ebpf-common, next to their
/// types): a config beyond them is refused here rather than half applied when an insert
/// fails. Each error points at the first item over the limit. (The translating
/// interfaces, NATIF_V1, cannot run out: see the assertion at the top.)
fn capacity(raw: &file::Config, err: &mut impl FnMut(Span, String)) {
    let ports: Vec<&file::Interface> = raw.apps.iter().flat_map(|a| &a.interfaces).collect();
    if let Some(over) = ports.get(MAX_APP_PORTS as usize) {
        let n = ports.len();
        err(over.network.span(), format!("{n} app interfaces: the data path holds at most {MAX_APP_PORTS} (IFACE_V3)"));
    }
    let aces = || ports.iter().flat_map(|i| &i.acl);
    let all: Vec<&file::Ace> = aces().collect();
    if let Some(over) = all.get(MAX_LIVE_ACES as usize) {
        let n = all.len();
        err(over.id.span(), format!("{n} ACEs: the data path holds at most {MAX_LIVE_ACES} over all interfaces ({})", map_names::ACES));
    }
    let portmaps: Vec<&file::Ace> = aces().filter(|a| matches!(a.action, file::Action::Portmap(_))).collect();
    if let Some(over) = portmaps.get(PORTMAP_MAX_ENTRIES as usize / 2) {
        let n = portmaps.len();
        err(over.id.span(), format!("{n} port-map ACEs: the data path holds at most {} (PORTMAP_V1)", PORTMAP_MAX_ENTRIES / 2));
    }
    let limits: Vec<&file::Ace> = aces().filter(|a| matches!(a.action, file::Action::Limit { .. })).collect();
    if let Some(over) = limits.get(LIMIT_MAX_ENTRIES as usize) {
        let n = limits.len();
        err(over.id.span(), format!("{n} limit ACEs: the data path holds at most {LIMIT_MAX_ENTRIES} buckets (LIMIT_V1)"));
    }
}

/// A host address of `subnet`: neither its network nor its broadcast address.
fn is_host_of(ip: Ipv4Addr, subnet: &Ipv4Net) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

fn valid_domain(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn valid_ifname_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
