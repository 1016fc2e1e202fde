//! The NI kinds: what each one builds at the NI level (netns, bridge, veth to the agent,
//! NAT, routing, uplink, tunnel routes) and what it takes down. Ports, pins and map
//! entries are the same for all kinds (`port.rs`, `remove` and `remove_all` below).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use netns_ebpf_common::{
    fast::FastZone,
    nat::{NatKey, NatValue, PortmapKey, PortmapTarget, DOMAIN_AGENT, NAT_FLAG_ORIG, REWRITE_DST},
    IfaceKey, IFACE_FLAG_IP_KNOWN, IFACE_FLAG_IP_LEARN, IFACE_FLAG_SWITCH,
};
use tracing::{debug, info, warn};

use super::{uplink, Applier, ApplyOutcome};
use crate::{
    config::mac_string,
    datapath,
    netlink::{Netlink, Rule},
    netns::{self, Netns},
    plan::{NiPlan, Plan, PortPlan, PortmapPlan, BRIDGE},
};

/// What differs between NI kinds. One type per kind; the applier dispatches once, on
/// `NetworkKind`, and everything else is shared.
pub(crate) trait NiDriver {
    /// Ensures the NI-level objects; returns the NI's netns and a netlink handle in it.
    async fn ensure(&self, ap: &mut Applier, plan: &Plan, ni: &NiPlan) -> Result<(Netns, Netlink)>;
    /// Removes what only this kind has and what needs its links alive (before the links
    /// in the NI's netns go).
    async fn teardown(&self, ap: &mut Applier, ni: &NiPlan, nl: Option<&Netlink>, errors: &mut Vec<anyhow::Error>);
    /// The kind's own veths in the NI's netns: deleted with the ports' in one request.
    fn veths<'a>(&self, _ni: &'a NiPlan) -> Vec<&'a str> {
        Vec::new()
    }
    /// A link outside the NI's netns that goes with it (the agent's end of the NI's
    /// veth): once it is gone, so is every link of the NI's netns.
    fn survivor<'a>(&self, _ni: &'a NiPlan) -> Option<&'a str> {
        None
    }
    /// What goes once the NI's links are gone (`nl_deleted`: they went with the NI's
    /// netns links; else they are still to be deleted from here).
    async fn finish_teardown(&self, _ap: &mut Applier, _ni: &NiPlan, _nl_deleted: bool, _errors: &mut Vec<anyhow::Error>) {}
    /// `IfaceInfo.flags` of app port `p`.
    fn port_flags(&self, _p: &PortPlan) -> u32 {
        0
    }
    /// The address whose traffic into the NI is the agent's own (EVE-initiated); none
    /// (zeros) where the NI has no agent side.
    fn eve_ip(&self, ni: &NiPlan) -> [u8; 4] {
        ni.agent_ip.octets()
    }
    /// Whether the kind's established flows may take the redirect fast path (with an
    /// uplink, and `[agent] fast_path`).
    fn fast_path(&self) -> bool {
        false
    }
}

/// A NATed NI: veth to the agent's netns, source NAT twice, port maps, EVE table.
pub struct LocalNi;
/// A switch NI: the uplink bridged in; no NAT, no routing, no services of ours.
pub struct SwitchNi;
/// A local NI whose remote selectors go through an IPsec tunnel (charon: `services`).
pub struct VpnNi;

