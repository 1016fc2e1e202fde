//! Types shared by the eBPF programs and the agent, and the pure logic both sides use.
//!
//! Everything here is `no_std`, allocation-free and free of kernel calls, so the host can
//! unit-test exactly the code that runs in the kernel. Map key/value types are `#[repr(C)]`
//! with explicit padding fields: the kernel hashes whole keys, and the verifier rejects
//! keys with uninitialised padding bytes.
#![no_std]

pub mod acl;
pub mod classify;
pub mod csum;
pub mod ct;
pub mod event;
pub mod fast;
pub mod frag;
pub mod guard;
pub mod limit;
pub mod mark;
pub mod nat;
pub mod packet;

/// An IPv4 address as its four network-order bytes. Kept as bytes (not a `u32`) so that
/// `bpftool map dump` shows `[10,10,1,2]` instead of a byte-swapped integer.
pub type Ipv4 = [u8; 4];

/// Upper bound on app ports per agent (all NIs): the size of the per-interface maps.
pub const MAX_APP_PORTS: u32 = 1024;
/// IFZONE_V1's size: every app port and every translating interface.
pub const IF_ZONES_MAX_ENTRIES: u32 = MAX_APP_PORTS + nat::NAT_IFACES_MAX_ENTRIES;
/// The zone of an interface the agent did not register (IFZONE_V1): no zone is this.
pub const NO_ZONE: u32 = u32::MAX;

/// The ifindexes the agent gives the interfaces it makes that carry programs: one copy of
/// the programs serves every NI and learns an interface's zone from its ifindex, so these
/// are unique across all namespaces. They sit far above the kernel's picks, which count
/// up from 1 in each netns: `CHOSEN_IFINDEX_BASE | zone << 16 | slot`, where slot
/// `SLOT_NI_END` is the NI veth's NI end, `SLOT_AGENT_END` its agent end, and
/// `(k + 1) << 8 | app number` the bridge port of an app's k-th interface (the config
/// bounds zones and app numbers to 255, k to 98).
pub const CHOSEN_IFINDEX_BASE: u32 = 0x4000_0000;
pub const SLOT_NI_END: u32 = 1;
pub const SLOT_AGENT_END: u32 = 2;

pub const fn chosen_ifindex(zone: u32, slot: u32) -> u32 {
    CHOSEN_IFINDEX_BASE | zone << 16 | slot
}

