//! The maps every program shares (pinned by the agent under its pin directory, names
//! from `map_names`), and `zone`, which tells a program the NI of the interface it runs on.

use crate::{app_port::WalkState, fast::FibScratch, skb::ifindex};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    macros::btf_map,
    programs::TcContext,
};
use netns_ebpf_common::{
    chosen_ifindex_zone,
    classify::{
        AceGroup, AceKey, AclShape, Bits, ProtoBitsKey, RangeKey, RangePage, SummaryKey, SummaryPage, ACES_MAX_ENTRIES,
        ACE_GROUPS_MAX_ENTRIES, BITS_MAX_ENTRIES, RANGES_MAX_ENTRIES, SHAPES_MAX_ENTRIES, SUMMARY_MAX_ENTRIES,
    },
    ct::{CtKey, CtValue, CT_MAX_ENTRIES, DROP_MAX_ENTRIES},
    event::{FlowEvent, EVENTS_BYTES},
    fast::{FastZone, TAIL_PROGRAMS},
    frag::{FragKey, FragValue, FRAG_MAX_ENTRIES},
    limit::{Bucket, LimitKey, LIMIT_MAX_ENTRIES},
    nat::{NatIface, NatKey, NatValue, PortmapKey, PortmapTarget, NAT_IFACES_MAX_ENTRIES, NAT_MAX_ENTRIES, PORTMAP_MAX_ENTRIES},
    EidKey, HostEntry, HostKey, IfaceInfo, IfaceKey, PortCounters, PortUse, Stat, ZoneUse, HOSTSET_MAX_ENTRIES, IF_ZONES_MAX_ENTRIES,
    MAX_APP_PORTS, MAX_DEVICE_ADDRS, MAX_ZONES, NO_ZONE,
};

/// The zone (NI; for the agent netns' interfaces the agent's translation domain) of each
/// interface that carries our programs. One copy of the programs serves every NI, so the
/// interface says which: the agent gives the interfaces it creates ifindexes that are
/// unique across namespaces, and registers each one here before it attaches programs.
#[btf_map(name = "IFZONE_V1")]
pub static IF_ZONES: HashMap<u32, u32, { IF_ZONES_MAX_ENTRIES as usize }> = HashMap::new();

/// The zone of the interface the packet is on: read from its ifindex when the agent
/// chose that (`chosen_ifindex_zone`: every NI-side interface; no hash lookup, which was
/// a twentieth of the programs' time), else from IFZONE_V1; `NO_ZONE` for one the agent
/// did not register. No config is keyed by an interface the agent has not configured:
/// such a port passes nothing, such a NAT interface translates nothing, whichever zone
/// it reads.
#[inline(always)]
pub fn zone(ctx: &TcContext) -> u32 {
    let ifindex = ifindex(ctx);
    match chosen_ifindex_zone(ifindex) {
        Some(zone) => zone,
        None => unsafe { IF_ZONES.get(&ifindex) }.copied().unwrap_or(NO_ZONE),
    }
}

// BTF map definitions, so `bpftool map dump` prints keys and values field by field. The
// agent pins every map under its pin directory (names from `map_names`).