/// The netns (made when missing), lo up and the bridge: what every kind has. `mac`: the
/// bridge's MAC, for a bridge that is the apps' gateway (`NiPlan::bridge_mac`); None:
/// the kernel's pick.
async fn ensure_base(ni: &NiPlan, mac: Option<[u8; 6]>) -> Result<(Netns, Netlink)> {
    let ns = if netns::exists(&ni.name) { Netns::open(&netns::resolve(&ni.name))? } else { netns::create_named(&ni.name)? };
    // No NI has IPv6 (the app ports drop the apps' IPv6): without it the NI's own links
    // send no router solicitations, MLD reports or neighbour solicitations to the apps,
    // the agent or a switch NI's uplink. Set before the links are made; "all" also
    // sets the netns' default and every link an earlier agent made.
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        netns::write_sysctl(&ns, "net/ipv6/conf/all/disable_ipv6", "1")?;
    }
    let nl = Netlink::open(&ns)?;
    nl.set_up("lo").await?;
    if nl.link_index(BRIDGE).await?.is_none() {
        // Made without IGMP snooping, and with its MAC set when it has one.
        nl.create_bridge(BRIDGE, mac).await?;
        return Ok((ns, nl));
    }
    // One of an earlier agent: IGMP snooping turned off, and the MAC set if the kernel
    // chose it (the lowest of the ports' then).
    nl.set_snooping_off(BRIDGE).await?;
    let Some(mac) = mac else { return Ok((ns, nl)) };
    // The apps' ARP caches hold the old MAC, if it changes: the kernel announces the new
    // one by a gratuitous ARP from the gateway's address.
    netns::write_sysctl(&ns, &format!("net/ipv4/conf/{BRIDGE}/arp_notify"), "1")?;
    if let Some(had) = nl.ensure_mac(BRIDGE, mac).await? {
        info!("{}: the bridge's MAC set to {} (was {}), announced to the apps", ni.name, mac_string(&mac), mac_string(&had));
    }
    Ok((ns, nl))
}

impl NiDriver for LocalNi {
    /// Nothing on the NI's path but the bridge and two routing hops: the fast path
    /// skips them.
    fn fast_path(&self) -> bool {
        true
    }

