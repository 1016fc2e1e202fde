//! Each NI's share of the shared conntrack and NAT maps (see `ZoneUse`), and each app
//! port's part of its NI's conntrack share (see `PortUse`): a flood from one NI's apps,
//! or from outside through its port maps, fills its own share and is refused there
//! instead of evicting other NIs' flows; a flood from one app (or at its port maps)
//! fills that app's part, and its neighbours still open flows.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use netns_ebpf_common::{IfaceKey, Stat};

use crate::maps::{PORT_USE, ZONE_USE};

/// Takes `n` conntrack (or, `nat`, NAT) entries from `zone`'s share; false: the share is
/// used up. (The check and the add are two steps: a burst on several CPUs may overshoot
/// by a few entries.)
#[inline(always)]
pub fn take(zone: u32, nat: bool, n: u32) -> bool {
    let Some(u) = ZONE_USE.get_ptr_mut(zone) else { return true };
    let u = unsafe { &mut *u };
    let (used, share) = if nat { (&mut u.nat, u.nat_share) } else { (&mut u.ct, u.ct_share) };
    if share != 0 && *used >= share {
        return false;
    }
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(used, n) };
    true
}

/// Takes a new flow's conntrack entry from the part of `port` (the app port that judges
/// it) and from its NI's share; Err: the counter of the one used up. The port is checked
/// first and charged last: a flow its NI refuses takes nothing from it.
#[inline(always)]
pub fn take_flow(port: &IfaceKey) -> Result<(), Stat> {
    let part = PORT_USE.get_ptr_mut(port);
    if let Some(p) = part {
        if !unsafe { &*p }.has_room() {
            return Err(Stat::DropPortFull);
        }
    }
    if !take(port.zone, false, 1) {
        return Err(Stat::DropZoneFull);
    }
    if let Some(p) = part {
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut (*p).ct, 1) };
    }
    Ok(())
}
