//! How a flow's translations chain in one NAT domain, read from a snapshot of the NAT
//! map: what the agent removes when the flows of an app or a port map go, and nothing of
//! another flow's, even one given the same port.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
};

use netns_ebpf_common::{
    fast::ni_end_zone,
    nat::{across, inner_of, links, partner, translation_expired, NatKey, NatValue, DOMAIN_AGENT, NAT_FLAG_INNER, NAT_FLAG_ORIG},
};

/// The translations tuples `leaving` meet in their domain, each with its reply half:
/// the first one keyed by the tuple, then the one keyed by the tuple it made, and so on.
/// In the agent's netns, an app's flow out of the uplink meets the uplink's source NAT;
/// one to a port map on the uplink's address (hairpin), the port map's destination NAT,
/// then the other NI's agent-side veth's source NAT; a flow in by a port map, the same
/// two. By whole tuples: another flow that was given the same port (for another remote)
/// meets none of them.
pub fn translations_met(nat: &HashMap<NatKey, NatValue>, leaving: impl IntoIterator<Item = NatKey>) -> HashSet<NatKey> {
    // No tuple is translated more often than that in one domain; the bound also ends
    // a walk around a cycle of entries, which the programs never make.
    const MOST_STEPS: usize = 4;
    let mut met = HashSet::new();
    for mut key in leaving {
        for _ in 0..MOST_STEPS {
            let Some(v) = nat.get(&key) else { break };
            let made = key.rewritten(v);
            met.insert(key);
            met.insert(made.reversed());
            key = made;
        }
    }
    met
}

/// Of the entries a sweep took (`removed`, as taken), those that must come back: one whose
/// partner or other pair of its chain (`nat::links`) the map still holds (`present`, asked
/// only for entries the sweep did not take; the caller answers only for those its read
/// saw) and leads back to it, and whose translation, judged again as it stands now (the
/// map's entries, the taken ones as they were taken), is not past its time; and so on
/// from those. The sweep takes a translation's entries one by one, each judged again as
/// taken; a packet that uses the translation in between keeps the entries judged after
/// it, and the flow would be left with a half: a port-mapped flow whose reply half went,
/// say, has its app's answers leave untranslated. A half whose translation is gone (its
/// partner evicted, a pair judged apart from its chain) stays gone.
pub fn taken_to_restore(
    removed: &[(NatKey, NatValue)],
    now_ns: u64,
    present: impl Fn(&NatKey) -> Option<NatValue>,
) -> Vec<(NatKey, NatValue)> {
    let taken: HashMap<NatKey, NatValue> = removed.iter().copied().collect();
    let asked: RefCell<HashMap<NatKey, Option<NatValue>>> = RefCell::default();
    let mut restored: HashSet<NatKey> = HashSet::new();
    loop {
        let before = restored.len();
        for (k, v) in removed {
            if restored.contains(k) {
                continue;
            }
            // An entry as the map holds it now (or will, put back).
            let held_now = |l: &NatKey| match taken.get(l) {
                Some(lv) => restored.contains(l).then_some(*lv),
                None => *asked.borrow_mut().entry(*l).or_insert_with(|| present(l)),
            };
            let linked_back = links(k, v)
                .into_iter()
                .flatten()
                .any(|l| held_now(&l).is_some_and(|lv| links(&l, &lv).into_iter().flatten().any(|b| b == *k)));
            if linked_back && !translation_expired(k, v, |l| taken.get(l).copied().or_else(|| held_now(l)), now_ns) {
                restored.insert(*k);
            }
        }
        if restored.len() == before {
            break;
        }
    }
    removed.iter().filter(|(k, _)| restored.contains(k)).copied().collect()
}

/// The NAT map as `put_back` writes it.
pub trait NatEntries {
    fn entry(&self, k: &NatKey) -> Option<NatValue>;
    /// Inserts `v` under `k` unless the key holds an entry (BPF_NOEXIST); false: it did.
    fn insert_new(&mut self, k: &NatKey, v: &NatValue) -> bool;
    /// Removes the entry under `k` and returns it, in one step (a program may write the
    /// key at any time).
    fn take(&mut self, k: &NatKey) -> Option<NatValue>;
}