    async fn ensure(&self, ap: &mut Applier, plan: &Plan, ni: &NiPlan) -> Result<(Netns, Netlink)> {
        let (ns, nl) = ensure_base(ni, Some(ni.bridge_mac())).await?;
        netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1")?;
        // The NI's TCP services know a connection's app by the mark its SYN got at the
        // app port (services/caller.rs), not by the address it claims.
        netns::write_sysctl(&ns, "net/ipv4/tcp_fwmark_accept", "1")?;
        // The gateway has no use for multicast: without it (and without IGMP snooping,
        // `ensure_base`) the bridge sends the apps no IGMP reports (noise in their flow
        // records and counters).
        nl.set_multicast_off(BRIDGE).await?;
        nl.add_address(BRIDGE, ni.gateway, ni.subnet.prefix_len()).await?;
        nl.set_up(BRIDGE).await?;

        // The veth to the agent: kept when both ends are there, else made anew.
        // An end of an earlier agent without the ifindex it must have now counts as missing.
        let ni_end = nl.link_index(&ni.ni_veth).await?;
        let agent_end = ap.agent.link_index(&ni.agent_veth).await?;
        let fresh_veth = ni_end != Some(ni.ni_veth_ifindex()) || agent_end != Some(ni.agent_veth_ifindex());
        ap.programs.get(&ap.pin_dir)?;
        if fresh_veth {
            // The fast path writes the veth ends' MACs (`FastZone`): none until
            // `ensure_fast_path` has read the new ends' (the ifindexes stay the same).
            ap.maps()?.set_fast_zone(ni.zone(), FastZone::default())?;
            if ni_end.is_some() {
                nl.delete_link(&ni.ni_veth).await?;
            }
            if agent_end.is_some() {
                ap.agent.delete_link(&ni.agent_veth).await?;
            }
            nl.create_veth((&ni.ni_veth, Some(ni.ni_veth_ifindex())), (&ni.agent_veth, Some(ni.agent_veth_ifindex())), &ap.agent_ns)
                .await?;
        }
        nl.add_address(&ni.ni_veth, ni.ni_ip, crate::plan::VETH_PREFIX).await?;
        nl.set_up(&ni.ni_veth).await?;
        ap.agent.add_address(&ni.agent_veth, ni.agent_ip, crate::plan::VETH_PREFIX).await?;
        ap.agent.set_up(&ni.agent_veth).await?;
        nl.add_default_route(ni.agent_ip).await?;
        let agent_veth_index =
            ap.agent.link_index(&ni.agent_veth).await?.with_context(|| format!("{} vanished after creation", ni.agent_veth))?;
        uplink::apply_eve_table(&ap.agent, ni, agent_veth_index).await?;

        if let Some(uplink_name) = ni.routed_uplink() {
            let addr = *ap.uplinks.get(uplink_name).with_context(|| format!("uplink {uplink_name} was not read"))?;
            let table = plan.uplink(uplink_name)?.table;
            // NI side: NI subnet -> NI veth address; port maps toward the apps.
            let ni_veth_index = nl.link_index(&ni.ni_veth).await?.context("NI veth vanished")?;
            let nat_ports = plan.nat_ports;
            ap.maps()?.set_nat_iface(IfaceKey { zone: ni.zone(), ifindex: ni_veth_index }, uplink::ni_side_nat(nat_ports, ni))?;
            ap.programs.get(&ap.pin_dir)?.attach_nat(&ns, &ni.name, &ni.ni_veth)?;
            // Agent side: port-mapped flows entering the NI get the agent-side address
            // as source (no collision with the NI subnet); hairpin port maps.
            ap.maps()?
                .set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: agent_veth_index }, uplink::agent_side_nat(nat_ports, ni, &addr))?;
            ap.programs.get(&ap.pin_dir)?.attach_nat(&ap.agent_ns, datapath::AGENT_PIN_SUBDIR, &ni.agent_veth)?;
            let maps = ap.maps()?;
            uplink::set_uplink_portmaps(maps, ni, &addr)?;
            for pm in &ni.portmaps {
                maps.set_portmap(
                    ni_portmap_key(ni, pm),
                    PortmapTarget { addr: pm.app_ip.octets(), port: pm.target, _pad: 0, mark: pm.mark, uplink_ifindex: 0 },
                )?;
            }
            // The NI's traffic is routed by its uplink's table.
            uplink::add_ni_uplink_routes(&ap.agent, table, ni, agent_veth_index).await?;
            ap.agent
                .add_rule(&Rule { priority: uplink::UPLINK_RULE_PRIORITY, table, iif: Some(ni.agent_veth.clone()), oif: None, from: None })
                .await?;
        }
        Ok((ns, nl))
    }

    async fn teardown(&self, ap: &mut Applier, ni: &NiPlan, _nl: Option<&Netlink>, errors: &mut Vec<anyhow::Error>) {
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        let agent_veth_index = ap.agent.link_index(&ni.agent_veth).await.ok().flatten();
        if let Ok(maps) = ap.maps() {
            if let Some(index) = agent_veth_index {
                maps.remove_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: index });
            }
            let (ni_ip, agent_ip) = (ni.ni_ip.octets(), ni.agent_ip.octets());
            maps.remove_portmaps(|k, t| k.domain == DOMAIN_AGENT && t.addr == ni_ip);
            maps.remove_nat_entries(|k, v| {
                k.domain == DOMAIN_AGENT && [k.src, k.dst, v.addr].iter().any(|a| *a == ni_ip || *a == agent_ip)
            });
        }
        note(ap.agent.delete_rules(ni.eve_table(), None).await.map(drop));
        note(ap.agent.flush_table(ni.eve_table()).await.map(drop));
        if let Some(uplink) = ni.routed_uplink() {
            if let Some(u) = ap.record.uplinks.iter().find(|u| u.name == uplink) {
                note(ap.agent.delete_rules(u.table, Some(&ni.agent_veth)).await.map(drop));
            }
        }
    }

    /// The NI's end of the veth to the agent; the agent's end goes with it.
    fn veths<'a>(&self, ni: &'a NiPlan) -> Vec<&'a str> {
        vec![&ni.ni_veth]
    }

    fn survivor<'a>(&self, ni: &'a NiPlan) -> Option<&'a str> {
        Some(&ni.agent_veth)
    }

    /// The agent's end of the veth, unless it went with the NI's (its programs go with
    /// it), and an earlier agent's TCX pins for it.
    async fn finish_teardown(&self, ap: &mut Applier, ni: &NiPlan, nl_deleted: bool, errors: &mut Vec<anyhow::Error>) {
        if !nl_deleted {
            if let Err(e) = ap.agent.delete_link(&ni.agent_veth).await {
                errors.push(e);
            }
        }
        if let Err(e) = datapath::remove_earlier_nat_pins(&ap.pin_dir, datapath::AGENT_PIN_SUBDIR, &ni.agent_veth) {
            errors.push(e);
        }
    }
}

