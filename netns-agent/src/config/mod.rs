//! The agent's TOML config: parsed and validated in one step into a typed model.
//!
//! `file.rs` is the file as written (with the place of every key), `check.rs` checks it
//! section by section and builds the model (`Config` below) as it goes. Every error names
//! the key and the line, and all of them are reported at once. Nothing here touches the
//! system except reading whether an app's netns exists and the kernel's ephemeral ports.

mod check;
mod file;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::Ipv4Net;
use serde::Deserialize;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netns-agent";
pub const DEFAULT_STATE_DIR: &str = "/run/netns-agent";
/// NI index N gets 169.254.100.(4N-3)/30 on the agent side: N = 63 is the last /30 of
/// the /24.
pub const MAX_NI_INDEX: u32 = 63;

/// The MAC of NI `index`'s bridge (its gateway's; a switch NI's bridge is no gateway and
/// keeps the kernel's pick): 02:16:3e:<index>:00:00, beside its
/// apps' default MACs 02:16:3e:<index>:<app>:<k> (app numbers start at 1). Set by the
/// agent: a bridge left to the kernel takes the lowest of its ports' MACs, so adding or
/// removing an app would move the gateway's MAC under the other apps' ARP caches.
pub const fn bridge_mac(index: u32) -> [u8; 6] {
    [0x02, 0x16, 0x3e, index as u8, 0, 0]
}

/// A config that passed every check, as the rest of the agent sees it: required keys
/// present, defaults filled in (NI index, app number, addresses, MACs), references
/// resolved. `plan::build` turns it into kernel objects.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentSettings,
    pub uplinks: Vec<Uplink>,
    pub networks: Vec<Network>,
    pub apps: Vec<App>,
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Where the agent records what it created (for `down` and `flows`).
    pub state_dir: PathBuf,
    /// Source ports that source NAT hands out, inclusive (configured, or the larger side
    /// outside the kernel's ephemeral range).
    pub nat_ports: (u16, u16),
    /// How long a DNS answer's addresses stay in a host set past the record's TTL.
    pub dns_host_grace: Duration,
    /// The flow log: one JSON object per line per flow record (off when unset).
    pub flow_log: Option<PathBuf>,
    /// Size at which the flow log rotates (three older files are kept).
    pub flow_log_max_bytes: u64,
    /// Time between interim records of a long-lived flow.
    pub flow_interim: Duration,
    /// Where `/metrics` (Prometheus text) is served, in the agent's netns (off when unset).
    pub metrics: Option<SocketAddr>,
    /// The redirect fast path for the local NIs' established flows.
    pub fast_path: bool,
    /// Expedited RCU grace periods while an apply or `down` runs (`rcu`).
    pub expedite_rcu: bool,
}

/// An interface of the agent's netns that NIs reach the outside through; its address,
/// prefix and gateway are read from the kernel.
#[derive(Debug, Clone)]
pub struct Uplink {
    pub name: String,
    /// DNS servers the NIs on this uplink forward to; empty: the agent netns'
    /// /etc/resolv.conf.
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
    /// 1..=MAX_NI_INDEX, unique: names the veths and addresses, and is the conntrack zone.
    pub index: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The uplink this NI reaches the outside through (a switch: the one it bridges);
    /// none: isolated.
    pub uplink: Option<String>,
    /// DHCP's dynamic pool [first, last]; without it, only the apps' static leases.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The IPsec tunnel: present exactly when `kind` is `Vpn`.
    pub vpn: Option<Vpn>,
}

