//! The eBPF side from userspace: loading the object once for every NI, pinning maps and
//! attaching programs to app ports and translating interfaces, and reading/writing the maps.
//!
//! Layout under the pin directory (default /sys/fs/bpf/netns-agent):
//!   CT_V4, DROP_V2, IFACE_V3, ACE_V4,   maps shared by every NI and the agent's netns
//!   STATS_V13, NAT_V2, NATIF_V1, ...     (the list: `ALL_MAPS`)
//!   <ni>/..., @agent/...                 TCX links an earlier agent pinned: the agent
//!                                        unpins them as its tc filters take over (`tc`)
//!
//! The programs themselves sit in tc filters (`tc`), which need no pin to outlive the
//! agent.

mod acls;
mod batch;
mod hosts;
mod tc;
mod translations;
use batch::BatchMap;
pub use translations::translations_met;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray},
    programs::{ProgramError, SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use netns_ebpf_common::{
    acl::Ace,
    ct::{CtKey, CtValue, CT_MAX_ENTRIES},
    fast::{FastZone, TAIL_FROM_APP},
    limit::{Bucket, LimitKey},
    map_names,
    nat::{NatIface, NatKey, NatValue, PortmapKey, PortmapTarget, NAT_MAX_ENTRIES},
    prog_names, EidKey, IfaceInfo, IfaceKey, PortCounters, PortUse, Stat, ZoneUse, MAX_ZONES,
};
use tracing::{debug, info};

pub use self::acls::AclStore;
pub use self::hosts::{HostLayout, HostLayouts, HostSets};
use crate::netns::{self, Netns};

/// The eBPF object, built by build.rs (aya-build) and embedded at compile time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// BPF_NOEXIST: insert only where no entry is.
const BPF_NOEXIST: u64 = 1;
const ALL_MAPS: [&str; 27] = [
    map_names::IF_ZONES,
    map_names::EVENTS,
    map_names::PORT_STATS,
    map_names::DROPS,
    map_names::FRAGS,
    map_names::ZONE_USE,
    map_names::PORT_USE,
    map_names::DEVICE,
    map_names::LIMITS,
    map_names::EIDSET,
    map_names::HOSTSET,
    map_names::CONNTRACK,
    map_names::IFACES,
    map_names::ACL_SHAPES,
    map_names::ACL_RANGES,
    map_names::ACL_PROTO,
    map_names::ACES,
    map_names::ACL_HOSTS,
    map_names::ACL_SUMMARY,
    map_names::ACL_WALK,
    map_names::STATS,
    map_names::NAT,
    map_names::NAT_IFACES,
    map_names::PORTMAPS,
    map_names::FAST_ZONES,
    map_names::FIB_SCRATCH,
    map_names::FAST_PROGRAMS,
];
const ALL_PROGRAMS: [&str; 5] = [
    prog_names::APP_PORT_FROM_APP,
    prog_names::APP_PORT_FROM_APP_FAST,
    prog_names::APP_PORT_TO_APP,
    prog_names::NAT_INGRESS,
    prog_names::NAT_EGRESS,
];
/// Pin subdirectory of the agent netns' own programs ('@' cannot occur in an NI name;
/// bpffs refuses '.' in names).
pub const AGENT_PIN_SUBDIR: &str = "@agent";

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf when the
/// machine has none (minimal systems and containers often don't).
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs_root) && !is_bpffs(bpffs_root) {
        info!("mounting bpffs at /sys/fs/bpf");
        std::fs::create_dir_all(bpffs_root).ok();
        nix::mount::mount(Some("bpffs"), bpffs_root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    if !is_bpffs(pin_dir) {
        bail!("pin directory {} is not on a bpf filesystem", pin_dir.display());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    // The field's type differs between architectures (i64 here).
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC).unwrap_or(false)
}

/// The programs, loaded once for every NI and the agent's netns: a program learns the
/// NI of the interface it runs on from IFZONE_V1 (`Maps::set_port`, `set_nat_iface`).
pub struct Programs {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    verified: Vec<VerifiedProgram>,
}

/// What the verifier did with one program as it loaded.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedProgram {
    pub name: &'static str,
    /// Instructions the verifier processed (its limit is `VERIFIER_INSN_LIMIT`); None
    /// where the kernel does not say (before 5.16).
    pub instructions: Option<u32>,
}

/// The verifier's limit on instructions processed per program (BPF_COMPLEXITY_LIMIT_INSNS).
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

impl Programs {
    /// Loads the object; the maps are the shared pinned ones (created on first use). A
    /// verifier rejection comes back with the verifier's log.
    pub fn load(pin_dir: &Path) -> Result<Programs> {
        let started = std::time::Instant::now();
        check_pins(pin_dir)?;
        let mut loader = EbpfLoader::new();
        for name in ALL_MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
        // Each program on a thread of its own: the verifier checks one program on one
        // CPU, and privileged loads take no lock in the kernel, so a device's cores
        // verify them side by side (under the VM's emulation of 6.1, 37 s one after the
        // other, 20 s so).
        let mut programs = Vec::new();
        for (name, program) in ebpf.programs_mut() {
            if let Some(&name) = ALL_PROGRAMS.iter().find(|&&n| n == name) {
                let prog: &mut SchedClassifier = program.try_into()?;
                programs.push((name, prog));
            }
        }
        if let Some(missing) = ALL_PROGRAMS.iter().find(|n| !programs.iter().any(|(p, _)| p == *n)) {
            bail!("program {missing} missing from the object");
        }
        let results: Vec<Result<VerifiedProgram>> = std::thread::scope(|scope| {
            let loads: Vec<_> = programs.into_iter().map(|(name, prog)| scope.spawn(move || load_program(name, prog))).collect();
            loads
                .into_iter()
                .map(|load| load.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a program's loader thread panicked"))))
                .collect()
        });
        // Every rejection, each with its verifier log, not only the first.
        let mut verified = Vec::new();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(program) => verified.push(program),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n\n"));
        }
        // The from-app program goes on in its fast path by tail call, through the pinned
        // FASTPROG_V1: the entry outlives this process. Nothing is handed over but the
        // packet, so an earlier agent's from-app program, in the filters until `attach`
        // replaces it, may go on in this one too.
        let fast_from_app =
            classifier(&ebpf, prog_names::APP_PORT_FROM_APP_FAST)?.fd()?.try_clone().context("the from-app fast path's fd")?;
        let tails =
            ebpf.map_mut(map_names::FAST_PROGRAMS).with_context(|| format!("map {} missing from the object", map_names::FAST_PROGRAMS))?;
        ProgramArray::try_from(tails)?
            .set(TAIL_FROM_APP, &fast_from_app, 0)
            .with_context(|| format!("writing the from-app fast path into {}", map_names::FAST_PROGRAMS))?;
        info!(ms = started.elapsed().as_millis() as u64, "programs loaded");
        Ok(Programs { ebpf, pin_dir: pin_dir.to_path_buf(), verified })
    }

