//! The host sets: the addresses DNS answers gave each app port, each with a mask of the
//! port's host ACEs whose domain the question was in (a bit per host ACE of the ACL the
//! port's IFACE entry names, from the ACL's base bit up), and the layouts those bits
//! follow.

use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use netns_ebpf_common::{classify::MAX_HOST_ACES, map_names, HostEntry, HostKey, IfaceKey};

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

    /// The keys of a port's entries: one walk over the map.
    fn port_keys(&self, key: IfaceKey) -> Vec<HostKey> {
        self.map.keys().flatten().filter(|k| k.zone == key.zone && k.ifindex == key.ifindex).collect()
    }

    /// Rewrites the masks of entries `keys` by `rewrite` (read by key: no walk); entries
    /// left with no bit go, entries gone meanwhile stay gone.
    fn rewrite(&mut self, keys: &[HostKey], rewrite: impl Fn(u64) -> u64) {
        for k in keys {
            let Ok(e) = self.map.get(k, 0) else { continue };
            let mask = rewrite(e.ace_mask);
            if mask == e.ace_mask {
                continue;
            }
            if mask == 0 {
                self.map.remove(k).ok();
            } else {
                self.map.insert(k, HostEntry { ace_mask: mask, ..e }, 0).ok();
            }
        }
    }
}

/// Which host-set bits stand for which of an app port's host ACEs: the k-th host ACE of
/// its ACL (whose domain is `domains[k]`) has bit `base + k`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostLayout {
    pub base: u32,
    pub domains: Vec<String>,
}

impl HostLayout {
    /// The bits of its host ACEs whose domain `pred` selects.
    pub fn mask_where(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.domains.iter().enumerate().filter(|(_, d)| pred(d)).fold(0, |m, (k, _)| m | bit(self.base as usize + k))
    }

    /// The bits it uses.
    fn bits(&self) -> u64 {
        self.mask_where(|_| true)
    }

    /// Where an ACL of `count` host ACEs that replaces this layout's puts them: on bits
    /// this one does not use, so that a host set can hold both while the port switches.
    /// At one end of the 64 bits, the end this layout leaves free (a layout placed so
    /// always touches bit 0 or bit 63): there is room whenever the two ACLs have at most
    /// 64 host ACEs between them; None: they have more.
    pub fn base_beside(&self, count: usize) -> Option<u32> {
        let (base, len) = (self.base as usize, self.domains.len());
        if count <= base {
            Some(0)
        } else if base + len + count <= MAX_HOST_ACES {
            Some((MAX_HOST_ACES - count) as u32)
        } else {
            None
        }
    }

    /// A mask under this layout, carried to `new`: each of its host ACEs' bits to the
    /// bits of the new ACL's host ACEs of the same domain; those of domains that left drop
    /// out, and so do bits this layout does not use.
    fn carried_to(&self, mask: u64, new: &HostLayout) -> u64 {
        self.domains
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & bit(self.base as usize + k) != 0)
            .flat_map(|(_, domain)| new.domains.iter().enumerate().filter(move |(_, d)| *d == domain))
            .fold(0, |m, (j, _)| m | bit(new.base as usize + j))
    }
}

fn bit(k: usize) -> u64 {
    if k < 64 {
        1u64 << k
    } else {
        0
    }
}

/// Each app port's live host layout (that of the ACL its IFACE entry names), and the lock
/// that orders the DNS proxies' answers against the applier's ACL switches: an answer
/// goes into a host set under the layout live as it is written, and a switch to an ACL
/// whose host ACEs moved rewrites the port's masks to the new layout (`LayoutSwitch`)
/// before any later answer is written. (Proxies that numbered the bits by their own copy of the plan, which
/// follows an apply, wrote an answer that came between a switch and that copy's update
/// under the old numbering: the address was then allowed by whichever ACE took that
/// number, until the entry expired, up to a day later.) One per agent, shared by the
/// applier and every NI's DNS proxy.
#[derive(Default)]
pub struct HostLayouts(Mutex<StdHashMap<IfaceKey, HostLayout>>);

impl HostLayouts {
    /// Adds an answer's addresses (`addrs`: address, expiry) to port `key`'s host set,
    /// with the bits `mask_of` gives under the port's live layout (none published: no
    /// ACL of the port is live yet, nothing to match). Returns the mask written (0: none).
    pub fn add_answer(
        &self,
        hosts: &mut HostSets,
        key: IfaceKey,
        mask_of: impl Fn(&HostLayout) -> u64,
        addrs: &[(Ipv4Addr, u64)],
    ) -> Result<u64> {
        let live = self.0.lock().unwrap();
        let mask = live.get(&key).map_or(0, mask_of);
        if mask != 0 {
            for (ip, expires) in addrs {
                hosts.add(HostKey { zone: key.zone, ifindex: key.ifindex, addr: ip.octets() }, mask, *expires)?;
            }
        }
        Ok(mask)
    }

    /// Port `key`'s live layout.
    pub fn live(&self, key: IfaceKey) -> Option<HostLayout> {
        self.0.lock().unwrap().get(&key).cloned()
    }

    /// Port `key`'s layout, as an agent's record and maps tell it at start (the first
    /// apply publishes each port's anew).
    pub fn publish(&self, key: IfaceKey, layout: HostLayout) {
        self.0.lock().unwrap().insert(key, layout);
    }

