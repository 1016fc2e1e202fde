//! The agent's TOML config: parsing and whole-config validation.
//!
//! Every error names the key and the line. Nothing here touches the system except reading
//! whether an app's netns exists.

use std::{collections::HashMap, fmt, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use netns_ebpf_common::{
    acl::MAX_ACES,
    limit::LIMIT_MAX_ENTRIES,
    mark::ACE_ID_MASK,
    nat::{NAT_IFACES_MAX_ENTRIES, PORTMAP_MAX_ENTRIES},
    MAX_APP_PORTS,
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netns-agent";
pub const DEFAULT_STATE_DIR: &str = "/run/netns-agent";
/// NI index N gets 169.254.100.(4N-3)/30 on the agent side: N = 63 is the last /30 of
/// the /24.
pub const MAX_NI_INDEX: u32 = 63;

// NATIF_V1 holds every translating interface there can be: per NI with an uplink the two
// ends of its veth, and its uplink.
const _: () = assert!(NAT_IFACES_MAX_ENTRIES >= 3 * MAX_NI_INDEX);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<Uplink>,
    #[serde(default, rename = "network")]
    pub networks: Vec<Network>,
    #[serde(default, rename = "app")]
    pub apps: Vec<App>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// bpffs directory for the pinned maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Where the agent records what it created (for `down` and `flows`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Source ports that source NAT hands out, inclusive; never inside the kernel's
    /// ephemeral range. Default: the larger side outside it.
    #[serde(default)]
    pub nat_port_range: Option<Spanned<[u16; 2]>>,
    /// The range in effect (configured or default), set by validation.
    #[serde(skip)]
    pub nat_ports: (u16, u16),
    /// Seconds a DNS answer's addresses stay in a host set past the record's TTL.
    #[serde(default = "default_dns_host_grace")]
    pub dns_host_grace_secs: u64,
    /// The flow log: one JSON object per line per flow record (off when unset).
    #[serde(default)]
    pub flow_log: Option<PathBuf>,
    /// Size at which the flow log rotates (three older files are kept).
    #[serde(default = "default_flow_log_max_bytes")]
    pub flow_log_max_bytes: Spanned<u64>,
    /// Seconds between interim records of a long-lived flow.
    #[serde(default = "default_flow_interim")]
    pub flow_interim_secs: Spanned<u64>,
    /// Where `/metrics` (Prometheus text) is served, in the agent's netns (off when unset).
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

fn default_dns_host_grace() -> u64 {
    60
}

fn default_flow_log_max_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 64 << 20)
}

fn default_flow_interim() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            pin_dir: default_pin_dir(),
            state_dir: default_state_dir(),
            nat_port_range: None,
            nat_ports: (0, 0),
            dns_host_grace_secs: default_dns_host_grace(),
            flow_log: None,
            flow_log_max_bytes: default_flow_log_max_bytes(),
            flow_interim_secs: default_flow_interim(),
            metrics: None,
        }
    }
}

/// The largest source-port range outside the kernel's ephemeral ports `[lo, hi]` (and
/// above the privileged ones); None when there is no room.
pub fn default_nat_ports((lo, hi): (u16, u16)) -> Option<(u16, u16)> {
    let below = (lo > 1024).then(|| (1024, lo - 1));
    let above = (hi < 65535).then(|| (hi.max(1023) + 1, 65535));
    match (below, above) {
        (Some(b), Some(a)) => Some(if b.1 - b.0 >= a.1 - a.0 { b } else { a }),
        (b, a) => b.or(a),
    }
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Local,
    Switch,
    Vpn,
}

/// An interface of the agent's netns that NIs reach the outside through; its address,
/// prefix and gateway are read from the kernel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub name: Spanned<String>,
    /// DNS servers the NIs on this uplink forward to; default: the agent netns'
    /// /etc/resolv.conf.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: Spanned<String>,
    pub kind: Spanned<NetworkKind>,
    pub index: Option<Spanned<u32>>,
    pub subnet: Spanned<Ipv4Net>,
    pub gateway: Spanned<Ipv4Addr>,
    /// The [[uplink]] this NI reaches the outside through; none: isolated.
    pub uplink: Option<Spanned<String>>,
    /// DHCP's dynamic pool [first, last]; without it, only the apps' static leases.
    pub dhcp_range: Option<Spanned<[Ipv4Addr; 2]>>,
    /// The IPsec tunnel of a `kind = "vpn"` network.
    pub vpn: Option<Spanned<VpnSection>>,
}

/// `[network.vpn]`: one IKEv2 tunnel with a pre-shared key, initiated by the NI.
/// The required keys are options here so that all missing ones are reported at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpnSection {
    /// The peer's address; IKE and ESP-in-UDP reach it through the NI's uplink.
    pub remote: Option<Spanned<Ipv4Addr>>,
    /// The pre-shared key (any bytes; written hex-encoded for strongSwan).
    pub psk: Option<Spanned<String>>,
    /// IKE identities; default: the NI's veth address and the peer's address.
    pub local_id: Option<Spanned<String>>,
    pub remote_id: Option<Spanned<String>>,
    /// Traffic selectors; local default: the NI's subnet.
    pub local_ts: Option<Spanned<Vec<Ipv4Net>>>,
    pub remote_ts: Option<Spanned<Vec<Ipv4Net>>>,
    #[serde(default = "default_ike_proposals")]
    pub ike_proposals: Spanned<String>,
    #[serde(default = "default_esp_proposals")]
    pub esp_proposals: Spanned<String>,
    #[serde(default)]
    pub backend: VpnBackend,
}

