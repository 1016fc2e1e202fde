//! App ports: the veth (or a VM's tap) on the NI's bridge, its map entries and its
//! programs. Ensured in this order: link, config in the maps, programs, link up, so that
//! no packet ever crosses a port unjudged.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use netns_ebpf_common::{
    limit::LimitKey,
    nat::{NatKey, NatValue, DOMAIN_AGENT, REWRITE_SRC},
    IfaceInfo, IfaceKey, IFACE_FLAG_APP_NETNS, IFACE_FLAG_CHECK_MAC, IFACE_FLAG_IP_KNOWN, IFACE_FLAG_IP_LEARN,
};
use tracing::{debug, info, warn};

use super::{Applier, ApplyOutcome, NiDriver};
use crate::{
    datapath::{self, HostLayout, HostLayouts, Maps},
    netlink::Netlink,
    netns::{self, Netns},
    plan::{NiPlan, PortPlan, BRIDGE},
};

/// The port's entry in IFACE_V3 as the programs read it, with its ACL under `acl_id`.
pub(super) fn iface_info<K: NiDriver>(kind: &K, ni: &NiPlan, p: &PortPlan, acl_id: u32) -> IfaceInfo {
    IfaceInfo {
        app_num: p.app_num,
        acl_id,
        prev_acl_id: 0,
        kept_aces: 0,
        app_ip: p.ip.octets(),
        gateway: ni.gateway.octets(),
        eve_ip: kind.eve_ip(ni),
        flags: kind.port_flags(p)
            | if p.check_mac { IFACE_FLAG_CHECK_MAC } else { 0 }
            // A veth the agent made: its other end is the app's, in the app's netns.
            | if p.tap.is_none() { IFACE_FLAG_APP_NETNS } else { 0 },
        app_mac: p.mac,
        _pad: [0; 2],
    }
}

/// Ensures one app port. `before`: the same port as applied before (same link), whose
/// host ACEs tell how to carry the host sets over to a changed ACL.
#[allow(clippy::too_many_arguments)]
pub async fn ensure<K: NiDriver>(
    ap: &mut Applier,
    kind: &K,
    ni: &NiPlan,
    p: &PortPlan,
    before: Option<&PortPlan>,
    ns: &Netns,
    nl: &Netlink,
    out: &mut ApplyOutcome,
) -> Result<()> {
    let fresh = match (nl.link_index(&p.bridge_port).await?, p.ifindex) {
        (None, _) => true,
        // A port of an earlier agent without the ifindex it must have now: made anew.
        (Some(have), Some(want)) if have != want => {
            info!(port = p.bridge_port, have, want, "port has another ifindex than planned; recreating it");
            nl.delete_link(&p.bridge_port).await?;
            true
        }
        (Some(_), _) => false,
    };
    let app = ensure_link(ap, p, ns, nl, fresh).await?;
    if fresh {
        out.report.changes.push(format!("{}: port {} of app {} added", ni.name, p.bridge_port, p.app));
    }
    nl.set_master(&p.bridge_port, BRIDGE).await?;
    let ifindex = nl.link_index(&p.bridge_port).await?.with_context(|| format!("{} vanished after creation", p.bridge_port))?;
    // Config first, then the programs that read it.
    let layouts = ap.host_layouts();
    write_maps(ap.maps()?, &layouts, kind, ni, p, IfaceKey { zone: ni.zone(), ifindex }, before, out)?;
    ap.programs.get(&ap.pin_dir)?.attach_port(ns, &ni.name, &p.bridge_port)?;
    nl.set_up(&p.bridge_port).await?;

    // A VM configures its own side.
    let Some(app) = app else {
        if p.check_mac {
            info!("  {} -> app {} (tap of a VM), {} ACEs", p.bridge_port, p.app, p.acl.len());
        } else {
            // The port knows no MAC of the VM's to hold it to: say so where it is set up.
            warn!(
                "  {} -> app {} (tap of a VM), {} ACEs; no MAC configured: the port checks neither the VM's source MAC, nor \
                 its ARP sender, nor the client its DHCP messages name (set app.interface.mac)",
                p.bridge_port,
                p.app,
                p.acl.len()
            );
        }
        return Ok(());
    };
    configure_app_end(&app, ni, p).await?;
    info!("  {} -> app {} ({} {}), {} ACEs", p.bridge_port, p.app, p.app_ifname, p.ip, p.acl.len());
    Ok(())
}