    /// Starts switching port `key` to another ACL: until `LayoutSwitch::finish`, no
    /// answer is written. The caller writes the new ACL (on bits beside the live
    /// layout's where there is room: `HostLayout::base_beside`), has the host sets
    /// `prepare`d, points the port's entry at the ACL, then finishes; dropped unfinished
    /// (the entry could not be written), the live layout stays.
    pub fn begin_switch(&self, key: IfaceKey) -> LayoutSwitch<'_> {
        LayoutSwitch { live: self.0.lock().unwrap(), key, entries: None }
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
    /// The port's entries, once a step has walked the map for them (no answer adds one
    /// while the switch holds the lock, and the programs only read the map).
    entries: Option<Vec<HostKey>>,
}

impl LayoutSwitch<'_> {
    /// The port's live layout (None: no ACL of it is live, or the agent does not know it).
    fn live(&self) -> Option<&HostLayout> {
        self.live.get(&self.key)
    }

    /// Before the port's entry names the ACL of layout `new`: where `new` uses other bits
    /// than the live layout, each entry gets the new ACL's bits beside the live ones, so
    /// that the entry says the same under either ACL while the programs may read either.
    /// (With the bits rewritten only after the switch, a flow a moved host ACE allowed
    /// was judged again under the new ACL by the old bits in between, and dropped for
    /// good.) Bits the live layout does not use go (a switch that failed, or an agent killed
    /// between `prepare` and `finish`, may have left the new bits of an ACL that never
    /// went live). Returns whether the new bits went beside the old ones (else `finish`
    /// carries them over after the switch: more than 64 host ACEs between the two ACLs).
    pub fn prepare(&mut self, hosts: &mut HostSets, new: &HostLayout) -> bool {
        match self.live().filter(|old| *old != new) {
            Some(old) if old.bits() & new.bits() == 0 => {
                let old = old.clone();
                self.rewrite(hosts, |mask| (mask & old.bits()) | old.carried_to(mask, new));
                true
            }
            _ => false,
        }
    }

    /// The switch failed: the new bits `prepare` wrote go, the live layout stays.
    pub fn abort(mut self, hosts: &mut HostSets, new: &HostLayout) {
        if let Some(old) = self.live().filter(|old| *old != new && old.bits() & new.bits() == 0).cloned() {
            self.rewrite(hosts, |mask| mask & old.bits());
        }
    }

    /// The port's entry names the ACL of `layout` now: its masks keep only that
    /// layout's bits (carried from the live layout's where `prepare` could not put them
    /// beside), and `layout` is the live one.
    pub fn finish(mut self, hosts: &mut HostSets, layout: HostLayout) {
        if let Some(old) = self.live().filter(|old| **old != layout).cloned() {
            self.rewrite(hosts, |mask| old.carried_to(mask, &layout));
        }
        self.live.insert(self.key, layout);
    }

    /// Rewrites the port's entries, walking the map for them at the first step only.
    fn rewrite(&mut self, hosts: &mut HostSets, rewrite: impl Fn(u64) -> u64) {
        let entries = self.entries.get_or_insert_with(|| hosts.port_keys(self.key));
        hosts.rewrite(entries, rewrite);
    }
}

#[cfg(test)]
mod tests {
    use super::HostLayout;

    fn layout(base: u32, domains: &[&str]) -> HostLayout {
        HostLayout { base, domains: domains.iter().map(|d| d.to_string()).collect() }
    }

    #[test]
    fn host_masks_follow_their_domains() {
        let old = layout(0, &["github.com", "zededa.com"]);
        let new = layout(0, &["zededa.com", "github.com"]);
        assert_eq!(old.carried_to(1 << 0, &new), 1 << 1);
        assert_eq!(old.carried_to(1 << 0 | 1 << 1, &new), 1 << 1 | 1);
        // A domain that left the ACL takes its bit with it.
        assert_eq!(old.carried_to(1 << 1, &layout(0, &["github.com"])), 0);
        // On bits beside the old ones; bits the old layout does not use drop out.
        let beside = layout(old.base_beside(2).unwrap(), &["zededa.com", "github.com"]);
        assert_eq!(beside.base, 62);
        assert_eq!(old.carried_to(1 << 0 | 1 << 40, &beside), 1 << 63);
        assert_eq!(beside.carried_to(1 << 63 | 1 << 0, &layout(beside.base_beside(1).unwrap(), &["github.com"])), 1 << 0);
    }

    #[test]
    fn a_new_layout_goes_beside_the_live_one_whenever_the_two_fit_in_64_bits() {
        assert_eq!(layout(0, &["a"; 3]).base_beside(5), Some(59));
        assert_eq!(layout(59, &["a"; 5]).base_beside(3), Some(0));
        assert_eq!(layout(0, &["a"; 40]).base_beside(24), Some(40));
        assert_eq!(layout(0, &["a"; 40]).base_beside(25), None, "65 host ACEs between the two");
        // Any sequence of ACLs: each placed beside the one before whenever the two fit.
        let mut live = layout(0, &["a"; 20]);
        for count in [24usize, 21, 40, 3, 61, 2, 64, 0, 1] {
            let placed = live.base_beside(count);
            assert_eq!(placed.is_some(), live.domains.len() + count <= 64, "{} then {count}", live.domains.len());
            let next = layout(placed.unwrap_or(0), &vec!["b"; count]);
            if placed.is_some() {
                assert_eq!(live.bits() & next.bits(), 0, "{live:?} then {count}");
            }
            live = next;
        }
    }
}
