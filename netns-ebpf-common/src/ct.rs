//! Our conntrack: one LRU hash per agent, keyed by the NI zone and the flow's endpoints in
//! canonical order, so both directions of a flow find the same entry with one lookup.
//! It holds allowed flows only: a dropped flow's record lives in a map of its own (a
//! flood of denied tuples cannot evict a live flow), and no verdict is ever taken from
//! it (a flow whose entry went is judged anew, never dropped for having been dropped).

use crate::{
    packet::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Ipv4, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

/// Entries in the shared conntrack map (LRU: the oldest flows go first when full).
pub const CT_MAX_ENTRIES: u32 = 65536;
/// Records of dropped flows (LRU: a flood of denied tuples recycles its own records).
pub const DROP_MAX_ENTRIES: u32 = 16384;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub zone: u32,
    /// The lower (address, port) endpoint.
    pub addr_a: Ipv4,
    pub addr_b: Ipv4,
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The canonical key of `flow` in `zone`, and whether the packet travels a -> b.
    #[inline(always)]
    pub fn new(zone: u32, flow: &Flow) -> (CtKey, bool) {
        let src = (u32::from_be_bytes(flow.src), flow.sport);
        let dst = (u32::from_be_bytes(flow.dst), flow.dport);
        let a_to_b = src <= dst;
        let (a, pa, b, pb) =
            if a_to_b { (flow.src, flow.sport, flow.dst, flow.dport) } else { (flow.dst, flow.dport, flow.src, flow.sport) };
        let key = CtKey { zone, addr_a: a, addr_b: b, port_a: pa, port_b: pb, proto: flow.proto, _pad: [0; 3] };
        (key, a_to_b)
    }

    /// This key written into `out` field by field, its padding left as it is there (see
    /// `NatKey::write_to`: the programs keep keys in per-CPU scratch).
    #[inline(always)]
    pub fn write_to(&self, out: &mut CtKey) {
        (out.zone, out.addr_a, out.addr_b, out.port_a, out.port_b, out.proto) =
            (self.zone, self.addr_a, self.addr_b, self.port_a, self.port_b, self.proto);
    }
}

pub const DIR_ORIG: usize = 0;
pub const DIR_REPLY: usize = 1;

pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DROP: u8 = 1;

/// TCP states, coarse on purpose: they only choose the entry's idle timeout.
pub const TCP_NONE: u8 = 0;
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_SYN_RECV: u8 = 2;
pub const TCP_ESTABLISHED: u8 = 3;
pub const TCP_FIN_WAIT: u8 = 4;
pub const TCP_TIME_WAIT: u8 = 5;
pub const TCP_CLOSE: u8 = 6;

pub const FLAG_SEEN_REPLY: u8 = 1 << 0;
pub const FLAG_FIN_ORIG: u8 = 1 << 1;
pub const FLAG_FIN_REPLY: u8 = 1 << 2;
/// The flow's first packet went to the app (it was judged at the to-app side): its
/// original direction never comes from an app port.
pub const FLAG_JUDGED_TO_APP: u8 = 1 << 3;
/// `tcp_end[DIR_ORIG]` / `tcp_end[DIR_REPLY]` holds a segment end seen in that direction.
pub const FLAG_END_ORIG: u8 = 1 << 4;
pub const FLAG_END_REPLY: u8 = 1 << 5;
/// The flow's end event went out (TCP close): expiry later adds no second one.
pub const FLAG_ENDED: u8 = 1 << 6;
/// TCP: a SYN without ACK from the original side of an established (or half-closed)
/// flow, not answered yet. Its old connection died silently and the client connects
/// again from the same port; the entry is out of step with the ends, as the kernel's
/// conntrack then is (it "ignores" that SYN and notes it). The SYN's own sequence number
/// is not taken for the flow's (`track_tcp`): the client's RST at the old connection's
/// number must still fit.
/// The reply side's next packet settles it: an RST refusing the SYN is let through
/// (`rst_acceptable`; the flag stays on the closed entry, whose RST an app-to-app flow's
/// second port judges again), a SYN-ACK taking it carries the entry over to the new
/// connection (`tcp_next`), anything else (the old connection lives on there: a
/// challenge ACK, a FIN) clears it. Unanswered, it stays until the entry ends: the client
/// no longer has the old connection, and a refusal closes what is dead.
pub const FLAG_SYN_AGAIN: u8 = 1 << 7;

