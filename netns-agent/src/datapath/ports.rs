//! The app ports' configs and counters. A slotted port (`chosen_port_slot`: an app's
//! first interfaces, on ifindexes the agent chose) has them in the arrays PORTCFG_V1 and
//! PORTCNT_V1 at its slot, which the programs read with no hash lookup; the others (VM
//! taps, an app's further interfaces) in the hash maps IFACE_V3 and PORTSTAT_V1, keyed
//! by zone and ifindex. Callers see one table of ports by `IfaceKey`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use netns_ebpf_common::{chosen_port_slot, map_names, IfaceInfo, IfaceKey, PortCounters, PortSlot};

use super::{batch::BatchMap, open_map, take_where, BPF_NOEXIST};

pub struct Ports {
    slots: Array<MapData, PortSlot>,
    /// PORTCFG_V1 again, for reading every slot in one call.
    slots_batched: BatchMap,
    hashed: HashMap<MapData, IfaceKey, IfaceInfo>,
    slot_counts: PerCpuArray<MapData, PortCounters>,
    hashed_counts: PerCpuHashMap<MapData, IfaceKey, PortCounters>,
}

impl Ports {
    pub fn open(pin_dir: &Path) -> Result<Ports> {
        Ok(Ports {
            slots: open_map(pin_dir, map_names::PORT_CONFIGS)?.try_into()?,
            slots_batched: BatchMap::open(pin_dir, map_names::PORT_CONFIGS)?,
            hashed: open_map(pin_dir, map_names::IFACES)?.try_into()?,
            slot_counts: open_map(pin_dir, map_names::PORT_COUNTS)?.try_into()?,
            hashed_counts: open_map(pin_dir, map_names::PORT_STATS)?.try_into()?,
        })
    }

    /// Port `key`'s config: a slotted port's from its slot, or where an earlier agent left
    /// it (the hash map, until `adopt_hashed`: the new agent takes its ACL id over and
    /// writes the same config into the slot).
    pub fn get(&self, key: IfaceKey) -> Option<IfaceInfo> {
        chosen_port_slot(key.ifindex)
            .and_then(|slot| self.slots.get(&slot, 0).ok())
            .filter(|s| s.zone == key.zone)
            .map(|s| s.info)
            .or_else(|| self.hashed.get(&key, 0).ok())
    }

    /// Whether the programs read `info` as port `key`'s config now (an earlier agent's
    /// entry in the hash map, which `get` finds, is not read for a slotted port).
    pub fn holds(&self, key: IfaceKey, info: &IfaceInfo) -> bool {
        match chosen_port_slot(key.ifindex) {
            Some(_) => self.in_slot(key).as_ref() == Some(info),
            None => self.hashed.get(&key, 0).ok().as_ref() == Some(info),
        }
    }

    /// A slotted port's config in its slot (None: the slot is not the port's).
    fn in_slot(&self, key: IfaceKey) -> Option<IfaceInfo> {
        let slot = chosen_port_slot(key.ifindex)?;
        self.slots.get(&slot, 0).ok().filter(|s| s.zone == key.zone).map(|s| s.info)
    }

    /// Writes port `key`'s config. A slot another zone's port holds is refused: the same
    /// app interface in two NIs at once (its removal from the other failed).
    pub fn set(&mut self, key: IfaceKey, info: IfaceInfo) -> Result<()> {
        let Some(slot) = chosen_port_slot(key.ifindex) else {
            return self.hashed.insert(key, info, 0).context("writing the port's config (IFACE)");
        };
        let held = self.slots.get(&slot, 0).context("reading the port's slot (PORTCFG)")?;
        if held.zone != 0 && held.zone != key.zone {
            bail!(
                "the port's slot {slot:#x} (its app's interface) is zone {}'s port still, so zone {} cannot have it",
                held.zone,
                key.zone
            );
        }
        self.slots.set(slot, PortSlot { zone: key.zone, info }, 0).context("writing the port's config (PORTCFG)")
    }

    /// Every port's key and config. A slotted port an earlier agent left in the hash map
    /// too (until `adopt_hashed`) is listed once, by its slot.
    pub fn all(&self) -> Vec<(IfaceKey, IfaceInfo)> {
        let slotted = self
            .slots_batched
            .entries::<u32, PortSlot>()
            .unwrap_or_else(|_| self.slots.iter().flatten().enumerate().map(|(i, s)| (i as u32, s)).collect());
        let mut all: Vec<(IfaceKey, IfaceInfo)> =
            slotted.into_iter().filter(|(_, s)| s.zone != 0).map(|(slot, s)| (slotted_key(s.zone, slot), s.info)).collect();
        all.extend(self.hashed.iter().flatten().filter(|(k, _)| self.in_slot(*k).is_none()));
        all
    }

