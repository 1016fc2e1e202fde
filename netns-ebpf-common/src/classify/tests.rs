extern crate std;
use std::{collections::HashMap, vec::Vec};

use super::*;
use crate::{
    acl::{RemoteFacts, ACTION_ACCEPT, ACTION_DROP, ACTION_LIMIT},
    Ipv4, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

/// The compiled ACL looked up as the programs do.
struct Lookup {
    ranges: HashMap<RangeKey, RangePage>,
    proto: HashMap<ProtoBitsKey, Bits>,
    aces: HashMap<AceKey, AceGroup>,
    hosts: HashMap<AceKey, u32>,
    summary: HashMap<SummaryKey, SummaryPage>,
}

impl Lookup {
    fn new(c: &CompiledAcl) -> Self {
        Lookup {
            ranges: c.ranges.iter().copied().collect(),
            proto: c.proto.iter().copied().collect(),
            aces: c.aces.iter().copied().collect(),
            hosts: c.hosts.iter().copied().collect(),
            summary: c.summary.iter().copied().collect(),
        }
    }
}

impl AclMaps for Lookup {
    fn range_page(&self, key: &RangeKey) -> Option<&RangePage> {
        self.ranges.get(key)
    }
    fn proto_bits(&self, key: &ProtoBitsKey) -> Option<&Bits> {
        self.proto.get(key)
    }
    fn summary_page(&self, key: &SummaryKey) -> Option<&SummaryPage> {
        self.summary.get(key)
    }
    fn ace(&self, key: &AceKey) -> Option<&Ace> {
        let (group, at) = AceGroup::locate(key);
        self.aces.get(&group)?.get(at)
    }
    fn host_ace(&self, key: &AceKey) -> Option<u32> {
        self.hosts.get(key).copied()
    }
}

/// xorshift64*: the same random ACLs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

const ADDRS: [Ipv4; 6] = [[10, 0, 0, 1], [10, 0, 1, 7], [10, 1, 2, 3], [192, 168, 1, 9], [8, 8, 8, 8], [10, 0, 0, 200]];
/// 0 and 255 too: the summary's protocol value puts the eidset bit just above 255.
const PROTOS: [u8; 6] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47, 0, 255];
const PORTS: [u16; 5] = [80, 443, 53, 8080, 0];

/// An ACE over a few addresses, prefixes, protocols and ports, so that ACEs overlap.
fn random_ace(rng: &mut Rng, id: u32) -> Ace {
    let mut ace = Ace { id, action: rng.pick(&[ACTION_ACCEPT, ACTION_DROP, ACTION_LIMIT, ACTION_PORTMAP]), ..Ace::default() };
    if rng.below(3) > 0 {
        ace.matches |= MATCH_IP;
        ace.prefix_len = rng.pick(&[0, 8, 16, 24, 25, 32]);
        ace.prefix = rng.pick(&ADDRS);
    }
    if rng.below(2) == 0 {
        ace.matches |= MATCH_PROTO;
        ace.proto = rng.pick(&PROTOS);
        if matches!(ace.proto, PROTO_TCP | PROTO_UDP) && rng.below(2) == 0 {
            ace.matches |= MATCH_FPORT;
            ace.fport = rng.pick(&PORTS);
        }
    }
    if rng.below(8) == 0 {
        ace.matches |= MATCH_EIDSET;
    }
    if rng.below(10) == 0 {
        ace.matches |= MATCH_HOST;
    }
    ace
}

fn random_query(rng: &mut Rng) -> AceQuery {
    let mut remote = rng.pick(&ADDRS);
    remote[3] = remote[3].wrapping_add(rng.below(3) as u8);
    AceQuery {
        proto: rng.pick(&PROTOS),
        remote,
        remote_port: rng.pick(&PORTS),
        facts: RemoteFacts { in_eidset: rng.below(3) == 0, host_mask: rng.next() & rng.next(), device: false },
    }
}

