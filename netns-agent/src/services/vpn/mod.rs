//! The IPsec tunnel of a VPN NI: one strongSwan charon inside the NI's netns with its own
//! strongswan.conf, vici socket and private /run (the Debian build hard-codes
//! /var/run/charon.pid, so two charons need two /runs), the tunnel loaded with swanctl,
//! supervised (restarted when it exits, re-initiated when no IKE_SA is left) and read
//! back over vici for `netns-agent status`.

//!
//! `conf`: charon's and swanctl's files from the plan; `charon`: one supervised charon
//! per VPN NI; `vici`: the requests the agent makes over charon's socket; `status`: what
//! the supervisor records and what `status` and the metrics show.

mod charon;
mod conf;
mod status;
mod vici;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use charon::{kill_leftover, Charon};
pub use conf::{strongswan_conf, swanctl_conf};
pub use status::{classify_log_line, tunnel_status, Supervision, TunnelState, TunnelStatus};
pub use vici::{ChildSa, IkeSa};

use crate::state::StateDir;

/// The IKE daemon of Debian's strongswan-charon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// Name of the connection and of its child, as in the seed (`swanctl --initiate --child gw`).
pub const CONN: &str = "gw";
/// How long charon gets to open its vici socket (it is watched meanwhile: an exit ends
/// the wait; a slow start, e.g. on a cold disk, is not an error).
pub(super) const VICI_WAIT: Duration = Duration::from_secs(60);
/// How often the supervisor looks at the SAs.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A tunnel with no IKE_SA at all is initiated again after this long.
pub(super) const REINITIATE_AFTER: Duration = Duration::from_secs(15);

/// `<state_dir>/vpn-<ni>`: status.json, and `run/`, which charon sees as its /run.
pub fn instance_dir(state_dir: &Path, ni: &str) -> PathBuf {
    StateDir::vpn_instance(state_dir, ni)
}

/// charon's /run. Everything charon reads or writes lives there, because the state dir
/// itself may be under the /run it covers (/run/netns-agent by default).
pub(super) fn run_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

/// The vici socket as the agent and swanctl reach it (charon: /run/charon.vici).
pub fn vici_path(dir: &Path) -> PathBuf {
    run_dir(dir).join("charon.vici")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charon_sees_its_instance_run_dir_as_run() {
        assert_eq!(vici_path(Path::new("/run/x/vpn-ni4")), Path::new("/run/x/vpn-ni4/run/charon.vici"));
    }
}
