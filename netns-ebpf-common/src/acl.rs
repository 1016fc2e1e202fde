//! ACL evaluation for a new flow: EVE's semantics (ordered ACEs, first match wins, the
//! matches of one ACE are ANDed, implicit rules before the user's, default drop).

use crate::{
    mark::{self, implicit},
    packet::Flow,
    IfaceInfo, Ipv4, IFACE_FLAG_SWITCH, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

pub const ACTION_ACCEPT: u8 = 0;
pub const ACTION_DROP: u8 = 1;
/// A port map: it admits flows from outside (through the NAT's mark), never an app's own.
pub const ACTION_PORTMAP: u8 = 2;
/// Accept, but every packet of the flows it matches is charged to the ACE's token bucket.
pub const ACTION_LIMIT: u8 = 3;

/// `Ace::matches` bits: which fields of the ACE take part in the match.
pub const MATCH_IP: u16 = 1 << 0;
pub const MATCH_PROTO: u16 = 1 << 1;
pub const MATCH_FPORT: u16 = 1 << 2;
/// The remote is another app of the same NI.
pub const MATCH_EIDSET: u16 = 1 << 3;
/// The remote is an address that a DNS answer for the ACE's host suffix gave this app.
pub const MATCH_HOST: u16 = 1 << 4;

pub const METADATA_IP: Ipv4 = [169, 254, 169, 254];

/// The metadata server's answer to an app (from the gateway's port 80, where its
/// requests to METADATA_IP went): the to-app program gives it METADATA_IP back.
#[inline(always)]
pub fn is_metadata_answer(iface: &IfaceInfo, flow: &Flow) -> bool {
    flow.src == iface.gateway && flow.sport == 80 && flow.proto == PROTO_TCP && !flow.related
}
const BROADCAST: Ipv4 = [255, 255, 255, 255];

/// One access-control entry as the programs see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ace {
    /// The user's ACE id (22 bits used in the mark).
    pub id: u32,
    /// `MATCH_*` bits.
    pub matches: u16,
    pub action: u8,
    pub proto: u8,
    /// Remote prefix (network bytes) and its length.
    pub prefix: Ipv4,
    pub prefix_len: u8,
    pub _pad: u8,
    /// Remote port.
    pub fport: u16,
}

/// The outcome of judging a flow: its connection mark, and whether it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub mark: u32,
    pub drop: bool,
    /// A `limit` ACE matched: its index + 1 (0: no rate limit).
    pub limit: u16,
    /// What decided: an ACE (its index + 1), `BY_DEFAULT` or `BY_RULE`.
    pub by: u16,
}

/// `Verdict::by` (and `CtValue::decided`): no ACE matched, the default drop decided; a
/// changed ACL may decide otherwise.
pub const BY_DEFAULT: u16 = 0;
/// `Verdict::by`: a rule no ACL changes decided (the implicit DHCP, DNS and metadata
/// allows, the device's own addresses, a port map's stamp).
pub const BY_RULE: u16 = u16::MAX;

impl Verdict {
    const fn implicit_allow(app_num: u32, id: u32) -> Self {
        Verdict { mark: mark::compose(app_num, id, false, false), drop: false, limit: 0, by: BY_RULE }
    }
    const fn default_drop(app_num: u32) -> Self {
        Verdict { mark: mark::compose(app_num, mark::DEFAULT_DROP_ACE_ID, false, true), drop: true, limit: 0, by: BY_DEFAULT }
    }
    /// The device itself is no remote an ACE can open: dropped as by default, but by a
    /// rule.
    const fn device_drop(app_num: u32) -> Self {
        Verdict { by: BY_RULE, ..Verdict::default_drop(app_num) }
    }
}

/// Whether a flow decided by `decided` (`Verdict::by`) under an ACL is decided alike by
/// an ACL that keeps its first `kept_aces` ACEs: its deciding ACE is among them (the
/// same ACEs before it, none of which matched), or no ACE decided it but a rule. A
/// default drop is not: an ACE the new ACL adds may match.
#[inline(always)]
pub fn decided_alike(decided: u16, kept_aces: u32) -> bool {
    decided == BY_RULE || (decided != BY_DEFAULT && decided as u32 <= kept_aces)
}

