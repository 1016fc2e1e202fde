//! The config file as TOML spells it: every key with its place in the file (`Spanned`),
//! required keys that may be missing as `Option`, so that validation (`check.rs`) can
//! report every error at its line and at once. Nothing outside `config` sees these types:
//! `check.rs` turns them into the typed model (`super::Config`).

use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use super::{NetworkKind, VpnBackend, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};

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
    /// The redirect fast path: established flows of local NIs skip the NI bridge and the
    /// routing of the NI's and the agent's netns (see ARCHITECTURE.md). On by default.
    #[serde(default = "default_fast_path")]
    pub fast_path: bool,
    /// Expedited RCU grace periods (the kernel's /sys/kernel/rcu_expedited) while an
    /// apply or `down` runs: far faster at scale. Off by default.
    #[serde(default)]
    pub expedite_rcu: bool,
}

fn default_fast_path() -> bool {
    true
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
            dns_host_grace_secs: default_dns_host_grace(),
            flow_log: None,
            flow_log_max_bytes: default_flow_log_max_bytes(),
            flow_interim_secs: default_flow_interim(),
            metrics: None,
            fast_path: default_fast_path(),
            expedite_rcu: false,
        }
    }
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
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