/// How far (in sequence space) an RST may sit from the furthest segment end its sender
/// was seen sending. The kernel checks against the receiver's window; a fixed 1 MiB
/// leaves a blind attacker about one chance in 2^11 per guess, and never refuses the RST
/// of an endpoint we saw (it resets at its own next sequence number).
pub const RST_WINDOW: u32 = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// CLOCK_MONOTONIC_COARSE (the programs' clock) of the first and the latest packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// [original direction, reply direction].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// EVE-layout connection mark.
    pub mark: u32,
    /// The app port whose ACL judged the flow, and that ACL's id (a new one for every
    /// change of the port's ACL) at the time.
    pub judge_ifindex: u32,
    pub acl_id: u32,
    pub verdict: u8,
    pub tcp_state: u8,
    /// 1 when endpoint a of the key started the flow.
    pub orig_is_a: u8,
    pub flags: u8,
    /// The judging port's `limit` ACE (index + 1) whose bucket every packet is charged to.
    pub limit: u16,
    /// What decided the flow (`acl::Verdict::by`): when the port's ACL changes, a flow
    /// the new ACL decides alike (`acl::decided_alike`) is not judged again.
    pub decided: u16,
    /// The app port the flow's replies come from when its far end is another app of the
    /// NI (learned when the bridge delivers the first packet there); 0: not an app.
    pub reply_ifindex: u32,
    /// TCP, per direction: the furthest segment end seen (`FLAG_END_*` says which are
    /// known). An RST must land near its sender's.
    pub tcp_end: [u32; 2],
}

impl CtValue {
    /// Which direction a packet travelling a -> b (or not) is in for this entry.
    #[inline(always)]
    pub fn direction(&self, a_to_b: bool) -> usize {
        if a_to_b == (self.orig_is_a != 0) {
            DIR_ORIG
        } else {
            DIR_REPLY
        }
    }
}

/// Whether the app on port `ifindex` may send a packet in direction `dir` of this flow:
/// only the port that judged the flow sends its original direction (or its replies, when
/// the flow came in toward that app), and only the port learned as the far end's sends
/// the replies of an app-to-app flow. Anything else is another app posing as an end.
#[inline(always)]
pub fn port_may_send(entry: &CtValue, dir: usize, ifindex: u32) -> bool {
    let came_in = entry.flags & FLAG_JUDGED_TO_APP != 0;
    match (dir == DIR_ORIG, came_in) {
        (true, false) | (false, true) => entry.judge_ifindex == ifindex,
        (true, true) => false,
        (false, false) => entry.reply_ifindex != 0 && entry.reply_ifindex == ifindex,
    }
}

const END_FLAGS: [u8; 2] = [FLAG_END_ORIG, FLAG_END_REPLY];

/// Records where a TCP segment travelling in `dir` ends (sequence space wraps: "further"
/// means less than 2^31 ahead).
#[inline(always)]
pub fn note_tcp_end(entry: &mut CtValue, dir: usize, end: u32) {
    let dir = if dir == DIR_ORIG { DIR_ORIG } else { DIR_REPLY };
    let known = entry.flags & END_FLAGS[dir] != 0;
    if !known || (end.wrapping_sub(entry.tcp_end[dir]) as i32) > 0 {
        entry.tcp_end[dir] = end;
        entry.flags |= END_FLAGS[dir];
    }
}

