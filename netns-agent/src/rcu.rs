//! Expedited RCU grace periods while the agent reconfigures (`[agent] expedite_rcu`).
//! Deleting a device and moving one between namespaces wait for RCU grace periods, one
//! after another under rtnl (attaching a TCX program did too, which made them most of a
//! 60-NI apply; the programs are tc filters now, and this gains little). While /sys/kernel/rcu_expedited is 1,
//! `synchronize_rcu()` takes an expedited grace period instead (an IPI to every CPU
//! rather than waiting for each to pass a quiescent state). The agent sets it for an
//! apply or a `down` and puts back what it found; off by default, as it is the kernel's
//! setting, not the agent's own.

use tracing::{debug, warn};

const KNOB: &str = "/sys/kernel/rcu_expedited";

/// Held while grace periods are expedited; dropping it puts the setting back.
pub struct Expedited {
    restore: bool,
}

impl Expedited {
    /// Expedites grace periods when `on` and the kernel does not already.
    pub fn begin(on: bool) -> Expedited {
        let restore = on
            && std::fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "0")
            && match std::fs::write(KNOB, "1") {
                Ok(()) => true,
                Err(e) => {
                    warn!("expedite_rcu: writing {KNOB}: {e}");
                    false
                }
            };
        if restore {
            debug!("RCU grace periods expedited");
        }
        Expedited { restore }
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if self.restore {
            if let Err(e) = std::fs::write(KNOB, "0") {
                warn!("expedite_rcu: putting {KNOB} back to 0: {e}");
            }
        }
    }
}