    /// How hard the verifier worked on each program, as they loaded.
    pub fn verified(&self) -> &[VerifiedProgram] {
        &self.verified
    }

    /// One of the loaded programs by name (`prog_names`): the program tests run it on
    /// crafted frames (BPF_PROG_TEST_RUN).
    pub fn program(&self, name: &str) -> Result<&SchedClassifier> {
        classifier(&self.ebpf, name)
    }

    /// Attaches the app-port programs to bridge port `port` of NI `ni` (inside `ns`).
    pub fn attach_port(&mut self, ns: &Netns, ni: &str, port: &str) -> Result<()> {
        self.attach(ni, ns, port, PORT_PROGRAMS)
    }

    /// Attaches the NAT programs to interface `ifname` inside `ns` (`owner`: an NI's
    /// name, or `AGENT_PIN_SUBDIR` for the agent netns', where an earlier agent pinned
    /// its links).
    pub fn attach_nat(&mut self, ns: &Netns, owner: &str, ifname: &str) -> Result<()> {
        self.attach(owner, ns, ifname, NAT_PROGRAMS)
    }

    /// Puts the programs on `ifname` in `ns` as tc filters (`tc`): new ones, or the
    /// programs of the filters there replaced in place. They outlive the agent process.
    ///
    /// An earlier agent attached TCX links and pinned them under `owner`. A TCX program
    /// runs before the tc filters and its verdict is final, so the filters just written
    /// stay idle until those links go: unpinning them hands the interface over, and no
    /// packet meets it without a program or with both.
    fn attach(&mut self, owner: &str, ns: &Netns, ifname: &str, which: [(&str, TcAttachType, &str); 2]) -> Result<()> {
        let mut programs = Vec::new();
        for (name, direction, _) in which {
            programs.push((classifier(&self.ebpf, name)?.fd()?.as_fd().as_raw_fd(), name, direction));
        }
        netns::run_in(ns, || tc::attach(ifname, &programs))?;
        remove_tcx_pins(&self.pin_dir.join(owner), ifname, which)?;
        debug!(ifname, "programs attached");
        Ok(())
    }
}

const PORT_PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [(prog_names::APP_PORT_FROM_APP, TcAttachType::Ingress, "from-app"), (prog_names::APP_PORT_TO_APP, TcAttachType::Egress, "to-app")];
const NAT_PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [(prog_names::NAT_INGRESS, TcAttachType::Ingress, "nat-in"), (prog_names::NAT_EGRESS, TcAttachType::Egress, "nat-out")];

/// Takes the app-port programs off `port` of NI `ni` (in `ns`): a VM's tap before it goes
/// back. A port that is gone has nothing to take off.
pub fn detach_port(ns: &Netns, pin_dir: &Path, ni: &str, port: &str) -> Result<()> {
    detach(ns, &pin_dir.join(ni), port, PORT_PROGRAMS)
}

/// Takes the NAT programs off `ifname` in `ns` (an uplink no NI uses any more, or an NI's
/// agent-side veth).
pub fn detach_nat(ns: &Netns, pin_dir: &Path, owner: &str, ifname: &str) -> Result<()> {
    detach(ns, &pin_dir.join(owner), ifname, NAT_PROGRAMS)
}

/// An earlier agent's TCX pins of port `port` of NI `ni` (once the port is gone: its
/// programs went with it).
pub fn remove_earlier_port_pins(pin_dir: &Path, ni: &str, port: &str) -> Result<()> {
    remove_tcx_pins(&pin_dir.join(ni), port, PORT_PROGRAMS)
}

/// An earlier agent's TCX pins of NAT interface `ifname` (once it is gone).
pub fn remove_earlier_nat_pins(pin_dir: &Path, owner: &str, ifname: &str) -> Result<()> {
    remove_tcx_pins(&pin_dir.join(owner), ifname, NAT_PROGRAMS)
}

fn detach(ns: &Netns, tcx_pin_dir: &Path, ifname: &str, which: [(&str, TcAttachType, &str); 2]) -> Result<()> {
    if netns::run_in(ns, || tc::detach(ifname))? {
        debug!(ifname, "programs detached");
    }
    remove_tcx_pins(tcx_pin_dir, ifname, which)
}

/// bpffs refuses '.' in names (vethN.1): it becomes '_'.
fn link_pin_name(ifname: &str, suffix: &str) -> String {
    format!("{}-{suffix}", ifname.replace('.', "_"))
}

/// Unpins the TCX links an earlier agent pinned for `ifname` under `dir` (which detaches
/// their programs, or nothing when the interface is gone).
fn remove_tcx_pins(dir: &Path, ifname: &str, which: [(&str, TcAttachType, &str); 2]) -> Result<()> {
    for (_, _, suffix) in which {
        let p = dir.join(link_pin_name(ifname, suffix));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            info!("{}: an earlier agent's TCX link unpinned", p.display());
        }
    }
    Ok(())
}

/// Checks each map pin already under `pin_dir` against the object's definition of the
/// map: aya takes a pinned map as it finds it, so a pin of another layout (a map of an
/// agent version that changed it without a new pin name, or of another program) would
/// give the programs a map they misread, or a verifier log about offsets.
fn check_pins(pin_dir: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).context("reading the eBPF object's maps")?;
    for name in ALL_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let def = object.maps.get(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
        let want = MapLayout { map_type: def.map_type(), key: def.key_size(), value: def.value_size(), entries: def.max_entries() };
        let info = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("{} is not a map", path.display()))?;
        let have = MapLayout {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
        };
        if have != want {
            bail!(
                "{} is a map of another layout than this agent's programs read ({have}; they need {want}): a pin of \
                 another version or program under the name; remove it (`netns-agent down` removes every pin of ours)",
                path.display()
            );
        }
    }
    Ok(())
}