impl NiDriver for VpnNi {
    // No fast path (the default): xfrm's policy lookup happens on the kernel's path.

    async fn ensure(&self, ap: &mut Applier, plan: &Plan, ni: &NiPlan) -> Result<(Netns, Netlink)> {
        let (ns, nl) = LocalNi.ensure(ap, plan, ni).await?;
        if let Some(vpn) = &ni.vpn {
            // charon routes the remote selectors into the tunnel (table 220, ahead of
            // main) while its CHILD_SA is up; without it they must not leave in the
            // clear, SNATed.
            for ts in &vpn.remote_ts {
                nl.add_unreachable_route(ts.network(), ts.prefix_len()).await?;
            }
            info!("  vpn to {} ({:?}): {:?} unreachable unless the tunnel is up", vpn.remote, vpn.backend, vpn.remote_ts);
        }
        Ok((ns, nl))
    }

    async fn teardown(&self, ap: &mut Applier, ni: &NiPlan, nl: Option<&Netlink>, errors: &mut Vec<anyhow::Error>) {
        LocalNi.teardown(ap, ni, nl, errors).await
    }

    fn veths<'a>(&self, ni: &'a NiPlan) -> Vec<&'a str> {
        LocalNi.veths(ni)
    }

    fn survivor<'a>(&self, ni: &'a NiPlan) -> Option<&'a str> {
        LocalNi.survivor(ni)
    }

    async fn finish_teardown(&self, ap: &mut Applier, ni: &NiPlan, nl_deleted: bool, errors: &mut Vec<anyhow::Error>) {
        LocalNi.finish_teardown(ap, ni, nl_deleted, errors).await
    }
}

impl NiDriver for SwitchNi {
    // No fast path (the default): nothing is routed.

    async fn ensure(&self, ap: &mut Applier, _plan: &Plan, ni: &NiPlan) -> Result<(Netns, Netlink)> {
        // The kernel's pick of MAC: the bridge is no gateway, and it joins the uplink's
        // LAN, where a MAC made from the NI's index would be every device's alike.
        let (ns, nl) = ensure_base(ni, None).await?;
        let uplink = ni.uplink.as_deref().context("a switch NI needs an uplink")?;
        if nl.link_index(uplink).await?.is_none() {
            ap.agent.move_to_netns(uplink, &ns).await?;
            info!("  uplink {uplink} bridged into {}", ni.name);
        }
        nl.set_master(uplink, BRIDGE).await?;
        nl.set_up(uplink).await?;
        nl.set_up(BRIDGE).await?;
        ap.programs.get(&ap.pin_dir)?;
        Ok((ns, nl))
    }

