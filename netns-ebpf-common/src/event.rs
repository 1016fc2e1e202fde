//! Flow events: the data path tells the agent through a BPF ring buffer when a flow starts
//! (allowed, or its first packet dropped) and when a TCP flow closes. The agent adds what
//! only it sees (entries that expire or that a config change removes, interim records of
//! long flows) and writes the flow log. An event the ring buffer has no room for is
//! counted (`Stat::EventLost`), never silently gone.

use crate::ct::{CtKey, CtValue, TCP_CLOSE, TCP_TIME_WAIT};

/// Ring buffer size in bytes (a power of two, a multiple of the page size): ~9k events.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Events wake the agent only as this much comes to wait in the ring buffer (~500
/// events): the event that takes it over the mark wakes it; the agent also reads it
/// every [`EVENTS_POLL_MS`]. A wakeup per event is an interrupt
/// and a context switch each: at 10,000 new flows a second (two events each) they
/// cost the machine more than the events themselves.
pub const EVENTS_WAKE_BYTES: u64 = 64 << 10;
/// How often the agent reads the ring buffer without being woken: the most a flow
/// record waits, at a low event rate.
pub const EVENTS_POLL_MS: u64 = 100;

/// A flow's entry was made (allowed).
pub const EVENT_START: u8 = 1;
/// A TCP flow closed (both FINs, or an RST): the entry's final counters.
pub const EVENT_END: u8 = 2;
/// A dropped flow's first packet (its record in DROP_V2 was made).
pub const EVENT_DROPPED: u8 = 3;
/// A flow whose entry a new flow on its tuple took (a SYN after a half close, a packet
/// after it expired) before its end was sent: the entry's final counters. (The agent's
/// sweep would never see it end.)
pub const EVENT_REPLACED: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: CtKey,
    pub value: CtValue,
    /// `EVENT_*`.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// For `EVENT_DROPPED`: the `Stat` the drop was counted as.
    pub reason: u32,
}

impl FlowEvent {
    /// The event in a ring buffer record (None: the record is too short for one).
    pub fn from_record(record: &[u8]) -> Option<FlowEvent> {
        // SAFETY: the programs write whole `FlowEvent`s (repr(C), any bit pattern valid),
        // and the length is checked.
        (record.len() >= size_of::<FlowEvent>()).then(|| unsafe { core::ptr::read_unaligned(record.as_ptr() as *const FlowEvent) })
    }
}

/// Whether a TCP state change closes the flow (its end event goes out then).
#[inline(always)]
pub fn closes(old_state: u8, new_state: u8) -> bool {
    let closed = |s: u8| s == TCP_TIME_WAIT || s == TCP_CLOSE;
    closed(new_state) && !closed(old_state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::{TCP_ESTABLISHED, TCP_FIN_WAIT};

    #[test]
    fn a_flow_closes_once() {
        assert!(closes(TCP_FIN_WAIT, TCP_TIME_WAIT));
        assert!(closes(TCP_ESTABLISHED, TCP_CLOSE));
        assert!(!closes(TCP_TIME_WAIT, TCP_CLOSE), "already closed");
        assert!(!closes(TCP_ESTABLISHED, TCP_FIN_WAIT));
        assert_eq!(size_of::<FlowEvent>() % 8, 0, "ring buffer records are 8-byte aligned");
    }
}