/// The zone of an interface whose ifindex the agent chose, read from the ifindex itself:
/// its NI's, or for an NI veth's agent end the agent's domain (whose translations it
/// applies). None: the kernel chose it (an uplink, a VM's tap): IFZONE_V1 says. The
/// programs read it so, without a hash lookup per packet; the agent registers no
/// interface whose ifindex would say another zone.
#[inline(always)]
pub fn chosen_ifindex_zone(ifindex: u32) -> Option<u32> {
    if ifindex & 0xff00_0000 != CHOSEN_IFINDEX_BASE {
        return None;
    }
    match ifindex & 0xffff {
        SLOT_AGENT_END => Some(nat::DOMAIN_AGENT),
        _ => Some(ifindex >> 16 & 0xff),
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// DCCP and UDP-Lite: no ports read (their flows are told apart by their addresses, as
/// any other protocol's), but a checksum over the pseudo header, at the same place as
/// UDP's, which an address translation must follow (`rewrite`).
pub const PROTO_DCCP: u8 = 33;
pub const PROTO_UDPLITE: u8 = 136;

/// Versioned names of the pinned maps. aya reuses an existing pin without checking its
/// layout, so any layout change must bump the suffix (the agent refuses a pin whose
/// layout is not the object's: a change that kept the name fails every load).
pub mod map_names {
    pub const CONNTRACK: &str = "CT_V4";
    pub const IFACES: &str = "IFACE_V3";
    /// ifindex -> zone of every interface that carries the programs.
    pub const IF_ZONES: &str = "IFZONE_V1";
    /// An ACL's compiled form (`classify`), keyed by ACL id. All at a new version when
    /// one changes: an agent that finds none of its ACLs there writes every port's ACL
    /// anew (under ids above those the ports' entries name), and no entry an older
    /// agent left under an id can mix with a new ACL's.
    pub const ACL_SHAPES: &str = "ACLSHAPE_V3";
    pub const ACL_RANGES: &str = "ACLRANGE_V2";
    pub const ACL_PROTO: &str = "ACLPROTO_V3";
    pub const ACES: &str = "ACE_V4";
    pub const ACL_HOSTS: &str = "ACLHOST_V3";
    pub const ACL_SUMMARY: &str = "ACLSUM_V1";
    /// The programs' scratch space for the ACL search (per CPU).
    pub const ACL_WALK: &str = "ACLWALK_V2";
    pub const STATS: &str = "STATS_V13";
    pub const NAT: &str = "NAT_V2";
    pub const NAT_IFACES: &str = "NATIF_V1";
    pub const PORTMAPS: &str = "PORTMAP_V1";
    pub const EIDSET: &str = "EIDSET_V1";
    pub const HOSTSET: &str = "HOSTSET_V1";
    pub const LIMITS: &str = "LIMIT_V1";
    pub const DEVICE: &str = "DEVICE_V1";
    pub const DROPS: &str = "DROP_V2";
    pub const FRAGS: &str = "FRAG_V1";
    pub const ZONE_USE: &str = "ZONEUSE_V1";
    pub const PORT_USE: &str = "PORTUSE_V1";
    pub const EVENTS: &str = "FLOWEV_V2";
    pub const PORT_STATS: &str = "PORTSTAT_V1";
    /// zone -> where the NI's fast path leads (`fast::FastZone`).
    pub const FAST_ZONES: &str = "FASTZONE_V4";
    /// The programs' scratch space for FIB lookups (per CPU).
    pub const FIB_SCRATCH: &str = "FIBSCRATCH_V4";
    /// The programs the others continue in by tail call (`fast::TAIL_FROM_APP`).
    pub const FAST_PROGRAMS: &str = "FASTPROG_V1";
}

/// The /24 of the NIs' veth pairs (169.254.100.0/24): the agent-side ends are the
/// device's own addresses.
pub const VETH_NET: Ipv4 = [169, 254, 100, 0];
pub const VETH_NET_LEN: u8 = 24;
/// Entries of DEVICE_V1: the device's own addresses outside VETH_NET (its uplinks').
pub const MAX_DEVICE_ADDRS: u32 = 64;

/// Program names in the eBPF object.
pub mod prog_names {
    /// TC ingress on an app's bridge port: packets coming from the app.
    pub const APP_PORT_FROM_APP: &str = "app_port_from_app";
    /// TC egress on an app's bridge port: packets going to the app.
    pub const APP_PORT_TO_APP: &str = "app_port_to_app";
    /// The from-app program's fast path, which it continues in by tail call (never
    /// attached itself: FASTPROG_V1 holds it).
    pub const APP_PORT_FROM_APP_FAST: &str = "app_port_from_app_fast";
    /// TC ingress/egress of a translating interface (NI veth, agent-side veth, uplink).
    pub const NAT_INGRESS: &str = "nat_ingress";
    pub const NAT_EGRESS: &str = "nat_egress";
}

/// Key of the per-interface maps: the NI zone plus the ifindex inside the NI's netns
/// (ifindexes repeat across namespaces, so the zone disambiguates).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub zone: u32,
    pub ifindex: u32,
}

/// What the programs need to know about an app's bridge port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// EVE's app number (the top byte of the connection mark).
    pub app_num: u32,
    /// The port's ACL in the classify maps (`classify`): a new id, unique across ports,
    /// for every change of the ACL, which is written under it before this entry names it
    /// (so a packet sees the old ACL or the new one, whole). CT entries judged under
    /// another id are judged again on their next packet, except those judged under
    /// `prev_acl_id` that the change leaves alike (`acl::decided_alike`).
    pub acl_id: u32,
    /// The ACL `acl_id` replaced (0: none), and how many leading ACEs the two share.
    pub prev_acl_id: u32,
    pub kept_aces: u32,
    /// The app's own address on this NI.
    pub app_ip: Ipv4,
    /// The NI's gateway (bridge) address: DHCP/DNS/metadata live here.
    pub gateway: Ipv4,
    /// The agent-side address of the NI's veth: the source of EVE-initiated flows.
    pub eve_ip: Ipv4,
    /// `IFACE_FLAG_*`.
    pub flags: u32,
    /// The app's MAC: the only Ethernet and ARP sender the port accepts from the app
    /// (when `IFACE_FLAG_CHECK_MAC`).
    pub app_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The port is on a switch NI: no gateway of ours, DHCP and DNS are the outside's, and
/// flows from outside are judged by the app's ACEs with the remote as source.
pub const IFACE_FLAG_SWITCH: u32 = 1;
/// The app's MAC is known (a veth the agent made, or a VM whose `mac` the config gives):
/// frames from the app must carry it.
pub const IFACE_FLAG_CHECK_MAC: u32 = 2;
/// Switch NI: `app_ip` is the app's and is enforced (configured, or learned).
pub const IFACE_FLAG_IP_KNOWN: u32 = 4;
/// Switch NI: the app's address is learned from the DHCP replies the port delivers to it
/// (the to-app program writes `app_ip` and sets `IFACE_FLAG_IP_KNOWN`).
pub const IFACE_FLAG_IP_LEARN: u32 = 8;
/// The port is a veth whose other end is the app's own, in the app's netns (not a VM's
/// tap): the fast path may hand a packet to that end directly (`bpf_redirect_peer`).
pub const IFACE_FLAG_APP_NETNS: u32 = 16;

/// What an app port passed and dropped, per direction (`PORT_DIR_*`): a per-CPU hash
/// entry per port (key as IFACE_V3's), made by the agent with the port, so the programs
/// only look it up (no insert on the packet path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub passed_packets: [u64; 2],
    pub passed_bytes: [u64; 2],
    pub dropped_packets: [u64; 2],
    pub dropped_bytes: [u64; 2],
}