/// The port's link in NI netns `ns` (`fresh`: not there yet): a VM's tap taken from the
/// agent's netns, or a veth pair whose app end goes into the app's netns (returned, as
/// a handle there).
async fn ensure_link(ap: &Applier, p: &PortPlan, ns: &Netns, nl: &Netlink, fresh: bool) -> Result<Option<Netlink>> {
    if let Some(tap) = &p.tap {
        if fresh {
            ap.agent.move_to_netns(tap, ns).await.with_context(|| format!("taking tap {tap} of app {:?}", p.app))?;
        }
        return Ok(None);
    }
    let app_ns = Netns::open(&netns::resolve(&p.app_netns)).with_context(|| format!("app {:?}: opening netns {}", p.app, p.app_netns))?;
    let app = Netlink::open(&app_ns)?;
    if fresh {
        // An app end without its bridge end is a leftover of ours (preflight checked that
        // nothing else is there).
        app.delete_link(&p.app_ifname).await?;
        nl.create_veth((&p.bridge_port, p.ifindex), (&p.app_ifname, None), &app_ns).await?;
    }
    Ok(Some(app))
}

/// The port's entries in the maps: its ACL (written under a new id when it changed: see
/// `acl_id`) and config, counters, eidset entry, limit buckets, host sets.
#[allow(clippy::too_many_arguments)]
fn write_maps<K: NiDriver>(
    maps: &mut Maps,
    layouts: &HostLayouts,
    kind: &K,
    ni: &NiPlan,
    p: &PortPlan,
    key: IfaceKey,
    before: Option<&PortPlan>,
    out: &mut ApplyOutcome,
) -> Result<()> {
    let published = maps.port(key);
    let swap_started = std::time::Instant::now();
    let live_hosts = live_host_layout(maps, layouts, key, published.as_ref(), before);
    let acl = port_acl(maps, p, published.as_ref(), before, live_hosts.as_ref())?;
    if acl.replaces.is_some() {
        out.report.changes.push(format!("{}: ACL of {} ({}) changed", ni.name, p.bridge_port, p.app));
    }
    let mut info = iface_info(kind, ni, p, acl.id);
    // Live flows that the change leaves alike are not judged again (`acl::decided_alike`);
    // an unchanged ACL keeps what its last change said.
    (info.prev_acl_id, info.kept_aces) = match (acl.replaces, &published) {
        (Some(old), _) => (old, acl.kept_aces),
        (None, Some(live)) => (live.prev_acl_id, live.kept_aces),
        (None, None) => (0, 0),
    };
    // An address the port learned from DHCP stays the app's while its MAC does.
    if let Some(old) = &published {
        let learned = IFACE_FLAG_IP_LEARN | IFACE_FLAG_IP_KNOWN;
        if info.flags & IFACE_FLAG_IP_LEARN != 0 && old.flags & learned == learned && old.app_mac == info.app_mac {
            info.app_ip = old.app_ip;
            info.flags |= IFACE_FLAG_IP_KNOWN;
        }
    }
    // The switch to a new ACL: one update of the port's entry. Meanwhile no DNS answer is
    // written, and the host sets say the same under the old ACL and the new one: the new
    // one's bits beside the old ones' first, the old ones' dropped after (`HostLayouts`).
    let layout = HostLayout { base: acl.host_base, domains: p.host_layout() };
    let mut switch = layouts.begin_switch(key);
    if !switch.prepare(&mut maps.hosts, &layout) && acl.written {
        debug!(port = p.bridge_port, "host-set bits carried over after the switch");
    }
    if published != Some(info) {
        if let Err(e) = maps.set_port(key, info) {
            switch.abort(&mut maps.hosts, &layout);
            if acl.written {
                maps.acls.remove(acl.id);
            }
            return Err(e);
        }
        debug!(port = p.bridge_port, acl_id = acl.id, "port config written");
    }
    switch.finish(&mut maps.hosts, layout);
    // The new ACL decides from here on; what follows is the old one's removal.
    let switched = swap_started.elapsed();
    match (acl.replaces, before) {
        (Some(old), Some(before)) => maps.acls.remove_holding(old, &before.acl),
        (Some(old), None) => maps.acls.remove(old),
        (None, _) => {}
    }
    if let Some(old) = acl.replaces {
        info!(
            port = p.bridge_port,
            aces = p.acl.len(),
            kept_aces = acl.kept_aces,
            old_acl_id = old,
            acl_id = acl.id,
            switch_ms = switched.as_secs_f64() * 1000.0,
            ms = swap_started.elapsed().as_secs_f64() * 1000.0,
            "{}: ACL of {} swapped (written and switched after switch_ms, the old one removed after ms)",
            ni.name,
            p.app
        );
    }
    // Counters are for the metrics: a port without them still enforces (warned).
    if let Err(e) = maps.ensure_port_counters(key) {
        warn!("{}: port {} has no packet counters: {e:#}", ni.name, p.bridge_port);
    }
    maps.set_eid(ni.zone(), p.ip.octets(), p.app_num)?;
    // A bucket keeps its tokens and counters unless its ACE's rate changed.
    for (index, bucket) in &p.limits {
        let lkey = LimitKey { zone: ni.zone(), ifindex: key.ifindex, ace_index: *index as u32 };
        let same = |b: &netns_ebpf_common::limit::Bucket| (b.rate, b.burst, b.unit_ns) == (bucket.rate, bucket.burst, bucket.unit_ns);
        if !maps.limit(lkey).is_some_and(|b| same(&b)) {
            maps.set_limit(lkey, *bucket)?;
        }
    }
    let limited: HashSet<u32> = p.limits.iter().map(|(i, _)| *i as u32).collect();
    maps.remove_limits(key, |ace| limited.contains(&ace));
    Ok(())
}