/// What `check_pins` compares of a map: its type, key and value sizes, and entries.
#[derive(PartialEq)]
struct MapLayout {
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "type {}, key {} bytes, value {} bytes, {} entries", self.map_type, self.key, self.value, self.entries)
    }
}

/// The object's program `name` (`prog_names`; every one is a tc classifier).
fn classifier<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    let prog = ebpf.program(name).with_context(|| format!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// Loads one program into the kernel (the verifier runs here).
fn load_program(name: &'static str, prog: &mut SchedClassifier) -> Result<VerifiedProgram> {
    let started = std::time::Instant::now();
    prog.load().map_err(|e| verifier_error(name, e))?;
    // How hard the verifier worked (its limit is 1M): the figure to watch when a change
    // makes a program more complex.
    let instructions = prog.info().ok().and_then(|i| i.verified_instruction_count());
    debug!(program = name, verified_insns = ?instructions, ms = started.elapsed().as_millis() as u64, "program verified");
    Ok(VerifiedProgram { name, instructions })
}

fn verifier_error(program: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow::anyhow!("the kernel rejected program {program}: {io_error}\nverifier log:\n{verifier_log}")
        }
        other => anyhow::Error::new(other).context(format!("loading program {program}")),
    }
}

/// The NAT map as the sweep's put-back writes it (`translations::put_back`).
struct SweptNat<'a> {
    map: &'a mut HashMap<MapData, NatKey, NatValue>,
    batch: &'a BatchMap,
}

impl translations::NatEntries for SweptNat<'_> {
    fn entry(&self, k: &NatKey) -> Option<NatValue> {
        self.map.get(k, 0).ok()
    }

    fn insert_new(&mut self, k: &NatKey, v: &NatValue) -> bool {
        self.map.insert(k, v, BPF_NOEXIST).is_ok()
    }

    fn take(&mut self, k: &NatKey) -> Option<NatValue> {
        self.batch.take(k)
    }
}

/// Removes NI `ni`'s pin directory: an earlier agent's TCX links of the NI (unpinning
/// one detaches its program, or nothing once its interface is gone).
pub fn remove_ni_pins(pin_dir: &Path, ni: &str) -> Result<()> {
    let dir = pin_dir.join(ni);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Removes the shared map pins and the pin directory once no NI uses them; true when
/// there were pins of ours to remove.
pub fn remove_shared_pins_if_unused(pin_dir: &Path) -> Result<bool> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else { return Ok(false) };
    let in_use = entries.flatten().any(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false));
    if in_use {
        return Ok(false);
    }
    let mut removed = false;
    for name in ALL_MAPS {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed = true;
        }
    }
    // Our maps at another version (NAT_V1 once NAT_V2 came): another agent made them,
    // and nothing uses them once no NI is left.
    for entry in std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))?.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(is_other_map_version) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            info!("removed {}, one of our maps at another version", entry.path().display());
        }
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(removed)
}

/// Whether pin `name` is one of our maps at another version than `ALL_MAPS` has
/// (`STEM_V<n>`).
fn is_other_map_version(name: &str) -> bool {
    fn stem(name: &str) -> Option<&str> {
        let (stem, version) = name.rsplit_once("_V")?;
        (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
    }
    let Some(of) = stem(name) else { return false };
    !ALL_MAPS.contains(&name) && ALL_MAPS.iter().any(|m| stem(m) == Some(of))
}

/// The pinned maps, opened by path: works with or without a running agent.
pub struct Maps {
    ct: HashMap<MapData, CtKey, CtValue>,
    drops: HashMap<MapData, CtKey, CtValue>,
    zone_use: Array<MapData, ZoneUse>,
    port_use: HashMap<MapData, IfaceKey, PortUse>,
    fast_zones: Array<MapData, FastZone>,
    ifaces: HashMap<MapData, IfaceKey, IfaceInfo>,
    /// ifindex -> zone of the interfaces that carry programs: kept to what IFACES and
    /// NATIF hold (`register`).
    if_zones: HashMap<MapData, u32, u32>,
    /// The ports' ACLs, compiled, by ACL id.
    pub acls: AclStore,
    stats: PerCpuArray<MapData, u64>,
    port_stats: PerCpuHashMap<MapData, IfaceKey, PortCounters>,
    nat: HashMap<MapData, NatKey, NatValue>,
    /// The conntrack, drop and NAT maps again, for the sweep's batched reads.
    swept: [BatchMap; 3],
    nat_ifaces: HashMap<MapData, IfaceKey, NatIface>,
    portmaps: HashMap<MapData, PortmapKey, PortmapTarget>,
    eidset: HashMap<MapData, EidKey, u32>,
    limits: HashMap<MapData, LimitKey, Bucket>,
    device: HashMap<MapData, [u8; 4], u32>,
    pub hosts: HostSets,
    /// Conntrack entries removed by config changes since `take_removed_flows` (their
    /// flows' end records).
    removed_flows: Vec<(CtKey, CtValue)>,
}

/// Removes the entries of `map` that `pred` selects; returns how many.
/// (The programs keep writing while we walk: an entry is looked at again just before it
/// goes, and stays if it no longer qualifies, e.g. a flow refreshed since.)
fn remove_where<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, pred: impl FnMut(&K, &V) -> bool) -> usize {
    take_where(map, pred).len()
}

/// Removes the entries of `map` that `pred` selects; returns them (as they were when
/// they went).
fn take_where<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, mut pred: impl FnMut(&K, &V) -> bool) -> Vec<(K, V)> {
    let doomed: Vec<K> = map.iter().flatten().filter(|(k, v)| pred(k, v)).map(|(k, _)| k).collect();
    let mut removed = Vec::with_capacity(doomed.len());
    for k in doomed {
        if let Ok(v) = map.get(&k, 0) {
            if pred(&k, &v) && map.remove(&k).is_ok() {
                removed.push((k, v));
            }
        }
    }
    removed
}

/// Every entry of `map`, read in batches (`batched`: the same map; a failed batched read
/// walks it entry by entry).
fn read_all<K: aya::Pod, V: aya::Pod>(batched: &BatchMap, map: &HashMap<MapData, K, V>) -> Entries<K, V> {
    batched.entries::<K, V>().unwrap_or_else(|_| map.iter().flatten().collect())
}