/// Index of `PortCounters`' arrays: packets from the app (TC ingress of its port).
pub const PORT_DIR_FROM_APP: usize = 0;
/// Packets to the app (TC egress of its port).
pub const PORT_DIR_TO_APP: usize = 1;

impl PortCounters {
    /// Counts one packet of `bytes` in direction `dir` (`PORT_DIR_*`).
    #[inline(always)]
    pub fn count(&mut self, dir: usize, dropped: bool, bytes: u64) {
        let dir = dir & 1;
        if dropped {
            self.dropped_packets[dir] += 1;
            self.dropped_bytes[dir] += bytes;
        } else {
            self.passed_packets[dir] += 1;
            self.passed_bytes[dir] += bytes;
        }
    }

    /// The sum of per-CPU slots.
    pub fn add(&mut self, other: &PortCounters) {
        for d in 0..2 {
            self.passed_packets[d] += other.passed_packets[d];
            self.passed_bytes[d] += other.passed_bytes[d];
            self.dropped_packets[d] += other.dropped_packets[d];
            self.dropped_bytes[d] += other.dropped_bytes[d];
        }
    }
}

/// An app address on an NI: the eidset of the NI's other apps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EidKey {
    pub zone: u32,
    pub addr: Ipv4,
}

/// An address that a DNS answer gave the app on port `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub zone: u32,
    pub ifindex: u32,
    pub addr: Ipv4,
}

/// Entries of HOSTSET_V1 (LRU: the oldest answers go first).
pub const HOSTSET_MAX_ENTRIES: u32 = 65536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// Bit i: the answer's name matched the host suffix of the port's ACE i.
    pub ace_mask: u64,
    /// CLOCK_MONOTONIC after which the entry no longer matches (TTL + grace).
    pub expires_ns: u64,
}

/// Zones (NIs) with a share of the conntrack and NAT maps; NI indexes stay below.
pub const MAX_ZONES: u32 = 256;

/// An NI's use of the shared conntrack and NAT maps against its share, indexed by zone.
/// The programs add every entry they create; the agent's sweep writes the true counts
/// back (entries expire or are evicted without telling anyone). Between sweeps a count
/// errs high (expired entries still count: a zone is refused early, not late), low only
/// by those made between the sweep's read of the map and its write of the count (the
/// next sweep counts them). 0 as a share: no bound.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneUse {
    pub ct: u32,
    pub nat: u32,
    pub ct_share: u32,
    pub nat_share: u32,
}