/// `[network.vpn]`: one IKEv2 tunnel with a pre-shared key, initiated by the NI.
#[derive(Debug, Clone)]
pub struct Vpn {
    /// The peer's address; IKE and ESP-in-UDP reach it through the NI's uplink.
    pub remote: Ipv4Addr,
    /// The pre-shared key (any bytes; written hex-encoded for strongSwan).
    pub psk: String,
    /// IKE identities; default (by the plan): the NI's veth address and the peer's address.
    pub local_id: Option<String>,
    pub remote_id: Option<String>,
    /// Traffic selectors; local default (by the plan): the NI's subnet.
    pub local_ts: Option<Vec<Ipv4Net>>,
    pub remote_ts: Vec<Ipv4Net>,
    pub ike_proposals: String,
    pub esp_proposals: String,
    pub backend: VpnBackend,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    /// 1..=255, unique: the top byte of the connection mark.
    pub num: u32,
    /// An existing netns (a name under /run/netns or a path); none: a VM, all taps.
    pub netns: Option<String>,
    /// cloud-init user-data served to the app by its NIs' metadata servers.
    pub user_data: Option<String>,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone)]
pub struct Interface {
    /// The name of an existing network.
    pub network: String,
    /// The app's address: configured, or the next free one of the network's pool.
    pub ip: Ipv4Addr,
    pub ip_configured: bool,
    /// The app side's MAC (the DHCP lease's key): configured, or
    /// 02:16:3e:<NI index>:<app num>:<k>.
    pub mac: [u8; 6],
    pub mac_configured: bool,
    /// true: the app takes its address from the NI's DHCP server; false: the agent sets
    /// it (and the default route) in the app's netns.
    pub dhcp: bool,
    /// A VM's interface: an existing tap in the agent's netns (made by the hypervisor),
    /// moved into the NI and bridged instead of a veth pair.
    pub tap: Option<String>,
    /// At most `MAX_CLASSIFIED_ACES` (`MAX_HOST_ACES` with a host), ids unique and below
    /// `ACE_ID_MASK`.
    pub acl: Vec<Ace>,
}

#[derive(Debug, Clone)]
pub struct Ace {
    pub id: u32,
    /// EVE's ACE name: reported in the flow log as `acl_name`.
    pub name: Option<String>,
    pub matches: Match,
    pub action: Action,
}