/// A map's entries, as read.
type Entries<K, V> = Vec<(K, V)>;

/// What judging the translation entries of `read` that `may_be_expired` says may be
/// expired needs (`nat::translation_expired`): those entries, their partners, and where
/// neither of a pair is in use, the entries those lead on to (`nat::links`: the other
/// pair of a flow translated twice; three links at most reach a chain's four entries).
/// An entry whose partner is in use is part of no expired translation, and leads no
/// further: the NI reply halves of long flows the fast path carries past them are idle
/// for good, and with their chains every sweep read most of the map again.
fn linked_entries(read: &[(NatKey, NatValue)], may_be_expired: impl Fn(&NatKey, &NatValue) -> bool) -> foldhash::HashMap<NatKey, NatValue> {
    use netns_ebpf_common::nat;
    let mut known: foldhash::HashMap<NatKey, NatValue> = read.iter().filter(|(k, v)| may_be_expired(k, v)).copied().collect();
    let mut wanted: foldhash::HashSet<NatKey> = known.iter().map(|(k, v)| nat::partner(k, v)).filter(|k| !known.contains_key(k)).collect();
    // Partners that none of those is: in use.
    let in_use: foldhash::HashMap<NatKey, NatValue> = read.iter().filter(|(k, _)| wanted.contains(k)).copied().collect();
    let mut newly: Vec<(NatKey, NatValue)> =
        known.iter().filter(|(k, v)| !in_use.contains_key(&nat::partner(k, v))).map(|(k, v)| (*k, *v)).collect();
    known.extend(in_use);
    for _ in 0..3 {
        wanted.clear();
        wanted.extend(newly.iter().flat_map(|(k, v)| nat::links(k, v)).flatten().filter(|k| !known.contains_key(k)));
        if wanted.is_empty() {
            break;
        }
        newly = read.iter().filter(|(k, _)| wanted.contains(k)).copied().collect();
        known.extend(newly.iter().copied());
    }
    known
}

/// Splits `entries` (read from `map`) into those `doomed` spares (returned first) and
/// those it dooms, which go (returned second, as they were when they went): one call
/// each through `batched`, the same map. A doomed entry is judged again as taken out,
/// by `still_doomed`, which may look at the map as it is now (a translation at its
/// partner there: a packet may have refreshed it since `entries` was read); one that a
/// program refreshed meanwhile (a packet, a SYN reusing the tuple) is put back, unless
/// the program made it anew already.
fn sweep_where<K: aya::Pod, V: aya::Pod>(
    batched: &BatchMap,
    map: &mut HashMap<MapData, K, V>,
    entries: Entries<K, V>,
    doomed: impl Fn(&K, &V) -> bool,
    still_doomed: impl Fn(&HashMap<MapData, K, V>, &K, &V) -> bool,
) -> (Entries<K, V>, Entries<K, V>) {
    let (doomed_now, mut kept): (Entries<K, V>, Entries<K, V>) = entries.into_iter().partition(|(k, v)| doomed(k, v));
    let mut removed = Vec::with_capacity(doomed_now.len());
    for (k, _) in doomed_now {
        let Some(v) = batched.take::<K, V>(&k) else { continue };
        if still_doomed(map, &k, &v) {
            removed.push((k, v));
        } else {
            // BPF_NOEXIST: a program's new entry for the key wins.
            map.insert(k, v, 1).ok();
            kept.push((k, v));
        }
    }
    (kept, removed)
}

/// What a sweep of the flow maps did and saw.
#[derive(Default)]
pub struct Sweep {
    /// Entries of any map that went.
    pub removed: usize,
    /// Conntrack entries that expired, and those that live on.
    pub expired_flows: Vec<(CtKey, CtValue)>,
    pub live_flows: Vec<(CtKey, CtValue)>,
    /// How full the shared flow maps are after it (the metrics'; counted on the sweep's
    /// walk, not walked again per scrape).
    pub fill: Vec<MapFill>,
}

/// A shared map's entries against its capacity.
#[derive(Clone, Copy, Debug)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