fn default_ike_proposals() -> Spanned<String> {
    Spanned::new(0..0, "default".into())
}
fn default_esp_proposals() -> Spanned<String> {
    Spanned::new(0..0, "default".into())
}

/// Where ESP happens: the kernel's xfrm (what devices use), or strongSwan's userspace
/// kernel-libipsec over a TUN device (for kernels without ESP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnBackend {
    #[default]
    Kernel,
    Libipsec,
}

impl fmt::Display for VpnBackend {
    /// As the config and `status.json` spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VpnBackend::Kernel => "kernel",
            VpnBackend::Libipsec => "libipsec",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: Spanned<String>,
    pub num: Option<Spanned<u32>>,
    /// An existing netns: a name under /run/netns or a path (not needed when every
    /// interface is a tap: a VM).
    pub netns: Option<Spanned<String>>,
    /// cloud-init user-data served to the app by its NIs' metadata servers.
    pub user_data: Option<String>,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub network: Spanned<String>,
    /// The app's address; default: allocated by the agent (from dhcp_range if set).
    pub ip: Option<Spanned<Ipv4Addr>>,
    /// The app side's MAC (the DHCP lease's key); default: 02:16:3e:<N>:<app>:<k>.
    pub mac: Option<Spanned<String>>,
    /// true: the app takes its address from the NI's DHCP server; false: the agent sets
    /// it (and the default route) in the app's netns.
    #[serde(default)]
    pub dhcp: bool,
    /// A VM's interface: an existing tap in the agent's netns (made by the hypervisor),
    /// moved into the NI and bridged instead of a veth pair.
    pub tap: Option<Spanned<String>>,
    #[serde(default)]
    pub acl: Vec<Ace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ace {
    pub id: Spanned<u32>,
    /// EVE's ACE name: reported in the flow log as `acl_name`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Match,
    #[serde(default)]
    pub action: Action,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub ip: Option<Ipv4Net>,
    pub protocol: Option<Spanned<Protocol>>,
    pub fport: Option<Spanned<u16>>,
    /// Local port: the external port of a port map.
    pub lport: Option<Spanned<u16>>,
    /// The remote is another app of the same network.
    #[serde(default)]
    pub eidset: bool,
    /// The remote is an address that DNS gave the app for this domain or a subdomain.
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Accept,
    Drop,
    /// Expose the app's port `.0` on the NI uplink's address at the ACE's `lport`.
    Portmap(u16),
    /// Accept at most `rate` packets per `unit` (bursts of `burst`), one bucket per ACE.
    Limit {
        rate: u64,
        unit_ns: u64,
        burst: u64,
    },
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Portmap {
            portmap: u16,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LimitSpec {
            rate: u64,
            unit: String,
            burst: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Limit {
            limit: LimitSpec,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Portmap(Portmap),
            Limit(Limit),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "action must be \"accept\", \"drop\", { portmap = <app port> } or { limit = { rate = N, unit = \"s\"|\"m\"|\"h\", burst = N } }",
            )
        })? {
            Raw::Name(n) if n == "accept" => Ok(Action::Accept),
            Raw::Name(n) if n == "drop" => Ok(Action::Drop),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown action {n:?}: use \"accept\", \"drop\" or {{ portmap = <app port> }}"
            ))),
            Raw::Portmap(p) => Ok(Action::Portmap(p.portmap)),
            Raw::Limit(Limit { limit: l }) => {
                use netns_ebpf_common::limit::*;
                let unit_ns = match l.unit.as_str() {
                    "s" => UNIT_SECOND_NS,
                    "m" => UNIT_MINUTE_NS,
                    "h" => UNIT_HOUR_NS,
                    u => return Err(serde::de::Error::custom(format!("limit unit {u:?}: use \"s\", \"m\" or \"h\""))),
                };
                if !(1..=MAX_RATE).contains(&l.rate) || !(1..=MAX_BURST).contains(&l.burst) {
                    return Err(serde::de::Error::custom(format!("limit rate and burst must be 1-{MAX_RATE}")));
                }
                Ok(Action::Limit { rate: l.rate, unit_ns, burst: l.burst })
            }
        }
    }
}

/// `protocol`: "tcp", "udp", "icmp" or an IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(u8),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Protocol(n)),
            Raw::Name(s) => match s.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Protocol(6)),
                "udp" => Ok(Protocol(17)),
                "icmp" => Ok(Protocol(1)),
                other => other
                    .parse()
                    .map(Protocol)
                    .map_err(|_| serde::de::Error::custom(format!("unknown protocol {s:?}: use tcp, udp, icmp or a number 0-255"))),
            },
        }
    }
}

/// A config error with the line it points at.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All errors found in one config, so a user fixes them in one go.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config ({} error{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Something that tells whether an app netns exists; the real check reads /run/netns,
/// the unit tests pass a fixed list.
/// What validation asks of the system it runs on.
pub trait NetnsLookup {
    fn netns_exists(&self, name_or_path: &str) -> bool;
    /// The kernel's ephemeral source ports (net.ipv4.ip_local_port_range) in the agent's
    /// netns: the device's own connections use them.
    fn ephemeral_ports(&self) -> (u16, u16) {
        (32768, 60999)
    }
}

pub struct SystemNetns;

/// For checking a config on another machine than its device (`convert`): every netns
/// is taken to exist.
pub struct AnyNetns;

impl NetnsLookup for AnyNetns {
    fn netns_exists(&self, _: &str) -> bool {
        true
    }
}

impl NetnsLookup for SystemNetns {
    fn netns_exists(&self, name_or_path: &str) -> bool {
        crate::netns::resolve(name_or_path).exists()
    }

