//! What the agent applied, recorded in `<state_dir>/state.json` so that commands that run
//! without the config (`flows`) can name zones and apps.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub pin_dir: String,
    /// zone -> NI name.
    pub zones: BTreeMap<u32, String>,
    /// app number -> app name.
    pub apps: BTreeMap<u32, String>,
}

impl AppliedState {
    pub fn from_plan(plan: &Plan) -> AppliedState {
        AppliedState {
            pin_dir: plan.pin_dir.display().to_string(),
            zones: plan.nis.iter().map(|n| (n.zone(), n.name.clone())).collect(),
            apps: plan.nis.iter().flat_map(|n| n.ports.iter()).map(|p| (p.app_num, p.app.clone())).collect(),
        }
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join("state.json");
        let tmp = state_dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The recorded state, or an empty one when nothing was recorded.
    pub fn read(state_dir: &Path) -> AppliedState {
        std::fs::read(state_dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn remove(state_dir: &Path) -> Result<()> {
        // Our files: the record, the DNS log, dnsmasq's configs and lease files, the VPN
        // instances' directories.
        for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "state.json" || name == "dns.log" || name.starts_with("dnsmasq-") {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            } else if name.starts_with("vpn-") && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        // Only our own file lived there; leave the directory if someone else uses it.
        std::fs::remove_dir(state_dir).ok();
        Ok(())
    }
}
