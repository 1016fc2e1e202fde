//! Flow events to the agent (see `netns_ebpf_common::event`).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ringbuf_query,
};
use netns_ebpf_common::{
    ct::{CtKey, CtValue},
    event::{FlowEvent, EVENTS_WAKE_BYTES},
    Stat,
};

use crate::{maps::EVENTS, skb::count};

/// Sends one event; a full ring buffer counts it as lost. The event is written in place
/// in the ring buffer (reserve, fill, submit): a 112-byte copy on the stack would not fit
/// beside the app-port programs' frames (512 bytes in all, on 6.1 with the ACE walk's).
#[inline(always)]
pub fn emit(kind: u8, key: &CtKey, value: &CtValue, reason: Stat) {
    let Some(mut slot) = EVENTS.reserve(0) else {
        count(Stat::EventLost);
        return;
    };
    let e: *mut FlowEvent = slot.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable FlowEvent in the ring buffer; every
    // field is written before the submit.
    unsafe {
        (*e).key = *key;
        (*e).value = *value;
        (*e).kind = kind;
        (*e)._pad = [0; 3];
        (*e).reason = reason as u32;
    }
    // Wake the agent only for a batch (see `EVENTS_WAKE_BYTES`): once, by the event
    // whose record takes the waiting bytes over the mark (the reserve counted it). Every
    // event past the mark woke it again until it had read them, an interrupt each (a
    // VM exit in a guest): 2% of the programs' time at 13,000 new flows a second. One
    // that two CPUs carry over the mark together wakes none: the agent's poll reads it.
    // SAFETY: EVENTS is a ring buffer map (its static's address is the map, as aya's own
    // helpers pass it); the query reads its positions.
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast();
    let waiting = unsafe { bpf_ringbuf_query(map, BPF_RB_AVAIL_DATA as u64) };
    let crossed = (EVENTS_WAKE_BYTES..EVENTS_WAKE_BYTES + EVENT_RECORD_BYTES).contains(&waiting);
    slot.submit(if crossed { BPF_RB_FORCE_WAKEUP as u64 } else { BPF_RB_NO_WAKEUP as u64 });
}

/// An event's record in the ring buffer: its 8-byte header and the event, rounded up
/// to 8 bytes.
const EVENT_RECORD_BYTES: u64 = (8 + size_of::<FlowEvent>() as u64).next_multiple_of(8);