    fn ephemeral_ports(&self) -> (u16, u16) {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let mut it = text.split_whitespace().filter_map(|p| p.parse().ok());
        match (it.next(), it.next()) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => (32768, 60999),
        }
    }
}

/// Parses and validates `text` (from `file`).
pub fn parse(file: &str, text: &str, netns: &dyn NetnsLookup) -> Result<Config, ConfigErrors> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start));
        // toml's message does not name the key; quoting the line does.
        let quoted = line.and_then(|l| text.lines().nth(l - 1)).map(|l| format!(" in `{}`", l.trim())).unwrap_or_default();
        ConfigErrors(vec![ConfigError { file: file.to_string(), line, message: format!("{}{quoted}", e.message().trim_end()) }])
    })?;
    let mut errors = Vec::new();
    let mut err = |span: std::ops::Range<usize>, message: String| {
        errors.push(ConfigError { file: file.to_string(), line: Some(line_of(span.start)), message })
    };

    let uplinks = check_uplinks(&config, &mut err);
    let nat_ports = check_agent(&config, netns, &mut err);
    let networks = check_networks(&config, &uplinks, &mut err);
    let addresses = check_apps(&config, &networks, netns, &mut err);
    validate_capacity(&config, &mut err);
    check_pools(&config, &addresses, &mut err);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut config = config;
    config.agent.nat_ports = nat_ports;
    Ok(config)
}

/// `[[uplink]]`: names, each once. Returns the names.
fn check_uplinks<'c>(config: &'c Config, err: &mut impl FnMut(std::ops::Range<usize>, String)) -> HashMap<&'c str, ()> {
    let mut uplinks: HashMap<&str, ()> = HashMap::new();
    for u in &config.uplinks {
        let name = u.name.get_ref().as_str();
        if !valid_ifname_like(name) {
            err(u.name.span(), format!("uplink.name {name:?}: not an interface name"));
        }
        if uplinks.insert(name, ()).is_some() {
            err(u.name.span(), format!("uplink.name {name:?} is used twice"));
        }
    }
    uplinks
}

/// `[agent]`: the source NAT port range (given, or the default outside the kernel's
/// ephemeral ports; returned), the flow log's limits.
fn check_agent(config: &Config, netns: &dyn NetnsLookup, err: &mut impl FnMut(std::ops::Range<usize>, String)) -> (u16, u16) {
    // Source NAT must never hand out a port the device's own connections may use: their
    // replies would be taken for an app's flow (and the other way round).
    let (eph_lo, eph_hi) = netns.ephemeral_ports();
    let mut nat_ports = (0, 0);
    match &config.agent.nat_port_range {
        Some(range) => {
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
            nat_ports = (port_min, port_max);
        }
        None => match default_nat_ports((eph_lo, eph_hi)) {
            Some(ports) => nat_ports = ports,
            None => {
                err(0..0, format!("the kernel's ephemeral ports [{eph_lo}, {eph_hi}] leave source NAT no ports: set agent.nat_port_range"))
            }
        },
    }

    if *config.agent.flow_log_max_bytes.get_ref() < 4096 {
        err(
            config.agent.flow_log_max_bytes.span(),
            format!("agent.flow_log_max_bytes {} is below 4096", config.agent.flow_log_max_bytes.get_ref()),
        );
    }
    if *config.agent.flow_interim_secs.get_ref() == 0 {
        err(config.agent.flow_interim_secs.span(), "agent.flow_interim_secs must be at least 1".to_string());
    }
    nat_ports
}

/// `[[network]]`: names, kinds and their sections, indexes, subnets, gateways, DHCP
/// ranges, uplinks. Returns the networks by name.
fn check_networks<'c>(
    config: &'c Config,
    uplinks: &HashMap<&str, ()>,
    err: &mut impl FnMut(std::ops::Range<usize>, String),
) -> HashMap<&'c str, &'c Network> {
    let mut networks: HashMap<&str, &Network> = HashMap::new();
    let mut indexes: HashMap<u32, &str> = HashMap::new();
    for (pos, n) in config.networks.iter().enumerate() {
        let name = n.name.get_ref().as_str();
        if !valid_ifname_like(name) {
            err(n.name.span(), format!("network.name {name:?}: use 1-15 characters of [A-Za-z0-9_-]"));
        }
        if networks.insert(name, n).is_some() {
            err(n.name.span(), format!("network.name {name:?} is used twice"));
        }
        match *n.kind.get_ref() {
            NetworkKind::Local => {}
            NetworkKind::Switch => match &n.uplink {
                None => err(n.kind.span(), format!("network {name:?}: a switch NI needs an uplink to bridge")),
                Some(u) => {
                    let shared = config.networks.iter().filter(|o| o.uplink.as_ref().map(|x| x.get_ref()) == Some(u.get_ref())).count();
                    if shared > 1 {
                        err(
                            u.span(),
                            format!("network {name:?}: uplink {:?} moves into this switch NI, so no other network can use it", u.get_ref()),
                        );
                    }
                }
            },
            NetworkKind::Vpn => match &n.vpn {
                None => err(n.kind.span(), format!("network {name:?}: a vpn NI needs a [network.vpn] section (remote, psk, remote_ts)")),
                Some(vpn) => {
                    if n.uplink.is_none() {
                        err(n.kind.span(), format!("network {name:?}: a vpn NI needs an uplink for IKE and ESP"));
                    }
                    validate_vpn(name, vpn, n.subnet.get_ref(), err);
                }
            },
        }
        if let (Some(vpn), false) = (&n.vpn, *n.kind.get_ref() == NetworkKind::Vpn) {
            err(vpn.span(), format!("network {name:?}: [network.vpn] is only for kind = \"vpn\""));
        }
        let index = n.index.as_ref().map(|i| *i.get_ref()).unwrap_or(pos as u32 + 1);
        let index_span = n.index.as_ref().map(|i| i.span()).unwrap_or(n.name.span());
        if !(1..=MAX_NI_INDEX).contains(&index) {
            err(index_span.clone(), format!("network.index {index} of {name:?} is out of range 1-{MAX_NI_INDEX}"));
        }
        if let Some(other) = indexes.insert(index, name) {
            err(index_span, format!("network.index {index} of {name:?} is already used by {other:?}"));
        }
        let subnet = n.subnet.get_ref();
        if subnet.prefix_len() > 30 {
            err(n.subnet.span(), format!("network.subnet {subnet} is too small for a gateway and an app"));
        }
        let gw = *n.gateway.get_ref();
        if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
            err(n.gateway.span(), format!("network.gateway {gw} is not a host address of subnet {subnet}"));
        }
        if let Some(range) = &n.dhcp_range {
            let [first, last] = *range.get_ref();
            if !subnet.contains(&first)
                || !subnet.contains(&last)
                || first > last
                || first == subnet.network()
                || last == subnet.broadcast()
            {
                err(
                    range.span(),
                    format!("network.dhcp_range [{first}, {last}] of {name:?} must be host addresses of {subnet}, first <= last"),
                );
            }
        }
        if let Some(u) = &n.uplink {
            if !uplinks.contains_key(u.get_ref().as_str()) {
                err(u.span(), format!("network.uplink {:?} of {name:?} names no [[uplink]]", u.get_ref()));
            }
        }
    }
    networks
}