#[test]
fn the_bitmaps_find_the_ace_the_walk_finds() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let n = if round % 50 == 0 { 2000 + rng.below(1000) } else { 1 + rng.below(1100) } as u32;
        let aces: Vec<Ace> = (0..n).map(|i| random_ace(&mut rng, i + 1)).collect();
        // Host ACEs on bits from a base up, as a changed ACL's are (bits below it are
        // another ACL's, which the host set may hold too).
        let host_base = if round % 3 == 0 { 0 } else { rng.below(64 - host_count(&aces).min(64) as u64 + 1) as u32 };
        let compiled = compile(7, &aces, host_base);
        let maps = Lookup::new(&compiled);
        for _ in 0..40 {
            let q = random_query(&mut rng);
            let walked = reference_first_at(&aces, host_base, &q);
            assert_eq!(first_decider(&maps, 7, &compiled.shape, &q), walked, "round {round}, {n} ACEs, base {host_base}, {q:?}");
        }
    }
}

/// The walk the bitmaps replace, as the programs ran it over a 64-ACE table: a host
/// ACE's bit in the host set's mask was its index.
fn walk_of_64(aces: &[Ace], q: &AceQuery) -> Option<usize> {
    (0..64.min(aces.len())).find(|&i| {
        let ace = &aces[i];
        ace.action != ACTION_PORTMAP && fields_match(ace, q) && (ace.matches & MATCH_HOST == 0 || q.facts.host_mask & (1 << i) != 0)
    })
}

/// Up to 64 ACEs, the bitmaps judge as the 64-ACE walk did (whose host mask had a bit
/// per ACE index, where the bitmaps' has one per host ACE).
#[test]
fn the_bitmaps_judge_as_the_64_ace_walk() {
    let mut rng = Rng(0x51_7cc1_b727_220a);
    for _ in 0..2000 {
        let n = 1 + rng.below(64) as usize;
        let aces: Vec<Ace> = (0..n).map(|i| random_ace(&mut rng, i as u32 + 1)).collect();
        let compiled = compile(1, &aces, 0);
        let maps = Lookup::new(&compiled);
        let q = random_query(&mut rng);
        let by_index = compiled.hosts.iter().filter(|(k, _)| q.facts.host_mask & (1 << k.index) != 0).fold(0u64, |m, (_, i)| m | 1 << i);
        let walk_q = AceQuery { facts: RemoteFacts { host_mask: by_index, ..q.facts }, ..q };
        assert_eq!(first_decider(&maps, 1, &compiled.shape, &q).map(|i| i as usize), walk_of_64(&aces, &walk_q), "{q:?}");
    }
}

/// 10,000 ACEs: the one that matches at position 1, 5,000 and 10,000, and a host ACE in
/// the middle that only a DNS answer opens.
#[test]
fn ten_thousand_aces() {
    let other = |i: u32| Ace {
        id: i + 1,
        matches: MATCH_IP | MATCH_PROTO,
        prefix: [172, 16, (i >> 8) as u8, i as u8],
        prefix_len: 32,
        proto: PROTO_TCP,
        ..Ace::default()
    };
    let target = Ace {
        matches: MATCH_IP | MATCH_PROTO | MATCH_FPORT,
        prefix: [10, 9, 0, 0],
        prefix_len: 16,
        proto: PROTO_TCP,
        fport: 443,
        ..Ace::default()
    };
    let q = AceQuery { proto: PROTO_TCP, remote: [10, 9, 3, 4], remote_port: 443, facts: RemoteFacts::default() };
    for at in [0u32, 4999, 9999] {
        let mut aces: Vec<Ace> = (0..10_000).map(other).collect();
        aces[at as usize] = Ace { id: at + 1, ..target };
        // A host ACE for the same remote, before the target at 5,000 and 10,000.
        aces[2500] = Ace { id: 2501, matches: MATCH_HOST, action: ACTION_DROP, ..Ace::default() };
        let compiled = compile(3, &aces, 0);
        assert_eq!(compiled.shape.chunks(), 20);
        let maps = Lookup::new(&compiled);
        assert_eq!(first_decider(&maps, 3, &compiled.shape, &q), Some(at));
        let resolved = AceQuery { facts: RemoteFacts { host_mask: 1, ..q.facts }, ..q };
        let expected = if at < 2500 { at } else { 2500 };
        assert_eq!(first_decider(&maps, 3, &compiled.shape, &resolved), Some(expected));
        assert_eq!(first_decider(&maps, 3, &compiled.shape, &resolved), reference_first(&aces, &resolved));
        let elsewhere = AceQuery { remote: [10, 8, 0, 1], ..q };
        assert_eq!(first_decider(&maps, 3, &compiled.shape, &elsewhere), None);
    }
}