fn open_map(pin_dir: &Path, name: &str) -> Result<aya::maps::Map> {
    let path = pin_dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening pinned map {} (is the agent's config applied?)", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}

impl Maps {
    pub fn open(pin_dir: &Path) -> Result<Maps> {
        Ok(Maps {
            ct: open_map(pin_dir, map_names::CONNTRACK)?.try_into()?,
            drops: open_map(pin_dir, map_names::DROPS)?.try_into()?,
            zone_use: open_map(pin_dir, map_names::ZONE_USE)?.try_into()?,
            port_use: open_map(pin_dir, map_names::PORT_USE)?.try_into()?,
            fast_zones: open_map(pin_dir, map_names::FAST_ZONES)?.try_into()?,
            ifaces: open_map(pin_dir, map_names::IFACES)?.try_into()?,
            if_zones: open_map(pin_dir, map_names::IF_ZONES)?.try_into()?,
            acls: AclStore::open(pin_dir)?,
            stats: open_map(pin_dir, map_names::STATS)?.try_into()?,
            port_stats: open_map(pin_dir, map_names::PORT_STATS)?.try_into()?,
            nat: open_map(pin_dir, map_names::NAT)?.try_into()?,
            swept: [
                BatchMap::open(pin_dir, map_names::CONNTRACK)?,
                BatchMap::open(pin_dir, map_names::DROPS)?,
                BatchMap::open(pin_dir, map_names::NAT)?,
            ],
            nat_ifaces: open_map(pin_dir, map_names::NAT_IFACES)?.try_into()?,
            portmaps: open_map(pin_dir, map_names::PORTMAPS)?.try_into()?,
            eidset: open_map(pin_dir, map_names::EIDSET)?.try_into()?,
            limits: open_map(pin_dir, map_names::LIMITS)?.try_into()?,
            device: open_map(pin_dir, map_names::DEVICE)?.try_into()?,
            hosts: HostSets::open(pin_dir)?,
            removed_flows: Vec::new(),
        })
    }

    /// Writes `aces` as a new ACL (`AclStore::write`) under an id no port's entry names.
    pub fn write_acl(&mut self, aces: &[Ace], host_base: u32) -> Result<u32> {
        let ifaces = &self.ifaces;
        self.acls
            .write(aces, host_base, || ifaces.iter().flatten().flat_map(|(_, info)| [info.acl_id, info.prev_acl_id]).max().unwrap_or(0))
    }

    /// Marks `addr` as the device's own: apps' new flows to it are dropped unless a port
    /// map listens there.
    pub fn add_device_addr(&mut self, addr: [u8; 4]) -> Result<()> {
        self.device.insert(addr, 1, 0).context("writing the device's addresses")
    }

    pub fn remove_device_addr(&mut self, addr: [u8; 4]) {
        self.device.remove(&addr).ok();
    }

    pub fn set_limit(&mut self, key: LimitKey, bucket: Bucket) -> Result<()> {
        self.limits.insert(key, bucket, 0).context("writing rate limit")
    }

    pub fn limits(&self) -> Vec<(LimitKey, Bucket)> {
        self.limits.iter().flatten().collect()
    }

    /// Puts an app address into its NI's eidset.
    pub fn set_eid(&mut self, zone: u32, addr: [u8; 4], app_num: u32) -> Result<()> {
        self.eidset.insert(EidKey { zone, addr }, app_num, 0).context("writing eidset")
    }

    pub fn set_nat_iface(&mut self, key: IfaceKey, nif: NatIface) -> Result<()> {
        self.register(key)?;
        self.nat_ifaces.insert(key, nif, 0).context("writing NAT interface map")
    }

    pub fn remove_nat_iface(&mut self, key: IfaceKey) {
        self.nat_ifaces.remove(&key).ok();
        self.unregister(key);
    }

    /// Tells the programs that interface `key.ifindex` is zone `key.zone`'s (before its
    /// config is written; the programs are attached after both). Refuses an ifindex that another
    /// zone's interface holds: one copy of the programs serves every netns, so the
    /// interfaces carrying them need ifindexes unique across namespaces (the agent picks
    /// those of the interfaces it makes; `netns_ebpf_common::chosen_ifindex`), and one in
    /// the range of those that would name another zone (the programs read the zone of
    /// such an ifindex from the ifindex itself).
    fn register(&mut self, key: IfaceKey) -> Result<()> {
        if let Some(zone) = netns_ebpf_common::chosen_ifindex_zone(key.ifindex).filter(|z| *z != key.zone) {
            bail!(
                "ifindex {:#x} lies in the range the agent gives its own interfaces, where it names zone {zone}, so zone {} cannot have it",
                key.ifindex,
                key.zone
            );
        }
        if let Ok(other) = self.if_zones.get(&key.ifindex, 0) {
            if other != key.zone && self.configured(IfaceKey { zone: other, ifindex: key.ifindex }) {
                bail!(
                    "ifindex {} is zone {other}'s interface already, so zone {} cannot have it (the interfaces that carry programs need ifindexes unique across namespaces)",
                    key.ifindex,
                    key.zone
                );
            }
        }
        self.if_zones.insert(key.ifindex, key.zone, 0).context("writing the interface's zone (IFZONE)")
    }

    /// Whether zone `key.zone` has config for interface `key.ifindex` (as app port or NAT).
    fn configured(&self, key: IfaceKey) -> bool {
        self.ifaces.get(&key, 0).is_ok() || self.nat_ifaces.get(&key, 0).is_ok()
    }

    /// Forgets interface `key.ifindex` as zone `key.zone`'s.
    fn unregister(&mut self, key: IfaceKey) {
        if self.if_zones.get(&key.ifindex, 0).ok() == Some(key.zone) && !self.configured(key) {
            self.if_zones.remove(&key.ifindex).ok();
        }
    }

    /// Removes the zone entries of interfaces whose config is gone; returns how many.
    fn remove_unregistered(&mut self) -> usize {
        let gone: Vec<u32> = self
            .if_zones
            .iter()
            .flatten()
            .filter(|(ifindex, zone)| !self.configured(IfaceKey { zone: *zone, ifindex: *ifindex }))
            .map(|(ifindex, _)| ifindex)
            .collect();
        gone.iter().filter(|ifindex| self.if_zones.remove(ifindex).is_ok()).count()
    }

    pub fn nat_iface(&self, key: IfaceKey) -> Option<NatIface> {
        self.nat_ifaces.get(&key, 0).ok()
    }

    pub fn set_portmap(&mut self, key: PortmapKey, target: PortmapTarget) -> Result<()> {
        self.portmaps.insert(key, target, 0).context("writing port map")
    }

    /// Removes the port maps that `pred` selects; returns how many.
    pub fn remove_portmaps(&mut self, pred: impl Fn(&PortmapKey, &PortmapTarget) -> bool) -> usize {
        remove_where(&mut self.portmaps, pred)
    }

    /// Removes the NAT entries that `pred` selects; returns how many.
    pub fn remove_nat_entries(&mut self, pred: impl Fn(&NatKey, &NatValue) -> bool) -> usize {
        remove_where(&mut self.nat, pred)
    }

    /// Removes the conntrack entries that `pred` selects; returns how many.
    pub fn remove_flows(&mut self, pred: impl Fn(&CtKey, &CtValue) -> bool) -> usize {
        let gone = take_where(&mut self.ct, pred);
        let n = gone.len();
        self.removed_flows.extend(gone);
        n
    }

    /// The conntrack entries config changes removed since the last call.
    pub fn take_removed_flows(&mut self) -> Vec<(CtKey, CtValue)> {
        std::mem::take(&mut self.removed_flows)
    }

    /// An app port's published config (its ACL: `acls`, under its `acl_id`).
    pub fn port(&self, key: IfaceKey) -> Option<IfaceInfo> {
        self.ifaces.get(&key, 0).ok()
    }

    /// The ACL ids that ports select `pred` name.
    fn acl_ids(&self, pred: impl Fn(&IfaceKey) -> bool) -> std::collections::HashSet<u32> {
        self.ifaces.iter().flatten().filter(|(k, _)| pred(k)).map(|(_, info)| info.acl_id).collect()
    }

    /// Removes the ACLs no port names (an apply that stopped between writing an ACL and
    /// switching its port to it leaves one); returns how many.
    pub fn remove_unnamed_acls(&mut self) -> usize {
        let named = self.acl_ids(|_| true);
        self.acls.remove_unnamed(&named)
    }

    /// Removes what `zone` holds for interfaces other than `ports` (configs, ACLs,
    /// buckets, host sets) and eidset entries for addresses other than `ips`; returns
    /// how many entries went.
    pub fn remove_zone_strays(
        &mut self,
        zone: u32,
        ports: &std::collections::HashSet<u32>,
        ips: &std::collections::HashSet<[u8; 4]>,
    ) -> usize {
        let stray = |k: &IfaceKey| k.zone == zone && !ports.contains(&k.ifindex);
        self.remove_port_counters(|k| stray(k));
        let acls = self.acl_ids(stray);
        let n = remove_where(&mut self.ifaces, |k, _| stray(k));
        let n = n + if acls.is_empty() { 0 } else { self.acls.remove_where(|id| acls.contains(&id)) };
        let n = n
            + remove_where(&mut self.limits, |k, _| k.zone == zone && !ports.contains(&k.ifindex))
            + remove_where(&mut self.port_use, |k, _| stray(k))
            + remove_where(&mut self.hosts.map, |k, _| k.zone == zone && !ports.contains(&k.ifindex))
            + remove_where(&mut self.eidset, |k, _| k.zone == zone && !ips.contains(&k.addr));
        n + self.remove_unregistered()
    }

    /// Forgets an app port: its config and ACL, host set, buckets; its NI's eidset entry
    /// `ip`.
    pub fn remove_port(&mut self, key: IfaceKey, ip: [u8; 4]) {
        self.port_stats.remove(&key).ok();
        self.port_use.remove(&key).ok();
        if let Ok(info) = self.ifaces.get(&key, 0) {
            self.ifaces.remove(&key).ok();
            self.acls.remove(info.acl_id);
        }
        self.unregister(key);
        self.eidset.remove(&EidKey { zone: key.zone, addr: ip }).ok();
        remove_where(&mut self.limits, |k, _| k.zone == key.zone && k.ifindex == key.ifindex);
        self.hosts.remove_port(key);
    }

    pub fn limit(&self, key: LimitKey) -> Option<Bucket> {
        self.limits.get(&key, 0).ok()
    }

    /// Removes the buckets of a port that `keep` does not keep.
    pub fn remove_limits(&mut self, port: IfaceKey, keep: impl Fn(u32) -> bool) {
        remove_where(&mut self.limits, |k, _| k.zone == port.zone && k.ifindex == port.ifindex && !keep(k.ace_index));
    }

    pub fn nat_entry(&self, key: &NatKey) -> Option<NatValue> {
        self.nat.get(key, 0).ok()
    }

    pub fn nat_entries(&self) -> Vec<(NatKey, NatValue)> {
        self.nat.iter().flatten().collect()
    }

    /// Removes everything of the agent's own domain (uplink NAT state).
    pub fn remove_agent_domain(&mut self) {
        let domain = netns_ebpf_common::nat::DOMAIN_AGENT;
        remove_where(&mut self.nat_ifaces, |k, _| k.zone == domain);
        remove_where(&mut self.if_zones, |_, z| *z == domain);
        remove_where(&mut self.device, |_, _| true);
        self.remove_portmaps(|k, _| k.domain == domain);
        self.remove_nat_entries(|k, _| k.domain == domain);
    }

    /// Publishes an app port's config; its ACL (`info.acl_id`) must be written already
    /// (`acls.write`), so the port never judges a flow against a missing ACL.
    pub fn set_port(&mut self, key: IfaceKey, info: IfaceInfo) -> Result<()> {
        self.register(key)?;
        self.ifaces.insert(key, info, 0).context("writing interface map")
    }

    /// Gives an app port its packet and byte counters, unless it has them (BPF_NOEXIST:
    /// every apply may ask, nothing is reset; a data path from an agent before the
    /// counters gets them at its first apply).
    pub fn ensure_port_counters(&mut self, key: IfaceKey) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
        let zero = PerCpuValues::try_from(vec![PortCounters::default(); cpus])?;
        match self.port_stats.insert(key, zero, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
            other => other.context("writing the port's counters"),
        }
    }

    fn remove_port_counters(&mut self, pred: impl Fn(&IfaceKey) -> bool) {
        let doomed: Vec<IfaceKey> = self.port_stats.keys().flatten().filter(|k| pred(k)).collect();
        for k in doomed {
            self.port_stats.remove(&k).ok();
        }
    }

    /// Every app port's config (key and info), for naming its counters.
    pub fn ports(&self) -> Vec<(IfaceKey, IfaceInfo)> {
        self.ifaces.iter().flatten().collect()
    }

    /// Every app port's counters, summed over CPUs.
    pub fn port_counters(&self) -> Vec<(IfaceKey, PortCounters)> {
        self.port_stats
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let mut sum = PortCounters::default();
                per_cpu.iter().for_each(|c| sum.add(c));
                (k, sum)
            })
            .collect()
    }

    /// Where zone `zone`'s fast path leads (`enabled` 0: it has none).
    pub fn set_fast_zone(&mut self, zone: u32, fast: FastZone) -> Result<()> {
        if self.fast_zones.get(&zone, 0).ok() == Some(fast) {
            return Ok(());
        }
        self.fast_zones.set(zone, fast, 0).with_context(|| format!("writing zone {zone}'s fast path"))
    }

    /// Forgets everything of zone `zone`: port configs and conntrack entries.
    pub fn remove_zone(&mut self, zone: u32) -> usize {
        if let Err(e) = self.set_fast_zone(zone, FastZone::default()) {
            tracing::warn!("{e:#}");
        }
        self.remove_port_counters(|k| k.zone == zone);
        let acls = self.acl_ids(|k| k.zone == zone);
        remove_where(&mut self.ifaces, |k, _| k.zone == zone);
        remove_where(&mut self.port_use, |k, _| k.zone == zone);
        if !acls.is_empty() {
            self.acls.remove_where(|id| acls.contains(&id));
        }
        let flows = self.remove_flows(|k, _| k.zone == zone);
        remove_where(&mut self.drops, |k, _| k.zone == zone);
        remove_where(&mut self.nat_ifaces, |k, _| k.zone == zone);
        remove_where(&mut self.if_zones, |_, z| *z == zone);
        self.remove_portmaps(|k, _| k.domain == zone);
        self.remove_nat_entries(|k, _| k.domain == zone);
        remove_where(&mut self.eidset, |k, _| k.zone == zone);
        self.hosts.remove_zone(zone);
        remove_where(&mut self.limits, |k, _| k.zone == zone);
        flows
    }

    /// Every flow on record: the conntrack's (allowed, or dropped by a changed ACL) and
    /// the records of dropped flows.
    pub fn flows(&self) -> Vec<(CtKey, CtValue)> {
        self.ct.iter().flatten().chain(self.drops.iter().flatten()).collect()
    }

    /// Gives each of `zones` (the NIs) an equal share of the conntrack and NAT maps, 7/8
    /// of them in all (the LRU starts evicting a little before it is full: each CPU keeps
    /// free entries of its own), and each app port its part of its NI's conntrack share
    /// (`PortUse::share_of`), by the ports the interface map holds. Zones of no NI are
    /// cleared, and the parts of ports it no longer holds removed.
    pub fn set_flow_shares(&mut self, zones: &[u32]) -> Result<()> {
        let n = zones.len().max(1) as u32;
        let (ct_share, nat_share) = (CT_MAX_ENTRIES / 8 * 7 / n, NAT_MAX_ENTRIES / 8 * 7 / n);
        for zone in 1..MAX_ZONES {
            let old = self.zone_use.get(&zone, 0).unwrap_or_default();
            let new = match zones.contains(&zone) {
                true => ZoneUse { ct_share, nat_share, ..old },
                false => ZoneUse::default(),
            };
            if new != old {
                self.zone_use.set(zone, new, 0).with_context(|| format!("writing zone {zone}'s share of the flow maps"))?;
            }
        }
        let ports: foldhash::HashSet<IfaceKey> = self.ifaces.keys().flatten().collect();
        let mut per_zone = foldhash::HashMap::<u32, u32>::default();
        for p in &ports {
            *per_zone.entry(p.zone).or_default() += 1;
        }
        for p in &ports {
            let zone_share = if zones.contains(&p.zone) { ct_share } else { 0 };
            let old = self.port_use.get(p, 0).ok();
            let new = PortUse { ct_share: PortUse::share_of(zone_share, per_zone[&p.zone]), ..old.unwrap_or_default() };
            if old != Some(new) {
                self.port_use
                    .insert(p, new, 0)
                    .with_context(|| format!("writing the part of NI {}'s flow share of port {}", p.zone, p.ifindex))?;
            }
        }
        remove_where(&mut self.port_use, |k, _| !ports.contains(k));
        Ok(())
    }

    /// Whether some zone holds over half its share of the conntrack or NAT map
    /// (`ZoneUse::pressed`, by the programs' counts, which err high between sweeps).
    pub fn some_zone_pressed(&self) -> bool {
        self.zone_use.iter().flatten().any(|u| u.pressed())
    }

    /// Drops conntrack entries, drop records and translations idle past their timeout
    /// (a translation's two entries together), then writes each zone's true use of the
    /// maps back.
    pub fn expire_flows(&mut self, now_ns: u64) -> Sweep {
        use netns_ebpf_common::{ct::is_expired, nat};
        let mut ct_use = vec![0u32; MAX_ZONES as usize];
        let mut nat_use = vec![0u32; MAX_ZONES as usize];
        let [ct, drops, nat_batch] = &self.swept;
        let read = read_all(ct, &self.ct);
        let expired = |k: &CtKey, v: &CtValue| is_expired(v, k.proto, now_ns);
        let (live_flows, expired_flows) = sweep_where(ct, &mut self.ct, read, expired, |_, k, v| expired(k, v));
        let mut port_use = foldhash::HashMap::<IfaceKey, u32>::default();
        for (k, v) in &live_flows {
            ct_use[(k.zone % MAX_ZONES) as usize] += 1;
            *port_use.entry(IfaceKey { zone: k.zone, ifindex: v.judge_ifindex }).or_default() += 1;
        }
        let read = read_all(drops, &self.drops);
        let (drops_left, drops_gone) = sweep_where(drops, &mut self.drops, read, expired, |_, k, v| expired(k, v));
        let (drops_left, drops_gone) = (drops_left.len() as u64, drops_gone.len());
        let expired = expired_flows.len() + drops_gone;
        // A translation goes when all its entries say so as they are now (its pair, or
        // the chain of both pairs of a flow translated in its NI and at its uplink,
        // `nat::translation_expired`): an entry judged by a stale copy of another (the
        // flow's tuple reused since, its first packet through) would leave that one
        // alone, the translation half gone.
        // Only an entry idle past its protocol's shortest timeout can be part of an
        // expired translation (whose idle time is its youngest entry's): only the entries
        // those lead to are looked up. (At thousands of new flows a second an NI's share
        // keeps the sweep going every second, and most entries are seconds old: a map of
        // every entry, built every second, was most of the sweep's time.)
        let read = read_all(nat_batch, &self.nat);
        let may_be_expired = |k: &NatKey, v: &NatValue| now_ns.saturating_sub(v.last_seen_ns) > nat::shortest_pair_timeout_ns(k.proto);
        let linked = linked_entries(&read, may_be_expired);
        let (mut translations_left, mut translations) = sweep_where(
            nat_batch,
            &mut self.nat,
            read,
            |k, v| may_be_expired(k, v) && nat::translation_expired(k, v, |k| linked.get(k).copied(), now_ns),
            // The other entries as the map holds them now; one this sweep took already
            // (judged expired with this entry) as it was read: judged without it, a reply
            // half whose RST or FIN only its partner saw lived on 5 days, and the sweep
            // after judged it alone too.
            |map, k, v| nat::translation_expired(k, v, |k| map.get(k, 0).ok().or_else(|| linked.get(k).copied()), now_ns),
        );
        // (Only entries the read saw may have been kept by a packet meanwhile: the map is
        // asked for no other.)
        let restored =
            translations::taken_to_restore(&translations, now_ns, |k| linked.contains_key(k).then(|| self.nat.get(k, 0).ok()).flatten());
        if !restored.is_empty() {
            let out = translations::put_back(&restored, &mut SweptNat { map: &mut self.nat, batch: nat_batch });
            if !out.back.is_empty() {
                info!("{} translation entries put back: their translations were used while the sweep took them", out.back.len());
            }
            if !out.taken_out.is_empty() {
                info!("{} translation entries taken out: their tuples went to other flows while the sweep held them", out.taken_out.len());
            }
            // (By key: a packet may have refreshed an entry since the sweep read it.)
            translations.retain(|(k, _)| !out.back.iter().any(|(bk, _)| bk == k));
            translations_left.retain(|(k, _)| !out.taken_out.iter().any(|(tk, _)| tk == k));
            translations_left.extend(out.back);
            translations.extend(out.taken_out);
        }
        for (k, v) in &translations_left {
            nat_use[(nat::owner_zone(k.domain, [k.src, k.dst, v.addr]) % MAX_ZONES) as usize] += 1;
        }
        let translations = translations.len();
        for zone in 1..MAX_ZONES {
            let Ok(old) = self.zone_use.get(&zone, 0) else { continue };
            let (ct, nat) = (ct_use[zone as usize], nat_use[zone as usize]);
            if (old.ct, old.nat) != (ct, nat) {
                self.zone_use.set(zone, ZoneUse { ct, nat, ..old }, 0).ok();
            }
        }
        let parts: Vec<(IfaceKey, PortUse)> = self.port_use.iter().flatten().collect();
        for (port, old) in parts {
            let ct = port_use.get(&port).copied().unwrap_or(0);
            if old.ct != ct {
                self.port_use.insert(port, PortUse { ct, ..old }, 0).ok();
            }
        }
        let (hosts_gone, hosts_left) = self.hosts.expire(now_ns);
        use netns_ebpf_common::{ct::DROP_MAX_ENTRIES, HOSTSET_MAX_ENTRIES};
        let fill = vec![
            MapFill { map: map_names::CONNTRACK, entries: live_flows.len() as u64, capacity: CT_MAX_ENTRIES as u64 },
            MapFill { map: map_names::DROPS, entries: drops_left, capacity: DROP_MAX_ENTRIES as u64 },
            MapFill { map: map_names::NAT, entries: translations_left.len() as u64, capacity: NAT_MAX_ENTRIES as u64 },
            MapFill { map: map_names::HOSTSET, entries: hosts_left as u64, capacity: HOSTSET_MAX_ENTRIES as u64 },
        ];
        Sweep { removed: expired + translations + hosts_gone, expired_flows, live_flows, fill }
    }

    /// Program counters summed over CPUs.
    pub fn stats(&self) -> Vec<(Stat, u64)> {
        Stat::ALL.iter().map(|s| (*s, self.stats.get(&(*s as u32), 0).map(|v| v.iter().sum()).unwrap_or(0))).collect()
    }
}