#[inline(always)]
pub fn prefix_contains(prefix: Ipv4, len: u8, addr: Ipv4) -> bool {
    if len == 0 {
        return true;
    }
    let len = if len > 32 { 32 } else { len };
    let mask = u32::MAX << (32 - len as u32);
    (u32::from_be_bytes(prefix) & mask) == (u32::from_be_bytes(addr) & mask)
}

/// What the program looked up about a new flow's remote end (map lookups, done once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteFacts {
    /// The remote is another app of this NI.
    pub in_eidset: bool,
    /// Bit base+k: the ACL's k-th host ACE's suffix resolved (for this app) to the remote
    /// address (`classify::compile`: an ACL's host ACEs from a base bit up).
    pub host_mask: u64,
    /// The remote is the device itself (the agent's netns: a veth or uplink address) and
    /// no port map listens at the flow's port there: EVE's rule, no ACE opens it.
    pub device: bool,
}

/// A new flow as the ACEs see it: its protocol and its far end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AceQuery {
    pub proto: u8,
    pub remote: Ipv4,
    pub remote_port: u16,
    pub facts: RemoteFacts,
}

/// The ACE that decides a flow, and its index in the ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    pub index: u32,
    pub ace: Ace,
}

/// How a program finds the first ACE of a port's ACL that decides a flow (port maps never
/// decide an app's own flows). The judges below are generic over it: the programs search
/// the ACL's bitmaps (`classify`), the host tests walk a slice ([`LoopWalk`]).
pub trait AceWalk {
    /// None: no ACE decides (or the port has no ACL): default drop.
    fn first(&self, q: &AceQuery) -> Option<Decided>;
}

/// The reference: the ACEs in order.
pub struct LoopWalk<'a>(pub &'a [Ace]);

impl AceWalk for LoopWalk<'_> {
    fn first(&self, q: &AceQuery) -> Option<Decided> {
        let index = crate::classify::reference_first(self.0, q)?;
        Some(Decided { index, ace: self.0[index as usize] })
    }
}

/// Judges a flow that the app starts (its packet came from the app), also toward another
/// app of the same NI: implicit rules, then the app's ACEs, then default drop.
#[inline(always)]
pub fn judge_from_app(walk: &impl AceWalk, iface: &IfaceInfo, flow: &Flow, facts: &RemoteFacts) -> Verdict {
    let app = iface.app_num;
    let switch = iface.flags & IFACE_FLAG_SWITCH != 0;
    // On a switch NI the DHCP and DNS servers are outside, wherever they are.
    let to_server = flow.dst == iface.gateway || switch;
    if flow.proto == PROTO_UDP && flow.dport == 67 && (to_server || flow.dst == BROADCAST) {
        return Verdict::implicit_allow(app, implicit::APP_DHCP);
    }
    if to_server && flow.dport == 53 && (flow.proto == PROTO_UDP || flow.proto == PROTO_TCP) {
        return Verdict::implicit_allow(app, implicit::APP_DNS);
    }
    // No metadata server on a switch NI.
    if !switch && flow.proto == PROTO_TCP && flow.dport == 80 && (flow.dst == METADATA_IP || flow.dst == iface.gateway) {
        return Verdict::implicit_allow(app, implicit::APP_METADATA_HTTP);
    }
    // The device is no remote an ACE can open (`0.0.0.0/0` means the world outside): the
    // agent's netns (`facts.device`; its port maps are reached by hairpin) and, on a
    // routed NI, the gateway itself beyond the services above (charon's IKE ports on a
    // VPN NI, anything else listening in the NI's netns), but for a ping, which the ACEs
    // decide as before (an app's check that its gateway answers).
    if facts.device || (!switch && flow.dst == iface.gateway && !(flow.proto == PROTO_ICMP && flow.icmp_echo)) {
        return Verdict::device_drop(app);
    }
    let q = AceQuery { proto: flow.proto, remote: flow.dst, remote_port: flow.dport, facts: *facts };
    first_match(walk, app, &q)
}

