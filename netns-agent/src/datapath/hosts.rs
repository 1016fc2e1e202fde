//! The host sets: the addresses DNS answers gave each app port, each with a mask of the
//! port's host ACEs whose domain the question was in (bit k: the k-th host ACE of the ACL
//! the port's IFACE entry names), and the layouts those bits follow.

use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use netns_ebpf_common::{map_names, HostEntry, HostKey, IfaceKey};

use super::{open_map, remove_where};

/// The host sets, on their own handle so the DNS proxies can write them.
pub struct HostSets {
    pub(super) map: HashMap<MapData, HostKey, HostEntry>,
}

impl HostSets {
    pub fn open(pin_dir: &Path) -> Result<HostSets> {
        Ok(HostSets { map: open_map(pin_dir, map_names::HOSTSET)?.try_into()? })
    }

    /// Adds `ace_mask` for `key` valid until `expires_ns`, keeping what was there.
    pub fn add(&mut self, key: HostKey, ace_mask: u64, expires_ns: u64) -> Result<()> {
        let entry = match self.map.get(&key, 0) {
            Ok(old) => HostEntry { ace_mask: old.ace_mask | ace_mask, expires_ns: old.expires_ns.max(expires_ns) },
            Err(_) => HostEntry { ace_mask, expires_ns },
        };
        self.map.insert(key, entry, 0).context("writing host set")
    }

    /// Drops expired entries (the programs ignore them already).
    /// Returns (how many went, how many stay).
    pub fn expire(&mut self, now_ns: u64) -> (usize, usize) {
        let mut stay = 0;
        let gone = remove_where(&mut self.map, |_, e| {
            let gone = e.expires_ns <= now_ns;
            stay += usize::from(!gone);
            gone
        });
        (gone, stay)
    }

    pub fn remove_zone(&mut self, zone: u32) {
        remove_where(&mut self.map, |k, _| k.zone == zone);
    }

    pub fn remove_port(&mut self, key: IfaceKey) {
        remove_where(&mut self.map, |k, _| k.zone == key.zone && k.ifindex == key.ifindex);
    }

    /// Rewrites the ACE masks of a port's entries from layout `old` to `new` (its host
    /// ACEs moved in the ACL): a domain's addresses follow its ACE; entries left with no
    /// ACE go.
    fn relayout_port(&mut self, key: IfaceKey, old: &[String], new: &[String]) {
        let entries: Vec<(HostKey, HostEntry)> =
            self.map.iter().flatten().filter(|(k, _)| k.zone == key.zone && k.ifindex == key.ifindex).collect();
        for (k, e) in entries {
            let mask = relayout_mask(e.ace_mask, old, new);
            if mask == e.ace_mask {
                continue;
            }
            if mask == 0 {
                self.map.remove(&k).ok();
            } else {
                self.map.insert(k, HostEntry { ace_mask: mask, ..e }, 0).ok();
            }
        }
    }
}

/// The domains of an app port's host ACEs, in ACL order: bit k of its host-set masks
/// stands for the k-th.
pub type HostLayout = Vec<String>;

/// Each app port's live host layout (that of the ACL its IFACE entry names), and the lock
/// that orders the DNS proxies' answers against the applier's ACL switches: an answer
/// goes into a host set under the layout live as it is written, and a switch to an ACL
/// whose host ACEs moved rewrites the port's masks to the new layout before any later
/// answer is written. (Proxies that numbered the bits by their own copy of the plan, which
/// follows an apply, wrote an answer that came between a switch and that copy's update
/// under the old numbering: the address was then allowed by whichever ACE took that
/// number, until the entry expired, up to a day later.) One per agent, shared by the
/// applier and every NI's DNS proxy.
#[derive(Default)]
pub struct HostLayouts(Mutex<StdHashMap<IfaceKey, HostLayout>>);

impl HostLayouts {
    /// Adds an answer's addresses (`addrs`: address, expiry) to port `key`'s host set,
    /// with the bits `mask_of` gives under the port's live layout, or under `recorded`
    /// while the applier has published none (an agent's start, before its first apply
    /// reaches the port: the record's layout, which the maps hold). Returns the mask
    /// written (0: none).
    pub fn add_answer(
        &self,
        hosts: &mut HostSets,
        key: IfaceKey,
        recorded: &[String],
        mask_of: impl Fn(&[String]) -> u64,
        addrs: &[(Ipv4Addr, u64)],
    ) -> Result<u64> {
        let live = self.0.lock().unwrap();
        let mask = mask_of(live.get(&key).map_or(recorded, Vec::as_slice));
        if mask != 0 {
            for (ip, expires) in addrs {
                hosts.add(HostKey { zone: key.zone, ifindex: key.ifindex, addr: ip.octets() }, mask, *expires)?;
            }
        }
        Ok(mask)
    }

    /// Starts switching port `key` to another ACL: until `LayoutSwitch::finish`, no
    /// answer is written. The caller points the port's entry at the new ACL, then
    /// finishes; dropped unfinished (the entry could not be written), nothing changes.
    pub fn begin_switch(&self, key: IfaceKey) -> LayoutSwitch<'_> {
        LayoutSwitch { live: self.0.lock().unwrap(), key }
    }

    /// A port that went.
    pub fn forget(&self, key: IfaceKey) {
        self.0.lock().unwrap().remove(&key);
    }

    /// The ports of an NI that went.
    pub fn forget_zone(&self, zone: u32) {
        self.0.lock().unwrap().retain(|k, _| k.zone != zone);
    }
}

/// A switch of one port's ACL under way (`HostLayouts::begin_switch`): answers wait.
pub struct LayoutSwitch<'a> {
    live: MutexGuard<'a, StdHashMap<IfaceKey, HostLayout>>,
    key: IfaceKey,
}

impl LayoutSwitch<'_> {
    /// The port's entry names the ACL of `layout` now: its masks are rewritten from the
    /// layout live so far (`recorded`, where none was published) to `layout`, which is
    /// then the live one.
    pub fn finish(mut self, hosts: &mut HostSets, recorded: Option<&[String]>, layout: HostLayout) {
        if let Some(old) = self.live.get(&self.key).map(Vec::as_slice).or(recorded).filter(|old| *old != layout.as_slice()) {
            hosts.relayout_port(self.key, old, &layout);
        }
        self.live.insert(self.key, layout);
    }
}

/// A host-set mask under layout `old`, carried to layout `new`: each bit to the ACEs of
/// the same domain; ACEs that left drop out.
fn relayout_mask(mask: u64, old: &[String], new: &[String]) -> u64 {
    let bit = |k: usize| if k < 64 { 1u64 << k } else { 0 };
    old.iter()
        .enumerate()
        .filter(|(k, _)| mask & bit(*k) != 0)
        .flat_map(|(_, domain)| new.iter().enumerate().filter(move |(_, d)| *d == domain))
        .fold(0, |m, (j, _)| m | bit(j))
}

#[cfg(test)]
mod tests {
    use super::relayout_mask;

    #[test]
    fn host_masks_follow_their_domains() {
        let domains = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Bits are host ACE ordinals: github.com is the first host ACE, then the second.
        let old = domains(&["github.com", "zededa.com"]);
        let new = domains(&["zededa.com", "github.com"]);
        assert_eq!(relayout_mask(1 << 0, &old, &new), 1 << 1);
        assert_eq!(relayout_mask(1 << 0 | 1 << 1, &old, &new), 1 << 1 | 1);
        // A domain that left the ACL takes its bit with it.
        assert_eq!(relayout_mask(1 << 1, &old, &new[1..]), 0);
    }
}