#[derive(Debug, Clone, Default)]
pub struct Match {
    pub ip: Option<Ipv4Net>,
    /// An IP protocol number; `fport` only with 6 or 17.
    pub protocol: Option<u8>,
    pub fport: Option<u16>,
    /// The remote is another app of the same network.
    pub eidset: bool,
    /// The remote is an address that DNS gave the app for this domain or a subdomain:
    /// lower case, no trailing dot, as the DNS proxy compares it.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Expose the app's port `target` on the NI uplink's address at `lport` (for the
    /// ACE's protocol).
    Portmap {
        lport: u16,
        target: u16,
    },
    /// Accept at most `rate` packets per `unit_ns` (bursts of `burst`), one bucket per ACE.
    Limit {
        rate: u64,
        unit_ns: u64,
        burst: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Local,
    Switch,
    Vpn,
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

/// What validation asks of the system it runs on: the real one reads /run/netns and
/// /proc, the unit tests answer from a fixed list.
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

/// Parses and validates `text` (from `file`) into the typed model; all errors at once.
pub fn parse(file: &str, text: &str, netns: &dyn NetnsLookup) -> Result<Config, ConfigErrors> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let raw: file::Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start));
        // toml's message does not name the key; quoting the line does.
        let quoted = line.and_then(|l| text.lines().nth(l - 1)).map(|l| format!(" in `{}`", l.trim())).unwrap_or_default();
        ConfigErrors(vec![ConfigError { file: file.to_string(), line, message: format!("{}{quoted}", e.message().trim_end()) }])
    })?;
    let mut errors = Vec::new();
    let config = check::config(&raw, netns, &mut |span, message| {
        errors.push(ConfigError { file: file.to_string(), line: Some(line_of(span.start)), message })
    });
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Bytes -> "02:16:3e:00:00:01" (`parse_mac`'s inverse).
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// "02:16:3e:00:00:01" -> bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2)).collect::<Option<_>>()?;
    parts.try_into().ok()
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
        assert_eq!(c.apps[0].interfaces[0].acl[0].matches.protocol, Some(6));
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
        assert_eq!(c.apps[0].interfaces[0].acl[1].action, Action::Portmap { lport: 8080, target: 80 });
        assert_eq!(c.networks[0].uplink.as_deref(), Some("eth0"));
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
        assert_eq!(acl[1].matches.host.as_deref(), Some("github.com"));
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
        let v = c.networks[0].vpn.as_ref().unwrap();
        assert_eq!((v.backend, v.ike_proposals.as_str(), v.remote_ts.len()), (VpnBackend::Libipsec, "default", 1));
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
    fn defaults_are_filled_in_once() {
        // ni2 takes index 2 by its place; app1's second interface has no address: it gets
        // the first free one of ni2's pool (app2 configures .2), and a MAC that says where
        // it is. A host match is kept as DNS compares it.
        let text = GOOD
            .replace("network = \"ni2\"\nip = \"10.10.1.2\"", "network = \"ni2\"\nip = \"10.10.1.2\"\nmac = \"02:00:00:00:00:09\"")
            .replace("  { id = 2,", "  { id = 3, match = { host = \"GitHub.com.\" } },\n  { id = 2,")
            .replace("[[app]]\nname = \"app2\"", "[[app.interface]]\nnetwork = \"ni2\"\n\n[[app]]\nname = \"app2\"\nnum = 9");
        let c = parse_ok(&text);
        assert_eq!((c.networks[1].index, c.apps[0].num, c.apps[1].num), (2, 1, 9));
        let second = &c.apps[0].interfaces[1];
        assert_eq!((second.ip, second.ip_configured), (Ipv4Addr::new(10, 10, 1, 3), false));
        assert_eq!((second.mac, second.mac_configured), ([0x02, 0x16, 0x3e, 2, 1, 2], false));
        assert_eq!(c.apps[1].interfaces[0].mac, [2, 0, 0, 0, 0, 9]);
        // An app may not take its gateway's MAC (the bridge's, set by the agent).
        let e = parse_err(&text.replace("mac = \"02:00:00:00:00:09\"", "mac = \"02:16:3e:02:00:00\""));
        assert!(e.contains("app.interface.mac \"02:16:3e:02:00:00\" of \"app2\" is the MAC of \"ni2\"'s bridge"), "{e}");
        assert_eq!(c.apps[0].interfaces[0].acl[1].matches.host.as_deref(), Some("github.com"));
        // A pool with no room left is refused at the network's line.
        let full = text.replace(
            "kind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\n\n[[app]]",
            "kind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\ndhcp_range = [\"10.10.1.2\", \"10.10.1.2\"]\n\n[[app]]",
        );
        let e = parse_err(&full);
        assert!(e.contains("t.toml:9: network \"ni2\": 1 interfaces need an address but only 0 are free in its pool"), "{e}");
    }

    #[test]
    fn default_nat_ports_stay_outside_the_ephemeral_range() {
        assert_eq!(default_nat_ports((32768, 60999)), Some((1024, 32767)));
        assert_eq!(default_nat_ports((1024, 50000)), Some((50001, 65535)));
        assert_eq!(default_nat_ports((40000, 65535)), Some((1024, 39999)));
        assert_eq!(default_nat_ports((1024, 65535)), None);
    }

    #[test]
    fn only_a_switch_nis_subnet_may_lie_over_the_devices_own_addresses() {
        let link_local = |kind: &str| {
            format!(
                "[[uplink]]\nname = \"eth3\"\n[[network]]\nname = \"ni1\"\nkind = \"{kind}\"\nsubnet = \"169.254.0.0/16\"\ngateway = \"169.254.0.1\"\nuplink = \"eth3\"\n"
            )
        };
        assert!(parse_err(&link_local("local")).contains("overlaps the device's own addresses"));
        let switch = parse_ok(&link_local("switch"));
        assert_eq!(switch.networks[0].subnet.to_string(), "169.254.0.0/16", "a switch NI's LAN may be link-local");
    }
}