/// What `put_back` did: the entries back in the map, and those it took out of it (the
/// sweep had left them: halves of translations it could not make whole again).
#[derive(Debug, Default, PartialEq)]
pub struct PutBack {
    pub back: Vec<(NatKey, NatValue)>,
    pub taken_out: Vec<(NatKey, NatValue)>,
}

/// Puts back the entries `taken_to_restore` chose, as the programs make a translation:
/// the reply halves first (BPF_NOEXIST: a key the programs gave an entry since keeps
/// it), then each original half whose reply half the map now holds (its own, or the same
/// flow's made anew); last, a reply half put back whose original half the map does not
/// hold goes again. A key can have gone to another flow while the sweep ran (its port
/// given to another app's flow to the same remote), and the programs' own check of it
/// (`forget_stale_uplink`) found nothing then, as the sweep held the entries. So that no
/// flow's answers reach another flow's app:
/// - an original half in the map (put back, or kept as a packet used it) whose reply key
///   went to another flow goes (the flow's next packet gets a translation anew);
/// - a flow's translation at the uplink whose reply half carries its app
///   (`NAT_FLAG_INNER`) goes where the NI's reply tuple it leads to went to another app's
///   flow (which would leave by it, its answers carried to that app), as
///   `forget_stale_uplink` would have removed it.
pub fn put_back(restored: &[(NatKey, NatValue)], map: &mut impl NatEntries) -> PutBack {
    let mut out = PutBack::default();
    let (originals, replies): (Vec<(NatKey, NatValue)>, Vec<_>) = restored.iter().partition(|(_, v)| is_original(v));
    out.back = replies.iter().filter(|(k, v)| map.insert_new(k, v)).copied().collect();
    for (k, v) in originals {
        if partnered(map, &k, &v) && map.insert_new(&k, &v) {
            out.back.push((k, v));
        }
    }
    out.back.retain(|(k, v)| is_original(v) || partnered(map, k, v) || !take_if_held(map, k, v));
    // A reply half that did not go back, under a key the map gave another entry: the
    // original half in the map whose reply half it was has none now.
    for (k, v) in replies.iter().filter(|e| !out.back.contains(e)) {
        let ok = partner(k, v);
        if let Some(ov) = map.entry(&ok).filter(|ov| is_original(ov) && partner(&ok, ov) == *k && !partnered(map, &ok, ov)) {
            if take_if_held(map, &ok, &ov) {
                out.taken_out.push((ok, ov));
            }
        }
    }
    // Uplink pairs (reply halves carrying an app) that now lead to another app's NI
    // reply tuple: each pair once, whichever of its halves came back.
    let mut stale: Vec<(NatKey, NatValue)> = Vec::new();
    for (k, v) in &out.back {
        let reply = if is_original(v) {
            let rk = partner(k, v);
            map.entry(&rk).map(|rv| (rk, rv))
        } else {
            Some((*k, *v))
        };
        if let Some((rk, rv)) = reply.filter(|(rk, rv)| leads_to_another_app(map, rk, rv) && !stale.contains(&(*rk, *rv))) {
            stale.push((rk, rv));
        }
    }
    for (rk, rv) in stale {
        let ok = partner(&rk, &rv);
        for (k, v) in [(rk, Some(rv)), (ok, map.entry(&ok))] {
            let Some(v) = v.filter(|v| take_if_held(map, &k, v)) else { continue };
            match out.back.iter().position(|(bk, _)| *bk == k) {
                Some(i) => {
                    out.back.remove(i);
                }
                None => out.taken_out.push((k, v)),
            }
        }
    }
    out
}

fn is_original(v: &NatValue) -> bool {
    v.flags & NAT_FLAG_ORIG != 0
}

/// Whether the map holds, under the partner key of `k`'s entry `v`, an entry whose
/// partner is `k`.
fn partnered(map: &impl NatEntries, k: &NatKey, v: &NatValue) -> bool {
    let pk = partner(k, v);
    map.entry(&pk).is_some_and(|pv| partner(&pk, &pv) == *k)
}

/// Whether `rv` (under `rk`), a reply half at an uplink that carries its flow's app
/// (`NAT_FLAG_INNER`), leads to an NI reply tuple that another app's translation holds
/// (`forget_stale_uplink`'s test).
fn leads_to_another_app(map: &impl NatEntries, rk: &NatKey, rv: &NatValue) -> bool {
    if rk.domain != DOMAIN_AGENT || rv.flags & NAT_FLAG_INNER == 0 {
        return false;
    }
    let out_key = partner(rk, rv);
    let Some(zone) = ni_end_zone(out_key.src) else { return false };
    map.entry(&across(&out_key, zone)).is_some_and(|ni_reply| inner_of(&ni_reply) != Some((rv.inner_port, rv.inner_host)))
}