/// A range table looked up as the programs do gives, for any value, exactly the ACEs
/// whose span holds it and the `any` ones: random spans over the whole u32 space (their
/// ends at 0 and u32::MAX too), one page and two levels.
#[test]
fn range_tables_give_the_aces_whose_span_holds_the_value() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..400 {
        let n = [1, 5, 23, 24, 47, 48, 49, 200, 512][round % 9];
        let edge = |rng: &mut Rng| match rng.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => rng.below(64) as u32,
            _ => rng.next() as u32,
        };
        let mut spans = Vec::new();
        let mut any = Bits::default();
        for ace in 0..n {
            if rng.below(10) == 0 {
                any.set(ace);
                continue;
            }
            let (a, b) = (edge(&mut rng), edge(&mut rng));
            spans.push((a.min(b), a.max(b), ace));
        }
        let pages = range::pages(9, 3, FIELD_IP, &range::ranges(&spans, any));
        assert!(pages.len() == 1 || pages[0].1.leaves as usize == pages.len() - 1);
        let maps = Lookup { ranges: pages.into_iter().collect(), ..Lookup::new(&CompiledAcl::default()) };
        let mut values: Vec<u32> = spans.iter().flat_map(|&(a, b, _)| [a, b, a.wrapping_sub(1), b.wrapping_add(1)]).collect();
        values.extend((0..50).map(|_| rng.next() as u32));
        for v in values {
            let mut expect = any;
            for &(a, b, ace) in &spans {
                if (a..=b).contains(&v) {
                    expect.set(ace);
                }
            }
            assert_eq!(range_bits(&maps, 9, 3, FIELD_IP, v), Some(&expect), "round {round}, value {v:#x}");
        }
        assert_eq!(range_bits(&maps, 9, 4, FIELD_IP, 0), None, "another chunk's table");
    }
}

/// A chunk of 512 host ACEs on distinct, scattered addresses makes the most ranges a
/// chunk can (1,025): two levels hold them, the root's leaves within its keys.
#[test]
fn the_fullest_chunk_fits_two_levels() {
    let spans: Vec<(u32, u32, usize)> = (0..CHUNK_ACES).map(|i| (i as u32 * 7 + 3, i as u32 * 7 + 3, i)).collect();
    let ranges = range::ranges(&spans, Bits::default());
    assert_eq!(ranges.len(), 2 * CHUNK_ACES + 1);
    let pages = range::pages(1, 0, FIELD_PORT, &ranges);
    assert_eq!(pages[0].1.leaves as usize, ranges.len().div_ceil(range::RANGE_LEAF));
    assert!((pages[0].1.leaves as usize) < range::RANGE_KEYS);
}