/// The user ACEs in order; default drop.
#[inline(always)]
fn first_match(walk: &impl AceWalk, app: u32, q: &AceQuery) -> Verdict {
    match walk.first(q) {
        Some(Decided { index, ace }) => {
            let drop = ace.action == ACTION_DROP;
            let limit = if ace.action == ACTION_LIMIT { index as u16 + 1 } else { 0 };
            Verdict { mark: mark::compose(app, ace.id, true, drop), drop, limit, by: index as u16 + 1 }
        }
        None => Verdict::default_drop(app),
    }
}

/// Judges a flow that reaches an app of a switch NI from outside: the app's ACEs with
/// the remote as source (EVE's semantics), after EVE's implicit in-DHCP.
#[inline(always)]
pub fn judge_from_outside(walk: &impl AceWalk, iface: &IfaceInfo, flow: &Flow, facts: &RemoteFacts) -> Verdict {
    if flow.proto == PROTO_UDP && flow.sport == 67 && flow.dport == 68 {
        return Verdict::implicit_allow(iface.app_num, implicit::IN_DHCP);
    }
    let q = AceQuery { proto: flow.proto, remote: flow.src, remote_port: flow.sport, facts: *facts };
    first_match(walk, iface.app_num, &q)
}

/// Judges a flow that enters the NI toward the app (its first packet was seen going to the
/// app). On a local NI only the agent's own netns and the NI gateway may start one, and
/// port-mapped flows: the port map's translation stamps its ACE's mark (`stamped_mark`)
/// on the packet, and a mark naming this app's user ACE lets the flow in.
#[inline(always)]
pub fn judge_toward_app(iface: &IfaceInfo, flow: &Flow, stamped_mark: u32) -> Verdict {
    let m = mark::decode(stamped_mark);
    if stamped_mark != 0 && m.app_num == iface.app_num & 0xff && m.user_ace && !m.drop {
        return Verdict { mark: stamped_mark, drop: false, limit: 0, by: BY_RULE };
    }
    if flow.src == iface.eve_ip || flow.src == iface.gateway {
        return Verdict::implicit_allow(iface.app_num, implicit::EVE_INITIATED);
    }
    Verdict::default_drop(iface.app_num)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const APP: Ipv4 = [10, 10, 1, 2];
    const NONE: RemoteFacts = RemoteFacts { in_eidset: false, host_mask: 0, device: false };
    fn iface() -> IfaceInfo {
        IfaceInfo {
            app_num: 1,
            acl_id: 1,
            app_ip: APP,
            gateway: [10, 10, 1, 1],
            eve_ip: [169, 254, 100, 1],
            flags: 0,
            ..IfaceInfo::default()
        }
    }
    fn flow(proto: u8, dst: Ipv4, dport: u16) -> Flow {
        Flow { proto, src: APP, dst, sport: 40000, dport, ..Flow::default() }
    }
    fn table(aces: &[Ace]) -> Vec<Ace> {
        aces.to_vec()
    }
    fn ip_ace(id: u32, prefix: Ipv4, len: u8) -> Ace {
        Ace { id, matches: MATCH_IP, prefix, prefix_len: len, ..Ace::default() }
    }

    #[test]
    fn the_device_is_not_the_world() {
        let all = table(&[ip_ace(1, [0, 0, 0, 0], 0)]);
        let to = |dst, dport| Flow { proto: PROTO_TCP, src: APP, dst, sport: 40000, dport, ..Flow::default() };
        let device = RemoteFacts { device: true, ..NONE };
        let v = judge_from_app(&LoopWalk(&all), &iface(), &to([169, 254, 100, 1], 22), &device);
        assert!(v.drop, "0.0.0.0/0 does not open the device");
        assert!(!judge_from_app(&LoopWalk(&all), &iface(), &to([1, 2, 3, 4], 22), &NONE).drop);
        // The implicit services at the gateway stay.
        assert!(!judge_from_app(&LoopWalk(&all), &iface(), &to([10, 10, 1, 1], 53), &device).drop);
        // The gateway is the device too: nothing else there (IKE, say), but a ping.
        for port in [500, 4500, 22] {
            let udp = Flow { proto: PROTO_UDP, ..to([10, 10, 1, 1], port) };
            let v = judge_from_app(&LoopWalk(&all), &iface(), &udp, &NONE);
            assert!(v.drop && v.by == BY_RULE, "udp {port} to the gateway: {v:?}");
        }
        assert!(judge_from_app(&LoopWalk(&all), &iface(), &to([10, 10, 1, 1], 22), &NONE).drop);
        let ping = Flow { proto: PROTO_ICMP, icmp_echo: true, sport: 7, dport: 7, ..to([10, 10, 1, 1], 0) };
        assert!(!judge_from_app(&LoopWalk(&all), &iface(), &ping, &NONE).drop, "a ping the ACEs allow");
        assert!(judge_from_app(&LoopWalk(&[]), &iface(), &ping, &NONE).drop, "and one they do not");
        // On a switch NI the gateway is a router outside: the ACEs decide.
        let switch = IfaceInfo { flags: IFACE_FLAG_SWITCH, ..iface() };
        assert!(!judge_from_app(&LoopWalk(&all), &switch, &to([10, 10, 1, 1], 22), &NONE).drop);
    }

    #[test]
    fn prefixes() {
        assert!(prefix_contains([10, 10, 1, 0], 24, [10, 10, 1, 77]));
        assert!(!prefix_contains([10, 10, 1, 0], 24, [10, 10, 2, 1]));
        assert!(prefix_contains([0, 0, 0, 0], 0, [1, 2, 3, 4]));
        assert!(prefix_contains([10, 10, 1, 3], 32, [10, 10, 1, 3]));
        assert!(!prefix_contains([10, 10, 1, 3], 32, [10, 10, 1, 4]));
        assert!(prefix_contains([192, 168, 0, 0], 16, [192, 168, 255, 1]));
    }

    #[test]
    fn first_match_wins_and_matches_are_anded() {
        let allow_web = Ace {
            id: 1,
            matches: MATCH_IP | MATCH_PROTO | MATCH_FPORT,
            prefix: [10, 10, 1, 3],
            prefix_len: 32,
            proto: PROTO_TCP,
            fport: 80,
            ..Ace::default()
        };
        let drop_udp = Ace { id: 2, matches: MATCH_IP | MATCH_PROTO, proto: PROTO_UDP, action: ACTION_DROP, ..Ace::default() };
        let allow_all = ip_ace(3, [0, 0, 0, 0], 0);
        let portmap = Ace { id: 7, matches: MATCH_PROTO, proto: PROTO_TCP, action: ACTION_PORTMAP, ..Ace::default() };
        let t = table(&[portmap, allow_web, drop_udp, allow_all]);
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [10, 10, 1, 3], 80), &NONE);
        assert_eq!(v, Verdict { mark: 0x0140_0001, drop: false, limit: 0, by: 2 });
        // Same host, other port: falls through ACE 1 to ACE 3.
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [10, 10, 1, 3], 22), &NONE);
        assert_eq!(v, Verdict { mark: 0x0140_0003, drop: false, limit: 0, by: 4 });
        // UDP anywhere hits the drop ACE before the allow-all.
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_UDP, [8, 8, 8, 8], 123), &NONE);
        assert_eq!(v, Verdict { mark: 0x01c0_0002, drop: true, limit: 0, by: 3 });
    }

    #[test]
    fn the_walk_names_the_deciding_ace_and_its_index() {
        let t = table(&[ip_ace(1, [10, 0, 0, 0], 8), ip_ace(2, [0, 0, 0, 0], 0)]);
        let q = AceQuery { proto: PROTO_TCP, remote: [8, 8, 8, 8], ..AceQuery::default() };
        assert_eq!(LoopWalk(&t).first(&q), Some(Decided { index: 1, ace: t[1] }));
        assert_eq!(LoopWalk(&t[..1]).first(&q), None);
    }

    #[test]
    fn default_drop_and_empty_acl() {
        let t = table(&[ip_ace(1, [192, 168, 0, 0], 16)]);
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [10, 99, 0, 1], 80), &NONE);
        assert_eq!(v, Verdict { mark: 0x01bf_ffff, drop: true, limit: 0, by: BY_DEFAULT });
        let v = judge_from_app(&LoopWalk(&[]), &iface(), &flow(PROTO_ICMP, [192, 168, 0, 1], 0), &NONE);
        assert!(v.drop);
    }

    #[test]
    fn implicit_rules_precede_user_aces() {
        let deny_all = Ace { id: 9, matches: 0, action: ACTION_DROP, ..Ace::default() };
        let t = table(&[deny_all]);
        let gw = iface().gateway;
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_UDP, gw, 53), &NONE);
        assert_eq!(v, Verdict { mark: 0x0100_0007, drop: false, limit: 0, by: BY_RULE });
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, gw, 53), &NONE);
        assert_eq!(v.mark, 0x0100_0007);
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_UDP, [255, 255, 255, 255], 67), &NONE);
        assert_eq!(v, Verdict { mark: 0x0100_0006, drop: false, limit: 0, by: BY_RULE });
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, METADATA_IP, 80), &NONE);
        assert_eq!(v, Verdict { mark: 0x0100_000b, drop: false, limit: 0, by: BY_RULE });
        // DNS to anyone but the gateway is the user's business.
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_UDP, [8, 8, 8, 8], 53), &NONE);
        assert_eq!(v, Verdict { mark: 0x01c0_0009, drop: true, limit: 0, by: 1 });
    }

    #[test]
    fn switch_ports_judge_outside_flows_by_the_apps_aces() {
        let sw = IfaceInfo { flags: IFACE_FLAG_SWITCH, ..iface() };
        let t = table(&[ip_ace(1, [192, 168, 0, 0], 16)]);
        let inbound = |src| Flow { proto: PROTO_TCP, src, dst: APP, sport: 8080, dport: 33000, ..Flow::default() };
        assert_eq!(judge_from_outside(&LoopWalk(&t), &sw, &inbound([192, 168, 0, 2]), &NONE).mark, 0x0140_0001);
        assert!(judge_from_outside(&LoopWalk(&t), &sw, &inbound([8, 8, 8, 8]), &NONE).drop);
        let offer = Flow { proto: PROTO_UDP, src: [192, 168, 3, 1], dst: [255, 255, 255, 255], sport: 67, dport: 68, ..Flow::default() };
        assert_eq!(
            judge_from_outside(&LoopWalk(&[]), &sw, &offer, &NONE),
            Verdict { mark: 0x0100_000a, drop: false, limit: 0, by: BY_RULE }
        );
        // DHCP and DNS to the outside's servers are implicit on a switch NI.
        assert_eq!(judge_from_app(&LoopWalk(&[]), &sw, &flow(PROTO_UDP, [192, 168, 3, 1], 67), &NONE).mark, 0x0100_0006);
        assert_eq!(judge_from_app(&LoopWalk(&[]), &sw, &flow(PROTO_UDP, [192, 168, 3, 1], 53), &NONE).mark, 0x0100_0007);
        assert!(judge_from_app(&LoopWalk(&[]), &iface(), &flow(PROTO_UDP, [192, 168, 3, 1], 53), &NONE).drop, "not on a local NI");
        // ... but no metadata (there is no server of ours): web to anywhere is the ACL's.
        assert!(judge_from_app(&LoopWalk(&[]), &sw, &flow(PROTO_TCP, [10, 99, 0, 10], 80), &NONE).drop);
        assert!(judge_from_app(&LoopWalk(&[]), &sw, &flow(PROTO_TCP, METADATA_IP, 80), &NONE).drop);
    }

    #[test]
    fn limit_aces_accept_and_name_their_bucket() {
        let limited = Ace { id: 1, matches: MATCH_IP, prefix: [192, 168, 0, 0], prefix_len: 16, action: ACTION_LIMIT, ..Ace::default() };
        let t = table(&[ip_ace(9, [10, 0, 0, 0], 8), limited]);
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [192, 168, 0, 2], 8080), &NONE);
        assert_eq!(v, Verdict { mark: 0x0140_0001, drop: false, limit: 2, by: 2 });
    }

    #[test]
    fn eidset_and_host_matches_use_the_looked_up_facts() {
        // The seed's app1 on NI2: eidset + tcp/80; and a host ACE (github.com) at index 1,
        // the first host ACE: bit 0 of the host set's mask.
        let eid_web = Ace { id: 1, matches: MATCH_EIDSET | MATCH_PROTO | MATCH_FPORT, proto: PROTO_TCP, fport: 80, ..Ace::default() };
        let github = Ace { id: 2, matches: MATCH_HOST, ..Ace::default() };
        let t = table(&[eid_web, github]);
        let peer = flow(PROTO_TCP, [10, 10, 1, 3], 80);
        let eid = RemoteFacts { in_eidset: true, host_mask: 0, device: false };
        assert_eq!(judge_from_app(&LoopWalk(&t), &iface(), &peer, &eid).mark, 0x0140_0001);
        assert!(judge_from_app(&LoopWalk(&t), &iface(), &peer, &NONE).drop, "not another app: no match");
        assert!(judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [10, 10, 1, 3], 22), &eid).drop);
        let site = flow(PROTO_TCP, [140, 82, 121, 3], 443);
        let resolved = RemoteFacts { in_eidset: false, host_mask: 1 << 0, device: false };
        assert_eq!(judge_from_app(&LoopWalk(&t), &iface(), &site, &resolved).mark, 0x0140_0002);
        // Resolved for another ACE's host only: no match for this one.
        let other = RemoteFacts { in_eidset: false, host_mask: 1 << 1, device: false };
        assert!(judge_from_app(&LoopWalk(&t), &iface(), &site, &other).drop);
    }

    #[test]
    fn a_changed_acl_leaves_alike_the_flows_its_kept_aces_or_rules_decided() {
        // Decided by ACE index 1 (by 2): alike while the first two ACEs stay.
        assert!(decided_alike(2, 2));
        assert!(decided_alike(2, 10));
        assert!(!decided_alike(2, 1), "ACE 1 itself changed");
        assert!(!decided_alike(BY_DEFAULT, 10), "a default drop may meet an added ACE");
        assert!(decided_alike(BY_RULE, 0), "an implicit rule knows no ACL");
        // The device's own addresses are a rule's drop, not the default's.
        let t = table(&[ip_ace(1, [0, 0, 0, 0], 0)]);
        let device = RemoteFacts { in_eidset: false, host_mask: 0, device: true };
        let v = judge_from_app(&LoopWalk(&t), &iface(), &flow(PROTO_TCP, [192, 168, 0, 1], 22), &device);
        assert_eq!((v.drop, v.by), (true, BY_RULE));
    }

    #[test]
    fn flows_toward_the_app() {
        let i = iface();
        let from = |src| Flow { proto: PROTO_TCP, src, dst: APP, sport: 5555, dport: 80, ..Flow::default() };
        assert_eq!(judge_toward_app(&i, &from(i.eve_ip), 0), Verdict { mark: 0x0100_000a, drop: false, limit: 0, by: BY_RULE });
        assert!(!judge_toward_app(&i, &from(i.gateway), 0).drop);
        assert_eq!(judge_toward_app(&i, &from([10, 10, 1, 9]), 0), Verdict { mark: 0x01bf_ffff, drop: true, limit: 0, by: BY_DEFAULT });
        // A port map of this app (user ACE 2) lets the outside in; another app's does not.
        assert_eq!(
            judge_toward_app(&i, &from([169, 254, 100, 5]), 0x0140_0002),
            Verdict { mark: 0x0140_0002, drop: false, limit: 0, by: BY_RULE }
        );
        assert!(judge_toward_app(&i, &from([169, 254, 100, 5]), 0x0240_0002).drop);
        assert!(judge_toward_app(&i, &from([169, 254, 100, 5]), 0x0100_0002).drop);
    }
}
