//! Each NI's share of the shared conntrack and NAT maps (see `ZoneUse`), and each app
//! port's part of its NI's conntrack share (see `PortUse`): a flood from one NI's apps,
//! or from outside through its port maps, fills its own share and is refused there
//! instead of evicting other NIs' flows; one port's flood of new flows takes its part of
//! its NI's conntrack share, or half the share if that is more, and leaves the rest to
//! the other ports.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use netns_ebpf_common::{IfaceKey, Stat};

use crate::maps::{PORT_USE, ZONE_USE};

/// Takes `n` NAT entries (a translation's) from `zone`'s share; false: the share is used
/// up. (The check and the add are two steps: a burst on several CPUs may overshoot by a
/// few entries.)
#[inline(always)]
pub fn take_translation(zone: u32, n: u32) -> bool {
    let Some(u) = ZONE_USE.get_ptr_mut(zone) else { return true };
    let u = unsafe { &mut *u };
    if u.nat_share != 0 && u.nat >= u.nat_share {
        return false;
    }
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut u.nat, n) };
    true
}

/// Takes a new flow's conntrack entry from its NI's share and from the part of `port`
/// (the app port that judges it); Err: the counter of the one that refuses it
/// (`PortUse::refuses`). Both are checked before either is charged: a refused flow
/// takes nothing (charged, a flood the port refuses would push its NI's count up to
/// refusing every app until the sweep).
#[inline(always)]
pub fn take_flow(port: &IfaceKey) -> Result<(), Stat> {
    let Some(z) = ZONE_USE.get_ptr_mut(port.zone) else { return Ok(()) };
    let zone = unsafe { &mut *z };
    if zone.ct_share != 0 && zone.ct >= zone.ct_share {
        return Err(Stat::DropZoneFull);
    }
    let part = PORT_USE.get_ptr_mut(port);
    if let Some(p) = part {
        if unsafe { &*p }.refuses(zone) {
            return Err(Stat::DropPortFull);
        }
    }
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut zone.ct, 1) };
    if let Some(p) = part {
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut (*p).ct, 1) };
    }
    Ok(())
}