/// The ACL a port's entry is to name.
struct PortAcl {
    id: u32,
    /// Its host ACEs' first bit in the host sets.
    host_base: u32,
    /// `id` is new: the ACL was written under it now.
    written: bool,
    /// The published ACL it replaces.
    replaces: Option<u32>,
    /// How many leading ACEs the replaced ACL and this one share (0 when the replaced
    /// one is not known to be the record's).
    kept_aces: u32,
}

/// The ACL the port's entry names: the published one while it holds the plan's ACEs, or
/// a new id with the ACL written under it. A new id also makes the programs judge again
/// the port's live flows that the change may decide otherwise. `before`: the port as
/// recorded, whose ACEs the published ACL holds when its digest says so. `live_hosts`:
/// the published ACL's host layout, beside which a new ACL puts its host ACEs' bits (the
/// same bits when its host ACEs are the same).
fn port_acl(
    maps: &mut Maps,
    p: &PortPlan,
    published: Option<&IfaceInfo>,
    before: Option<&PortPlan>,
    live_hosts: Option<&HostLayout>,
) -> Result<PortAcl> {
    match published {
        // The ACEs as the programs read them (and the digest) leave out host ACEs' domains:
        // an ACL whose host ACE names another domain than the record's is another ACL, and
        // the flows that ACE decided are judged again.
        Some(live) if maps.acls.holds(live.acl_id, &p.acl) && before.is_none_or(|b| b.hosts == p.hosts) => {
            let host_base = maps.acls.host_base(live.acl_id, &p.acl);
            Ok(PortAcl { id: live.acl_id, host_base, written: false, replaces: None, kept_aces: 0 })
        }
        live => {
            let domains = p.host_layout();
            let host_base = match live_hosts {
                Some(l) if l.domains == domains => l.base,
                Some(l) => l.base_beside(domains.len()).unwrap_or_else(|| {
                    warn!(
                        port = p.bridge_port,
                        "more than 64 host ACEs between the live ACL and the new one: their host-set bits overlap, and a flow \
                         judged again while the port switches may meet the other ACL's bits"
                    );
                    0
                }),
                None => 0,
            };
            let kept_aces = match (live, before) {
                (Some(live), Some(before)) if maps.acls.holds(live.acl_id, &before.acl) => {
                    // A host ACE is the same where it names the same domain too.
                    let domain = |port: &PortPlan, i: usize| port.hosts.iter().find(|(index, _)| *index == i).map(|(_, d)| d.clone());
                    let same = |i: usize| before.acl[i] == p.acl[i] && domain(before, i) == domain(p, i);
                    (0..before.acl.len().min(p.acl.len())).take_while(|i| same(*i)).count() as u32
                }
                _ => 0,
            };
            let id = maps.write_acl(&p.acl, host_base)?;
            Ok(PortAcl { id, host_base, written: true, replaces: live.map(|l| l.acl_id), kept_aces })
        }
    }
}

/// The live host layout of port `key`: as published, else (an agent that has not seen the
/// port yet) as the record and the maps say. A port whose live ACL's layout is not known
/// loses its host sets (fail closed: the app's next answers fill them again), rather than
/// have its bits read under another ACL.
fn live_host_layout(
    maps: &mut Maps,
    layouts: &HostLayouts,
    key: IfaceKey,
    published: Option<&IfaceInfo>,
    before: Option<&PortPlan>,
) -> Option<HostLayout> {
    if let Some(live) = layouts.live(key) {
        return Some(live);
    }
    let published = published?;
    match before.and_then(|b| recorded_host_layout(maps, published, b)) {
        Some(recorded) => {
            layouts.publish(key, recorded.clone());
            Some(recorded)
        }
        None => {
            warn!(ifindex = key.ifindex, "the live ACL's host ACEs are not known: the port's host sets are emptied");
            maps.hosts.remove_port(key);
            None
        }
    }
}

