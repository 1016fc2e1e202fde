//! What the agent applied, recorded in `<state_dir>/state.json`: every NI it made, with
//! the plan it applied there (ports and ACLs included) and how that apply went. The record
//! is written before an NI is touched (as pending) and after (applied or failed), so that
//! an agent killed at any point leaves a record that names everything it may have made:
//! a restart compares the new plan against it, and `down` removes what it names, with or
//! without the config. Commands that run without the config (`flows`) name zones and
//! apps from it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{NiPlan, UplinkPlan};

/// The state directory's layout: every file the agent keeps there.
pub struct StateDir;

impl StateDir {
    pub fn record(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// The control socket of the running agent (`netns-agent apply`).
    pub fn control_socket(dir: &Path) -> PathBuf {
        dir.join("control.sock")
    }

    /// The DNS proxies' request log (JSON lines; `dns.log.1` is its rotated older half).
    pub fn dns_log(dir: &Path) -> PathBuf {
        dir.join("dns.log")
    }

    /// An NI's dnsmasq config (its path also tells a leftover dnsmasq as ours).
    pub fn dnsmasq_conf(dir: &Path, ni: &str) -> PathBuf {
        dir.join(format!("{DNSMASQ_PREFIX}{ni}.conf"))
    }

    /// An NI's DHCP leases (kept across restarts).
    pub fn dnsmasq_leases(dir: &Path, ni: &str) -> PathBuf {
        dir.join(format!("{DNSMASQ_PREFIX}{ni}.leases"))
    }

    /// What every dnsmasq config path of `dir` starts with.
    pub fn dnsmasq_prefix(dir: &Path) -> PathBuf {
        dir.join(DNSMASQ_PREFIX)
    }

    /// A VPN NI's charon instance: status.json, and `run/`, which charon sees as its /run.
    pub fn vpn_instance(dir: &Path, ni: &str) -> PathBuf {
        dir.join(format!("{VPN_PREFIX}{ni}"))
    }

    /// NI indexes and app numbers per EdgeDevConfig UUID. `down` leaves it: the numbers
    /// (and so the apps' MACs and interface names) stay with their UUIDs.
    pub fn eve_ids(dir: &Path) -> PathBuf {
        dir.join("eve-ids.json")
    }

    /// Removes every file and directory of the layout (but `eve-ids.json`) from `dir`, then `dir` if that
    /// leaves it empty (someone else's files stay).
    pub fn remove(dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = ["state.json", "state.json.tmp", "dns.log", "dns.log.1", "control.sock"].contains(&name.as_str());
            if ours || name.starts_with(DNSMASQ_PREFIX) {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            } else if name.starts_with(VPN_PREFIX) && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        std::fs::remove_dir(dir).ok();
        Ok(())
    }
}

const DNSMASQ_PREFIX: &str = "dnsmasq-";
const VPN_PREFIX: &str = "vpn-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Being applied (or the agent died while applying it).
    Pending,
    Applied,
    Failed,
}

/// One NI as applied: its plan (the ports it holds now) and how the last apply of it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NiRecord {
    pub plan: NiPlan,
    pub state: ItemState,
    pub error: Option<String>,
    /// Bridge port -> how its last apply went (absent: applied with the NI).
    #[serde(default)]
    pub port_errors: BTreeMap<String, String>,
}

/// The last apply: when, how long, and what failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Seconds since the epoch when it started.
    pub started_unix: f64,
    pub duration_ms: f64,
    /// What triggered it: "start", "sighup", "apply".
    pub trigger: String,
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub pin_dir: String,
    /// zone -> NI name.
    pub zones: BTreeMap<u32, String>,
    /// app number -> app name.
    pub apps: BTreeMap<u32, String>,
    /// The running agent's pid (0: none running) and the config it follows.
    #[serde(default)]
    pub agent_pid: u32,
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    /// The EdgeDevConfig last applied, if the last apply was of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eve_config: Option<EveConfigRecord>,
    /// How many applies the running agent finished (the tests wait on it).
    #[serde(default)]
    pub applies: u64,
    /// The uplinks whose NAT programs, tables and rules the agent set up.
    #[serde(default)]
    pub uplinks: Vec<UplinkPlan>,
    #[serde(default)]
    pub nat_ports: Option<(u16, u16)>,
    /// `[agent] expedite_rcu` of the last apply: `down` follows it.
    #[serde(default)]
    pub expedite_rcu: bool,
    /// NI name -> what was applied there.
    #[serde(default)]
    pub nis: BTreeMap<String, NiRecord>,
    #[serde(default)]
    pub last_apply: Option<ApplyReport>,
}

/// An applied EdgeDevConfig: its file and its `id.version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EveConfigRecord {
    pub path: PathBuf,
    pub version: String,
}

impl AppliedState {
    /// Refreshes the names `flows` shows from the NIs on record.
    pub fn refresh_names(&mut self) {
        self.zones = self.nis.values().map(|n| (n.plan.zone(), n.plan.name.clone())).collect();
        self.apps = self.nis.values().flat_map(|n| n.plan.ports.iter()).map(|p| (p.app_num, p.app.clone())).collect();
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let path = StateDir::record(state_dir);
        let tmp = state_dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The recorded state, or an empty one when nothing was recorded.
    pub fn read(state_dir: &Path) -> AppliedState {
        Self::try_read(state_dir).ok().flatten().unwrap_or_default()
    }

    /// The recorded state; None when there is none; an error when it cannot be read
    /// (the agent then refuses to guess what it made).
    pub fn try_read(state_dir: &Path) -> Result<Option<AppliedState>> {
        let path = StateDir::record(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).with_context(|| format!("parsing {}", path.display()))
    }
}