/// Whether an RST sent in `dir` with sequence number `seq` may close the flow: within
/// `RST_WINDOW` of what its sender was seen sending (or nothing seen from it yet: the
/// answer to a SYN). An RST from anywhere else (a blind attacker, a neighbour posing as
/// an end) is dropped, as the kernel's conntrack marks it invalid.
#[inline(always)]
pub fn rst_acceptable(entry: &CtValue, dir: usize, seq: u32, tcp_flags: u8) -> bool {
    let dir = if dir == DIR_ORIG { DIR_ORIG } else { DIR_REPLY };
    if entry.flags & END_FLAGS[dir] == 0 {
        return true;
    }
    // The refusal of a SYN sent again on the flow's tuple (`FLAG_SYN_AGAIN`): the answer
    // to a segment without ACK is <SEQ=0><CTL=RST,ACK> (RFC 793), nowhere near the dead
    // connection's numbers. Only while that SYN waits for its answer: a blind attacker
    // would have to hit that moment and the flow's exact tuple.
    if dir == DIR_REPLY && entry.flags & FLAG_SYN_AGAIN != 0 && seq == 0 && tcp_flags & TCP_ACK != 0 {
        return true;
    }
    let distance = seq.wrapping_sub(entry.tcp_end[dir]) as i32;
    distance.unsigned_abs() <= RST_WINDOW
}

/// A new connection on the tuple of one that is closed (a client reusing its port
/// within TIME_WAIT): a SYN without ACK (travelling in `dir` of the flow) starts a new
/// flow, judged anew, as the kernel reopens it. On a half-closed one (FIN_WAIT), which
/// the far end may still hold, only the far end's SYN does (judged anew, as before; the
/// kernel's conntrack calls it invalid): the client's waits for the far end's answer as
/// on an established flow (`FLAG_SYN_AGAIN`), as the kernel's conntrack ignores it; made
/// the start of a new flow, its number would put the client's RST to the old connection
/// (drawn by the far end's challenge ACK) out of the window, and the connect would hang.
#[inline(always)]
pub fn reopened_by(entry: &CtValue, tcp_flags: u8, dir: usize) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        && match entry.tcp_state {
            TCP_TIME_WAIT | TCP_CLOSE => true,
            TCP_FIN_WAIT => dir == DIR_REPLY,
            _ => false,
        }
}

/// Whether a packet with `tcp_flags`, in direction `dir` of the flow `entry`, is the far
/// end taking the connection its client opened again on the tuple (`FLAG_SYN_AGAIN`: a
/// SYN-ACK, the far end having dropped the old connection): the entry then follows the
/// new connection (`tcp_next`), a new flow on record.
#[inline(always)]
pub fn takes_new_connection(entry: &CtValue, tcp_flags: u8, dir: usize) -> bool {
    taken_over(entry.tcp_state, entry.flags, tcp_flags, dir)
}

/// `takes_new_connection` by the flow's state and flags: the one test, which `tcp_next`
/// makes too.
#[inline(always)]
fn taken_over(state: u8, conn_flags: u8, tcp_flags: u8, dir: usize) -> bool {
    conn_flags & FLAG_SYN_AGAIN != 0
        && dir == DIR_REPLY
        && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
        && far_end_may_hold(state)
}

/// When a flow that replaces another on its tuple (which started at `previous_ns`)
/// starts: now, but after the other also within one tick of the programs' coarse clock
/// (two DHCP clients asking at once): the flow log tells a tuple's flows apart by their
/// start.
#[inline(always)]
pub fn start_after(now_ns: u64, previous_ns: u64) -> u64 {
    now_ns.max(previous_ns.saturating_add(1))
}

/// The states in which the far end may still hold the flow's connection: a SYN the client
/// sends again on the tuple waits for its answer (`FLAG_SYN_AGAIN`).
#[inline(always)]
fn far_end_may_hold(state: u8) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_FIN_WAIT)
}