    /// Removes the configs and counters of the ports `pred` selects; returns their
    /// configs.
    pub fn remove_where(&mut self, pred: impl Fn(&IfaceKey) -> bool) -> Vec<(IfaceKey, IfaceInfo)> {
        let mut gone = Vec::new();
        for (key, _) in self.all().into_iter().filter(|(k, _)| chosen_port_slot(k.ifindex).is_some() && pred(k)) {
            if let Some(info) = self.remove_slotted(key) {
                gone.push((key, info));
            }
        }
        gone.extend(take_where(&mut self.hashed, |k, _| pred(k)));
        let doomed: Vec<IfaceKey> = self.hashed_counts.keys().flatten().filter(|k| pred(k)).collect();
        for k in doomed {
            self.hashed_counts.remove(&k).ok();
        }
        gone
    }

    /// Removes port `key`'s config and counters; returns its config.
    pub fn remove(&mut self, key: IfaceKey) -> Option<IfaceInfo> {
        self.remove_where(|k| *k == key).pop().map(|(_, info)| info)
    }

    /// A slotted port's config and counters: the slot emptied first (the programs stop
    /// counting there), then its counters zeroed for the next port it takes.
    fn remove_slotted(&mut self, key: IfaceKey) -> Option<IfaceInfo> {
        let slot = chosen_port_slot(key.ifindex)?;
        let info = self.in_slot(key)?;
        self.slots.set(slot, PortSlot::default(), 0).ok()?;
        if let Ok(zero) = zero_counters() {
            self.slot_counts.set(slot, zero, 0).ok();
        }
        Some(info)
    }

    /// Gives port `key` its packet and byte counters, unless it has them (every apply
    /// may ask, nothing is reset; a data path from an agent before the counters gets
    /// them at its first apply). A slot's counters are there always, zero until the
    /// port is configured.
    pub fn ensure_counters(&mut self, key: IfaceKey) -> Result<()> {
        if chosen_port_slot(key.ifindex).is_some() {
            return Ok(());
        }
        match self.hashed_counts.insert(key, zero_counters()?, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
            other => other.context("writing the port's counters"),
        }
    }

    /// Every port's counters, summed over CPUs (a slotted port's that an earlier agent
    /// left in the hash map, until `adopt_hashed`, added to its slot's).
    pub fn counters(&self) -> Vec<(IfaceKey, PortCounters)> {
        let mut all: Vec<(IfaceKey, PortCounters)> = self
            .all()
            .into_iter()
            .filter_map(|(key, _)| Some((key, sum(&self.slot_counts.get(&chosen_port_slot(key.ifindex)?, 0).ok()?))))
            .collect();
        for (key, per_cpu) in self.hashed_counts.iter().flatten() {
            match all.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => c.add(&sum(&per_cpu)),
                None => all.push((key, sum(&per_cpu))),
            }
        }
        all
    }

    /// Moves what an earlier agent, which had no slots, left in the hash maps for zone
    /// `zone`'s slotted ports into their slots: the counters added to the slot's, then the
    /// entries removed. Run once the zone's ports carry this agent's programs (which
    /// read the slots; an earlier agent's read the hash maps until then). Returns how many
    /// ports moved.
    pub fn adopt_hashed(&mut self, zone: u32) -> usize {
        let slotted = |k: &IfaceKey| k.zone == zone && chosen_port_slot(k.ifindex).is_some();
        let counted: Vec<(IfaceKey, PerCpuValues<PortCounters>)> =
            self.hashed_counts.iter().flatten().filter(|(k, _)| slotted(k) && self.in_slot(*k).is_some()).collect();
        for (key, old) in counted {
            let Some(slot) = chosen_port_slot(key.ifindex) else { continue };
            if let Ok(now) = self.slot_counts.get(&slot, 0) {
                let merged: Vec<PortCounters> = now
                    .iter()
                    .zip(old.iter())
                    .map(|(n, o)| {
                        let mut c = *n;
                        c.add(o);
                        c
                    })
                    .collect();
                if PerCpuValues::try_from(merged).is_ok_and(|v| self.slot_counts.set(slot, v, 0).is_ok()) {
                    self.hashed_counts.remove(&key).ok();
                }
            }
        }
        let moved: Vec<IfaceKey> = self.hashed.keys().flatten().filter(|k| slotted(k) && self.in_slot(*k).is_some()).collect();
        moved.iter().filter(|k| self.hashed.remove(k).is_ok()).count()
    }
}

/// The key of the port in slot `slot` of zone `zone`: its ifindex, as the agent chose it.
fn slotted_key(zone: u32, slot: u32) -> IfaceKey {
    IfaceKey { zone, ifindex: netns_ebpf_common::chosen_ifindex(zone, slot) }
}

fn zero_counters() -> Result<PerCpuValues<PortCounters>> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![PortCounters::default(); cpus])?)
}

fn sum(per_cpu: &PerCpuValues<PortCounters>) -> PortCounters {
    let mut sum = PortCounters::default();
    per_cpu.iter().for_each(|c| sum.add(c));
    sum
}
