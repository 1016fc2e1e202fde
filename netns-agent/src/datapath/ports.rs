//! The app ports' configs and counters: in the arrays PORTCFG_V1 and PORTCNT_V1 at each
//! port's index, which the programs read at an offset. A port on an ifindex the agent
//! chose for one of an app's first interfaces has its slot for index
//! (`chosen_port_slot`); the others (VM taps, an app's further interfaces) get a spare
//! index here, which IFACE_V4 holds for the programs. Callers see one table of ports by
//! `IfaceKey`. An agent before the arrays kept configs and counters in hash maps
//! (IFACE_V3, PORTSTAT_V1): read while they are there, and emptied into the arrays
//! (`adopt_earlier`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use netns_ebpf_common::{
    chosen_ifindex, chosen_port_slot, map_names, IfaceInfo, IfaceKey, PortCounters, PortSlot, PORT_INDEXES, PORT_SLOTS,
};

use super::{batch::BatchMap, open_map, take_where};

/// The maps of an agent before the port arrays (IFACE_V3 is IFACE_V4's older version).
const EARLIER_CONFIGS: &str = "IFACE_V3";
pub(super) const EARLIER_COUNTERS: &str = "PORTSTAT_V1";

pub struct Ports {
    configs: Array<MapData, PortSlot>,
    /// PORTCFG_V1 again, for reading every index in one call.
    configs_batched: BatchMap,
    counts: PerCpuArray<MapData, PortCounters>,
    /// The spare index of each port without a slot.
    spare: HashMap<MapData, IfaceKey, u32>,
    /// What an earlier agent left, while its pins are there (each map apart: an agent
    /// before the port counters had IFACE_V3 alone).
    earlier: Earlier,
}

struct Earlier {
    configs: Option<HashMap<MapData, IfaceKey, IfaceInfo>>,
    counters: Option<PerCpuHashMap<MapData, IfaceKey, PortCounters>>,
}

impl Ports {
    pub fn open(pin_dir: &Path) -> Result<Ports> {
        let earlier = Earlier {
            configs: match pin_dir.join(EARLIER_CONFIGS).exists() {
                true => Some(open_map(pin_dir, EARLIER_CONFIGS)?.try_into()?),
                false => None,
            },
            counters: match pin_dir.join(EARLIER_COUNTERS).exists() {
                true => Some(open_map(pin_dir, EARLIER_COUNTERS)?.try_into()?),
                false => None,
            },
        };
        Ok(Ports {
            configs: open_map(pin_dir, map_names::PORT_CONFIGS)?.try_into()?,
            configs_batched: BatchMap::open(pin_dir, map_names::PORT_CONFIGS)?,
            counts: open_map(pin_dir, map_names::PORT_COUNTS)?.try_into()?,
            spare: open_map(pin_dir, map_names::PORT_INDEX)?.try_into()?,
            earlier,
        })
    }

    /// Port `key`'s index, as the programs find it (None: it has none yet).
    fn index(&self, key: IfaceKey) -> Option<u32> {
        chosen_port_slot(key.ifindex).or_else(|| self.spare.get(&key, 0).ok())
    }

    /// Port `key`'s config as the programs read it (None: the port has none).
    fn in_place(&self, key: IfaceKey) -> Option<IfaceInfo> {
        let index = self.index(key)?;
        self.configs.get(&index, 0).ok().filter(|s| s.zone == key.zone).map(|s| s.info)
    }

    /// Port `key`'s config: as the programs read it, or where an earlier agent left it
    /// (until `adopt_earlier`: the new agent takes its ACL id over and writes the same
    /// config in place).
    pub fn get(&self, key: IfaceKey) -> Option<IfaceInfo> {
        self.in_place(key).or_else(|| self.earlier.configs.as_ref()?.get(&key, 0).ok())
    }

    /// Whether the programs read `info` as port `key`'s config now.
    pub fn holds(&self, key: IfaceKey, info: &IfaceInfo) -> bool {
        self.in_place(key).as_ref() == Some(info)
    }