/// A TCP packet with `tcp_flags`, whose segment ends at `end`, seen in direction `dir`
/// of the flow: its state and flags (`tcp_next`) and its sender's furthest segment end
/// (`note_tcp_end`), but for a SYN sent again on the established flow
/// (`FLAG_SYN_AGAIN`), a new connection's, which the flow's RSTs are not measured by.
#[inline(always)]
pub fn track_tcp(entry: &mut CtValue, dir: usize, tcp_flags: u8, end: u32) {
    let (state, flags) = tcp_next(entry.tcp_state, entry.flags, tcp_flags, dir);
    (entry.tcp_state, entry.flags) = (state, flags);
    let syn_again = flags & FLAG_SYN_AGAIN != 0 && dir == DIR_ORIG && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn_again {
        note_tcp_end(entry, dir, end);
    }
}

/// Next TCP state after a packet with `flags` in direction `dir`.
#[inline(always)]
pub fn tcp_next(state: u8, conn_flags: u8, tcp_flags: u8, dir: usize) -> (u8, u8) {
    let mut cf = conn_flags;
    if tcp_flags & TCP_RST != 0 {
        // (`FLAG_SYN_AGAIN` stays: see there.)
        return (TCP_CLOSE, cf);
    }
    let syn = tcp_flags & TCP_SYN != 0;
    let ack = tcp_flags & TCP_ACK != 0;
    if cf & FLAG_SYN_AGAIN != 0 && dir == DIR_REPLY {
        // The answer to a SYN sent again on the flow (`FLAG_SYN_AGAIN`).
        let taken = taken_over(state, cf, tcp_flags, dir);
        cf &= !FLAG_SYN_AGAIN;
        if taken {
            // The far end took the new connection: the entry follows it, both ends'
            // segments learned anew (this one's at once, by `track_tcp`), the old
            // connection's FINs forgotten.
            return (TCP_SYN_RECV, cf & !(FLAG_END_ORIG | FLAG_END_REPLY | FLAG_FIN_ORIG | FLAG_FIN_REPLY));
        }
    }
    if tcp_flags & TCP_FIN != 0 {
        cf |= if dir == DIR_ORIG { FLAG_FIN_ORIG } else { FLAG_FIN_REPLY };
        let both = cf & (FLAG_FIN_ORIG | FLAG_FIN_REPLY) == FLAG_FIN_ORIG | FLAG_FIN_REPLY;
        return (if both { TCP_TIME_WAIT } else { TCP_FIN_WAIT }, cf);
    }
    if far_end_may_hold(state) && syn && !ack && dir == DIR_ORIG {
        cf |= FLAG_SYN_AGAIN;
    }
    let next = match state {
        TCP_NONE | TCP_CLOSE if syn && !ack && dir == DIR_ORIG => TCP_SYN_SENT,
        TCP_SYN_SENT if syn && ack && dir == DIR_REPLY => TCP_SYN_RECV,
        TCP_SYN_RECV if ack && !syn && dir == DIR_ORIG => TCP_ESTABLISHED,
        // Picked up mid-stream (e.g. after the entry was evicted): data both ways means
        // established, like conntrack's loose pickup.
        TCP_NONE if dir == DIR_REPLY => TCP_ESTABLISHED,
        s => s,
    };
    (next, cf)
}

const SEC: u64 = 1_000_000_000;

/// How a TCP flow closed by both FINs or an RST stays: late segments (a retransmitted
/// FIN, the last ACK) still pass. The kernel's conntrack keeps TIME_WAIT 120 s but drops
/// such entries early when its table is full; our shared map cannot, and at 120 s an
/// app's short connections (a few hundred a second per NI) would fill its NI's share
/// and have new flows refused for minutes. Cilium uses the same 10 s for closing flows.
/// (The flow's translation stays longer: `nat::pair_idle_timeout_ns`.)
pub const CLOSED_TIMEOUT_NS: u64 = 10 * SEC;

/// How long an idle entry stays valid: the kernel conntrack's defaults, but a closed
/// TCP flow's [`CLOSED_TIMEOUT_NS`].
#[inline(always)]
pub fn idle_timeout_ns(proto: u8, tcp_state: u8, flags: u8) -> u64 {
    match proto {
        PROTO_TCP => match tcp_state {
            TCP_SYN_SENT => 120 * SEC,
            TCP_SYN_RECV => 60 * SEC,
            TCP_ESTABLISHED => 5 * 24 * 3600 * SEC,
            TCP_FIN_WAIT => 120 * SEC,
            TCP_TIME_WAIT | TCP_CLOSE => CLOSED_TIMEOUT_NS,
            _ => 300 * SEC,
        },
        PROTO_UDP if flags & FLAG_SEEN_REPLY != 0 => 120 * SEC,
        PROTO_UDP => 30 * SEC,
        PROTO_ICMP => 30 * SEC,
        _ => 600 * SEC,
    }
}