/// Takes the entry under `k` out when it is still `v`'s translation (`same_translation`:
/// its packets rewrite its time and flags meanwhile); one a program wrote the key with
/// since stays (looked at first; taken in between, it goes back). True when it went.
fn take_if_held(map: &mut impl NatEntries, k: &NatKey, v: &NatValue) -> bool {
    if !map.entry(k).is_some_and(|held| same_translation(&held, v)) {
        return false;
    }
    match map.take(k) {
        Some(held) if same_translation(&held, v) => true,
        Some(other) => {
            map.insert_new(k, &other);
            false
        }
        None => false,
    }
}

/// Whether two entries are the same translation, whatever packets did to them since
/// (their time, their TCP flags and use): what it rewrites to, which half it is, its mark
/// and the app it carries.
fn same_translation(a: &NatValue, b: &NatValue) -> bool {
    const IDENTITY: u8 = NAT_FLAG_ORIG | NAT_FLAG_INNER;
    (a.addr, a.port, a.rewrite, a.flags & IDENTITY, a.mark, a.inner_port, a.inner_host)
        == (b.addr, b.port, b.rewrite, b.flags & IDENTITY, b.mark, b.inner_port, b.inner_host)
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        collections::{HashMap, HashSet},
    };

    use netns_ebpf_common::{
        nat::{across, partner, NatKey, NatValue, DOMAIN_AGENT, NAT_FLAG_INNER, NAT_FLAG_ORIG, NAT_FLAG_USED, REWRITE_DST, REWRITE_SRC},
        PROTO_TCP,
    };

    use super::{put_back, taken_to_restore, translations_met, NatEntries, PutBack};

    /// An agent-domain NAT map as the programs fill it: a translation of tuple `key` and
    /// its reply half.
    fn translate(nat: &mut HashMap<NatKey, NatValue>, key: NatKey, rewrite: u8, addr: [u8; 4], port: u16) {
        let v = NatValue { addr, port, rewrite, ..NatValue::default() };
        let (back, back_addr, back_port) =
            if rewrite == REWRITE_SRC { (REWRITE_DST, key.src, key.sport) } else { (REWRITE_SRC, key.dst, key.dport) };
        nat.insert(key.rewritten(&v).reversed(), NatValue { addr: back_addr, port: back_port, rewrite: back, ..NatValue::default() });
        nat.insert(key, v);
    }

    fn tuple(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> NatKey {
        NatKey { domain: DOMAIN_AGENT, src: src.0, dst: dst.0, sport: src.1, dport: dst.1, proto: PROTO_TCP, _pad: [0; 3] }
    }

    #[test]
    fn a_leaving_flows_translations_are_found_by_whole_tuples() {
        let (ni_veth, uplink, remote) = ([169, 254, 1, 2], [192, 168, 0, 2], [10, 99, 0, 10]);
        let (ni2_veth, agent2) = ([169, 254, 2, 2], [169, 254, 2, 1]);
        let mut nat = HashMap::new();
        // The leaving app's flow out of the uplink, given port 62000 at the NI veth.
        let leaving = tuple((ni_veth, 62000), (remote, 7002));
        translate(&mut nat, leaving, REWRITE_SRC, uplink, 62000);
        // Another app of the NI given the same port, for another remote port.
        let bystander = tuple((ni_veth, 62000), (remote, 7001));
        translate(&mut nat, bystander, REWRITE_SRC, uplink, 62000);
        // The leaving app's flow to a port map on the uplink's address (hairpin): the
        // port map's destination NAT to NI2, then NI2's agent-side veth's source NAT.
        let hairpin = tuple((ni_veth, 62001), (uplink, 8080));
        translate(&mut nat, hairpin, REWRITE_DST, ni2_veth, 8080);
        let into_ni2 = tuple((ni_veth, 62001), (ni2_veth, 8080));
        translate(&mut nat, into_ni2, REWRITE_SRC, agent2, 62005);
        let all: HashSet<NatKey> = nat.keys().copied().collect();

        let met = translations_met(&nat, [leaving, hairpin]);
        let bystanders: HashSet<NatKey> = [bystander, tuple((remote, 7001), (uplink, 62000))].into();
        assert_eq!(met, &all - &bystanders, "all of the leaving flows' entries, none of the bystander's");
        // A tuple with no translation meets none.
        assert!(translations_met(&nat, [tuple((ni_veth, 9), (remote, 9))]).is_empty());
    }

    #[test]
    fn a_port_maps_flows_leave_a_flow_given_its_port_as_a_source() {
        let (uplink, remote, ni_veth, agent_side) = ([192, 168, 0, 2], [192, 168, 0, 1], [169, 254, 2, 2], [169, 254, 2, 1]);
        let mut nat = HashMap::new();
        // In by the port map on the uplink's 8080: to the NI veth, from the agent-side veth.
        let inbound = tuple((remote, 5555), (uplink, 8080));
        translate(&mut nat, inbound, REWRITE_DST, ni_veth, 8080);
        translate(&mut nat, tuple((remote, 5555), (ni_veth, 8080)), REWRITE_SRC, agent_side, 62005);
        let all: HashSet<NatKey> = nat.keys().copied().collect();
        // The NI's app's own flow out, given 8080 at the uplink.
        let outbound = tuple((ni_veth, 40000), (remote, 7002));
        translate(&mut nat, outbound, REWRITE_SRC, uplink, 8080);
        assert_eq!(translations_met(&nat, [inbound]), all, "the port map's flow, both translations, and not the other");
    }

    const SEC: u64 = 1_000_000_000;
    /// The sweep's time: entries last seen at 0 are idle past any translation's time (an
    /// answered TCP one's is 5 days), those seen at NOW fresh.
    const NOW: u64 = 6 * 24 * 3600 * SEC;

    /// A flow's source translation as the programs make it: the original half (under
    /// `key`) and its reply half, answered, last seen at `seen`.
    fn source_pair(key: NatKey, addr: [u8; 4], port: u16, seen: u64) -> [(NatKey, NatValue); 2] {
        let orig =
            NatValue { addr, port, rewrite: REWRITE_SRC, flags: NAT_FLAG_ORIG | NAT_FLAG_USED, last_seen_ns: seen, ..NatValue::default() };
        let reply = NatValue {
            addr: key.src,
            port: key.sport,
            rewrite: REWRITE_DST,
            flags: NAT_FLAG_USED,
            last_seen_ns: seen,
            ..NatValue::default()
        };
        [(key, orig), (partner(&key, &orig), reply)]
    }

    fn map(held: Vec<(NatKey, NatValue)>) -> impl Fn(&NatKey) -> Option<NatValue> {
        let held: HashMap<NatKey, NatValue> = held.into_iter().collect();
        move |k: &NatKey| held.get(k).copied()
    }

    #[test]
    fn a_half_taken_while_its_translation_was_used_comes_back() {
        let (uplink, remote) = ([192, 168, 0, 2], [192, 168, 0, 1]);
        let key = tuple((uplink, 40000), (remote, 80));
        let [old_orig, old_reply] = source_pair(key, uplink, 62000, 0);
        let [fresh_orig, _] = source_pair(key, uplink, 62000, NOW);
        // Both halves taken: the translation went whole, and the map is not asked.
        let asked = Cell::new(0);
        let none = map(vec![]);
        let counted = |k: &NatKey| {
            asked.set(asked.get() + 1);
            none(k)
        };
        assert!(taken_to_restore(&[old_orig, old_reply], NOW, counted).is_empty());
        assert_eq!(asked.get(), 0);
        // The reply half taken, the original half kept: a packet used it meanwhile.
        assert_eq!(taken_to_restore(&[old_reply], NOW, map(vec![fresh_orig])), vec![old_reply]);
        // Kept, but idle as long: the pair is past its time, judged again; it stays gone.
        assert!(taken_to_restore(&[old_reply], NOW, map(vec![old_orig])).is_empty());
        // The original half now another translation's (the tuple given another port):
        // that one's reply half is another key, and the old one stays gone.
        let [other, _] = source_pair(key, uplink, 62001, NOW);
        assert!(taken_to_restore(&[old_reply], NOW, map(vec![other])).is_empty());
        // Nothing left of the pair: nothing back.
        assert!(taken_to_restore(&[old_reply], NOW, map(vec![])).is_empty());
    }

    #[test]
    fn a_chain_comes_back_whole_only_while_it_lives() {
        // App 10.10.1.2 of NI 1 (veth 169.254.100.2) out of the uplink: translated at the
        // NI veth, then at the uplink, the uplink's original half keyed by the NI's reply
        // half turned round.
        let (app, ni_veth, uplink, remote) = ([10, 10, 1, 2], [169, 254, 100, 2], [192, 168, 0, 2], [10, 99, 0, 10]);
        let ni_out = NatKey { domain: 1, ..tuple((app, 40000), (remote, 80)) };
        let ni = source_pair(ni_out, ni_veth, 62000, 0);
        let uplink_key = across(&ni[1].0, DOMAIN_AGENT);
        let (old_uplink, fresh_uplink) = (source_pair(uplink_key, uplink, 62000, 0), source_pair(uplink_key, uplink, 62000, NOW));
        // The sweep took the NI's pair; the uplink's was used meanwhile and kept.
        let mut back = taken_to_restore(&ni, NOW, map(fresh_uplink.to_vec()));
        back.sort_by_key(|(k, _)| *k != ni_out);
        assert_eq!(back, ni.to_vec(), "both halves of the NI's pair");
        // Taken whole, the chain stays gone.
        let all: Vec<(NatKey, NatValue)> = ni.into_iter().chain(old_uplink).collect();
        assert!(taken_to_restore(&all, NOW, map(vec![])).is_empty());
        // The NI's original half gone (an LRU eviction): its reply half, idle (the fast
        // path carries replies past it), is judged alone and stays gone, though the
        // uplink's pair lives on and leads to it.
        assert!(taken_to_restore(&ni[1..], NOW, map(fresh_uplink.to_vec())).is_empty());
        // As the uplink's original half alone, its reply half evicted: the NI's pair
        // living on brings it no life.
        let fresh_ni = source_pair(ni_out, ni_veth, 62000, NOW);
        assert!(taken_to_restore(&old_uplink[..1], NOW, map(fresh_ni.to_vec())).is_empty());
    }

    impl NatEntries for HashMap<NatKey, NatValue> {
        fn entry(&self, k: &NatKey) -> Option<NatValue> {
            self.get(k).copied()
        }

        fn insert_new(&mut self, k: &NatKey, v: &NatValue) -> bool {
            if self.contains_key(k) {
                return false;
            }
            self.insert(*k, *v);
            true
        }

        fn take(&mut self, k: &NatKey) -> Option<NatValue> {
            HashMap::remove(self, k)
        }
    }

    /// Entries put back go in as the programs make them, and no flow is left leaving by
    /// a translation whose reply key another flow's entry holds (that flow's app would
    /// get its answers).
    #[test]
    fn a_translation_goes_back_only_with_its_own_reply_half() {
        let (veth_a, veth_c, uplink, remote) = ([169, 254, 100, 2], [169, 254, 100, 6], [192, 168, 0, 2], [10, 99, 0, 10]);
        let a = tuple((veth_a, 40000), (remote, 80));
        let [a_orig, a_reply] = source_pair(a, uplink, 62000, NOW);
        // Another NI's flow to the same remote, given the same port meanwhile: its reply
        // half under A's reply key.
        let [_, c_reply] = source_pair(tuple((veth_c, 41000), (remote, 80)), uplink, 62000, NOW);
        assert_eq!(c_reply.0, a_reply.0);
        let held = |entries: &[(NatKey, NatValue)]| -> HashMap<NatKey, NatValue> { entries.iter().copied().collect() };

        // Both keys free: both halves back.
        let mut nat = held(&[]);
        let mut back = put_back(&[a_orig, a_reply], &mut nat).back;
        back.sort_by_key(|(k, _)| *k != a);
        assert_eq!((back, nat.len()), (vec![a_orig, a_reply], 2));
        // The reply key another flow's: neither half back, C's entry untouched.
        let mut nat = held(&[c_reply]);
        assert_eq!(put_back(&[a_orig, a_reply], &mut nat), PutBack::default());
        assert_eq!(nat, held(&[c_reply]));
        // The reply key holds the same flow's reply half made anew: the original half back.
        let mut nat = held(&[a_reply]);
        assert_eq!(put_back(&[a_orig, a_reply], &mut nat).back, vec![a_orig]);
        assert_eq!(nat, held(&[a_orig, a_reply]));
        // A's tuple given another port since (a newer translation under the original key):
        // the old reply half does not stay, alone, holding its port.
        let [newer_orig, newer_reply] = source_pair(a, uplink, 62001, NOW);
        let mut nat = held(&[newer_orig, newer_reply]);
        assert_eq!(put_back(&[a_orig, a_reply], &mut nat), PutBack::default());
        assert_eq!(nat, held(&[newer_orig, newer_reply]));
        // The original half kept in the map (a packet used it as the sweep took its reply
        // half), the reply key another flow's since: the original half goes too.
        let mut nat = held(&[a_orig, c_reply]);
        assert_eq!(put_back(&[a_reply], &mut nat), PutBack { back: vec![], taken_out: vec![a_orig] });
        assert_eq!(nat, held(&[c_reply]));
        // The same, the kept original half refreshed by a packet since the sweep read it:
        // still the translation that goes.
        let refreshed = (a_orig.0, NatValue { last_seen_ns: NOW + SEC, ..a_orig.1 });
        let mut nat = held(&[refreshed, c_reply]);
        assert_eq!(put_back(&[a_reply], &mut nat), PutBack { back: vec![], taken_out: vec![refreshed] });
        assert_eq!(nat, held(&[c_reply]));
        // Kept, its reply key free: the reply half back beside it.
        let mut nat = held(&[a_orig]);
        assert_eq!(put_back(&[a_reply], &mut nat).back, vec![a_reply]);
        assert_eq!(nat, held(&[a_orig, a_reply]));
    }

    /// A flow translated in its NI and at the uplink, the uplink's reply half carrying its
    /// app (`NAT_FLAG_INNER`), app1's. While the sweep held the NI's reply half and the
    /// uplink's, app2 of the same NI was given the same NI port to the same remote: its
    /// NI reply half under app1's old key, whose uplink translation the programs found
    /// nothing of to forget. Put back, the uplink pair would take app2's packets out and
    /// carry their answers to app1: it goes, and app1's NI original half with it.
    #[test]
    fn an_uplink_pair_whose_ni_tuple_went_to_another_app_does_not_come_back() {
        let (app1, app2, ni_veth, uplink, remote) = ([10, 10, 1, 2], [10, 10, 1, 3], [169, 254, 100, 2], [192, 168, 0, 2], [10, 99, 0, 10]);
        let ni_out1 = NatKey { domain: 1, ..tuple((app1, 40000), (remote, 80)) };
        let [ni1_orig, ni1_reply] = source_pair(ni_out1, ni_veth, 62000, NOW);
        let ni_out2 = NatKey { domain: 1, ..tuple((app2, 41000), (remote, 80)) };
        let [ni2_orig, ni2_reply] = source_pair(ni_out2, ni_veth, 62000, NOW);
        assert_eq!(ni2_reply.0, ni1_reply.0, "the same NI reply tuple");
        let [up_orig, mut up_reply] = source_pair(across(&ni1_reply.0, DOMAIN_AGENT), uplink, 62000, NOW);
        up_reply.1.flags |= NAT_FLAG_INNER;
        (up_reply.1.inner_port, up_reply.1.inner_host) = (40000, [1, 2]);
        let held = |entries: &[(NatKey, NatValue)]| -> HashMap<NatKey, NatValue> { entries.iter().copied().collect() };

        let mut nat = held(&[ni1_orig, up_orig, ni2_orig, ni2_reply]);
        let out = put_back(&[ni1_reply, up_reply], &mut nat);
        assert_eq!(out.back, vec![], "neither app1's NI reply half (app2's key now) nor its uplink reply half");
        let mut taken_out = out.taken_out;
        taken_out.sort_by_key(|(k, _)| k.domain != 1);
        assert_eq!(taken_out, vec![ni1_orig, up_orig]);
        assert_eq!(nat, held(&[ni2_orig, ni2_reply]), "app2's translation alone: its packets get one of their own at the uplink");
        // The NI reply key still app1's: the chain comes back whole.
        let mut nat = held(&[ni1_orig, up_orig]);
        let out = put_back(&[ni1_reply, up_reply], &mut nat);
        assert_eq!((out.back.len(), out.taken_out.len(), nat.len()), (2, 0, 4));
    }
}