    /// Writes port `key`'s config at its index. A port without a slot gets a spare index
    /// first (its entry written before IFACE_V4 names it: the programs never find an index
    /// without the port's config). A slot another zone's port holds is refused: the same
    /// app interface in two NIs at once (its removal from the other failed).
    pub fn set(&mut self, key: IfaceKey, info: IfaceInfo) -> Result<()> {
        let entry = PortSlot { zone: key.zone, info };
        if let Some(index) = self.index(key) {
            let held = self.configs.get(&index, 0).context("reading the port's entry (PORTCFG)")?;
            if held.zone != 0 && held.zone != key.zone {
                bail!(
                    "the port's slot {index:#x} (its app's interface) is zone {}'s port still, so zone {} cannot have it",
                    held.zone,
                    key.zone
                );
            }
            if held.zone == 0 {
                zero_counters(&mut self.counts, index);
            } else if held.info.acl_id != info.acl_id {
                // An array element is rewritten in place, and a program may read some of
                // its fields before the write and some after. The ACL switch goes in two
                // writes, so that any mix a program reads judges a flow as the old entry
                // or the new one would, or judges it again: first the old ACL with
                // nothing kept from the one before it, then the new one.
                let between = IfaceInfo { prev_acl_id: held.info.acl_id, kept_aces: 0, ..held.info };
                self.configs.set(index, PortSlot { zone: key.zone, info: between }, 0).context("writing the port's config (PORTCFG)")?;
            }
            return self.configs.set(index, entry, 0).context("writing the port's config (PORTCFG)");
        }
        let taken: std::collections::HashSet<u32> = self.spare.iter().flatten().map(|(_, i)| i).collect();
        let index = (PORT_SLOTS..PORT_INDEXES)
            .find(|i| !taken.contains(i) && self.configs.get(i, 0).is_ok_and(|s| s.zone == 0))
            .context("no spare index left for the port (PORTCFG)")?;
        self.configs.set(index, entry, 0).context("writing the port's config (PORTCFG)")?;
        zero_counters(&mut self.counts, index);
        if let Err(e) = self.spare.insert(key, index, 0) {
            self.configs.set(index, PortSlot::default(), 0).ok();
            return Err(e).context("writing the port's index (IFACE)");
        }
        Ok(())
    }

    /// Every port's key, index and config, as the programs read them.
    fn placed(&self) -> Vec<(IfaceKey, u32, IfaceInfo)> {
        let entries = self
            .configs_batched
            .entries::<u32, PortSlot>()
            .unwrap_or_else(|_| (0..PORT_INDEXES).filter_map(|i| Some((i, self.configs.get(&i, 0).ok()?))).collect());
        let by_index: std::collections::HashMap<u32, IfaceKey> = self.spare.iter().flatten().map(|(k, i)| (i, k)).collect();
        entries
            .into_iter()
            .filter(|(_, s)| s.zone != 0)
            .filter_map(|(index, s)| {
                let key = match index < PORT_SLOTS {
                    true => IfaceKey { zone: s.zone, ifindex: chosen_ifindex(s.zone, index) },
                    false => *by_index.get(&index).filter(|k| k.zone == s.zone)?,
                };
                Some((key, index, s.info))
            })
            .collect()
    }

    /// Every port's key and config (an earlier agent's too, for a port this one has
    /// not written yet).
    pub fn all(&self) -> Vec<(IfaceKey, IfaceInfo)> {
        let mut all: Vec<(IfaceKey, IfaceInfo)> = self.placed().into_iter().map(|(k, _, info)| (k, info)).collect();
        if let Some(earlier) = &self.earlier.configs {
            all.extend(earlier.iter().flatten().filter(|(k, _)| self.in_place(*k).is_none()));
        }
        all
    }

    /// Removes the configs and counters of the ports `pred` selects; returns their
    /// configs. The programs stop finding a port (its spare index's entry goes first)
    /// before its entry is emptied and its counters zeroed for the next port there.
    pub fn remove_where(&mut self, pred: impl Fn(&IfaceKey) -> bool) -> Vec<(IfaceKey, IfaceInfo)> {
        let mut gone = Vec::new();
        for (key, index, info) in self.placed().into_iter().filter(|(k, _, _)| pred(k)) {
            if chosen_port_slot(key.ifindex).is_none() && self.spare.remove(&key).is_err() {
                continue;
            }
            if self.configs.set(index, PortSlot::default(), 0).is_ok() {
                zero_counters(&mut self.counts, index);
                gone.push((key, info));
            }
        }
        self.remove_orphans();
        if let Some(earlier) = &mut self.earlier.configs {
            gone.extend(take_where(earlier, |k, _| pred(k)));
        }
        if let Some(earlier) = &mut self.earlier.counters {
            let doomed: Vec<IfaceKey> = earlier.keys().flatten().filter(|k| pred(k)).collect();
            for k in doomed {
                earlier.remove(&k).ok();
            }
        }
        gone
    }

