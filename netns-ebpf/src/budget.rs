//! Each NI's share of the shared conntrack and NAT maps (see `ZoneUse`): a flood from one
//! NI's apps, or from outside through its port maps, fills its own share and is refused
//! there instead of evicting other NIs' flows.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use crate::maps::ZONE_USE;

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