#[inline(always)]
pub fn is_expired(v: &CtValue, proto: u8, now_ns: u64) -> bool {
    now_ns.saturating_sub(v.last_seen_ns) > idle_timeout_ns(proto, v.tcp_state, v.flags)
}

pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        TCP_SYN_SENT => "SYN_SENT",
        TCP_SYN_RECV => "SYN_RECV",
        TCP_ESTABLISHED => "ESTABLISHED",
        TCP_FIN_WAIT => "FIN_WAIT",
        TCP_TIME_WAIT => "TIME_WAIT",
        TCP_CLOSE => "CLOSE",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ports_of_a_flow_send_its_packets() {
        // App on port 5 started a flow to another app (port 9, learned).
        let mut e = CtValue { judge_ifindex: 5, ..CtValue::default() };
        assert!(port_may_send(&e, DIR_ORIG, 5));
        assert!(!port_may_send(&e, DIR_ORIG, 9), "another port posing as the initiator");
        assert!(!port_may_send(&e, DIR_REPLY, 9), "no far-end port learned yet: not an app");
        e.reply_ifindex = 9;
        assert!(port_may_send(&e, DIR_REPLY, 9));
        assert!(!port_may_send(&e, DIR_REPLY, 7));
        // A flow that came in toward the app on port 5: only it answers.
        let e = CtValue { judge_ifindex: 5, flags: FLAG_JUDGED_TO_APP, ..CtValue::default() };
        assert!(port_may_send(&e, DIR_REPLY, 5));
        assert!(!port_may_send(&e, DIR_REPLY, 7));
        assert!(!port_may_send(&e, DIR_ORIG, 5), "no app sends the outside's side");
    }

    fn f(src: Ipv4, sport: u16, dst: Ipv4, dport: u16) -> Flow {
        Flow { proto: PROTO_TCP, src, dst, sport, dport, ..Flow::default() }
    }

    #[test]
    fn both_directions_share_one_key() {
        let (k1, d1) = CtKey::new(3, &f([10, 10, 1, 5], 40000, [10, 10, 1, 3], 80));
        let (k2, d2) = CtKey::new(3, &f([10, 10, 1, 3], 80, [10, 10, 1, 5], 40000));
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.addr_a, [10, 10, 1, 3]);
        // Zones keep identical tuples of two NIs apart.
        let (k3, _) = CtKey::new(4, &f([10, 10, 1, 5], 40000, [10, 10, 1, 3], 80));
        assert_ne!(k1, k3);
        // Same address both ends (loopback-ish): the port breaks the tie.
        let (k4, d4) = CtKey::new(1, &f([1, 1, 1, 1], 9, [1, 1, 1, 1], 5));
        assert_eq!((k4.port_a, k4.port_b, d4), (5, 9, false));
    }

    #[test]
    fn directions() {
        let v = CtValue { orig_is_a: 1, ..CtValue::default() };
        assert_eq!(v.direction(true), DIR_ORIG);
        assert_eq!(v.direction(false), DIR_REPLY);
        let v = CtValue { orig_is_a: 0, ..CtValue::default() };
        assert_eq!(v.direction(true), DIR_REPLY);
    }

    #[test]
    fn tcp_handshake_and_teardown() {
        let (s, cf) = tcp_next(TCP_NONE, 0, TCP_SYN, DIR_ORIG);
        assert_eq!(s, TCP_SYN_SENT);
        let (s, cf) = tcp_next(s, cf, TCP_SYN | TCP_ACK, DIR_REPLY);
        assert_eq!(s, TCP_SYN_RECV);
        let (s, cf) = tcp_next(s, cf, TCP_ACK, DIR_ORIG);
        assert_eq!(s, TCP_ESTABLISHED);
        let (s, cf) = tcp_next(s, cf, TCP_FIN | TCP_ACK, DIR_ORIG);
        assert_eq!(s, TCP_FIN_WAIT);
        let (s, cf) = tcp_next(s, cf, TCP_ACK, DIR_REPLY);
        assert_eq!(s, TCP_FIN_WAIT);
        let (s, _) = tcp_next(s, cf, TCP_FIN | TCP_ACK, DIR_REPLY);
        assert_eq!(s, TCP_TIME_WAIT);
        assert_eq!(tcp_next(TCP_ESTABLISHED, 0, TCP_RST, DIR_REPLY).0, TCP_CLOSE);
        // A reused port after close starts over.
        assert_eq!(tcp_next(TCP_CLOSE, 0, TCP_SYN, DIR_ORIG).0, TCP_SYN_SENT);
    }

    #[test]
    fn a_syn_again_on_an_established_flow_waits_for_the_far_ends_answer() {
        const REFUSAL: u8 = TCP_RST | TCP_ACK;
        let live = CtValue {
            tcp_state: TCP_ESTABLISHED,
            flags: FLAG_END_ORIG | FLAG_END_REPLY,
            tcp_end: [5_000, 9_000_000],
            ..CtValue::default()
        };
        // The client's SYN, its number far ahead of the old connection's (Linux numbers a
        // tuple's connections by the clock): noted, its number not taken for the flow's.
        let mut waiting = live;
        track_tcp(&mut waiting, DIR_ORIG, TCP_SYN, 5_000 + (8 << 20));
        assert_eq!((waiting.tcp_state, waiting.flags & FLAG_SYN_AGAIN), (TCP_ESTABLISHED, FLAG_SYN_AGAIN));
        assert_eq!(waiting.tcp_end, live.tcp_end);
        // A SYN from the reply side, or one with ACK, is no new connection of the client.
        assert_eq!(tcp_next(TCP_ESTABLISHED, 0, TCP_SYN, DIR_REPLY).1 & FLAG_SYN_AGAIN, 0);
        assert_eq!(tcp_next(TCP_ESTABLISHED, 0, TCP_SYN | TCP_ACK, DIR_ORIG).1 & FLAG_SYN_AGAIN, 0);
        // Refused: the RST (<SEQ=0><CTL=RST,ACK>) is let through, and closes the flow.
        assert!(rst_acceptable(&waiting, DIR_REPLY, 0, REFUSAL));
        assert!(!rst_acceptable(&live, DIR_REPLY, 0, REFUSAL), "no SYN waiting: the window holds");
        assert!(!rst_acceptable(&waiting, DIR_REPLY, 1, REFUSAL), "only an answer to a segment without ACK");
        assert!(!rst_acceptable(&waiting, DIR_REPLY, 0, TCP_RST), "an RST without ACK answers no SYN");
        assert!(!rst_acceptable(&waiting, DIR_ORIG, 0x8000_0000, TCP_RST), "the client's side is checked as before");
        let mut refused = waiting;
        track_tcp(&mut refused, DIR_REPLY, REFUSAL, 0);
        assert_eq!(refused.tcp_state, TCP_CLOSE);
        // A closed entry is not brought back by a SYN-ACK after it (a spoofed RST first).
        assert_eq!(tcp_next(TCP_CLOSE, refused.flags, TCP_SYN | TCP_ACK, DIR_REPLY).0, TCP_CLOSE);
        // Taken: the entry follows the new connection, its ends learned anew: a new flow
        // (`takes_new_connection`), which no other answer, and no SYN-ACK without a SYN
        // waiting, is.
        assert!(takes_new_connection(&waiting, TCP_SYN | TCP_ACK, DIR_REPLY));
        assert!(!takes_new_connection(&waiting, TCP_SYN | TCP_ACK | TCP_RST, DIR_REPLY));
        assert!(!takes_new_connection(&waiting, TCP_ACK, DIR_REPLY));
        assert!(!takes_new_connection(&waiting, TCP_SYN | TCP_ACK, DIR_ORIG));
        assert!(!takes_new_connection(&live, TCP_SYN | TCP_ACK, DIR_REPLY));
        assert!(!takes_new_connection(&refused, TCP_SYN | TCP_ACK, DIR_REPLY), "closed: no connection to take");
        assert_eq!((start_after(900, 500), start_after(500, 500)), (900, 501), "a new flow starts after the old one");
        let mut taken = waiting;
        track_tcp(&mut taken, DIR_REPLY, TCP_SYN | TCP_ACK, 77);
        assert_eq!(taken.tcp_state, TCP_SYN_RECV);
        assert_eq!(taken.flags & (FLAG_SYN_AGAIN | FLAG_END_ORIG), 0);
        assert_eq!((taken.flags & FLAG_END_REPLY, taken.tcp_end[DIR_REPLY]), (FLAG_END_REPLY, 77));
        track_tcp(&mut taken, DIR_ORIG, TCP_ACK, 5_000 + (8 << 20));
        assert_eq!((taken.tcp_state, taken.tcp_end[DIR_ORIG]), (TCP_ESTABLISHED, 5_000 + (8 << 20)));
        // The old connection lives on at the far end: its challenge ACK clears the note,
        // and the client's RST at the old connection's number fits.
        let mut challenged = waiting;
        track_tcp(&mut challenged, DIR_REPLY, TCP_ACK, 9_000_000);
        assert_eq!((challenged.tcp_state, challenged.flags & FLAG_SYN_AGAIN), (TCP_ESTABLISHED, 0));
        assert!(rst_acceptable(&challenged, DIR_ORIG, 5_000, TCP_RST));
        // So does a FIN from there.
        assert_eq!(tcp_next(TCP_ESTABLISHED, waiting.flags, TCP_FIN | TCP_ACK, DIR_REPLY).1 & FLAG_SYN_AGAIN, 0);
    }

    #[test]
    fn rst_must_fit_its_senders_sequence() {
        let mut e = CtValue::default();
        // Nothing seen from the reply side yet (a SYN refused): its RST closes.
        assert!(rst_acceptable(&e, DIR_REPLY, 12345, TCP_RST));
        note_tcp_end(&mut e, DIR_REPLY, 1_000_000);
        note_tcp_end(&mut e, DIR_REPLY, 900_000); // a retransmission does not move it back
        assert_eq!(e.tcp_end[DIR_REPLY], 1_000_000);
        assert!(rst_acceptable(&e, DIR_REPLY, 1_000_000, TCP_RST));
        assert!(rst_acceptable(&e, DIR_REPLY, 1_000_000 + RST_WINDOW, TCP_RST));
        assert!(!rst_acceptable(&e, DIR_REPLY, 1_000_000 + RST_WINDOW + 1, TCP_RST));
        assert!(!rst_acceptable(&e, DIR_REPLY, 0x8000_0000, TCP_RST));
        // The other direction is tracked on its own, and across the wrap.
        note_tcp_end(&mut e, DIR_ORIG, 0xffff_fff0);
        note_tcp_end(&mut e, DIR_ORIG, 0x10);
        assert_eq!(e.tcp_end[DIR_ORIG], 0x10);
        assert!(rst_acceptable(&e, DIR_ORIG, 0xffff_ff00, TCP_RST));
    }

    #[test]
    fn a_syn_reopens_a_closed_flow() {
        for state in [TCP_TIME_WAIT, TCP_CLOSE] {
            let e = CtValue { tcp_state: state, ..CtValue::default() };
            for dir in [DIR_ORIG, DIR_REPLY] {
                assert!(reopened_by(&e, TCP_SYN, dir));
                assert!(!reopened_by(&e, TCP_SYN | TCP_ACK, dir));
                assert!(!reopened_by(&e, TCP_ACK, dir));
            }
        }
        for state in [TCP_ESTABLISHED, TCP_FIN_WAIT] {
            let e = CtValue { tcp_state: state, ..CtValue::default() };
            assert!(!reopened_by(&e, TCP_SYN, DIR_ORIG), "the client's SYN inside a live or half-closed flow waits for the far end");
        }
        let half = CtValue { tcp_state: TCP_FIN_WAIT, ..CtValue::default() };
        assert!(reopened_by(&half, TCP_SYN, DIR_REPLY), "the far end's SYN on a half-closed flow is judged anew");
    }

    /// Half closed by the client (its FIN seen and acknowledged), then dropped silently:
    /// its SYN from the same port waits as on an established flow; taken, the entry
    /// follows the new connection without the old one's FIN (one FIN of the new one
    /// does not close it); the far end's challenge ACK lets the client's RST through.
    #[test]
    fn a_syn_again_on_a_half_closed_flow_waits_for_the_far_ends_answer() {
        let half = CtValue {
            tcp_state: TCP_FIN_WAIT,
            flags: FLAG_END_ORIG | FLAG_END_REPLY | FLAG_FIN_ORIG,
            tcp_end: [5_001, 9_000_000],
            ..CtValue::default()
        };
        let mut waiting = half;
        track_tcp(&mut waiting, DIR_ORIG, TCP_SYN, 5_000 + (8 << 20));
        assert_eq!((waiting.tcp_state, waiting.flags & FLAG_SYN_AGAIN, waiting.tcp_end), (TCP_FIN_WAIT, FLAG_SYN_AGAIN, half.tcp_end));
        let mut taken = waiting;
        track_tcp(&mut taken, DIR_REPLY, TCP_SYN | TCP_ACK, 77);
        assert_eq!((taken.tcp_state, taken.flags & (FLAG_SYN_AGAIN | FLAG_FIN_ORIG | FLAG_END_ORIG)), (TCP_SYN_RECV, 0));
        track_tcp(&mut taken, DIR_ORIG, TCP_ACK, 5_000 + (8 << 20));
        track_tcp(&mut taken, DIR_REPLY, TCP_FIN | TCP_ACK, 78);
        assert_eq!(taken.tcp_state, TCP_FIN_WAIT, "one FIN of the new connection");
        let mut challenged = waiting;
        track_tcp(&mut challenged, DIR_REPLY, TCP_ACK, 9_000_000);
        assert_eq!(challenged.flags & FLAG_SYN_AGAIN, 0);
        assert!(rst_acceptable(&challenged, DIR_ORIG, 5_001, TCP_RST));
        assert!(rst_acceptable(&waiting, DIR_REPLY, 0, TCP_RST | TCP_ACK), "the refusal");
    }

    #[test]
    fn timeouts() {
        let v = CtValue { last_seen_ns: 10 * SEC, tcp_state: TCP_SYN_SENT, ..CtValue::default() };
        assert!(!is_expired(&v, PROTO_TCP, 100 * SEC));
        assert!(is_expired(&v, PROTO_TCP, 200 * SEC));
        // Half closed: 2 minutes; closed (a FIN each way, or an RST): 10 s.
        let half = CtValue { tcp_state: TCP_FIN_WAIT, ..v };
        assert!(!is_expired(&half, PROTO_TCP, 100 * SEC));
        for closed in [TCP_TIME_WAIT, TCP_CLOSE] {
            let c = CtValue { tcp_state: closed, ..v };
            assert!(!is_expired(&c, PROTO_TCP, 19 * SEC));
            assert!(is_expired(&c, PROTO_TCP, 21 * SEC));
        }
        let u = CtValue { last_seen_ns: 0, ..CtValue::default() };
        assert!(is_expired(&u, PROTO_UDP, 31 * SEC));
        let u = CtValue { flags: FLAG_SEEN_REPLY, ..u };
        assert!(!is_expired(&u, PROTO_UDP, 31 * SEC));
        // A clock that looks backwards never expires an entry.
        assert!(!is_expired(&v, PROTO_TCP, 0));
    }
}