#[btf_map(name = "CT_V4")]
pub static CT: LruHashMap<CtKey, CtValue, { CT_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Records of dropped flows, for the flow log only: never consulted for a verdict, and
/// apart from CT so that denied tuples cannot evict live flows.
#[btf_map(name = "DROP_V2")]
pub static DROPS: LruHashMap<CtKey, CtValue, { DROP_MAX_ENTRIES as usize }> = LruHashMap::new();

/// First fragments' ports, for the later fragments of the same datagram.
#[btf_map(name = "FRAG_V1")]
pub static FRAGS: LruHashMap<FragKey, FragValue, { FRAG_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Per app port: packets and bytes passed and dropped each way (the agent's metrics).
#[btf_map(name = "PORTSTAT_V1")]
pub static PORT_STATS: PerCpuHashMap<IfaceKey, PortCounters, { MAX_APP_PORTS as usize }> = PerCpuHashMap::new();

/// Flow events for the agent's flow log.
#[btf_map(name = "FLOWEV_V2")]
pub static EVENTS: RingBuf<FlowEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Each NI's use of CT and NAT against its share.
#[btf_map(name = "ZONEUSE_V1")]
pub static ZONE_USE: Array<ZoneUse, { MAX_ZONES as usize }> = Array::new();
/// Each app port's use of its NI's conntrack share against its part of it.
#[btf_map(name = "PORTUSE_V1")]
pub static PORT_USE: HashMap<IfaceKey, PortUse, { MAX_APP_PORTS as usize }> = HashMap::new();

#[btf_map(name = "IFACE_V3")]
pub static IFACES: HashMap<IfaceKey, IfaceInfo, { MAX_APP_PORTS as usize }> = HashMap::new();

// The ports' ACLs, compiled to bitmaps (`classify`) under their ids. Filled as ACLs come
// and go: allocated per entry (BPF_F_NO_PREALLOC), not for the whole capacity up front.

#[btf_map(name = "ACLSHAPE_V3")]
pub static ACL_SHAPES: HashMap<u32, AclShape, { SHAPES_MAX_ENTRIES as usize }> = HashMap::new();

/// The address and port range tables' pages.
#[btf_map(name = "ACLRANGE_V2")]
pub static ACL_RANGES: HashMap<RangeKey, RangePage, { RANGES_MAX_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "ACLPROTO_V3")]
pub static ACL_PROTO: HashMap<ProtoBitsKey, Bits, { BITS_MAX_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "ACE_V4")]
pub static ACES: HashMap<AceKey, AceGroup, { ACE_GROUPS_MAX_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();

/// The summaries' pages: which chunks of an ACL can decide a flow.
#[btf_map(name = "ACLSUM_V1")]
pub static ACL_SUMMARY: HashMap<SummaryKey, SummaryPage, { SUMMARY_MAX_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();

/// Host ACE ordinal -> its ACE index.
#[btf_map(name = "ACLHOST_V3")]
pub static ACL_HOSTS: HashMap<AceKey, u32, { ACES_MAX_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();

/// The ACL search's state, one per CPU: on the from-app program's stack it would push the
/// program and the search's callbacks over the 512 bytes 6.1's verifier allows them
/// together.
#[btf_map(name = "ACLWALK_V2")]
pub static ACL_WALK: PerCpuArray<WalkState, 1> = PerCpuArray::new();

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

#[btf_map(name = "STATS_V13")]
pub static STATS: PerCpuArray<u64, { Stat::COUNT as usize }> = PerCpuArray::new();

#[btf_map(name = "NAT_V2")]
pub static NAT: LruHashMap<NatKey, NatValue, { NAT_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Interfaces that translate: NI veths, agent-side veths, uplinks.
#[btf_map(name = "NATIF_V1")]
pub static NAT_IFACES: HashMap<IfaceKey, NatIface, { NAT_IFACES_MAX_ENTRIES as usize }> = HashMap::new();

#[btf_map(name = "PORTMAP_V1")]
pub static PORTMAPS: HashMap<PortmapKey, PortmapTarget, { PORTMAP_MAX_ENTRIES as usize }> = HashMap::new();

/// Every app address of every NI -> its app number: `eidset` ACEs.
#[btf_map(name = "EIDSET_V1")]
pub static EIDSET: HashMap<EidKey, u32, { MAX_APP_PORTS as usize }> = HashMap::new();

/// Addresses that DNS answers gave an app port, per host ACE: `host` ACEs. Filled by the
/// agent's DNS proxy before it relays the answer.
#[btf_map(name = "HOSTSET_V1")]
pub static HOSTSET: LruHashMap<HostKey, HostEntry, { HOSTSET_MAX_ENTRIES as usize }> = LruHashMap::new();

/// The device's own addresses outside the veth /24 (its uplinks'): apps' new flows there
/// are dropped unless a port map listens (EVE's rule).
#[btf_map(name = "DEVICE_V1")]
pub static DEVICE: HashMap<netns_ebpf_common::Ipv4, u32, { MAX_DEVICE_ADDRS as usize }> = HashMap::new();

/// Token buckets of `limit` ACEs.
#[btf_map(name = "LIMIT_V1")]
pub static LIMITS: HashMap<LimitKey, Bucket, { LIMIT_MAX_ENTRIES as usize }> = HashMap::new();

/// Where each NI's fast path leads (`netns_ebpf_common::fast`), indexed by zone; an
/// entry the agent did not write (zeros) says the NI takes the kernel's path.
#[btf_map(name = "FASTZONE_V4")]
pub static FAST_ZONES: Array<FastZone, { MAX_ZONES as usize }> = Array::new();

/// The fast path's scratch, one per CPU (`fast::FibScratch`: the FIB lookup's parameters,
/// the out hop's NAT key and translation): on the from-app program's stack they would
/// pass the 512 bytes that 6.1's verifier allows.
#[btf_map(name = "FIBSCRATCH_V4")]
pub static FIB_SCRATCH: PerCpuArray<FibScratch, 1> = PerCpuArray::new();

/// The programs the others continue in by tail call: at `fast::TAIL_FROM_APP`, the
/// from-app port's fast path (`app_port::app_port_from_app_fast`). The agent writes it
/// as it loads the programs; pinned, as every map: a program array's entries are cleared
/// once no pin or file descriptor of userspace holds it, and the filters outlive the agent.
#[btf_map(name = "FASTPROG_V1")]
pub static FAST_PROGRAMS: ProgramArray<{ TAIL_PROGRAMS as usize }> = ProgramArray::new();