    /// Empties the spare entries no IFACE_V4 entry names (an agent killed between the
    /// two writes of `set` or `remove_where`): no program finds them, and no port could
    /// take them.
    fn remove_orphans(&mut self) {
        let named: std::collections::HashSet<u32> = self.spare.iter().flatten().map(|(_, i)| i).collect();
        let entries = self.configs_batched.entries::<u32, PortSlot>().unwrap_or_default();
        for (index, _) in entries.into_iter().filter(|(i, s)| *i >= PORT_SLOTS && s.zone != 0 && !named.contains(i)) {
            if self.configs.set(index, PortSlot::default(), 0).is_ok() {
                zero_counters(&mut self.counts, index);
            }
        }
    }

    /// Removes port `key`'s config and counters; returns its config (as the programs read
    /// it, before an earlier agent's).
    pub fn remove(&mut self, key: IfaceKey) -> Option<IfaceInfo> {
        self.remove_where(|k| *k == key).into_iter().next().map(|(_, info)| info)
    }

    /// Every port's counters, summed over CPUs (with what an earlier agent counted, until
    /// `adopt_earlier`).
    pub fn counters(&self) -> Vec<(IfaceKey, PortCounters)> {
        let mut all: Vec<(IfaceKey, PortCounters)> =
            self.placed().into_iter().filter_map(|(key, index, _)| Some((key, sum(&self.counts.get(&index, 0).ok()?)))).collect();
        if let Some(earlier) = &self.earlier.counters {
            for (key, per_cpu) in earlier.iter().flatten() {
                match all.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, c)) => c.add(&sum(&per_cpu)),
                    None => all.push((key, sum(&per_cpu))),
                }
            }
        }
        all
    }

    /// Writes every port config an earlier agent left in its hash map at the port's
    /// index, where this agent's programs read it, before any of them is attached (the
    /// earlier agent's keep reading the hash map until each port gets the new ones).
    /// Ports already in place are left as they are. Returns how many were placed.
    pub fn place_earlier(&mut self) -> usize {
        let Some(earlier) = &self.earlier.configs else { return 0 };
        let left: Vec<(IfaceKey, IfaceInfo)> = earlier.iter().flatten().filter(|(k, _)| self.in_place(*k).is_none()).collect();
        left.into_iter().filter(|(key, info)| self.set(*key, *info).is_ok()).count()
    }

    /// Moves what an earlier agent left in its hash maps for port `key` into the arrays,
    /// once the port carries this agent's programs (the earlier agent's read and counted
    /// there until then) and its config is in place: its counters, taken out first and
    /// then added to those at its index, and its config. Returns whether there was any.
    pub fn adopt_earlier(&mut self, key: IfaceKey) -> bool {
        let Some(index) = self.index(key).filter(|_| self.in_place(key).is_some()) else { return false };
        let mut found = false;
        if let Some(earlier) = &mut self.earlier.counters {
            if let Ok(old) = earlier.get(&key, 0) {
                found = true;
                if earlier.remove(&key).is_ok() {
                    if let Ok(now) = self.counts.get(&index, 0) {
                        let merged: Vec<PortCounters> = now
                            .iter()
                            .zip(old.iter())
                            .map(|(n, o)| {
                                let mut c = *n;
                                c.add(o);
                                c
                            })
                            .collect();
                        if let Ok(v) = PerCpuValues::try_from(merged) {
                            self.counts.set(index, v, 0).ok();
                        }
                    }
                }
            }
        }
        if let Some(earlier) = &mut self.earlier.configs {
            found |= earlier.remove(&key).is_ok();
        }
        found
    }
}

/// Zeroes the counters at `index` (for the port that takes it next).
fn zero_counters(counts: &mut PerCpuArray<MapData, PortCounters>, index: u32) {
    let Ok(cpus) = aya::util::nr_cpus() else { return };
    if let Ok(zero) = PerCpuValues::try_from(vec![PortCounters::default(); cpus]) {
        counts.set(index, zero, 0).ok();
    }
}

fn sum(per_cpu: &PerCpuValues<PortCounters>) -> PortCounters {
    let mut sum = PortCounters::default();
    per_cpu.iter().for_each(|c| sum.add(c));
    sum
}
