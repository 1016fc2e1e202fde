//! The ports' ACLs in the classify maps: each compiled (`classify::compile`) under an
//! ACL id of its own. A changed ACL is written under a new id beside the live one, then
//! the port's IFACE entry switches to it in one map update (the programs see the old ACL
//! or the new one, whole), then the old id's entries go.

use std::collections::HashSet;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use netns_ebpf_common::{
    acl::Ace,
    classify::{
        self, AceGroup, AceKey, AclShape, Bits, CompiledAcl, ProtoBitsKey, RangeKey, RangePage, SummaryKey, SummaryPage, ACES_PER_GROUP,
    },
    map_names,
};

use super::{batch::BatchMap, open_map, remove_where};

pub struct AclStore {
    shapes: HashMap<MapData, u32, AclShape>,
    ranges: HashMap<MapData, RangeKey, RangePage>,
    proto: HashMap<MapData, ProtoBitsKey, Bits>,
    aces: HashMap<MapData, AceKey, AceGroup>,
    hosts: HashMap<MapData, AceKey, u32>,
    summary: HashMap<MapData, SummaryKey, SummaryPage>,
    /// The five maps again, for batched writes and removals: an ACL's entries in one
    /// system call per map.
    batched: [BatchMap; 5],
    /// The next id to hand out, found at the first write (the status and the metrics open
    /// the maps too, and write none): above every id in the maps and every id the ports'
    /// entries name.
    next_id: Option<u32>,
    /// Whether `remove_unnamed` has looked through every map once (see there).
    every_map_looked_at: bool,
    /// The keys of each live ACL this agent wrote: its removal needs no second compile
    /// (a 10,000-ACE ACL took milliseconds of a swap to compile again).
    written: std::collections::HashMap<u32, AclKeys>,
}

/// The keys of an ACL's entries besides its shape, map by map.
struct AclKeys {
    ranges: Vec<RangeKey>,
    proto: Vec<ProtoBitsKey>,
    aces: Vec<AceKey>,
    hosts: Vec<AceKey>,
    summary: Vec<SummaryKey>,
}

impl AclKeys {
    fn of(c: &CompiledAcl) -> AclKeys {
        AclKeys { ranges: keys(&c.ranges), proto: keys(&c.proto), aces: keys(&c.aces), hosts: keys(&c.hosts), summary: keys(&c.summary) }
    }
}

impl AclStore {
    pub fn open(pin_dir: &std::path::Path) -> Result<AclStore> {
        let shapes: HashMap<MapData, u32, AclShape> = open_map(pin_dir, map_names::ACL_SHAPES)?.try_into()?;
        Ok(AclStore {
            shapes,
            ranges: open_map(pin_dir, map_names::ACL_RANGES)?.try_into()?,
            proto: open_map(pin_dir, map_names::ACL_PROTO)?.try_into()?,
            aces: open_map(pin_dir, map_names::ACES)?.try_into()?,
            hosts: open_map(pin_dir, map_names::ACL_HOSTS)?.try_into()?,
            summary: open_map(pin_dir, map_names::ACL_SUMMARY)?.try_into()?,
            batched: [
                BatchMap::open(pin_dir, map_names::ACL_RANGES)?,
                BatchMap::open(pin_dir, map_names::ACL_PROTO)?,
                BatchMap::open(pin_dir, map_names::ACES)?,
                BatchMap::open(pin_dir, map_names::ACL_HOSTS)?,
                BatchMap::open(pin_dir, map_names::ACL_SUMMARY)?,
            ],
            next_id: None,
            every_map_looked_at: false,
            written: Default::default(),
        })
    }

    /// Writes `aces` under a new id (returned), its host ACEs on the host sets' bits from
    /// `host_base` up, the shape last: until the port's entry names the id, no program
    /// reads it. On an error nothing of it stays. `named`: the highest id the ports'
    /// entries name (asked at the first write), which with those below stays theirs (and
    /// the flows' decided under them), even where an agent of another map version wrote
    /// them.
    pub fn write(&mut self, aces: &[Ace], host_base: u32, named: impl FnOnce() -> u32) -> Result<u32> {
        let id = match self.next_id {
            Some(id) => id,
            None => self.ids_with_entries().into_iter().fold(named(), u32::max).checked_add(1).unwrap_or(1),
        };
        self.next_id = Some(id.checked_add(1).unwrap_or(1));
        let compiled = classify::compile(id, aces, host_base);
        let keys = AclKeys::of(&compiled);
        if let Err(e) = self.insert(id, &compiled) {
            self.remove_keys(id, &keys);
            return Err(e.context(format!("writing ACL {id} ({} ACEs)", aces.len())));
        }
        self.written.insert(id, keys);
        Ok(id)
    }

    fn insert(&mut self, id: u32, c: &CompiledAcl) -> Result<()> {
        let [ranges, proto, aces, hosts, summary] = &self.batched;
        ranges.insert_all(&c.ranges)?;
        proto.insert_all(&c.proto)?;
        aces.insert_all(&c.aces)?;
        hosts.insert_all(&c.hosts)?;
        summary.insert_all(&c.summary)?;
        self.shapes.insert(id, c.shape, 0).context("ACLSHAPE")
    }

    /// The size of ACL `id` (None: no such ACL).
    pub fn shape(&self, id: u32) -> Option<AclShape> {
        self.shapes.get(&id, 0).ok()
    }

    /// ACE `index` of ACL `id`.
    pub fn ace(&self, id: u32, index: u32) -> Option<Ace> {
        let (group, at) = AceGroup::locate(&AceKey { acl: id, index });
        self.aces.get(&group, 0).ok()?.get(at).copied()
    }

