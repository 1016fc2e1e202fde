//! How a flow's translations chain in one NAT domain, read from a snapshot of the NAT
//! map: what the agent removes when the flows of an app or a port map go, and nothing of
//! another flow's, even one given the same port.

use std::collections::{HashMap, HashSet};

use netns_ebpf_common::nat::{NatKey, NatValue};

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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use netns_ebpf_common::{
        nat::{NatKey, NatValue, DOMAIN_AGENT, REWRITE_DST, REWRITE_SRC},
        PROTO_TCP,
    };

    use super::translations_met;

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
}