    async fn teardown(&self, ap: &mut Applier, ni: &NiPlan, nl: Option<&Netlink>, errors: &mut Vec<anyhow::Error>) {
        // The uplink goes back to the agent's netns (its addresses did not survive the
        // move; the uplink's owner configures it again).
        let (Some(nl), Some(uplink)) = (nl, &ni.uplink) else { return };
        let back = async {
            if nl.link_index(uplink).await?.is_some() {
                nl.move_to_netns(uplink, &ap.agent_ns).await?;
                ap.agent.set_up(uplink).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = back.await {
            errors.push(e.context(format!("moving uplink {uplink} back")));
        }
    }

    /// The app's address comes from the DHCP server outside: the port learns it from
    /// the server's reply, unless the config names it.
    fn port_flags(&self, p: &PortPlan) -> u32 {
        IFACE_FLAG_SWITCH | if p.ip_configured { IFACE_FLAG_IP_KNOWN } else { IFACE_FLAG_IP_LEARN }
    }

    /// A switch NI has no EVE side: nothing in it is the agent's own traffic.
    fn eve_ip(&self, _: &NiPlan) -> [u8; 4] {
        [0; 4]
    }
}

/// Runs `$body` with `$k` bound to the driver of NI kind `$kind`: the one place that
/// dispatches on the kind.
macro_rules! with_driver {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            $crate::config::NetworkKind::Local => {
                let $k = &$crate::reconcile::LocalNi;
                $body
            }
            $crate::config::NetworkKind::Switch => {
                let $k = &$crate::reconcile::SwitchNi;
                $body
            }
            $crate::config::NetworkKind::Vpn => {
                let $k = &$crate::reconcile::VpnNi;
                $body
            }
        }
    };
}
pub(crate) use with_driver;

/// Removes one NI: the map entries of its zone, what its kind made, its ports' links
/// (their programs go with them), an earlier agent's pins and its netns. Goes on past
/// errors.
///
/// Its veths go in one request (`Netlink::delete_links`): one unregister batch, whose
/// RCU grace periods are waited for once, not once per veth.
pub async fn remove<K: NiDriver>(ap: &mut Applier, kind: &K, ni: &NiPlan) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let nl = dismantle(ap, kind, ni, &mut errors).await;
    delete_and_finish(ap, kind, ni, nl, &mut errors).await;
    errors
}

/// What follows `dismantle` when the NI's links go here: its veths in one request, then
/// `finish`.
async fn delete_and_finish<K: NiDriver>(ap: &mut Applier, kind: &K, ni: &NiPlan, nl: Option<Netlink>, errors: &mut Vec<anyhow::Error>) {
    let deleted = match &nl {
        Some(nl) => delete_veths(kind, ni, nl, errors).await,
        None => false,
    };
    drop(nl);
    finish(ap, kind, ni, deleted, errors).await;
}

/// Removes every NI of `nis` at once (`down`, no agent running): each is dismantled and
/// its netns deleted, and the kernel then tears the links of all of them down in one
/// batch (its netns cleanup collects every dying netns). Deleting each NI's links
/// itself costs each NI its own grace periods (~170 ms of 4 apps). Returns the errors,
/// each naming its NI.
pub async fn remove_all(ap: &mut Applier, nis: &[NiPlan]) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let mut dying: Vec<(&NiPlan, &str)> = Vec::new();
    // A process still in an NI's netns (someone's shell) keeps it, and its links, alive
    // past its name: such an NI's links are deleted here.
    let held = netns::processes_in(&nis.iter().map(|n| n.name.as_str()).collect::<Vec<_>>());
    for ni in nis {
        info!("removing network instance {}", ni.name);
        let mut own = Vec::new();
        if let Some(pids) = held.get(&ni.name) {
            warn!("{}: processes {pids:?} are still in its netns, which lives on until they leave", ni.name);
        }
        with_driver!(ni.kind, kind => {
            let nl = dismantle(ap, kind, ni, &mut own).await;
            match (nl, kind.survivor(ni)) {
                // The netns goes with its links; its survivor shows when they are gone.
                (Some(nl), Some(survivor)) if !held.contains_key(&ni.name) => {
                    drop(nl);
                    dying.push((ni, survivor));
                }
                (nl, _) => delete_and_finish(ap, kind, ni, nl, &mut own).await,
            }
        });
        errors.extend(naming(ni, own));
    }
    // All netns at once, once nothing is left to do in them: the kernel's cleanup takes
    // them in one batch (deleted one by one between the others' dismantling, they went in
    // many batches, each holding RTNL against the dismantling).
    let mut named = Vec::new();
    for (ni, survivor) in dying {
        match netns::delete_named(&ni.name) {
            Ok(_) => named.push((ni, survivor)),
            Err(e) => {
                let mut own = vec![e];
                with_driver!(ni.kind, kind => finish(ap, kind, ni, false, &mut own).await);
                errors.extend(naming(ni, own));
            }
        }
    }
    let dying = named;
    let survivors: Vec<&str> = dying.iter().map(|(_, link)| *link).collect();
    let left = match wait_links_gone(&ap.agent, &survivors, NETNS_CLEANUP_WAIT).await {
        Ok(left) => left,
        Err(e) => {
            errors.push(e);
            survivors.iter().map(|l| l.to_string()).collect()
        }
    };
    for (ni, survivor) in dying {
        let mut own = Vec::new();
        let gone = !left.iter().any(|l| l == survivor);
        if !gone {
            own.push(anyhow::anyhow!(
                "its netns outlived its name for {NETNS_CLEANUP_WAIT:?} (a process still in it?): {survivor} is deleted from this side"
            ));
        }
        with_driver!(ni.kind, kind => finish(ap, kind, ni, gone, &mut own).await);
        errors.extend(naming(ni, own));
    }
    errors
}