/// CLOCK_MONOTONIC in ns: the programs' clock is its coarse twin, up to a tick behind
/// (`nat::CLOCK_SLACK_NS`).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Whether the programs' FIB lookups may name the table to look in
/// (`BPF_FIB_LOOKUP_TBID`, Linux 6.5): then the fast path's hop out asks the NI's uplink
/// table straight, without walking the rules (`FastZone::uplink_table`). A kernel whose
/// version cannot be read is taken not to have it (the lookup by the rules is right
/// everywhere, only slower).
pub fn fib_lookup_by_table() -> bool {
    static BY_TABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BY_TABLE.get_or_init(|| aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 5, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_versions_of_our_maps_are_known_by_their_stem() {
        let nat = map_names::NAT;
        let (stem, _) = nat.rsplit_once("_V").unwrap();
        assert!(is_other_map_version(&format!("{stem}_V1")));
        assert!(!is_other_map_version(nat), "the current version is not another one");
        for other in ["NAT", "NAT_V", "NAT_Vx", "OTHER_V1", "ni1", "@agent"] {
            assert!(!is_other_map_version(other), "{other}");
        }
    }

    /// A flow translated in NI 3 and at its uplink, each entry last used at the time
    /// given (the NI's original half, the uplink's, its reply half, the NI's).
    fn chain(at: [u64; 4]) -> Vec<(NatKey, NatValue)> {
        use netns_ebpf_common::nat::{across, partner, DOMAIN_AGENT, NAT_FLAG_ORIG, REWRITE_DST, REWRITE_SRC};
        let ni_out_key = NatKey { domain: 3, src: [10, 10, 1, 2], dst: [8, 8, 8, 8], sport: 40000, dport: 80, proto: 6, _pad: [0; 3] };
        let ni_out = NatValue::new(at[0], 0, [169, 254, 100, 10], 1025, REWRITE_SRC, NAT_FLAG_ORIG);
        let ni_reply_key = partner(&ni_out_key, &ni_out);
        let uplink_out_key = across(&ni_reply_key, DOMAIN_AGENT);
        let uplink_out = NatValue::new(at[1], 0, [192, 168, 0, 2], 2000, REWRITE_SRC, NAT_FLAG_ORIG);
        vec![
            (ni_out_key, ni_out),
            (uplink_out_key, uplink_out),
            (partner(&uplink_out_key, &uplink_out), NatValue::new(at[2], 0, [169, 254, 100, 10], 1025, REWRITE_DST, 0)),
            (ni_reply_key, NatValue::new(at[3], 0, [10, 10, 1, 2], 40000, REWRITE_DST, 0)),
        ]
    }

    #[test]
    fn the_sweep_follows_a_chain_only_from_a_pair_wholly_idle() {
        const SEC: u64 = 1_000_000_000;
        let (now, fresh) = (1000 * SEC, 990 * SEC);
        let idle = |k: &NatKey, v: &NatValue| now - v.last_seen_ns > netns_ebpf_common::nat::shortest_pair_timeout_ns(k.proto);
        // Long in use, its replies carried past the NI's reply half: that half and its
        // partner are all that is read, not the chain.
        let read = chain([fresh, fresh, fresh, 0]);
        let linked = linked_entries(&read, idle);
        assert_eq!(linked.len(), 2);
        assert!(linked.contains_key(&read[0].0) && linked.contains_key(&read[3].0));
        // Idle but for the uplink's reply half (a stream that only comes back): the whole
        // chain, which that half keeps.
        let read = chain([0, 0, fresh, 0]);
        let linked = linked_entries(&read, idle);
        assert_eq!(linked.len(), 4);
        let (k, v) = read[3];
        assert!(!netns_ebpf_common::nat::translation_expired(&k, &v, |k| linked.get(k).copied(), now));
        // Wholly idle: the whole chain.
        let read = chain([0, 0, 0, 0]);
        let linked = linked_entries(&read, idle);
        assert_eq!(linked.len(), 4);
        assert!(netns_ebpf_common::nat::translation_expired(&k, &v, |k| linked.get(k).copied(), now));
    }
}