/// A summary looked up as the programs do gives, for any value, exactly the chunks whose
/// table has an ACE there: random tables over the whole u32 space, one page and two
/// levels, the values at every edge and at 0 and u32::MAX.
#[test]
fn summaries_name_the_chunks_whose_bitmap_has_an_ace() {
    let mut rng = Rng(0x1f83_d9ab_fb41_bd6b);
    for round in 0..200 {
        let chunks = 2 + rng.below(MAX_CHUNKS as u64 - 1) as usize;
        let spans_per_chunk = [1, 3, 20, 200][round % 4];
        let tables: Vec<range::Ranges> = (0..chunks)
            .map(|_| {
                let spans: Vec<(u32, u32, usize)> = (0..spans_per_chunk)
                    .map(|ace| {
                        let (a, b) = match rng.below(5) {
                            0 => (0, rng.next() as u32),
                            1 => (rng.next() as u32, u32::MAX),
                            _ => {
                                let a = rng.next() as u32;
                                (a, a.saturating_add(rng.below(1000) as u32))
                            }
                        };
                        (a.min(b), a.max(b), ace)
                    })
                    .collect();
                range::ranges(&spans, Bits::default())
            })
            .collect();
        let slices: Vec<&[(u32, Bits)]> = tables.iter().map(Vec::as_slice).collect();
        let merged = summary::merge(&slices);
        let pages = summary::pages(5, FIELD_IP, &merged);
        assert_eq!(pages.len(), 1 + merged.len().div_ceil(summary::SUMMARY_SLOTS), "round {round}");
        let maps = Lookup { summary: pages.into_iter().collect(), ..Lookup::new(&CompiledAcl::default()) };
        let mut values: Vec<u32> = tables.iter().flatten().flat_map(|&(first, _)| [first, first.wrapping_sub(1)]).collect();
        values.extend([0, u32::MAX]);
        values.extend((0..50).map(|_| rng.next() as u32));
        for v in values {
            let expect = tables.iter().enumerate().fold(0u32, |mask, (c, t)| {
                let (_, bits) = t.iter().rev().find(|&&(first, _)| first <= v).unwrap();
                if *bits != Bits::default() {
                    mask | 1 << c
                } else {
                    mask
                }
            });
            assert_eq!(summary::field_chunks(&maps, 5, FIELD_IP, v), Some(expect), "round {round}, value {v:#x}");
        }
        assert_eq!(summary::field_chunks(&maps, 5, FIELD_PORT, 0), None, "another field's summary");
    }
}

/// For a compiled ACL, each field's summary names the chunks whose own lookup of the
/// field has an ACE, so the chunks the search reads are all that can decide.
#[test]
fn the_summary_keeps_every_chunk_that_can_decide() {
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    for round in 0..40 {
        let n = 513 + rng.below(4000) as u32;
        let aces: Vec<Ace> = (0..n).map(|i| random_ace(&mut rng, i + 1)).collect();
        let compiled = compile(4, &aces, 0);
        assert!(compiled.shape.summarized() && !compiled.summary.is_empty());
        let maps = Lookup::new(&compiled);
        for _ in 0..40 {
            let q = random_query(&mut rng);
            let candidates = candidate_chunks(&maps, 4, &q);
            for chunk in 0..compiled.shape.chunks() {
                let c16 = chunk as u16;
                let some = |bits: Option<&Bits>| bits.is_some_and(|b| *b != Bits::default());
                let eid = q.facts.in_eidset as u32;
                let proto = maps
                    .proto_bits(&ProtoBitsKey { acl: 4, chunk: c16, proto: q.proto as u16, in_eidset: eid })
                    .or_else(|| maps.proto_bits(&ProtoBitsKey { acl: 4, chunk: c16, proto: PROTO_ANY, in_eidset: eid }));
                let expect = some(range_bits(&maps, 4, c16, FIELD_IP, u32::from_be_bytes(q.remote)))
                    && some(range_bits(&maps, 4, c16, FIELD_PORT, q.remote_port as u32))
                    && some(proto);
                assert_eq!(candidates & 1 << chunk != 0, expect, "round {round}, chunk {chunk}, {q:?}");
            }
            // And the search through the summary finds the ACE the walk finds.
            assert_eq!(first_decider(&maps, 4, &compiled.shape, &q), reference_first(&aces, &q), "round {round}, {q:?}");
        }
    }
}

