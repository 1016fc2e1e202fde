//! What the supervisor records of a tunnel (`<instance>/status.json`), what charon's log
//! lines mean, and the tunnel as `status` and the metrics show it (asked over vici).

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{instance_dir, vici, vici_path, CONN};
use crate::config::VpnBackend;

/// What the supervisor knows beyond the SAs: kept in `<dir>/status.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Supervision {
    pub ni: String,
    pub remote: String,
    pub backend: VpnBackend,
    /// The running charon, if any.
    pub pid: Option<u32>,
    /// How often charon had to be started again after exiting.
    pub restarts: u32,
    /// The latest problem, in words, until the tunnel comes up.
    pub last_error: Option<String>,
}

impl Supervision {
    pub fn read(dir: &Path) -> Option<Supervision> {
        serde_json::from_slice(&std::fs::read(dir.join("status.json")).ok()?).ok()
    }

    pub(super) fn write(&self, dir: &Path) {
        let tmp = dir.join("status.json.tmp");
        let res = std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, dir.join("status.json")));
        if let Err(e) = res {
            warn!("{}: recording VPN status in {}: {e}", self.ni, dir.display());
        }
    }
}

/// What a line of charon's log means for the tunnel: Ok(event) for progress, Err(problem)
/// for something a user has to act on (or wait for).
pub fn classify_log_line(line: &str, remote: &str) -> Option<Result<&'static str, String>> {
    if line.contains("AUTHENTICATION_FAILED") || line.contains("authentication of") && line.contains("failed") {
        return Some(Err("the peer rejected the authentication (wrong PSK or identity?)".into()));
    }
    if line.contains("NO_PROPOSAL_CHOSEN") {
        return Some(Err("the peer accepted none of our proposals".into()));
    }
    if line.contains("TS_UNACCEPTABLE") {
        return Some(Err("the peer rejected our traffic selectors".into()));
    }
    if line.contains("unable to install") && line.contains("SA") {
        return Some(Err("the kernel refused the IPsec SA (no ESP in this kernel? backend = \"libipsec\" works without it)".into()));
    }
    if line.contains("giving up after") {
        return Some(Err(format!("no answer from {remote}: gave up after all retransmits, retrying")));
    }
    if line.contains("retransmit") && line.contains("of request") {
        return Some(Err(format!("no answer from {remote} yet (retransmitting)")));
    }
    if line.contains("CHILD_SA") && line.contains("established") {
        return Some(Ok("tunnel established"));
    }
    None
}

/// Where a VPN NI's tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// A CHILD_SA is installed.
    Up,
    /// An IKE_SA exists, no CHILD_SA is installed (yet).
    Connecting,
    /// charon runs and has no SA.
    Down,
    /// No charon answers.
    Stopped,
}

impl TunnelState {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Up => "up",
            TunnelState::Connecting => "connecting",
            TunnelState::Down => "down",
            TunnelState::Stopped => "stopped",
        }
    }
}

/// A VPN NI's tunnel as `netns-agent status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub supervision: Option<Supervision>,
    pub ike_state: Option<String>,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub child_state: Option<String>,
    pub encap: Option<String>,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

/// Asks the NI's charon (over its vici socket) for its SAs; works without the agent.
pub async fn tunnel_status(state_dir: &Path, ni: &str) -> TunnelStatus {
    let dir = instance_dir(state_dir, ni);
    let supervision = Supervision::read(&dir);
    let mut st = TunnelStatus {
        state: TunnelState::Stopped,
        supervision,
        ike_state: None,
        local: None,
        remote: None,
        child_state: None,
        encap: None,
        bytes_in: 0,
        packets_in: 0,
        bytes_out: 0,
        packets_out: 0,
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
    };
    let Ok(mut client) = rsvici::unix::connect(vici_path(&dir)).await else {
        return st;
    };
    let sas = match tokio::time::timeout(Duration::from_secs(5), vici::list_sas(&mut client)).await {
        Ok(Ok(sas)) => sas,
        _ => return st,
    };
    st.state = TunnelState::Down;
    // The established IKE_SA with an installed child wins over half-open ones.
    let best = sas.iter().max_by_key(|ike| (ike.child_sas.values().any(|c| c.state == "INSTALLED"), ike.state == "ESTABLISHED"));
    if let Some(ike) = best {
        st.state = TunnelState::Connecting;
        st.ike_state = Some(ike.state.clone());
        let endpoint = |id: &Option<String>, host: &Option<String>, port: &Option<String>| {
            Some(format!("{} @ {}[{}]", id.as_deref().unwrap_or("?"), host.as_deref()?, port.as_deref().unwrap_or("?")))
        };
        st.local = endpoint(&ike.local_id, &ike.local_host, &ike.local_port);
        st.remote = endpoint(&ike.remote_id, &ike.remote_host, &ike.remote_port);
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        if let Some(child) = ike.child_sas.values().filter(|c| c.name == CONN).max_by_key(|c| c.state == "INSTALLED") {
            if child.state == "INSTALLED" {
                st.state = TunnelState::Up;
            }
            st.child_state = Some(child.state.clone());
            st.encap = Some(format!(
                "{}{}",
                child.mode.as_deref().unwrap_or("?"),
                if child.encap.as_deref() == Some("yes") { "-in-UDP" } else { "" }
            ));
            st.bytes_in = num(&child.bytes_in);
            st.packets_in = num(&child.packets_in);
            st.bytes_out = num(&child.bytes_out);
            st.packets_out = num(&child.packets_out);
            st.local_ts = child.local_ts.clone();
            st.remote_ts = child.remote_ts.clone();
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_become_status() {
        let r = "192.168.111.1";
        let c = |l| classify_log_line(l, r);
        assert!(matches!(c("[IKE] received AUTHENTICATION_FAILED notify error"), Some(Err(e)) if e.contains("wrong PSK")));
        assert!(matches!(c("[IKE] retransmit 2 of request with message ID 0"), Some(Err(e)) if e.contains("no answer from 192.168.111.1")));
        assert!(matches!(c("[IKE] giving up after 5 retransmits"), Some(Err(e)) if e.contains("gave up")));
        assert!(matches!(c("[IKE] CHILD_SA gw{1} established with SPIs c6984117_i c4f8367b_o"), Some(Ok(_))));
        assert!(c("[NET] sending packet: from 169.254.100.14[500]").is_none());
    }
}