impl ZoneUse {
    /// Half of either share used or more: the agent sweeps every second, so that expired
    /// entries (closed TCP flows after 10 s) give their room back promptly, also to a
    /// port refused past its part (`PortUse::refuses`, from the same mark).
    pub fn pressed(&self) -> bool {
        self.ct_half_held() || (self.nat_share != 0 && self.nat >= self.nat_share / 2)
    }

    /// Whether the NI holds half its conntrack share or more (a bound share).
    #[inline(always)]
    pub fn ct_half_held(&self) -> bool {
        self.ct_share != 0 && self.ct >= self.ct_share / 2
    }
}

/// An app port's use of its NI's conntrack share, keyed by the port (`IfaceKey`): the
/// flows judged there (the ones the app starts and the ones let in to it) against the
/// port's part of the share (`PortUse::share_of`). A port past its part is refused new
/// flows while its NI holds half its share or more (`PortUse::refuses`,
/// `drop_port_full`): an app may use what its neighbours leave, but one port's flood
/// takes its part, or half the share if that is more, and the other ports keep the rest
/// (with two ports, each its whole part; with more, a port within its part may still
/// find the share full once a neighbour took half of it before the NI got there).
/// Counted as `ZoneUse` is: the programs add every entry they create, the sweep (every
/// second while the NI holds half its share or more: `ZoneUse::pressed`) writes the true
/// count back. No part for translations: an app's go with its
/// flows (four entries at most per flow), though a closed flow's outlives its entry here.
/// A port with no entry here (between its config's write and the end of the apply
/// that wrote it) is bound by its NI's share only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortUse {
    pub ct: u32,
    /// 0: no bound of its own.
    pub ct_share: u32,
}

impl PortUse {
    /// A port's part of its NI's conntrack share (`zone_share`, 0: no bound) when the NI
    /// has `ports` app ports: an equal part (a lone app's is the whole share; what a part
    /// keeps for its app: `PortUse`), at least 1 of a bound share (0 means no bound).
    pub fn share_of(zone_share: u32, ports: u32) -> u32 {
        match zone_share {
            0 => 0,
            share => (share / ports.max(1)).max(1),
        }
    }

    /// Whether a new flow of this port is refused (its NI's share not full: `zone`): the
    /// port is past its part while the NI holds half its share or more.
    #[inline(always)]
    pub fn refuses(&self, zone: &ZoneUse) -> bool {
        self.ct_share != 0 && self.ct >= self.ct_share && zone.ct_half_held()
    }
}

/// The NI that a translation in the agent's netns belongs to: the NI whose veth address
/// (169.254.100.4N-3 agent side, 4N-2 NI side) it involves; 0 when none.
#[inline(always)]
pub fn veth_zone(addr: Ipv4) -> u32 {
    if acl::prefix_contains(VETH_NET, VETH_NET_LEN, addr) {
        (addr[3] as u32).div_ceil(4)
    } else {
        0
    }
}