/// `[[app]]`: names, numbers, namespaces, taps, interfaces (networks, addresses, MACs),
/// ACLs, port maps. Returns the addresses given, by (network, address).
fn check_apps<'c>(
    config: &'c Config,
    networks: &HashMap<&str, &Network>,
    netns: &dyn NetnsLookup,
    err: &mut impl FnMut(std::ops::Range<usize>, String),
) -> HashMap<(&'c str, Ipv4Addr), &'c str> {
    let mut app_names: HashMap<&str, ()> = HashMap::new();
    let mut taps: HashMap<String, ()> = HashMap::new();
    let mut app_nums: HashMap<u32, &str> = HashMap::new();
    let mut addresses: HashMap<(&str, Ipv4Addr), &str> = HashMap::new();
    // (uplink, protocol, lport) -> app: a port can be exposed once per uplink.
    let mut portmaps: HashMap<(String, u8, u16), &str> = HashMap::new();
    for (pos, a) in config.apps.iter().enumerate() {
        let name = a.name.get_ref().as_str();
        if app_names.insert(name, ()).is_some() {
            err(a.name.span(), format!("app.name {name:?} is used twice"));
        }
        let num = a.num.as_ref().map(|n| *n.get_ref()).unwrap_or(pos as u32 + 1);
        let num_span = a.num.as_ref().map(|n| n.span()).unwrap_or(a.name.span());
        if !(1..=255).contains(&num) {
            err(num_span.clone(), format!("app.num {num} of {name:?} is out of range 1-255 (it is the top byte of the connection mark)"));
        }
        if let Some(other) = app_nums.insert(num, name) {
            err(num_span, format!("app.num {num} of {name:?} is already used by {other:?}"));
        }
        match &a.netns {
            Some(ns) if !netns.netns_exists(ns.get_ref()) => {
                err(
                    ns.span(),
                    format!(
                        "app.netns {:?} of {name:?} does not exist (the app's netns must exist before the agent attaches it)",
                        ns.get_ref()
                    ),
                );
            }
            None if a.interfaces.iter().any(|i| i.tap.is_none()) => {
                err(a.name.span(), format!("app {name:?} needs app.netns (only apps whose interfaces are all taps can do without)"));
            }
            _ => {}
        }
        for i in &a.interfaces {
            if let Some(tap) = &i.tap {
                if !valid_ifname_like(tap.get_ref()) {
                    err(tap.span(), format!("app.interface.tap {:?} of {name:?} is not an interface name", tap.get_ref()));
                }
                if taps.insert(tap.get_ref().clone(), ()).is_some() {
                    err(tap.span(), format!("app.interface.tap {:?} is used twice", tap.get_ref()));
                }
            }
        }
        if a.interfaces.len() > 99 {
            err(a.name.span(), format!("app {name:?} has more than 99 interfaces"));
        }
        for i in &a.interfaces {
            check_interface(i, name, networks, &mut addresses, &mut portmaps, err);
        }
    }
    addresses
}

/// One interface of app `name`: its network, address (free, once per network), MAC, ACL
/// and port maps (once per uplink, protocol and port).
fn check_interface<'c>(
    i: &'c Interface,
    name: &'c str,
    networks: &HashMap<&str, &Network>,
    addresses: &mut HashMap<(&'c str, Ipv4Addr), &'c str>,
    portmaps: &mut HashMap<(String, u8, u16), &'c str>,
    err: &mut impl FnMut(std::ops::Range<usize>, String),
) {
    let net_name = i.network.get_ref().as_str();
    if let Some(mac) = &i.mac {
        if parse_mac(mac.get_ref()).is_none() {
            err(mac.span(), format!("app.interface.mac {:?} of {name:?}: use six hex bytes like 02:16:3e:00:00:01", mac.get_ref()));
        }
    }
    match (networks.get(net_name), &i.ip) {
        (None, _) => err(i.network.span(), format!("app.interface.network {net_name:?} of {name:?} names no [[network]]")),
        (Some(_), None) => {}
        (Some(n), Some(ip_spanned)) => {
            let ip = *ip_spanned.get_ref();
            let subnet = n.subnet.get_ref();
            if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() || ip == *n.gateway.get_ref() {
                err(
                    ip_spanned.span(),
                    format!(
                        "app.interface.ip {ip} of {name:?} is not a free host address of {net_name:?} ({subnet}, gateway {})",
                        n.gateway.get_ref()
                    ),
                );
            }
            if let Some(other) = addresses.insert((net_name, ip), name) {
                err(ip_spanned.span(), format!("app.interface.ip {ip} on {net_name:?} is already used by {other:?}"));
            }
        }
    }
    validate_acl(&i.acl, name, err);
    let uplink = networks.get(net_name).and_then(|n| n.uplink.as_ref()).map(|u| u.get_ref().clone());
    let switch = networks.get(net_name).map(|n| *n.kind.get_ref() == NetworkKind::Switch).unwrap_or(false);
    for ace in &i.acl {
        if let (true, Some(host)) = (switch, &ace.matches.host) {
            // Host sets are filled by the NI's own DNS server, which a switch has not.
            err(
                host.span(),
                format!("acl id {} of {name:?}: match.host needs the NI's DNS server; {net_name:?} is a switch", ace.id.get_ref()),
            );
        }
        if let (Action::Portmap(_), Some(lport)) = (ace.action, &ace.matches.lport) {
            let proto = ace.matches.protocol.as_ref().map(|p| p.get_ref().0).unwrap_or(0);
            match &uplink {
                _ if switch => err(
                    ace.id.span(),
                    format!("acl id {} of {name:?}: port maps are for local networks; {net_name:?} is a switch", ace.id.get_ref()),
                ),
                None => err(
                    ace.id.span(),
                    format!("acl id {} of {name:?}: a port map needs network {net_name:?} to have an uplink", ace.id.get_ref()),
                ),
                Some(u) => {
                    if let Some(other) = portmaps.insert((u.clone(), proto, *lport.get_ref()), name) {
                        err(
                            lport.span(),
                            format!(
                                "acl id {} of {name:?}: port {} ({}) on uplink {u:?} is already mapped by {other:?}",
                                ace.id.get_ref(),
                                lport.get_ref(),
                                proto_name(proto)
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Every interface without an address needs one from its network's pool.
fn check_pools(config: &Config, addresses: &HashMap<(&str, Ipv4Addr), &str>, err: &mut impl FnMut(std::ops::Range<usize>, String)) {
    for n in &config.networks {
        let name = n.name.get_ref();
        let range = n.dhcp_range.as_ref().map(|r| (r.get_ref()[0], r.get_ref()[1]));
        let wanted = config.apps.iter().flat_map(|a| &a.interfaces).filter(|i| i.network.get_ref() == name && i.ip.is_none()).count();
        let free = crate::plan::pool(*n.subnet.get_ref(), *n.gateway.get_ref(), range)
            .filter(|ip| !addresses.contains_key(&(name.as_str(), *ip)))
            .take(wanted)
            .count();
        if free < wanted {
            err(n.name.span(), format!("network {name:?}: {wanted} interfaces need an address but only {free} are free in its pool"));
        }
    }
}

/// What the data path's maps hold (their sizes live in netns-ebpf-common, next to their
/// types): a config beyond them is refused here rather than half applied when an insert
/// fails. Each error points at the first item over the limit. (The translating
/// interfaces, NATIF_V1, cannot run out: see the assertion below.)
fn validate_capacity(config: &Config, err: &mut impl FnMut(std::ops::Range<usize>, String)) {
    let ports: Vec<&Interface> = config.apps.iter().flat_map(|a| &a.interfaces).collect();
    if let Some(over) = ports.get(MAX_APP_PORTS as usize) {
        let n = ports.len();
        err(over.network.span(), format!("{n} app interfaces: the data path holds at most {MAX_APP_PORTS} (IFACE_V2)"));
    }
    let aces = || ports.iter().flat_map(|i| &i.acl);
    let portmaps: Vec<&Ace> = aces().filter(|a| matches!(a.action, Action::Portmap(_))).collect();
    if let Some(over) = portmaps.get(PORTMAP_MAX_ENTRIES as usize / 2) {
        let n = portmaps.len();
        err(over.id.span(), format!("{n} port-map ACEs: the data path holds at most {} (PORTMAP_V1)", PORTMAP_MAX_ENTRIES / 2));
    }
    let limits: Vec<&Ace> = aces().filter(|a| matches!(a.action, Action::Limit { .. })).collect();
    if let Some(over) = limits.get(LIMIT_MAX_ENTRIES as usize) {
        let n = limits.len();
        err(over.id.span(), format!("{n} limit ACEs: the data path holds at most {LIMIT_MAX_ENTRIES} buckets (LIMIT_V1)"));
    }
}

fn validate_vpn(ni: &str, vpn: &Spanned<VpnSection>, subnet: &Ipv4Net, err: &mut impl FnMut(std::ops::Range<usize>, String)) {
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
}

fn validate_acl(acl: &[Ace], app: &str, err: &mut impl FnMut(std::ops::Range<usize>, String)) {
    if acl.len() > MAX_ACES {
        if let Some(ace) = acl.get(MAX_ACES) {
            err(ace.id.span(), format!("app {app:?}: an interface holds at most {MAX_ACES} ACEs"));
        }
    }
    let mut ids = HashMap::new();
    for ace in acl {
        let id = *ace.id.get_ref();
        // ACE_ID_MASK itself is the implicit default-drop rule.
        if id == 0 || id >= ACE_ID_MASK {
            err(ace.id.span(), format!("acl id {id} of {app:?} is out of range 1-{}", ACE_ID_MASK - 1));
        }
        if ids.insert(id, ()).is_some() {
            err(ace.id.span(), format!("acl id {id} is used twice on one interface of {app:?}"));
        }
        if let Some(host) = &ace.matches.host {
            if !valid_domain(host.get_ref()) {
                err(host.span(), format!("acl id {id} of {app:?}: match.host {:?} is not a domain name", host.get_ref()));
            }
        }
        let proto = ace.matches.protocol.as_ref().map(|p| p.get_ref().0);
        for (key, port) in [("fport", &ace.matches.fport), ("lport", &ace.matches.lport)] {
            if let Some(port) = port {
                if !matches!(proto, Some(6) | Some(17)) {
                    err(port.span(), format!("acl id {id} of {app:?}: match.{key} needs match.protocol \"tcp\" or \"udp\""));
                }
            }
        }
        match (ace.action, &ace.matches.lport) {
            (Action::Portmap(0), Some(_)) => {
                err(ace.id.span(), format!("acl id {id} of {app:?}: portmap target port 0"));
            }
            (Action::Portmap(_), None) => {
                err(ace.id.span(), format!("acl id {id} of {app:?}: action portmap needs match.lport (the external port)"));
            }
            (Action::Accept | Action::Drop | Action::Limit { .. }, Some(lport)) => {
                err(lport.span(), format!("acl id {id} of {app:?}: match.lport is only meaningful with action {{ portmap = <app port> }}"));
            }
            _ => {}
        }
    }
}

/// "02:16:3e:00:00:01" -> bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2)).collect::<Option<_>>()?;
    parts.try_into().ok()
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

impl Config {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Ok(parse(&path.display().to_string(), &text, &SystemNetns)?)
    }
}

/// The `[agent]` directories a config names, read leniently: the commands that only
/// need to find the agent's record (`down`, `apply`, `status`, `flows`) work even when
/// the rest of the file is broken (the running agent reports its errors).
pub fn agent_dirs(path: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let value: toml::Value = text.parse().unwrap_or(toml::Value::Table(Default::default()));
    let dir = |key: &str, default: &str| {
        value.get("agent").and_then(|a| a.get(key)).and_then(|v| v.as_str()).map(PathBuf::from).unwrap_or_else(|| default.into())
    };
    Ok((dir("pin_dir", DEFAULT_PIN_DIR), dir("state_dir", DEFAULT_STATE_DIR)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Known(&'static [&'static str]);
    impl NetnsLookup for Known {
        fn netns_exists(&self, n: &str) -> bool {
            self.0.contains(&n)
        }
    }

    const GOOD: &str = r#"
[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"

[[network]]
name = "ni2"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"

[[app]]
name = "app1"
netns = "app1"
[[app.interface]]
network = "ni1"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "10.10.1.3/32", protocol = "tcp", fport = 80 } },
  { id = 2, match = { ip = "0.0.0.0/0", protocol = "udp" }, action = "drop" },
]

[[app]]
name = "app2"
netns = "app2"
[[app.interface]]
network = "ni2"
ip = "10.10.1.2"
"#;

    fn parse_ok(text: &str) -> Config {
        parse("t.toml", text, &Known(&["app1", "app2"])).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse("t.toml", text, &Known(&["app1", "app2"])).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_documented_shape() {
        let c = parse_ok(GOOD);
        assert_eq!(c.networks.len(), 2);
        assert_eq!(c.apps[0].interfaces[0].acl.len(), 2);
        assert_eq!(parse_mac("02:16:3e:0a:ff:01"), Some([2, 0x16, 0x3e, 10, 255, 1]));
        assert_eq!(parse_mac("02:16:3e:0a:ff"), None);
        assert_eq!(parse_mac("2:16:3e:0a:ff:01"), None);
        assert_eq!(c.apps[0].interfaces[0].acl[1].action, Action::Drop);
        assert_eq!(c.apps[0].interfaces[0].acl[0].matches.protocol.as_ref().unwrap().get_ref().0, 6);
        assert_eq!(c.agent.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace(
            "kind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\n\n[[network]]\nname = \"ni2\"",
            "kind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\nbogus = 1\n\n[[network]]\nname = \"ni2\"",
        );
        let e = parse_err(&text);
        assert!(e.contains("t.toml:7:") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_prefix_names_line() {
        let e = parse_err(&GOOD.replace("10.10.1.3/32", "10.10.1.3/33"));
        assert!(e.contains("t.toml:21:") && e.contains("10.10.1.3/33"), "{e}");
    }

    #[test]
    fn duplicates_and_missing_references() {
        let e = parse_err(&GOOD.replace("name = \"ni2\"", "name = \"ni1\""));
        assert!(e.contains("network.name \"ni1\" is used twice") && e.contains("t.toml:9:"), "{e}");
        let e = parse_err(&GOOD.replace("fport = 80 } },", "fport = 80 } },\n  { id = 1 },"));
        assert!(e.contains("acl id 1 is used twice"), "{e}");
        let e = parse_err(&GOOD.replace("network = \"ni2\"", "network = \"ni9\""));
        assert!(e.contains("network \"ni9\" of \"app2\" names no [[network]]") && e.contains("t.toml:29:"), "{e}");
        let e = parse_err(&GOOD.replace("netns = \"app2\"", "netns = \"nope\""));
        assert!(e.contains("app.netns \"nope\" of \"app2\" does not exist"), "{e}");
        let e = parse_err(&GOOD.replace("name = \"app2\"", "name = \"app1\""));
        assert!(e.contains("app.name \"app1\" is used twice"), "{e}");
    }

    #[test]
    fn uplinks_and_port_maps() {
        let base = GOOD.replace(
            "[[network]]\nname = \"ni1\"\nkind = \"local\"",
            "[[uplink]]\nname = \"eth0\"\n\n[[network]]\nname = \"ni1\"\nkind = \"local\"\nuplink = \"eth0\"",
        );
        let with_map = base
            .replace("  { id = 2,", "  { id = 3, match = { protocol = \"tcp\", lport = 8080 }, action = { portmap = 80 } },\n  { id = 2,");
        let c = parse_ok(&with_map);
        assert_eq!(c.apps[0].interfaces[0].acl[1].action, Action::Portmap(80));
        assert_eq!(c.networks[0].uplink.as_ref().unwrap().get_ref(), "eth0");
        let e = parse_err(&with_map.replace("uplink = \"eth0\"", "uplink = \"eth9\""));
        assert!(e.contains("network.uplink \"eth9\" of \"ni1\" names no [[uplink]]"), "{e}");
        let e = parse_err(&with_map.replace("action = { portmap = 80 }", "action = { portmap = 80, x = 1 }"));
        assert!(e.contains("action must be"), "{e}");
        let e = parse_err(&with_map.replace("lport = 8080 }, action", "fport = 8080 }, action"));
        assert!(e.contains("action portmap needs match.lport"), "{e}");
        let e = parse_err(&with_map.replace("action = { portmap = 80 }", "action = \"accept\""));
        assert!(e.contains("only meaningful with action"), "{e}");
        // The same port twice on one uplink.
        let twice = with_map
            .replace("  { id = 2,", "  { id = 4, match = { protocol = \"tcp\", lport = 8080 }, action = { portmap = 81 } },\n  { id = 2,");
        let e = parse_err(&twice);
        assert!(e.contains("port 8080 (tcp) on uplink \"eth0\" is already mapped by \"app1\""), "{e}");
        // A port map on an NI without uplink.
        let e = parse_err(&with_map.replace("uplink = \"eth0\"\n", ""));
        assert!(e.contains("needs network \"ni1\" to have an uplink"), "{e}");
        let e = parse_err(&format!("[agent]\nnat_port_range = [5000, 4000]\n{with_map}"));
        assert!(e.contains("agent.nat_port_range [5000, 4000]") && e.contains("t.toml:2:"), "{e}");
        let e = parse_err(&format!("[agent]\nnat_port_range = [40000, 40099]\n{with_map}"));
        assert!(e.contains("overlaps the kernel's ephemeral ports [32768, 60999]"), "{e}");
    }

    #[test]
    fn limit_action() {
        let text = GOOD.replace(
            "  { id = 2,",
            "  { id = 5, match = { ip = \"192.168.0.0/16\" }, action = { limit = { rate = 5, unit = \"s\", burst = 15 } } },\n  { id = 2,",
        );
        let c = parse_ok(&text);
        assert_eq!(c.apps[0].interfaces[0].acl[1].action, Action::Limit { rate: 5, unit_ns: 1_000_000_000, burst: 15 });
        let e = parse_err(&text.replace("unit = \"s\"", "unit = \"d\""));
        assert!(e.contains("t.toml:22: limit unit \"d\""), "{e}");
        let e = parse_err(&text.replace("rate = 5", "rate = 0"));
        assert!(e.contains("limit rate and burst must be 1-1000000"), "{e}");
    }

    #[test]
    fn host_and_eidset_matches() {
        let text = GOOD.replace("  { id = 2,", "  { id = 3, match = { host = \"github.com\" } },\n  { id = 4, match = { eidset = true, protocol = \"tcp\", fport = 80 } },\n  { id = 2,");
        let c = parse_ok(&text);
        let acl = &c.apps[0].interfaces[0].acl;
        assert_eq!(acl[1].matches.host.as_ref().unwrap().get_ref(), "github.com");
        assert!(acl[2].matches.eidset);
        let e = parse_err(&text.replace("github.com", "git hub"));
        assert!(e.contains("is not a domain name"), "{e}");
    }

    #[test]
    fn configs_beyond_the_data_paths_maps_are_refused_at_the_first_item_over() {
        // `apps` apps with `per_app` ACEs each, and one more app with `extra` (`ace`
        // formats ACE i of app a).
        let config = |apps: usize, per_app: usize, extra: usize, ace: &dyn Fn(usize, usize) -> String| {
            let mut text = String::from(
                "[[uplink]]\nname = \"eth0\"\n[[network]]\nname = \"ni1\"\nkind = \"local\"\nsubnet = \"10.1.0.0/16\"\n\
                 gateway = \"10.1.0.1\"\nuplink = \"eth0\"\n",
            );
            for a in 0..apps + usize::from(extra > 0) {
                let n = if a == apps { extra } else { per_app };
                let aces: Vec<String> = (1..=n).map(|i| ace(a, i)).collect();
                text += &format!(
                    "[[app]]\nname = \"a{a}\"\nnetns = \"a{a}\"\n[[app.interface]]\nnetwork = \"ni1\"\nacl = [\n{}\n]\n",
                    aces.join(",\n")
                );
            }
            text
        };
        // The error names the line of the extra app's first ACE.
        let refused = |text: &str, what: &str| {
            let e = parse("t.toml", text, &AnyNetns).unwrap_err().to_string();
            let extra = text.lines().position(|l| l == format!("name = \"a{}\"", text.matches("[[app]]").count() - 1)).unwrap();
            let line = extra + text.lines().skip(extra).position(|l| l.starts_with("{ id = 1,")).unwrap() + 1;
            assert!(e.contains(&format!("t.toml:{line}: ")) && e.contains(what), "line {line}: {e}");
        };
        let limit = |_: usize, i: usize| format!("{{ id = {i}, action = {{ limit = {{ rate = 10, unit = \"s\", burst = 10 }} }} }}");
        parse("t.toml", &config(64, 64, 0, &limit), &AnyNetns).unwrap();
        refused(&config(64, 64, 1, &limit), "4097 limit ACEs: the data path holds at most 4096 buckets (LIMIT_V1)");

        // Port maps: 2048 fit (32 apps of 64, each on its own uplink port), the 2049th not.
        let portmap = |a: usize, i: usize| {
            format!("{{ id = {i}, match = {{ protocol = \"tcp\", lport = {} }}, action = {{ portmap = 80 }} }}", 10000 + a * 100 + i)
        };
        parse("t.toml", &config(32, 64, 0, &portmap), &AnyNetns).unwrap();
        refused(&config(32, 64, 1, &portmap), "2049 port-map ACEs: the data path holds at most 2048 (PORTMAP_V1)");
    }

    #[test]
    fn semantic_checks() {
        let e = parse_err(&GOOD.replace("ip = \"10.10.1.2\"\nacl", "ip = \"10.10.2.2\"\nacl"));
        assert!(e.contains("not a free host address"), "{e}");
        let e = parse_err(&GOOD.replace("ip = \"10.10.1.3/32\", protocol = \"tcp\", ", "ip = \"10.10.1.3/32\", "));
        assert!(e.contains("fport needs match.protocol"), "{e}");
        let e = parse_err(&GOOD.replace("protocol = \"udp\"", "protocol = \"sctpx\""));
        assert!(e.contains("unknown protocol"), "{e}");
        let e = parse_err(&GOOD.replace("action = \"drop\"", "action = \"reject\""));
        assert!(e.contains("reject"), "{e}");
        let e = parse_err(&GOOD.replace("kind = \"local\"", "kind = \"vpn\""));
        assert!(e.contains("a vpn NI needs a [network.vpn] section"), "{e}");
        let e = parse_err(&GOOD.replace("kind = \"local\"", "kind = \"switch\""));
        assert!(e.contains("a switch NI needs an uplink"), "{e}");
        let switch = GOOD.replace("kind = \"local\"", "kind = \"switch\"\nuplink = \"eth0\"");
        let e = parse_err(&switch.replace("  { id = 2,", "  { id = 3, match = { host = \"github.com\" } },\n  { id = 2,"));
        assert!(e.contains("match.host needs the NI's DNS server"), "{e}");
        let e = parse_err(&GOOD.replace("{ id = 2,", "{ id = 4194303,"));
        assert!(e.contains("out of range"), "{e}");
        // Several errors are reported together.
        let e = parse_err(&GOOD.replace("name = \"app2\"", "name = \"app1\"").replace("network = \"ni2\"", "network = \"ni9\""));
        assert!(e.starts_with("invalid config (2 errors)"), "{e}");
    }

    #[test]
    fn vpn_section() {
        let vpn = GOOD.replacen(
            "[[network]]\nname = \"ni1\"\nkind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\n",
            "[[uplink]]\nname = \"eth1\"\n\n[[network]]\nname = \"ni1\"\nkind = \"vpn\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\nuplink = \"eth1\"\n[network.vpn]\nremote = \"192.168.111.1\"\npsk = \"s3cret\"\nremote_ts = [\"192.168.0.0/24\"]\nbackend = \"libipsec\"\n",
            1,
        );
        let c = parse_ok(&vpn);
        let v = c.networks[0].vpn.as_ref().unwrap().get_ref();
        assert_eq!((v.backend, v.ike_proposals.get_ref().as_str()), (VpnBackend::Libipsec, "default"));
        // All missing keys in one message, at the section's line.
        let e = parse_err(&vpn.replace("remote = \"192.168.111.1\"\npsk = \"s3cret\"\n", ""));
        assert!(e.contains("[network.vpn] lacks remote, psk") && e.contains("t.toml:11:"), "{e}");
        let e = parse_err(&vpn.replace("uplink = \"eth1\"\n[network", "[network"));
        assert!(e.contains("a vpn NI needs an uplink"), "{e}");
        let e = parse_err(&vpn.replace("192.168.0.0/24", "10.10.0.0/16"));
        assert!(e.contains("overlaps the NI's subnet"), "{e}");
        let e = parse_err(&vpn.replace("backend = \"libipsec\"", "backend = \"libipsec\"\nesp_proposals = \"aes128}\""));
        assert!(e.contains("vpn.esp_proposals"), "{e}");
        let e = parse_err(&vpn.replace("backend = \"libipsec\"", "backend = \"xfrm\""));
        assert!(e.contains("xfrm"), "{e}");
        let e = parse_err(&vpn.replace("kind = \"vpn\"", "kind = \"local\""));
        assert!(e.contains("[network.vpn] is only for kind = \"vpn\""), "{e}");
    }

    #[test]
    fn default_nat_ports_stay_outside_the_ephemeral_range() {
        assert_eq!(default_nat_ports((32768, 60999)), Some((1024, 32767)));
        assert_eq!(default_nat_ports((1024, 50000)), Some((50001, 65535)));
        assert_eq!(default_nat_ports((40000, 65535)), Some((1024, 39999)));
        assert_eq!(default_nat_ports((1024, 65535)), None);
    }
}
