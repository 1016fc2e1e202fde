//! Fragments in the programs: first fragments leave their ports for the later ones (see
//! `netns_ebpf_common::frag`).

use netns_ebpf_common::{
    frag::{FragKey, FragValue},
    packet::{Flow, FRAG_FIRST, FRAG_LATER},
    Stat,
};

use crate::{maps::FRAGS, skb::count};

/// Records a first fragment's ports, or gives a later fragment its datagram's; Err: a
/// later fragment whose first was not seen here (counted; the caller drops it).
#[inline(always)]
pub fn follow(zone: u32, flow: &mut Flow, now: u64) -> Result<(), ()> {
    if flow.frag == FRAG_FIRST {
        // A full map evicts the oldest datagram: its later fragments are then dropped.
        let _ = FRAGS.insert(&FragKey::of(zone, flow), &FragValue::of(flow, now), 0);
    } else if flow.frag == FRAG_LATER {
        match FRAGS.get_ptr(&FragKey::of(zone, flow)) {
            Some(v) if unsafe { &*v }.fill(flow, now) => count(Stat::PassFragment),
            _ => {
                count(Stat::DropFragment);
                return Err(());
            }
        }
    }
    Ok(())
}