/// Defines `Stat` once: each counter's variant, its slot in the per-CPU array and its
/// name (`flows --json`, the metrics' `reason` label); `ALL` and `COUNT` follow.
macro_rules! stats {
    ($($(#[$doc:meta])* $variant:ident = $slot:literal => $name:literal,)*) => {
        /// Counters of the programs' decisions, one slot each in a per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat {
            $($(#[$doc])* $variant = $slot,)*
        }

        impl Stat {
            pub const ALL: [Stat; [$($slot),*].len()] = [$(Stat::$variant),*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            pub fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)*
                }
            }
        }
    };
}

stats! {
    PassArp = 0 => "pass_arp",
    DropNonIpv4 = 1 => "drop_non_ipv4",
    DropMalformed = 2 => "drop_malformed",
    /// A later IPv4 fragment whose first fragment was not seen (or too long ago).
    DropFragment = 3 => "drop_fragment",
    CtNew = 4 => "ct_new",
    CtInsertFailed = 5 => "ct_insert_failed",
    DropAcl = 6 => "drop_acl",
    PassCt = 7 => "pass_ct",
    DropCt = 8 => "drop_ct",
    NoIfaceConfig = 9 => "no_iface_config",
    /// A flow judged again because its port's ACL changed.
    Rejudged = 10 => "rejudged",
    DropUnsolicited = 11 => "drop_unsolicited",
    NatNew = 12 => "nat_new",
    NatNoPort = 13 => "nat_no_port",
    NatRewrite = 14 => "nat_rewrite",
    PortmapNew = 15 => "portmap_new",
    NatMalformed = 16 => "nat_malformed",
    DropLimit = 17 => "drop_limit",
    /// From an app: a source MAC, IPv4 source or ARP sender that is not the app's.
    DropSpoofed = 18 => "drop_spoofed",
    /// From an app: a packet of a flow whose entry belongs to another port.
    DropCtPort = 19 => "drop_ct_port",
    /// An ICMP error whose addresses do not fit the flow it quotes.
    DropIcmpMismatch = 20 => "drop_icmp_mismatch",
    /// An RST too far from its sender's sequence numbers to be its own.
    DropTcpRst = 21 => "drop_tcp_rst",
    /// A new flow (or translation) of an NI that holds its whole share of the conntrack
    /// (or NAT) map.
    DropZoneFull = 22 => "drop_zone_full",
    /// A fragment passed by its first fragment's verdict and translation.
    PassFragment = 23 => "pass_fragment",
    /// A flow event the ring buffer had no room for (the agent is behind).
    EventLost = 24 => "event_lost",
    /// A flow whose port's ACL changed but which the new ACL decides alike (its deciding
    /// ACE is among those the change kept, or a rule decided it): not judged again.
    RejudgeSkipped = 25 => "rejudge_skipped",
    /// Fast path (`fast`): an app's packet sent from its port past the bridge and the NI's
    /// routing (to the NI veth's egress, or past it: `FastPastNiVeth`).
    FastFromApp = 26 => "fast_from_app",
    /// Fast path: a packet from an NI sent from the agent-side veth straight out of its
    /// uplink.
    FastToUplink = 27 => "fast_to_uplink",
    /// Fast path: a reply sent from the uplink straight into its NI (the NI veth).
    FastFromUplink = 28 => "fast_from_uplink",
    /// Fast path: a reply sent from the NI veth past the NI's routing and the bridge, to its
    /// app's port (its egress, or past it: `FastIntoApp`).
    FastToApp = 29 => "fast_to_app",
    /// Fast path: an app's packet sent on from its port, translated as the NI veth's
    /// egress would, straight to the agent-side veth (a `fast_from_app` packet whose
    /// translation is known, or made there for a new flow; the others go to the NI veth).
    FastPastNiVeth = 30 => "fast_past_ni_veth",
    /// Fast path: a reply handed from the NI veth straight into its app's netns, past
    /// the app port's egress (a `fast_to_app` packet the port would only have counted;
    /// the others go to the port's egress).
    FastIntoApp = 31 => "fast_into_app",
    /// Fast path: a packet sent from the agent-side veth out of its uplink translated
    /// already, as the uplink's egress would translate it (a `fast_to_uplink` packet whose
    /// translation needs nothing else; the others are translated at that egress).
    FastSnatDone = 32 => "fast_snat_done",
    /// A new flow's first packets met on two CPUs, each finding no entry: the one whose
    /// conntrack entry came second joined the other's (counted there, no second start).
    CtClash = 33 => "ct_clash",
    /// The same for a new source translation: the packet whose translation came second
    /// took the other's, and gave back the port it had claimed (the flow leaves by one
    /// source).
    NatClash = 34 => "nat_clash",
    /// Toward an app: a copy of a frame for another port's app, which the bridge flooded,
    /// or a frame for this app's MAC carrying a packet for another address
    /// (`guard::for_another_port`); that port judges it.
    DropNotForApp = 35 => "drop_not_for_app",
    /// Fast path: a reply sent from the uplink into its NI translated back to its app's
    /// address already, as the NI veth's ingress would translate it (a `fast_from_uplink`
    /// packet whose translation at the uplink carries the NI's; the others are translated
    /// at that ingress).
    FastNiNatDone = 36 => "fast_ni_nat_done",
    /// From outside, at an uplink's ingress: a packet from or to the NI veths' network
    /// (`nat::outside_claims_inside`; ICMP errors go by whether they fit a flow).
    DropUplinkSpoof = 37 => "drop_uplink_spoof",
    /// A new flow past its app port's part of the NI's conntrack share (`PortUse`).
    DropPortFull = 38 => "drop_port_full",
}

impl Stat {
    /// The fast path's hops, in the order a packet pair meets them: out from the app,
    /// past the NI veth, to the uplink, translated there; back from the uplink,
    /// translated there through the NI's translation too, to the app, into the app (the
    /// demo and the tests look for packets on each).
    pub const FAST_HOPS: [Stat; 8] = [
        Stat::FastFromApp,
        Stat::FastPastNiVeth,
        Stat::FastToUplink,
        Stat::FastSnatDone,
        Stat::FastFromUplink,
        Stat::FastNiNatDone,
        Stat::FastToApp,
        Stat::FastIntoApp,
    ];
}

/// The map types' sizes, checked when either side compiles: a field added or reordered
/// changes the layout the pinned maps were made with, which needs a new `_Vn` pin name
/// (aya reuses a pin without checking it; the agent's check would refuse it).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<IfaceKey>() == 8);
    assert!(size_of::<IfaceInfo>() == 40);
    assert!(size_of::<ct::CtKey>() == 20);
    assert!(size_of::<ct::CtValue>() == 80);
    assert!(size_of::<acl::Ace>() == 16);
    assert!(size_of::<classify::Bits>() == 64);
    assert!(size_of::<classify::RangeKey>() == 8);
    // A page and the hash map's own header and key in a 4 KiB allocation.
    assert!(size_of::<classify::RangePage>() == 3592);
    assert!(size_of::<classify::ProtoBitsKey>() == 12);
    assert!(size_of::<classify::SummaryKey>() == 8);
    // A page and the hash map's own header and key in a 4 KiB allocation.
    assert!(size_of::<classify::SummaryPage>() == 3080);
    assert!(size_of::<classify::AceKey>() == 8);
    assert!(size_of::<classify::AceGroup>() == 16 * classify::ACES_PER_GROUP);
    assert!(size_of::<classify::AclShape>() == 16);
    assert!(size_of::<nat::NatKey>() == 20);
    assert!(size_of::<nat::NatValue>() == 24);
    assert!(size_of::<nat::NatIface>() == 24);
    assert!(size_of::<nat::PortmapKey>() == 12);
    assert!(size_of::<nat::PortmapTarget>() == 16);
    assert!(size_of::<EidKey>() == 8);
    assert!(size_of::<HostKey>() == 12);
    assert!(size_of::<HostEntry>() == 16);
    assert!(size_of::<limit::LimitKey>() == 12);
    assert!(size_of::<limit::Bucket>() == 64);
    assert!(size_of::<ZoneUse>() == 16);
    assert!(size_of::<PortUse>() == 8);
    assert!(size_of::<fast::FastZone>() == 52);
    assert!(size_of::<event::FlowEvent>() == 112);
    assert!(size_of::<PortCounters>() == 64);
    assert!(size_of::<frag::FragKey>() == 16);
    assert!(size_of::<frag::FragValue>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding and no
    // invalid bit patterns.
    unsafe impl aya::Pod for super::IfaceKey {}
    unsafe impl aya::Pod for super::IfaceInfo {}
    unsafe impl aya::Pod for super::ct::CtKey {}
    unsafe impl aya::Pod for super::ct::CtValue {}
    unsafe impl aya::Pod for super::acl::Ace {}
    unsafe impl aya::Pod for super::classify::Bits {}
    unsafe impl aya::Pod for super::classify::RangeKey {}
    unsafe impl aya::Pod for super::classify::RangePage {}
    unsafe impl aya::Pod for super::classify::ProtoBitsKey {}
    unsafe impl aya::Pod for super::classify::SummaryKey {}
    unsafe impl aya::Pod for super::classify::SummaryPage {}
    unsafe impl aya::Pod for super::classify::AceKey {}
    unsafe impl aya::Pod for super::classify::AceGroup {}
    unsafe impl aya::Pod for super::classify::AclShape {}
    unsafe impl aya::Pod for super::nat::NatKey {}
    unsafe impl aya::Pod for super::nat::NatValue {}
    unsafe impl aya::Pod for super::nat::NatIface {}
    unsafe impl aya::Pod for super::nat::PortmapKey {}
    unsafe impl aya::Pod for super::nat::PortmapTarget {}
    unsafe impl aya::Pod for super::EidKey {}
    unsafe impl aya::Pod for super::HostKey {}
    unsafe impl aya::Pod for super::HostEntry {}
    unsafe impl aya::Pod for super::limit::LimitKey {}
    unsafe impl aya::Pod for super::limit::Bucket {}
    unsafe impl aya::Pod for super::ZoneUse {}
    unsafe impl aya::Pod for super::PortUse {}
    unsafe impl aya::Pod for super::fast::FastZone {}
    unsafe impl aya::Pod for super::event::FlowEvent {}
    unsafe impl aya::Pod for super::PortCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_port_keeps_an_equal_part_of_its_nis_share() {
        assert_eq!(PortUse::share_of(57_344, 1), 57_344, "a lone app holds the whole share");
        assert_eq!(PortUse::share_of(57_344, 2), 28_672);
        assert_eq!(PortUse::share_of(57_344, 0), 57_344, "no port yet: no division by zero");
        assert_eq!(PortUse::share_of(0, 4), 0, "an NI without a bound: its ports have none");
        assert_eq!(PortUse::share_of(224, 300), 1, "a tiny share still bounds each port");
        // Two apps: each holds 28,672 of the NI's 57,344 when the NI is pressed.
        let zone = |ct| ZoneUse { ct, ct_share: 57_344, ..ZoneUse::default() };
        let past = PortUse { ct: 28_672, ct_share: 28_672 };
        assert!(past.refuses(&zone(28_672)), "past its part, the NI at half its share");
        assert!(!past.refuses(&zone(28_671)), "the NI has room to spare: the neighbours' too");
        assert!(!PortUse { ct: 28_671, ..past }.refuses(&zone(57_000)), "within its part: never refused for the port");
        assert!(!PortUse { ct: 100_000, ct_share: 0 }.refuses(&zone(57_000)), "0: no bound of its own");
        assert!(!past.refuses(&ZoneUse { ct: 90_000, ..ZoneUse::default() }), "an NI without a bound");
        // From the same mark on, the sweep runs every second: the refused port's expired
        // entries give their room back promptly.
        assert!(zone(28_672).pressed() && !zone(28_671).pressed());
    }

    #[test]
    fn a_chosen_ifindex_names_its_zone_and_a_kernel_pick_none() {
        for zone in [1, 7, 255] {
            assert_eq!(chosen_ifindex_zone(chosen_ifindex(zone, SLOT_NI_END)), Some(zone));
            assert_eq!(chosen_ifindex_zone(chosen_ifindex(zone, SLOT_AGENT_END)), Some(nat::DOMAIN_AGENT), "an agent end");
            for (k, app) in [(0, 1), (3, 200), (98, 255)] {
                assert_eq!(chosen_ifindex_zone(chosen_ifindex(zone, (k + 1) << 8 | app)), Some(zone), "app port {k}/{app}");
            }
        }
        for kernel in [1, 2, 5, 0x3fff_ffff, 0x4100_0001, 0xc000_0001] {
            assert_eq!(chosen_ifindex_zone(kernel), None, "{kernel:#x}");
        }
    }

    #[test]
    fn stats_fill_their_slots_in_order_with_distinct_names() {
        for (slot, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, slot, "{stat:?}");
        }
        for (i, a) in Stat::ALL.iter().enumerate() {
            assert!(Stat::ALL[i + 1..].iter().all(|b| a.name() != b.name()), "{a:?}'s name is taken twice");
        }
    }

    #[test]
    fn port_counters_count_each_way_and_sum_over_cpus() {
        let mut cpu0 = PortCounters::default();
        cpu0.count(PORT_DIR_FROM_APP, false, 100);
        cpu0.count(PORT_DIR_TO_APP, true, 60);
        let mut cpu1 = PortCounters::default();
        cpu1.count(PORT_DIR_FROM_APP, false, 40);
        let mut sum = PortCounters::default();
        sum.add(&cpu0);
        sum.add(&cpu1);
        assert_eq!((sum.passed_packets, sum.passed_bytes), ([2, 0], [140, 0]));
        assert_eq!((sum.dropped_packets, sum.dropped_bytes), ([0, 1], [0, 60]));
        assert_eq!(size_of::<PortCounters>(), 64, "the map's value size (ABI)");
    }
}