    /// The ACEs under `id`, read back (None: no such ACL).
    pub fn aces(&self, id: u32) -> Option<Vec<Ace>> {
        let shape = self.shapes.get(&id, 0).ok()?;
        let groups = (shape.aces as usize).div_ceil(ACES_PER_GROUP) as u32;
        let mut aces = Vec::with_capacity(shape.aces as usize);
        for index in 0..groups {
            aces.extend(self.aces.get(&AceKey { acl: id, index }, 0).ok()?.aces);
        }
        aces.truncate(shape.aces as usize);
        Some(aces)
    }

    /// The first host-set bit of ACL `id`, which holds `aces` (0: no such ACL).
    pub fn host_base(&self, id: u32, aces: &[Ace]) -> u32 {
        self.shape(id).map_or(0, |s| s.host_base(classify::host_count(aces)))
    }

    /// ACL `id`, which holds `aces`, compiled again as it was written: for its keys.
    fn compiled_again(&self, id: u32, aces: &[Ace]) -> CompiledAcl {
        classify::compile(id, aces, self.host_base(id, aces))
    }

    /// Whether ACL `id` holds exactly `aces` (by the digest in its shape, written after
    /// the rest of it).
    pub fn holds(&self, id: u32, aces: &[Ace]) -> bool {
        self.shape(id).is_some_and(|s| s.aces as usize == aces.len() && s.digest == classify::digest(aces))
    }

    /// Removes ACL `id`: by the keys this agent wrote it with; else its ACEs read back
    /// name its entries (compiled again), so no walk over the maps; an ACL that cannot be
    /// read back whole goes by walking them.
    pub fn remove(&mut self, id: u32) {
        if let Some(keys) = self.written.remove(&id) {
            return self.remove_keys(id, &keys);
        }
        match self.aces(id) {
            Some(aces) => self.remove_keys(id, &AclKeys::of(&self.compiled_again(id, &aces))),
            None => {
                self.remove_where(|acl| acl == id);
            }
        }
    }

    /// Removes ACL `id`, which holds `aces` if its digest says so (the record's ACEs: no
    /// reading back); else as `remove`. (An ACL this agent wrote goes by its keys.)
    pub fn remove_holding(&mut self, id: u32, aces: &[Ace]) {
        match !self.written.contains_key(&id) && self.holds(id, aces) {
            true => self.remove_keys(id, &AclKeys::of(&self.compiled_again(id, aces))),
            false => self.remove(id),
        }
    }

    fn remove_keys(&mut self, id: u32, k: &AclKeys) {
        // The shape first: a search that finds none stops there.
        self.shapes.remove(&id).ok();
        let [ranges, proto, aces, hosts, summary] = &self.batched;
        ranges.remove_all(&k.ranges);
        proto.remove_all(&k.proto);
        aces.remove_all(&k.aces);
        hosts.remove_all(&k.hosts);
        summary.remove_all(&k.summary);
    }

    /// Removes every ACL that `doomed` selects, walking the maps; returns how many
    /// entries went.
    pub fn remove_where(&mut self, doomed: impl Fn(u32) -> bool) -> usize {
        self.written.retain(|id, _| !doomed(*id));
        remove_where(&mut self.shapes, |id, _| doomed(*id))
            + remove_where(&mut self.ranges, |k, _| doomed(k.acl))
            + remove_where(&mut self.proto, |k, _| doomed(k.acl))
            + remove_where(&mut self.aces, |k, _| doomed(k.acl))
            + remove_where(&mut self.hosts, |k, _| doomed(k.acl))
            + remove_where(&mut self.summary, |k, _| doomed(k.acl))
    }

    /// Entries of every ACL, over the six maps.
    pub fn entries(&self) -> usize {
        self.shapes.keys().flatten().count()
            + self.ranges.keys().flatten().count()
            + self.proto.keys().flatten().count()
            + self.aces.keys().flatten().count()
            + self.hosts.keys().flatten().count()
            + self.summary.keys().flatten().count()
    }

    /// Every id with an entry in any of the ACL maps. An agent killed while it wrote an
    /// ACL leaves entries under an id with no shape (written last): no search reads
    /// them, but a new ACL written under that id would be searched with them.
    fn ids_with_entries(&self) -> HashSet<u32> {
        let mut ids: HashSet<u32> = self.shapes.keys().flatten().collect();
        ids.extend(self.ranges.keys().flatten().map(|k| k.acl));
        ids.extend(self.proto.keys().flatten().map(|k| k.acl));
        ids.extend(self.aces.keys().flatten().map(|k| k.acl));
        ids.extend(self.hosts.keys().flatten().map(|k| k.acl));
        ids.extend(self.summary.keys().flatten().map(|k| k.acl));
        ids
    }

    /// Removes the ACLs no port names (left by an apply that stopped half way); returns
    /// how many there were. The first call looks through every map, for the entries an
    /// agent killed while writing an ACL left with no shape; later calls, only at the
    /// shapes: this agent's own writes that fail take their entries out.
    pub fn remove_unnamed(&mut self, named: &HashSet<u32>) -> usize {
        let ids = match std::mem::replace(&mut self.every_map_looked_at, true) {
            false => self.ids_with_entries(),
            true => self.shapes.keys().flatten().collect(),
        };
        let unnamed: HashSet<u32> = ids.into_iter().filter(|id| !named.contains(id)).collect();
        if !unnamed.is_empty() {
            self.remove_where(|id| unnamed.contains(&id));
        }
        unnamed.len()
    }
}

fn keys<K: Copy, V>(entries: &[(K, V)]) -> Vec<K> {
    entries.iter().map(|(k, _)| *k).collect()
}