/// The protocol's summary at its edges: protocol 255 outside the eidset is not the
/// eidset's first value, and an eidset-only ACE decides only for a remote in the eidset.
#[test]
fn the_protocol_summary_keeps_the_eidset_apart_from_protocol_255() {
    let filler = |i: u32| Ace {
        id: i + 1,
        action: ACTION_DROP,
        matches: MATCH_IP | MATCH_PROTO,
        prefix: [172, 16, (i >> 8) as u8, i as u8],
        prefix_len: 32,
        proto: PROTO_TCP,
        ..Ace::default()
    };
    let mut aces: Vec<Ace> = (0..1000).map(filler).collect();
    aces[300] = Ace { id: 301, action: ACTION_DROP, matches: MATCH_PROTO, proto: 255, ..Ace::default() };
    aces[900] = Ace { id: 901, action: ACTION_ACCEPT, matches: MATCH_EIDSET, ..Ace::default() };
    let compiled = compile(8, &aces, 0);
    let maps = Lookup::new(&compiled);
    let q = |proto: u8, in_eidset: bool| AceQuery {
        proto,
        remote: [10, 1, 1, 1],
        remote_port: 0,
        facts: RemoteFacts { in_eidset, ..RemoteFacts::default() },
    };
    for (proto, in_eidset, chunks, decider) in
        [(255, false, 0b01, Some(300)), (0, true, 0b10, Some(900)), (0, false, 0, None), (255, true, 0b11, Some(300))]
    {
        let q = q(proto, in_eidset);
        assert_eq!(candidate_chunks(&maps, 8, &q), chunks, "{q:?}");
        assert_eq!(first_decider(&maps, 8, &compiled.shape, &q), decider, "{q:?}");
        assert_eq!(decider, reference_first(&aces, &q), "{q:?}");
    }
}

/// The ACL `cargo xtask bench` swaps in: 9,999 drops of one address's ports, then "allow
/// the rest". A flow the last ACE decides reads the summary and one chunk, not 20.
#[test]
fn a_flow_the_last_ace_decides_reads_one_chunk() {
    let drop = |i: u32| Ace {
        id: i + 1,
        action: ACTION_DROP,
        matches: MATCH_IP | MATCH_PROTO | MATCH_FPORT,
        prefix: [10, 9, 0, 1],
        prefix_len: 32,
        proto: PROTO_TCP,
        fport: 20_000 + i as u16,
        ..Ace::default()
    };
    let mut aces: Vec<Ace> = (0..9_999).map(drop).collect();
    aces.push(Ace { id: 10_000, action: ACTION_ACCEPT, ..Ace::default() });
    let compiled = compile(2, &aces, 0);
    let maps = Lookup::new(&compiled);
    let q = AceQuery { proto: PROTO_TCP, remote: [10, 9, 0, 1], remote_port: 80, facts: RemoteFacts::default() };
    assert_eq!(candidate_chunks(&maps, 2, &q), 1 << 19);
    assert_eq!(first_decider(&maps, 2, &compiled.shape, &q), Some(9_999));
    let dropped = AceQuery { remote_port: 20_000 + 7_000, ..q };
    assert_eq!(candidate_chunks(&maps, 2, &dropped), 1 << 13 | 1 << 19);
    assert_eq!(first_decider(&maps, 2, &compiled.shape, &dropped), Some(7_000));
}

/// 10,240 ACEs on distinct, scattered addresses and ports cut the most ranges a field
/// can have (20,481): two levels of the summary hold them.
#[test]
fn the_fullest_summary_fits_two_levels() {
    let ace = |i: u32| Ace {
        id: i + 1,
        matches: MATCH_IP | MATCH_PROTO | MATCH_FPORT,
        prefix: (i * 7919 + 3).to_be_bytes(),
        prefix_len: 32,
        proto: PROTO_UDP,
        fport: (i * 3 + 1) as u16,
        ..Ace::default()
    };
    let aces: Vec<Ace> = (0..MAX_CLASSIFIED_ACES as u32).map(ace).collect();
    let compiled = compile(6, &aces, 0);
    let root = |field| compiled.summary.iter().find(|(k, _)| k.field == field && k.page == 0).unwrap().1;
    assert_eq!(root(FIELD_IP).leaves as usize, (2 * MAX_CLASSIFIED_ACES + 1).div_ceil(summary::SUMMARY_SLOTS));
    let maps = Lookup::new(&compiled);
    for i in [0, 1, 5_000, MAX_CLASSIFIED_ACES as u32 - 1] {
        let a = ace(i);
        let q = AceQuery { proto: PROTO_UDP, remote: a.prefix, remote_port: a.fport, facts: RemoteFacts::default() };
        assert_eq!(candidate_chunks(&maps, 6, &q), 1 << (i as usize / CHUNK_ACES));
        assert_eq!(first_decider(&maps, 6, &compiled.shape, &q), Some(i));
    }
}