/// The host layout of the ACL that port entry `info` names, when the port's record `p`
/// says which ACEs it holds: what an agent starting over a running data path tells its
/// DNS proxies (`Applier::publish_recorded_host_layouts`).
pub fn recorded_host_layout(maps: &Maps, info: &IfaceInfo, p: &PortPlan) -> Option<HostLayout> {
    maps.acls.holds(info.acl_id, &p.acl).then(|| HostLayout { base: maps.acls.host_base(info.acl_id, &p.acl), domains: p.host_layout() })
}

/// The app's end of a veth port, in the app's netns: MAC, address (unless the app asks
/// DHCP), up, and the default route through its first interface.
async fn configure_app_end(app: &Netlink, ni: &NiPlan, p: &PortPlan) -> Result<()> {
    app.set_up("lo").await?;
    app.ensure_mac(&p.app_ifname, p.mac).await?;
    if !p.dhcp {
        app.add_address(&p.app_ifname, p.ip, ni.subnet.prefix_len()).await?;
    }
    app.set_up(&p.app_ifname).await?;
    // An app with several interfaces gets its default route via the first one only.
    if p.default_route && !app.default_route_exists().await? {
        app.add_default_route(ni.gateway).await?;
    }
    Ok(())
}

/// Removes the recorded ports of `recorded` that `ni` drops or whose link changes; a
/// removal that fails goes on and is reported in `errors`.
pub async fn remove_leaving(ap: &mut Applier, recorded: &NiPlan, ni: &NiPlan, out: &mut ApplyOutcome, errors: &mut Vec<String>) {
    for old in &recorded.ports {
        if ni.port(&old.bridge_port).is_some_and(|p| p.same_link(old)) {
            continue;
        }
        info!("{}: removing port {} of app {}", ni.name, old.bridge_port, old.app);
        out.report.changes.push(format!("{}: port {} of app {} removed", ni.name, old.bridge_port, old.app));
        if let Err(e) = remove(ap, recorded, old).await {
            errors.push(format!("{}: removing port {}: {e:#}", ni.name, old.bridge_port));
        }
        if let Some(rec) = ap.record.nis.get_mut(&recorded.name) {
            rec.plan.ports.retain(|p| p.bridge_port != old.bridge_port);
        }
    }
}

/// Removes one port of a live NI: its flows (conntrack and the NAT entries of both
/// domains), its map entries, its programs and its link.
async fn remove(ap: &mut Applier, ni: &NiPlan, p: &PortPlan) -> Result<()> {
    if !netns::exists(&ni.name) {
        return Ok(());
    }
    let ns = Netns::open(&netns::resolve(&ni.name))?;
    let nl = Netlink::open(&ns)?;
    // A port whose link went already (its app's netns deleted, a VM's tap gone) has its
    // flows and translations all the same: left, they kept the address's flows alive past
    // their app. A veth's ifindex is the plan's; a tap's only its link knows (its flows go
    // by the app's address, its map entries with the NI's strays). The app's address is
    // the plan's, or on a switch NI without one configured the one the port learned (the
    // plan's is only the lease the agent expected): no other host's flows go for it.
    let ifindex = nl.link_index(&p.bridge_port).await?.or(p.ifindex);
    let (zone, ni_ip) = (ni.zone(), ni.ni_ip.octets());
    let published = match ifindex {
        Some(ifindex) => ap.maps()?.port(IfaceKey { zone, ifindex }),
        None => None,
    };
    let addr = if ni.is_switch() && !p.ip_configured {
        published.filter(|info| info.flags & IFACE_FLAG_IP_KNOWN != 0).map(|info| info.app_ip)
    } else {
        Some(p.ip.octets())
    };
    if let Some(ifindex) = ifindex {
        let key = IfaceKey { zone, ifindex };
        ap.host_layouts().forget(key);
        ap.maps()?.remove_port(key, p.ip.octets());
    }
    let maps = ap.maps()?;
    let is_app = |a: [u8; 4]| addr == Some(a);
    let flows = maps.remove_flows(|k, v| k.zone == zone && (Some(v.judge_ifindex) == ifindex || is_app(k.addr_a) || is_app(k.addr_b)));
    // The app's source-NATed flows continue in the agent's domain as they left the NI
    // veth: from its address and the port each was given there. Those translations go
    // first: while the app's entries in the NI hold its ports, no new flow is given one of
    // them for the same remote.
    let nat: HashMap<NatKey, NatValue> = maps.nat_entries().into_iter().collect();
    let leaving = nat
        .iter()
        .filter(|(k, v)| k.domain == zone && is_app(k.src) && v.rewrite == REWRITE_SRC && v.addr == ni_ip)
        .map(|(k, v)| NatKey { domain: DOMAIN_AGENT, ..k.rewritten(v) });
    let continued = datapath::translations_met(&nat, leaving);
    let nat_agent = maps.remove_nat_entries(|k, _| continued.contains(k));
    let nat_ni = maps.remove_nat_entries(|k, v| k.domain == zone && (is_app(k.src) || is_app(k.dst) || is_app(v.addr)));
    info!("{}: port {}: {flows} flows, {} NAT entries removed", ni.name, p.bridge_port, nat_ni + nat_agent);
    // A tap goes back to the agent's netns without our programs. A veth goes with them,
    // deleted first: detached first, it would pass the app's packets unjudged meanwhile.
    if p.tap.is_some() {
        datapath::detach_port(&ns, &ap.pin_dir, &ni.name, &p.bridge_port)?;
        remove_link(ap, &nl, p).await
    } else {
        remove_link(ap, &nl, p).await?;
        datapath::remove_earlier_port_pins(&ap.pin_dir, &ni.name, &p.bridge_port)
    }
}

