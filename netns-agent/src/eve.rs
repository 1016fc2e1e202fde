//! EVE's own config as input: an `EdgeDevConfig` (the JSON encoding of eve-api's
//! protobufs) plus a bindings file for what it does not carry, converted to our TOML
//! config, which then goes through the same validation and apply as a hand-written one.
//!
//! Mapping (eve-api `config/netinst.proto`, `appconfig.proto`, `fw.proto`,
//! `devmodel.proto`, `netconfig.proto`):
//! - `networkInstances[]` -> `[[network]]`: `displayname` is the name; `instType` 1 switch,
//!   2 local, 3 VPN (its tunnel parameters from the bindings: EVE leaves `cfg.oconfig`
//!   opaque); `port.name` is a logical label resolved through `systemAdapterList` and
//!   `deviceIoList` to an interface (`phyaddrs.Ifname`), which becomes an `[[uplink]]`;
//!   `ip.subnet/gateway/dhcpRange`; a switch NI without `ip` takes its gateway (and
//!   prefix) from the port's `networks[]` entry (`ip.gateway`, or `gw` as the seed's
//!   scenario writes it), else from the bindings.
//! - `apps[]` -> `[[app]]`: `displayname`, `userData` (base64); `interfaces[]` in order,
//!   `networkId` -> the NI, `addr`/`macAddress`; `acls[]` -> ACEs (`matches`: ip, host, eidset, protocol, fport,
//!   lport; `actions`: none = accept, drop, portmap + appPort, limit + rate/unit/burst).
//! - NI index and app number are stable per UUID across versions and restarts (kept in
//!   `<state_dir>/eve-ids.json`), not positional.
//!
//! Every error names its JSON path (`apps[2].interfaces[0].acls[1].matches[0]`); anything
//! asked for that we do not support is an error, never dropped (fields we do not map are
//! read and refused when set; fields that ask for nothing, like names of things we
//! resolve otherwise, are ignored).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