/// `errors` of removing `ni`, each saying so.
fn naming(ni: &NiPlan, errors: Vec<anyhow::Error>) -> impl Iterator<Item = anyhow::Error> + '_ {
    errors.into_iter().map(|e| e.context(format!("removing {}", ni.name)))
}

/// How long `remove_all` waits for the kernel to tear the NIs' netns down.
const NETNS_CLEANUP_WAIT: Duration = Duration::from_secs(30);

/// Waits until no link of `names` is left in the agent's netns, or `limit` passes;
/// returns those left.
async fn wait_links_gone(agent: &Netlink, names: &[&str], limit: Duration) -> Result<Vec<String>> {
    let started = Instant::now();
    loop {
        let left: Vec<String> = agent.links().await?.into_iter().map(|l| l.name).filter(|n| names.contains(&n.as_str())).collect();
        if left.is_empty() || started.elapsed() > limit {
            debug!(waited_ms = started.elapsed().as_millis() as u64, left = left.len(), "NI netns torn down");
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first part of removing an NI, while its links are alive: the map entries of its
/// zone, what its kind made, its VM taps sent back. Returns a netlink handle in its
/// netns, if it has one.
async fn dismantle<K: NiDriver>(ap: &mut Applier, kind: &K, ni: &NiPlan, errors: &mut Vec<anyhow::Error>) -> Option<Netlink> {
    ap.host_layouts().forget_zone(ni.zone());
    if let Ok(maps) = ap.maps() {
        let flows = maps.remove_zone(ni.zone());
        info!("{}: removed {flows} conntrack entries", ni.name);
    }
    let ns = match netns::exists(&ni.name) {
        true => Netns::open(&netns::resolve(&ni.name)).map_err(|e| errors.push(e)).ok(),
        false => None,
    };
    let nl = ns.as_ref().and_then(|ns| Netlink::open(ns).map_err(|e| errors.push(e)).ok());
    kind.teardown(ap, ni, nl.as_ref(), errors).await;
    if let (Some(ns), Some(nl)) = (&ns, &nl) {
        // A VM's tap goes back where it came from, without our programs.
        for p in ni.ports.iter().filter(|p| p.tap.is_some()) {
            if let Err(e) = datapath::detach_port(ns, &ap.pin_dir, &ni.name, &p.bridge_port) {
                errors.push(e);
            }
            if let Err(e) = super::port::remove_link(ap, nl, p).await {
                errors.push(e);
            }
        }
    }
    nl
}

/// Deletes the NI's veths and its ports' in one request; whether they went. Deleting a
/// veth end takes its peer (in the app's netns, or the agent's) with it.
async fn delete_veths<K: NiDriver>(kind: &K, ni: &NiPlan, nl: &Netlink, errors: &mut Vec<anyhow::Error>) -> bool {
    let mut veths = kind.veths(ni);
    veths.extend(ni.ports.iter().filter(|p| p.tap.is_none()).map(|p| p.bridge_port.as_str()));
    match nl.delete_links(&veths).await {
        Ok(_) => true,
        Err(e) => {
            errors.push(e);
            false
        }
    }
}

/// The last part, once the links are gone (`links_gone`; else the kind deletes what it
/// can from outside): what the kind keeps outside, an earlier agent's pins of the NI,
/// the netns.
async fn finish<K: NiDriver>(ap: &mut Applier, kind: &K, ni: &NiPlan, links_gone: bool, errors: &mut Vec<anyhow::Error>) {
    kind.finish_teardown(ap, ni, links_gone, errors).await;
    if let Err(e) = datapath::remove_ni_pins(&ap.pin_dir, &ni.name) {
        errors.push(e);
    }
    if let Err(e) = netns::delete_named(&ni.name) {
        errors.push(e);
    }
}

fn ni_portmap_key(ni: &NiPlan, pm: &PortmapPlan) -> PortmapKey {
    PortmapKey { domain: ni.zone(), addr: ni.ni_ip.octets(), port: pm.lport, proto: pm.proto, _pad: 0 }
}

/// Port maps on record that the plan changes or drops: their entries go, and so do the
/// flows they translated (conntrack by the port map's mark, NAT entries by the mapped
/// port), TCP and UDP alike. What the plan keeps is untouched.
pub fn flush_changed_portmaps(ap: &mut Applier, recorded: &NiPlan, ni: &NiPlan, out: &mut ApplyOutcome) -> Result<()> {
    let leaving: Vec<&PortmapPlan> = recorded.portmaps.iter().filter(|pm| !ni.portmaps.contains(pm)).collect();
    if leaving.is_empty() {
        return Ok(());
    }
    let uplink_ip = recorded.routed_uplink().and_then(|u| ap.uplinks.get(u)).map(|a| a.ip.octets());
    let (zone, ni_ip) = (recorded.zone(), recorded.ni_ip.octets());
    let maps = ap.maps()?;
    // No new flow through them first; then theirs go.
    let mut flows = Vec::new();
    for pm in &leaving {
        let (lport, proto) = (pm.lport, pm.proto);
        maps.remove_portmaps(|k, _| *k == ni_portmap_key(recorded, pm));
        if let Some(ip) = uplink_ip {
            maps.remove_portmaps(|k, _| k.domain == DOMAIN_AGENT && k.addr == ip && k.port == lport && k.proto == proto);
        }
        flows.push(maps.remove_flows(|k, v| k.zone == zone && k.proto == proto && v.mark == pm.mark));
    }
    // Each one's flows' first translations: the destination NATs it made, at the
    // uplink's address (the agent's domain) and at the NI veth's (the NI's); then
    // whatever each flow met after them. Not by the port alone: an app's own flow out
    // may have been given the same port as a source. One read of the NAT map, one pass
    // removing.
    let nat: HashMap<NatKey, NatValue> = maps.nat_entries().into_iter().collect();
    let mut flushed = HashSet::new();
    for (pm, flows) in leaving.iter().zip(flows) {
        let (lport, proto) = (pm.lport, pm.proto);
        let mapped = nat
            .iter()
            .filter(|(k, v)| {
                let to = |domain: u32, addr: [u8; 4]| k.domain == domain && k.dst == addr && k.dport == lport;
                k.proto == proto
                    && v.rewrite == REWRITE_DST
                    && v.flags & NAT_FLAG_ORIG != 0
                    && (to(zone, ni_ip) || uplink_ip.is_some_and(|ip| to(DOMAIN_AGENT, ip)))
            })
            .map(|(k, _)| *k);
        let met = datapath::translations_met(&nat, mapped);
        let entries = met.iter().filter(|k| nat.contains_key(k)).count();
        info!("{}: port map {lport} -> {}:{} removed; {flows} flows and {entries} NAT entries flushed", ni.name, pm.app_ip, pm.target);
        out.report.changes.push(format!("{}: port map {lport}/{} changed or removed", ni.name, proto));
        flushed.extend(met);
    }
    maps.remove_nat_entries(|k, _| flushed.contains(k));
    Ok(())
}