/// Deletes a port's veth (its app end goes with it), or moves a VM's tap back to the
/// agent's netns.
pub async fn remove_link(ap: &Applier, nl: &Netlink, p: &PortPlan) -> Result<()> {
    match &p.tap {
        Some(tap) if nl.link_index(tap).await?.is_some() => nl.move_to_netns(tap, &ap.agent_ns).await,
        Some(_) => Ok(()),
        None => nl.delete_link(&p.bridge_port).await.map(drop),
    }
}

/// What is in the NI but not in its plan: veths left by a killed agent (other links, such
/// as charon's TUN, are not ours to judge) and map entries of the NI's zone for
/// interfaces that are not the plan's ports or addresses that are not its apps'.
pub async fn remove_strays(ap: &mut Applier, ni: &NiPlan, nl: &Netlink) -> Result<()> {
    let mut known: HashSet<&str> = [BRIDGE, ni.ni_veth.as_str()].into();
    known.extend(ni.uplink.as_deref().filter(|_| ni.is_switch()));
    known.extend(ni.ports.iter().map(|p| p.bridge_port.as_str()));
    let mut ports = HashSet::new();
    for link in nl.links().await? {
        if ni.port(&link.name).is_some() {
            ports.insert(link.index);
        }
        if link.is_veth && !known.contains(link.name.as_str()) {
            info!("{}: removing stray interface {}", ni.name, link.name);
            nl.delete_link(&link.name).await?;
        }
    }
    let ips: HashSet<[u8; 4]> = ni.ports.iter().map(|p| p.ip.octets()).collect();
    let removed = ap.maps()?.remove_zone_strays(ni.zone(), &ports, &ips);
    if removed > 0 {
        debug!(ni = ni.name, removed, "stray map entries removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netns_ebpf_common::{IFACE_FLAG_APP_NETNS, IFACE_FLAG_CHECK_MAC};

    #[test]
    fn only_a_veths_port_says_the_app_is_in_a_netns() {
        let text = r#"
[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
[[app]]
name = "app1"
netns = "a1"
[[app.interface]]
network = "ni1"
[[app]]
name = "vm2"
[[app.interface]]
network = "ni1"
tap = "vmtap2"
"#;
        let plan = crate::plan::build(&crate::config::parse("t", text, &crate::config::AnyNetns).unwrap());
        let ni = &plan.nis[0];
        let flags = |app: &str| {
            let p = ni.ports.iter().find(|p| p.app == app).unwrap();
            crate::reconcile::port_iface_info(ni, p, 1).flags
        };
        // The fast path hands replies to a veth's other end; a tap has none.
        assert_eq!(flags("app1") & IFACE_FLAG_APP_NETNS, IFACE_FLAG_APP_NETNS);
        assert_eq!(flags("app1") & IFACE_FLAG_CHECK_MAC, IFACE_FLAG_CHECK_MAC);
        assert_eq!(flags("vm2") & IFACE_FLAG_APP_NETNS, 0);
    }
}