// ---- The EdgeDevConfig subset we read (protojson field names; enums as numbers or names).

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDevConfig {
    #[serde(default)]
    pub id: Option<UuidAndVersion>,
    #[serde(default)]
    pub network_instances: Vec<NetworkInstance>,
    #[serde(default)]
    pub apps: Vec<AppInstance>,
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    #[serde(default)]
    pub system_adapter_list: Vec<SystemAdapter>,
    #[serde(default)]
    pub device_io_list: Vec<PhysicalIo>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct UuidAndVersion {
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInstance {
    #[serde(default)]
    pub uuidandversion: UuidAndVersion,
    #[serde(default)]
    pub displayname: String,
    #[serde(default)]
    pub inst_type: EnumValue,
    #[serde(default)]
    pub activate: bool,
    #[serde(default)]
    pub port: Option<Adapter>,
    #[serde(default)]
    pub ip_type: EnumValue,
    #[serde(default)]
    pub ip: Option<IpSpec>,
    /// Fields we do not support: refused when set (never dropped).
    #[serde(default)]
    pub dns: Vec<serde_json::Value>,
    #[serde(default)]
    pub static_routes: Vec<serde_json::Value>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub disable_flowlog: bool,
    #[serde(default)]
    pub vlan_access_ports: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Adapter {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpSpec {
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub gateway: String,
    /// netconfig.proto's name of the gateway.
    #[serde(default)]
    pub gw: String,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dhcp_range: Option<IpRange>,
}

#[derive(Debug, Deserialize)]
pub struct IpRange {
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub end: String,
}

#[derive(Debug, Deserialize)]
pub struct NetworkConfig {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub ip: Option<IpSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemAdapter {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "networkUUID")]
    pub network_uuid: String,
}

#[derive(Debug, Deserialize)]
pub struct PhysicalIo {
    #[serde(default)]
    pub logicallabel: String,
    #[serde(default)]
    pub phyaddrs: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppInstance {
    #[serde(default)]
    pub uuidandversion: UuidAndVersion,
    #[serde(default)]
    pub displayname: String,
    #[serde(default)]
    pub activate: bool,
    #[serde(default)]
    pub interfaces: Vec<NetworkAdapter>,
    /// cloud-init user data, base64 (served by the metadata server).
    #[serde(default)]
    pub user_data: String,
    /// Encrypted user data: refused (we hold no device key).
    #[serde(default)]
    pub cipher_data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAdapter {
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub mac_address: String,
    #[serde(default)]
    pub acls: Vec<Ace>,
    /// Refused when set: VLANs on switch NIs, discovery of the other apps.
    #[serde(default)]
    pub access_vlan_id: u32,
    #[serde(default)]
    pub allow_to_discover: bool,
}

#[derive(Debug, Deserialize)]
pub struct Ace {
    #[serde(default)]
    pub matches: Vec<AceMatch>,
    #[serde(default)]
    pub actions: Vec<AceAction>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub id: i64,
    /// `ACEDirection`: only 0 (both) is supported.
    #[serde(default)]
    pub dir: EnumValue,
}

#[derive(Debug, Deserialize)]
pub struct AceMatch {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AceAction {
    #[serde(default)]
    pub drop: bool,
    #[serde(default)]
    pub limit: bool,
    #[serde(default)]
    pub limitrate: u64,
    #[serde(default)]
    pub limitunit: String,
    #[serde(default)]
    pub limitburst: u64,
    #[serde(default)]
    pub portmap: bool,
    #[serde(default)]
    pub app_port: u64,
}

/// A protobuf enum in protojson: its number, or its name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EnumValue {
    Number(i64),
    Name(String),
}

impl Default for EnumValue {
    fn default() -> Self {
        EnumValue::Number(0)
    }
}

impl EnumValue {
    /// The number, given the names of the enum's values (`names[i]` is value i's name).
    fn number(&self, names: &[(i64, &str)]) -> Option<i64> {
        match self {
            EnumValue::Number(n) => Some(*n),
            EnumValue::Name(s) => names.iter().find(|(_, n)| n.eq_ignore_ascii_case(s)).map(|(v, _)| *v),
        }
    }
}

impl std::fmt::Display for EnumValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnumValue::Number(n) => write!(f, "{n}"),
            EnumValue::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// `ZNetworkInstType` (netinst.proto).
const INST_TYPES: &[(i64, &str)] = &[(1, "ZnetInstSwitch"), (2, "ZnetInstLocal"), (3, "ZnetInstCloud")];
/// `AddressType` (netcmn.proto).
const IP_TYPES: &[(i64, &str)] = &[(0, "First"), (1, "IPV4"), (2, "IPV6"), (3, "CryptoIPV4"), (4, "CryptoIPV6"), (255, "Last")];
/// `ACEDirection` (fw.proto).
const ACE_DIRS: &[(i64, &str)] = &[(0, "BOTH"), (1, "INGRESS"), (2, "EGRESS")];

// ---- The bindings file: what the EdgeDevConfig does not carry.

/// `--bindings FILE.toml`: the app runtimes, VPN parameters, uplink DNS and agent settings
/// that an EdgeDevConfig leaves to the device.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bindings {
    /// Copied as the config's `[agent]` table.
    #[serde(default)]
    pub agent: Option<toml::Table>,
    /// Interface name -> its upstream DNS servers.
    #[serde(default)]
    pub uplink: BTreeMap<String, UplinkBinding>,
    /// NI displayname -> what the NI needs beyond EVE's fields.
    #[serde(default)]
    pub network: BTreeMap<String, NetworkBinding>,
    /// App displayname -> its runtime.
    #[serde(default)]
    pub app: BTreeMap<String, AppBinding>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkBinding {
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkBinding {
    /// A switch NI's subnet and gateway when the port's `networks[]` entry lacks them (a
    /// DHCP client port gives neither).
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// A VPN NI's tunnel: the `[network.vpn]` table as in the TOML config.
    pub vpn: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBinding {
    /// The app's netns (default: its displayname), unless every interface is a tap.
    pub netns: Option<String>,
    pub user_data: Option<String>,
    /// Per interface, in order: a VM's tap, and addresses EVE leaves unset.
    #[serde(default)]
    pub interface: Vec<InterfaceBinding>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceBinding {
    pub tap: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub dhcp: Option<bool>,
}

// ---- Stable numbering per UUID.

/// NI indexes and app numbers by UUID, kept across versions and restarts.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EveIds {
    pub networks: BTreeMap<String, u32>,
    pub apps: BTreeMap<String, u32>,
}

impl EveIds {
    pub fn path(state_dir: &Path) -> PathBuf {
        crate::state::StateDir::eve_ids(state_dir)
    }

    /// The ids on record (none yet: empty).
    pub fn read(state_dir: &Path) -> Result<EveIds> {
        let path = EveIds::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EveIds::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        // Written aside and renamed: a crash leaves the old file or the new, never half.
        let path = EveIds::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The id of `uuid` in `table`: the one on record, else the lowest free in `range`.
    fn assign(table: &mut BTreeMap<String, u32>, uuid: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
        if let Some(id) = table.get(uuid) {
            return Some(*id);
        }
        let used: BTreeSet<u32> = table.values().copied().collect();
        let id = range.into_iter().find(|i| !used.contains(i))?;
        table.insert(uuid.to_string(), id);
        Some(id)
    }
}

// ---- The TOML config we produce (typed, serialized once).

#[derive(Debug, Serialize)]
pub struct TomlConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<toml::Table>,
    pub uplink: Vec<TomlUplink>,
    pub network: Vec<TomlNetwork>,
    pub app: Vec<TomlApp>,
}

#[derive(Debug, Serialize)]
pub struct TomlUplink {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
pub struct TomlNetwork {
    pub name: String,
    pub kind: &'static str,
    pub index: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<[Ipv4Addr; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpn: Option<toml::Table>,
}

#[derive(Debug, Serialize)]
pub struct TomlApp {
    pub name: String,
    pub num: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    pub interface: Vec<TomlInterface>,
}

#[derive(Debug, Serialize)]
pub struct TomlInterface {
    pub network: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    pub acl: Vec<TomlAce>,
}

#[derive(Debug, Serialize)]
pub struct TomlAce {
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: toml::Table,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<toml::Value>,
}

// ---- Conversion.

/// Every error found, each naming its JSON path (or the bindings key).
#[derive(Debug, Default)]
pub struct EveErrors(pub Vec<String>);

impl std::fmt::Display for EveErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error(s) in the EdgeDevConfig:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EveErrors {}

/// What a conversion gives: the config, the ids it used, the config's version.
pub struct Converted {
    pub config: TomlConfig,
    pub ids: EveIds,
    /// `id.version` of the EdgeDevConfig ("" when it has none).
    pub version: String,
}

impl Converted {
    /// The TOML text of the config, with a header naming where it came from.
    pub fn to_toml(&self, source: &Path) -> Result<String> {
        let body = toml::to_string_pretty(&self.config).context("writing the converted config as TOML")?;
        Ok(format!("# Converted from the EdgeDevConfig {} (version {:?}) by netns-agent convert.\n{body}", source.display(), self.version))
    }
}

/// Reads the EdgeDevConfig at `path` (and the bindings), converts it with the ids on
/// record in `ids`.
pub fn load(path: &Path, bindings: Option<&Path>, ids: EveIds) -> Result<Converted> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the EdgeDevConfig {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let config: EdgeDevConfig =
        serde_path_to_error::deserialize(de).map_err(|e| anyhow::anyhow!("{}: at {}: {}", path.display(), e.path(), e.inner()))?;
    let bindings = match bindings {
        Some(b) => {
            let text = std::fs::read_to_string(b).with_context(|| format!("reading the bindings {}", b.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", b.display()))?
        }
        None => Bindings::default(),
    };
    Ok(convert(&config, &bindings, ids)?)
}

/// `netns-agent convert`: the TOML config an EdgeDevConfig (with its bindings) amounts
/// to, refused as `run --eve-config` would refuse it (but the apps' namespaces need not
/// exist here).
pub fn convert_to_toml(eve_config: &Path, bindings: Option<&Path>) -> Result<String> {
    let converted = load(eve_config, bindings, EveIds::read(&state_dir(bindings)?)?)?;
    let text = converted.to_toml(eve_config)?;
    crate::config::parse(&format!("{} (as converted)", eve_config.display()), &text, &crate::config::AnyNetns)?;
    Ok(text)
}

/// Where the agent keeps its state for these bindings (their `[agent] state_dir`).
pub fn state_dir(bindings: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = bindings else { return Ok(crate::config::DEFAULT_STATE_DIR.into()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the bindings {}", path.display()))?;
    let value: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(value
        .get("agent")
        .and_then(|a| a.get("state_dir"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::config::DEFAULT_STATE_DIR.into()))
}

/// Converts `cfg` with `bindings`; ids of new UUIDs are allocated into `ids`.
pub fn convert(cfg: &EdgeDevConfig, bindings: &Bindings, mut ids: EveIds) -> Result<Converted, EveErrors> {
    let mut errors = Vec::new();
    // Ids of UUIDs no longer in the config are free again (a deactivated one keeps its).
    let (ni_uuids, app_uuids): (BTreeSet<&str>, BTreeSet<&str>) = (
        cfg.network_instances.iter().map(|n| n.uuidandversion.uuid.as_str()).collect(),
        cfg.apps.iter().map(|a| a.uuidandversion.uuid.as_str()).collect(),
    );
    ids.networks.retain(|u, _| ni_uuids.contains(u.as_str()));
    ids.apps.retain(|u, _| app_uuids.contains(u.as_str()));
    // Uplinks in systemAdapterList order (their position is their routing table's).
    let mut uplinks: BTreeMap<(usize, String), TomlUplink> = BTreeMap::new();
    let mut networks = Vec::new();
    // NI uuid -> its name, for the apps' interfaces.
    let mut ni_names: BTreeMap<&str, String> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (i, ni) in cfg.network_instances.iter().enumerate() {
        let at = format!("networkInstances[{i}]");
        if !ni.activate {
            // Numbered all the same: reactivated, it is the same NI.
            EveIds::assign(&mut ids.networks, &ni.uuidandversion.uuid, 1..=63);
            continue;
        }
        if !names.insert(ni.displayname.as_str()) {
            errors.push(format!("{at}.displayname {:?}: a second network instance of this name", ni.displayname));
        }
        match convert_network(cfg, bindings, &mut ids, ni, &at) {
            Ok((network, uplink)) => {
                if ni_names.insert(&ni.uuidandversion.uuid, network.name.clone()).is_some() {
                    errors.push(format!("{at}.uuidandversion.uuid {:?}: a second network instance with this uuid", ni.uuidandversion.uuid));
                }
                if let Some(u) = uplink {
                    let label = ni.port.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
                    let position = cfg.system_adapter_list.iter().position(|a| a.name == label).unwrap_or(usize::MAX);
                    let dns = bindings.uplink.get(&u).map(|b| b.dns.clone()).unwrap_or_default();
                    uplinks.entry((position, u.clone())).or_insert(TomlUplink { name: u, dns });
                }
                networks.push(network);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    let inactive: BTreeSet<&str> = cfg.network_instances.iter().filter(|n| !n.activate).map(|n| n.uuidandversion.uuid.as_str()).collect();
    let mut apps = Vec::new();
    let (mut app_names, mut app_seen) = (BTreeSet::new(), BTreeSet::new());
    for (i, app) in cfg.apps.iter().enumerate() {
        let at = format!("apps[{i}]");
        if !app_seen.insert(app.uuidandversion.uuid.as_str()) {
            errors.push(format!("{at}.uuidandversion.uuid {:?}: a second app with this uuid", app.uuidandversion.uuid));
        }
        if !app.activate {
            EveIds::assign(&mut ids.apps, &app.uuidandversion.uuid, 1..=255);
            continue;
        }
        if !app_names.insert(app.displayname.as_str()) {
            errors.push(format!("{at}.displayname {:?}: a second app of this name", app.displayname));
        }
        match convert_app(bindings, &mut ids, app, &ni_names, &inactive, &at) {
            Ok(a) => apps.push(a),
            Err(mut e) => errors.append(&mut e),
        }
    }
    // Bindings may be ahead of the config (an app's runtime before the version that adds
    // it): said, not refused.
    for name in bindings.network.keys().filter(|n| !cfg.network_instances.iter().any(|x| x.activate && &x.displayname == *n)) {
        tracing::warn!("bindings: network.{name} names no active network instance of this config");
    }
    for name in bindings.app.keys().filter(|n| !cfg.apps.iter().any(|x| x.activate && &x.displayname == *n)) {
        tracing::warn!("bindings: app.{name} names no active app of this config");
    }
    if !errors.is_empty() {
        return Err(EveErrors(errors));
    }
    for name in bindings.uplink.keys().filter(|u| !uplinks.keys().any(|(_, n)| n == *u)) {
        tracing::warn!("bindings: uplink.{name} is no port of this config's network instances");
    }
    let version = cfg.id.as_ref().map(|v| v.version.clone()).unwrap_or_default();
    let config = TomlConfig { agent: bindings.agent.clone(), uplink: uplinks.into_values().collect(), network: networks, app: apps };
    Ok(Converted { config, ids, version })
}

/// A valid NI/app name (it names a netns and its interfaces' prefix).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_addr(errors: &mut Vec<String>, at: &str, s: &str) -> Option<Ipv4Addr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(format!("{at} {s:?}: not an IPv4 address"));
            None
        }
    }
}

/// The interface a port label names: `systemAdapterList[].name` -> `deviceIoList[]` of that
/// logical label -> its `phyaddrs.Ifname`.
fn resolve_port(cfg: &EdgeDevConfig, label: &str) -> Option<String> {
    cfg.system_adapter_list.iter().find(|a| a.name == label)?;
    let io = cfg.device_io_list.iter().find(|d| d.logicallabel == label)?;
    io.phyaddrs.get("Ifname").or_else(|| io.phyaddrs.get("ifname")).cloned()
}

/// The port's `networks[]` entry (through its system adapter).
fn port_network<'a>(cfg: &'a EdgeDevConfig, label: &str) -> Option<(usize, &'a NetworkConfig)> {
    let adapter = cfg.system_adapter_list.iter().find(|a| a.name == label)?;
    cfg.networks.iter().enumerate().find(|(_, n)| n.id == adapter.network_uuid)
}

fn convert_network(
    cfg: &EdgeDevConfig,
    bindings: &Bindings,
    ids: &mut EveIds,
    ni: &NetworkInstance,
    at: &str,
) -> Result<(TomlNetwork, Option<String>), Vec<String>> {
    let mut errors = Vec::new();
    let name = ni.displayname.clone();
    if !valid_name(&name) {
        errors.push(format!("{at}.displayname {name:?}: an NI name must be 1-15 letters, digits, '-' or '_' (it names the NI's netns)"));
    }
    let kind = match ni.inst_type.number(INST_TYPES) {
        Some(1) => "switch",
        Some(2) => "local",
        Some(3) => "vpn",
        _ => {
            errors.push(format!("{at}.instType {}: unsupported (1 switch, 2 local, 3 VPN)", ni.inst_type));
            "local"
        }
    };
    match ni.ip_type.number(IP_TYPES) {
        Some(0) | Some(1) => {}
        _ => errors.push(format!("{at}.ipType {}: only IPv4 (1) is supported", ni.ip_type)),
    }
    refuse_unmapped_network_fields(ni, at, &mut errors);
    let uuid = &ni.uuidandversion.uuid;
    if uuid.is_empty() {
        errors.push(format!("{at}.uuidandversion.uuid: missing"));
    }
    let uplink = match ni.port.as_ref().map(|p| p.name.as_str()).filter(|n| !n.is_empty()) {
        None => None,
        Some(label) => {
            match resolve_port(cfg, label) {
                Some(ifname) => Some(ifname),
                None => {
                    errors.push(format!("{at}.port.name {label:?}: no systemAdapterList entry with a deviceIoList interface (phyaddrs.Ifname) of that label"));
                    None
                }
            }
        }
    };
    let ip = ni.ip.as_ref().filter(|ip| !ip.subnet.is_empty() || !ip.gateway.is_empty());
    let binding = bindings.network.get(&name);
    let (subnet, gateway, dhcp_range) = network_addressing(cfg, ni, kind, ip, binding, at, &mut errors);
    if binding.is_some_and(|b| b.subnet.is_some() || b.gateway.is_some()) && (kind != "switch" || ip.is_some()) {
        errors.push(format!("bindings: network.{name}.subnet and .gateway are for a switch NI whose {at}.ip is empty"));
    }
    let vpn = match (kind, binding.and_then(|b| b.vpn.clone())) {
        ("vpn", Some(v)) => Some(v),
        ("vpn", None) => {
            errors.push(format!(
                "{at}: a VPN network instance's tunnel (cfg.oconfig is opaque) must be given in the bindings as network.{name}.vpn"
            ));
            None
        }
        (_, Some(_)) => {
            errors.push(format!("bindings: network.{name}.vpn given for a network instance that is not a VPN (instType {})", ni.inst_type));
            None
        }
        (_, None) => None,
    };
    let index = EveIds::assign(&mut ids.networks, uuid, 1..=63);
    if index.is_none() {
        errors.push(format!("{at}: more than 63 network instances"));
    }
    match (errors.is_empty(), subnet, gateway, index) {
        (true, Some(subnet), Some(gateway), Some(index)) => {
            Ok((TomlNetwork { name, kind, index, subnet, gateway, uplink: uplink.clone(), dhcp_range, vpn }, uplink))
        }
        _ => Err(errors),
    }
}

/// Network instance fields we do not map: refused when set, with their path.
fn refuse_unmapped_network_fields(ni: &NetworkInstance, at: &str, errors: &mut Vec<String>) {
    let unsupported = [
        ("dns", !ni.dns.is_empty(), "static DNS entries"),
        ("staticRoutes", !ni.static_routes.is_empty(), "static routes"),
        ("mtu", ni.mtu != 0, "an MTU other than the default"),
        ("disableFlowlog", ni.disable_flowlog, "turning the flow log off per NI"),
        ("vlanAccessPorts", !ni.vlan_access_ports.is_empty(), "VLAN access ports"),
    ];
    for (field, set, what) in unsupported {
        if set {
            errors.push(format!("{at}.{field}: {what} are not supported"));
        }
    }
}

/// A network instance's subnet, gateway and DHCP range: from its `ip`, or for a switch
/// NI without one from its port's `networks[]` entry or the bindings.
fn network_addressing(
    cfg: &EdgeDevConfig,
    ni: &NetworkInstance,
    kind: &str,
    ip: Option<&IpSpec>,
    binding: Option<&NetworkBinding>,
    at: &str,
    errors: &mut Vec<String>,
) -> (Option<Ipv4Net>, Option<Ipv4Addr>, Option<[Ipv4Addr; 2]>) {
    let name = &ni.displayname;
    match ip {
        Some(ip) => {
            let subnet = match ip.subnet.parse::<Ipv4Net>() {
                Ok(s) => Some(s),
                Err(_) => {
                    errors.push(format!("{at}.ip.subnet {:?}: not an IPv4 prefix like 10.1.0.0/24", ip.subnet));
                    None
                }
            };
            let gateway = parse_addr(errors, &format!("{at}.ip.gateway"), &ip.gateway);
            // The NI's DNS server is its gateway (our proxy): the only one we announce.
            for (d, dns) in ip.dns.iter().enumerate() {
                if gateway.is_some_and(|g| dns.parse() != Ok(g)) {
                    errors.push(format!(
                        "{at}.ip.dns[{d}] {dns:?}: apps get the NI's gateway as DNS server; other servers are not supported"
                    ));
                }
            }
            let range = ip.dhcp_range.as_ref().and_then(|r| {
                Some([
                    parse_addr(errors, &format!("{at}.ip.dhcpRange.start"), &r.start)?,
                    parse_addr(errors, &format!("{at}.ip.dhcpRange.end"), &r.end)?,
                ])
            });
            (subnet, gateway, range)
        }
        None if kind == "switch" => {
            // The port's network gives the gateway; its prefix is not in networks[].
            let label = ni.port.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
            let port_ip = port_network(cfg, label).and_then(|(k, n)| Some((k, n.ip.as_ref()?)));
            let from_port = port_ip.and_then(|(k, ip)| {
                let (field, g) = if ip.gateway.is_empty() { ("gw", &ip.gw) } else { ("gateway", &ip.gateway) };
                if g.is_empty() {
                    return None;
                }
                parse_addr(errors, &format!("networks[{k}].ip.{field}"), g)
            });
            let gateway = from_port.or(binding.and_then(|b| b.gateway));
            let subnet = port_ip.and_then(|(_, ip)| ip.subnet.parse::<Ipv4Net>().ok()).or(binding.and_then(|b| b.subnet));
            if gateway.is_none() {
                errors.push(format!("{at}.ip is empty and the port {label:?} has no networks[] entry with a gateway: give it in the bindings (network.{name}.gateway)"));
            }
            if subnet.is_none() {
                errors.push(format!("{at}.ip is empty and the port {label:?} has no networks[] entry with a subnet: give the switch NI's prefix in the bindings (network.{name}.subnet)"));
            }
            (subnet, gateway, None)
        }
        None => {
            errors.push(format!("{at}.ip: a local or VPN network instance needs subnet and gateway"));
            (None, None, None)
        }
    }
}

fn convert_app(
    bindings: &Bindings,
    ids: &mut EveIds,
    app: &AppInstance,
    ni_names: &BTreeMap<&str, String>,
    inactive: &BTreeSet<&str>,
    at: &str,
) -> Result<TomlApp, Vec<String>> {
    let mut errors = Vec::new();
    let name = app.displayname.clone();
    if !valid_name(&name) {
        errors.push(format!("{at}.displayname {name:?}: an app name must be 1-15 letters, digits, '-' or '_'"));
    }
    if app.uuidandversion.uuid.is_empty() {
        errors.push(format!("{at}.uuidandversion.uuid: missing"));
    }
    let binding = bindings.app.get(&name);
    if app.cipher_data.as_ref().is_some_and(|c| !c.is_null() && c != &serde_json::json!({})) {
        errors.push(format!("{at}.cipherData: encrypted user data is not supported (give userData)"));
    }
    let user_data = match app.user_data.as_str() {
        "" => binding.and_then(|b| b.user_data.clone()),
        encoded => {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map(String::from_utf8) {
                Ok(Ok(text)) => Some(text),
                _ => {
                    errors.push(format!("{at}.userData: not base64 of UTF-8 text"));
                    None
                }
            }
        }
    };
    let mut interfaces = Vec::new();
    for (k, iface) in app.interfaces.iter().enumerate() {
        let at = format!("{at}.interfaces[{k}]");
        if inactive.contains(iface.network_id.as_str()) {
            errors.push(format!("{at}.networkId {:?}: that network instance is not activated", iface.network_id));
            continue;
        }
        let Some(network) = ni_names.get(iface.network_id.as_str()) else {
            errors.push(format!("{at}.networkId {:?}: no network instance has this uuid", iface.network_id));
            continue;
        };
        let bound = binding.and_then(|b| b.interface.get(k));
        interfaces.push(convert_interface(iface, network, bound, (&name, k), &at, &mut errors));
    }
    if let Some(b) = binding.filter(|b| b.interface.len() > app.interfaces.len()) {
        errors.push(format!("bindings: app.{name} binds {} interfaces; {at} has {}", b.interface.len(), app.interfaces.len()));
    }
    let all_taps = !interfaces.is_empty() && interfaces.iter().all(|i| i.tap.is_some());
    let netns = binding.and_then(|b| b.netns.clone()).or_else(|| (!all_taps).then(|| name.clone()));
    let num = EveIds::assign(&mut ids.apps, &app.uuidandversion.uuid, 1..=255);
    if num.is_none() {
        errors.push(format!("{at}: more than 255 apps"));
    }
    match (errors.is_empty(), num) {
        (true, Some(num)) => Ok(TomlApp { name, num, netns, user_data, interface: interfaces }),
        _ => Err(errors),
    }
}

/// Interface `k` of app `name` (on `network`, with its bindings `bound`) as a TOML interface.
fn convert_interface(
    iface: &NetworkAdapter,
    network: &str,
    bound: Option<&InterfaceBinding>,
    (name, k): (&str, usize),
    at: &str,
    errors: &mut Vec<String>,
) -> TomlInterface {
    if iface.access_vlan_id != 0 {
        errors.push(format!("{at}.accessVlanId {}: VLANs are not supported", iface.access_vlan_id));
    }
    if iface.allow_to_discover {
        errors.push(format!("{at}.allowToDiscover: discovering the other apps is not supported"));
    }
    let ip = match (iface.addr.as_str(), bound.and_then(|b| b.ip)) {
        ("", b) => b,
        (a, None) => parse_addr(errors, &format!("{at}.addr"), a),
        (a, Some(b)) => {
            errors.push(format!("{at}.addr {a:?}: the bindings give app.{name}.interface[{k}].ip {b} too"));
            None
        }
    };
    let mac = match iface.mac_address.as_str() {
        "" => bound.and_then(|b| b.mac.clone()),
        m if crate::config::parse_mac(m).is_none() => {
            errors.push(format!("{at}.macAddress {m:?}: use six hex bytes like 02:16:3e:00:00:01"));
            None
        }
        m => Some(m.to_string()),
    };
    let acl = convert_acl(&iface.acls, at, errors);
    TomlInterface {
        network: network.to_string(),
        ip,
        mac,
        dhcp: bound.and_then(|b| b.dhcp).unwrap_or(false),
        tap: bound.and_then(|b| b.tap.clone()),
        acl,
    }
}

/// An interface's ACEs in order; ids must differ on one interface.
fn convert_acl(aces: &[Ace], at: &str, errors: &mut Vec<String>) -> Vec<TomlAce> {
    let mut acl = Vec::new();
    let mut seen = BTreeSet::new();
    for (j, ace) in aces.iter().enumerate() {
        let at = format!("{at}.acls[{j}]");
        if !seen.insert(ace.id) {
            errors.push(format!("{at}.id {}: a second ACE with this id on the interface", ace.id));
        }
        match convert_ace(ace, &at) {
            Ok(a) => acl.push(a),
            Err(mut e) => errors.append(&mut e),
        }
    }
    acl
}

/// One match of an ACE as the TOML ACL's `match` value (None: refused, the error pushed).
fn convert_match(mat: &AceMatch, at: &str, errors: &mut Vec<String>) -> Option<toml::Value> {
    let value = mat.value.trim();
    let port = |errors: &mut Vec<String>| match value.parse::<u16>() {
        Ok(p) if p > 0 => Some(toml::Value::Integer(p as i64)),
        _ => {
            errors.push(format!("{at}: {} {value:?} is not a port 1-65535", mat.kind));
            None
        }
    };
    match mat.kind.as_str() {
        "ip" => match value.parse::<Ipv4Net>().or_else(|_| value.parse::<Ipv4Addr>().map(Ipv4Net::from)) {
            Ok(net) => Some(toml::Value::String(net.to_string())),
            Err(_) => {
                errors.push(format!("{at}: ip {value:?} is not an IPv4 address or prefix"));
                None
            }
        },
        "host" if value.is_empty() => {
            errors.push(format!("{at}: a host match needs a domain"));
            None
        }
        "host" => Some(toml::Value::String(value.to_string())),
        "eidset" => Some(toml::Value::Boolean(true)),
        "protocol" => match value.to_ascii_lowercase().as_str() {
            p @ ("tcp" | "udp" | "icmp") => Some(toml::Value::String(p.to_string())),
            n => match n.parse::<u8>() {
                Ok(n) => Some(toml::Value::Integer(n as i64)),
                Err(_) => {
                    errors.push(format!("{at}: protocol {value:?}: use tcp, udp, icmp or a number 0-255"));
                    None
                }
            },
        },
        "fport" | "lport" => port(errors),
        other => {
            errors.push(format!("{at}: match type {other:?} is not supported (ip, host, eidset, protocol, fport, lport)"));
            None
        }
    }
}

/// An ACE's actions as the TOML ACL's `action` (None: accept, or refused with the error
/// pushed).
fn convert_action(ace: &Ace, at: &str, errors: &mut Vec<String>) -> Option<toml::Value> {
    match ace.actions.as_slice() {
        [] => None,
        [a] if a.drop && !a.limit && !a.portmap => Some(toml::Value::String("drop".into())),
        [a] if a.portmap && !a.drop && !a.limit => match u16::try_from(a.app_port) {
            Ok(p) if p > 0 => Some(toml::Value::Table(toml::Table::from_iter([("portmap".to_string(), toml::Value::Integer(p as i64))]))),
            _ => {
                errors.push(format!("{at}.actions[0].appPort {}: a portmap needs the app's port 1-65535", a.app_port));
                None
            }
        },
        [a] if a.limit && !a.drop && !a.portmap => {
            use netns_ebpf_common::limit::{MAX_BURST, MAX_RATE};
            if !["s", "m", "h"].contains(&a.limitunit.as_str()) {
                errors.push(format!("{at}.actions[0].limitunit {:?}: use \"s\", \"m\" or \"h\"", a.limitunit));
            }
            if !(1..=MAX_RATE).contains(&a.limitrate) {
                errors.push(format!("{at}.actions[0].limitrate {}: must be 1-{MAX_RATE}", a.limitrate));
            }
            if !(1..=MAX_BURST).contains(&a.limitburst) {
                errors.push(format!("{at}.actions[0].limitburst {}: must be 1-{MAX_BURST}", a.limitburst));
            }
            let limit = toml::Table::from_iter([
                ("rate".to_string(), toml::Value::Integer(a.limitrate as i64)),
                ("unit".to_string(), toml::Value::String(a.limitunit.clone())),
                ("burst".to_string(), toml::Value::Integer(a.limitburst as i64)),
            ]);
            Some(toml::Value::Table(toml::Table::from_iter([("limit".to_string(), toml::Value::Table(limit))])))
        }
        [a] if !a.drop && !a.limit && !a.portmap => None,
        _ => {
            errors.push(format!("{at}.actions: one action per ACE (drop, portmap or limit), or none to accept"));
            None
        }
    }
}

fn convert_ace(ace: &Ace, at: &str) -> Result<TomlAce, Vec<String>> {
    let mut errors = Vec::new();
    let id = match u32::try_from(ace.id) {
        Ok(id) if (1..=0x3f_fffe).contains(&id) => id,
        _ => {
            errors.push(format!("{at}.id {}: out of range 1-4194302", ace.id));
            0
        }
    };
    if ace.dir.number(ACE_DIRS) != Some(0) {
        errors.push(format!("{at}.dir {}: only both directions (0) are supported", ace.dir));
    }
    let mut matches = toml::Table::new();
    for (m, mat) in ace.matches.iter().enumerate() {
        let at = format!("{at}.matches[{m}]");
        let entry = convert_match(mat, &at, &mut errors);
        if let Some(v) = entry {
            if matches.insert(mat.kind.clone(), v).is_some() {
                errors.push(format!("{at}: a second {:?} match in one ACE", mat.kind));
            }
        }
    }
    if ace.actions.iter().any(|a| a.app_port != 0 && !a.portmap) {
        errors.push(format!("{at}.actions: appPort without portmap"));
    }
    let action = convert_action(ace, at, &mut errors);
    if action.as_ref().and_then(|a| a.get("portmap")).is_some() && !matches.contains_key("lport") {
        errors.push(format!("{at}: a portmap action needs an lport match"));
    }
    if errors.is_empty() {
        Ok(TomlAce { id, name: (!ace.name.is_empty()).then(|| ace.name.clone()), matches, action })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> EdgeDevConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ids_stay_with_their_uuid() {
        let mut ids = EveIds::default();
        assert_eq!(EveIds::assign(&mut ids.apps, "a", 1..=255), Some(1));
        assert_eq!(EveIds::assign(&mut ids.apps, "b", 1..=255), Some(2));
        ids.apps.remove("a");
        assert_eq!(EveIds::assign(&mut ids.apps, "c", 1..=255), Some(1), "a freed number is reused");
        assert_eq!(EveIds::assign(&mut ids.apps, "b", 1..=255), Some(2));
    }

    /// Apps keep their numbers when apps[] is reordered; a new app takes a free one.
    #[test]
    fn numbers_follow_uuids_not_positions() {
        let app = |name: &str, uuid: &str| {
            format!(
                r#"{{"uuidandversion": {{"uuid": "{uuid}"}}, "displayname": "{name}", "activate": true, "interfaces": [{{"networkId": "n1"}}]}}"#
            )
        };
        let config = |apps: &[String]| {
            parse(&format!(
                r#"{{"networkInstances": [{{"uuidandversion": {{"uuid": "n1"}}, "displayname": "ni1", "instType": 2, "activate": true, "ipType": 1,
                     "ip": {{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}}}}], "apps": [{}]}}"#,
                apps.join(",")
            ))
        };
        let nums = |c: &Converted| c.config.app.iter().map(|a| (a.name.clone(), a.num)).collect::<Vec<_>>();
        let first = convert(&config(&[app("a", "u1"), app("b", "u2")]), &Bindings::default(), EveIds::default()).unwrap();
        assert_eq!(nums(&first), [("a".to_string(), 1), ("b".to_string(), 2)]);
        let second = convert(&config(&[app("c", "u3"), app("b", "u2"), app("a", "u1")]), &Bindings::default(), first.ids).unwrap();
        assert_eq!(nums(&second), [("c".to_string(), 3), ("b".to_string(), 2), ("a".to_string(), 1)]);
        let third = convert(&config(&[app("c", "u3"), app("d", "u4")]), &Bindings::default(), second.ids).unwrap();
        assert_eq!(nums(&third), [("c".to_string(), 3), ("d".to_string(), 1)], "a's number is free once a is gone");
    }

    #[test]
    fn enums_as_numbers_or_names() {
        let cfg = parse(r#"{"networkInstances": [{"instType": "ZnetInstSwitch"}, {"instType": 2}]}"#);
        assert_eq!(cfg.network_instances[0].inst_type.number(INST_TYPES), Some(1));
        assert_eq!(cfg.network_instances[1].inst_type.number(INST_TYPES), Some(2));
    }
}
