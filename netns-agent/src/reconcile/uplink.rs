//! The agent netns' level: the uplinks' NAT programs and config, their routing tables,
//! the NIs' EVE tables and the `local` rule moved behind the NI rules.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use netns_ebpf_common::{
    nat::{NatIface, DOMAIN_AGENT},
    IfaceKey,
};
use tracing::{info, warn};

use super::Applier;
use crate::{
    datapath::{self, Maps},
    netlink::{Netlink, Rule, TableRoute, UplinkAddr, Uplinks},
    netns,
    plan::{NiPlan, Plan, UplinkPlan, VETH_NET, VETH_PREFIX},
};

/// Rule priorities of the seed PoC: NI traffic -> its uplink's table, then the agent's
/// own traffic toward an NI -> that NI's EVE table, then (moved) `local`.
pub const UPLINK_RULE_PRIORITY: u32 = 1000;
const EVE_RULE_PRIORITY: u32 = 2000;

/// Reads every uplink the plan uses; what is missing goes into `problems`.
pub async fn preflight(plan: &Plan, agent: &Netlink, problems: &mut Vec<String>) -> Result<Uplinks> {
    let mut uplinks = Uplinks::new();
    for u in &plan.uplinks {
        let switched = plan.nis.iter().find(|n| n.is_switch() && n.uplink.as_deref() == Some(u.name.as_str()));
        if let Some(ni) = switched {
            // A switch NI bridges its uplink as it is: it only has to exist (here, or
            // already in that NI's netns).
            let bridged = netns::exists(&ni.name)
                && match netns::Netns::open(&netns::resolve(&ni.name)).and_then(|ns| Netlink::open(&ns)) {
                    Ok(nl) => nl.link_index(&u.name).await?.is_some(),
                    Err(_) => false,
                };
            if !bridged && agent.link_index(&u.name).await?.is_none() {
                problems.push(format!("uplink {} does not exist in the agent's netns", u.name));
            }
            continue;
        }
        if !plan.nis.iter().any(|n| n.routed_uplink() == Some(u.name.as_str())) {
            continue;
        }
        match agent.uplink_addr(&u.name).await {
            Ok(Some(addr)) => {
                uplinks.insert(u.name.clone(), addr);
            }
            Ok(None) => problems.push(format!("uplink {} does not exist in the agent's netns", u.name)),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    Ok(uplinks)
}

fn routed(plan: &Plan) -> impl Iterator<Item = &UplinkPlan> {
    plan.uplinks.iter().filter(|u| plan.nis.iter().any(|n| n.routed_uplink() == Some(u.name.as_str())))
}

/// The uplinks' programs, NAT config and tables, forwarding, the `local` rule. Nothing
/// when no NI uses an uplink.
pub async fn ensure_agent_level(ap: &mut Applier, plan: &Plan) -> Result<()> {
    let routed: Vec<UplinkPlan> = routed(plan).cloned().collect();
    if routed.is_empty() {
        return Ok(());
    }
    // NI traffic is routed through the agent's netns to the uplinks.
    netns::write_sysctl(&ap.agent_ns, "net/ipv4/ip_forward", "1")?;
    ap.programs.get(&ap.pin_dir)?;
    for u in &routed {
        let addr = ap.uplinks[&u.name];
        let maps = ap.maps()?;
        maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: addr.ifindex }, uplink_nat(plan.nat_ports, &addr))?;
        maps.add_device_addr(addr.ip.octets())?;
        let fresh = !ap.record.uplinks.iter().any(|r| r.name == u.name);
        ap.programs.get(&ap.pin_dir)?.attach_nat(&ap.agent_ns, datapath::AGENT_PIN_SUBDIR, &u.name)?;
        apply_uplink_table(&ap.agent, u.table, &addr).await?;
        if fresh {
            ap.record.uplinks.push(u.clone());
        }
        info!(
            "uplink {}: {}/{} gateway {}, table {}",
            u.name,
            addr.ip,
            addr.prefix_len,
            addr.gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            u.table
        );
    }
    if ap.agent.move_local_rule().await? {
        info!("moved the `local` rule to priority {}", crate::netlink::LOCAL_RULE_MOVED_PRIORITY);
    }
    Ok(())
}

/// Uplinks on record that no NI of `plan` routes through any more: their NAT config,
/// port maps, programs, table and rules go; with none left, the whole agent level.
pub async fn remove_unused(ap: &mut Applier, plan: &Plan) -> Result<()> {
    let wanted: Vec<&str> = routed(plan).map(|u| u.name.as_str()).collect();
    let leaving: Vec<UplinkPlan> = ap.record.uplinks.iter().filter(|u| !wanted.contains(&u.name.as_str())).cloned().collect();
    if wanted.is_empty() && !leaving.is_empty() {
        super::all_or_nothing(remove_agent_level(ap).await)?;
        return Ok(());
    }
    for u in leaving {
        info!("uplink {} is no longer used", u.name);
        remove_uplink(ap, &u).await?;
        ap.record.uplinks.retain(|r| r.name != u.name);
    }
    Ok(())
}

async fn remove_uplink(ap: &mut Applier, u: &UplinkPlan) -> Result<()> {
    if let Some(addr) = ap.agent.uplink_addr(&u.name).await.ok().flatten() {
        if let Ok(maps) = ap.maps() {
            maps.remove_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: addr.ifindex });
            let ip = addr.ip.octets();
            maps.remove_device_addr(ip);
            maps.remove_portmaps(|k, _| k.domain == DOMAIN_AGENT && k.addr == ip);
        }
    }
    datapath::detach_nat(&ap.agent_ns, &ap.pin_dir, datapath::AGENT_PIN_SUBDIR, &u.name)?;
    ap.agent.delete_rules(u.table, None).await?;
    ap.agent.flush_table(u.table).await?;
    Ok(())
}

/// Removes the agent netns' NAT and routing state (once no NI uses an uplink). (The
/// shared maps go with the last NI: `Applier::release_shared_maps`, from `apply` and
/// `down`.)
pub async fn remove_agent_level(ap: &mut Applier) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for u in ap.record.uplinks.clone() {
        if let Err(e) = remove_uplink(ap, &u).await {
            errors.push(e.context(format!("uplink {}", u.name)));
        }
    }
    ap.record.uplinks.clear();
    let agent_dir = ap.pin_dir.join(datapath::AGENT_PIN_SUBDIR);
    if agent_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&agent_dir) {
            errors.push(anyhow::Error::new(e).context(format!("removing {}", agent_dir.display())));
        }
    }
    if let Ok(maps) = ap.maps() {
        maps.remove_agent_domain();
    }
    match ap.agent.restore_local_rule().await {
        Ok(true) => info!("restored the `local` rule to priority 0"),
        Ok(false) => {}
        Err(e) => errors.push(e),
    }
    errors
}

/// Follows uplink changes: an uplink whose address, gateway or interface changed gets its
/// NAT config, its port maps and its routing table rewritten, and a new interface its
/// programs. Flows translated to the old address end, as with the kernel's masquerade.
pub async fn refresh(ap: &mut Applier, plan: &Plan) -> Result<()> {
    let names: Vec<String> = ap.uplinks.keys().cloned().collect();
    for name in names {
        let old = ap.uplinks[&name];
        let new = match ap.agent.uplink_addr(&name).await {
            Ok(Some(new)) => new,
            Ok(None) => {
                warn!("uplink {name} is gone; keeping its last configuration");
                continue;
            }
            Err(e) => {
                warn!("uplink {name}: {e:#}; keeping its last configuration");
                continue;
            }
        };
        if new == old {
            continue;
        }
        info!(
            "uplink {name} changed: {}/{} gateway {:?} -> {}/{} gateway {:?}",
            old.ip, old.prefix_len, old.gateway, new.ip, new.prefix_len, new.gateway
        );
        let maps = ap.maps()?;
        maps.remove_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: old.ifindex });
        maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: new.ifindex }, uplink_nat(plan.nat_ports, &new))?;
        let old_ip = old.ip.octets();
        maps.remove_portmaps(|k, _| k.domain == DOMAIN_AGENT && k.addr == old_ip);
        maps.remove_device_addr(old_ip);
        maps.add_device_addr(new.ip.octets())?;
        // An uplink made anew under its name (a modem plugged in again, a bond or VLAN
        // rebuilt) is another interface: the programs went with the old one.
        if new.ifindex != old.ifindex && ap.record.uplinks.iter().any(|r| r.name == name) {
            ap.programs.get(&ap.pin_dir)?.attach_nat(&ap.agent_ns, datapath::AGENT_PIN_SUBDIR, &name)?;
            info!("uplink {name} is a new interface (ifindex {} -> {}): NAT programs attached", old.ifindex, new.ifindex);
        }
        let table = plan.uplink(&name)?.table;
        ap.agent.flush_table(table).await?;
        apply_uplink_table(&ap.agent, table, &new).await?;
        for ni in plan.nis.iter().filter(|n| n.routed_uplink() == Some(name.as_str())) {
            let veth = ap.agent.link_index(&ni.agent_veth).await?.with_context(|| format!("{} is missing", ni.agent_veth))?;
            add_ni_uplink_routes(&ap.agent, table, ni, veth).await?;
            let maps = ap.maps()?;
            if let Some(mut nif) = maps.nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: veth }) {
                nif.uplink_ifindex = new.ifindex;
                maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: veth }, nif)?;
            }
            set_uplink_portmaps(maps, ni, &new)?;
        }
        ap.uplinks.insert(name, new);
    }
    Ok(())
}

/// The agent-netns port maps of `ni`: uplink address:lport -> NI veth address:lport.
pub fn set_uplink_portmaps(maps: &mut Maps, ni: &NiPlan, uplink: &UplinkAddr) -> Result<()> {
    use netns_ebpf_common::nat::{PortmapKey, PortmapTarget};
    for pm in &ni.portmaps {
        maps.set_portmap(
            PortmapKey { domain: DOMAIN_AGENT, addr: uplink.ip.octets(), port: pm.lport, proto: pm.proto, _pad: 0 },
            PortmapTarget { addr: ni.ni_ip.octets(), port: pm.lport, _pad: 0, mark: 0, uplink_ifindex: uplink.ifindex },
        )?;
    }
    Ok(())
}

/// Routes of one table through one interface, as (destination, prefix, gateway, local).
async fn add_routes(agent: &Netlink, table: u32, oif: u32, src: Ipv4Addr, routes: &[(Ipv4Addr, u8, Option<Ipv4Addr>, bool)]) -> Result<()> {
    for &(dst, prefix_len, gateway, local) in routes {
        let route = TableRoute { table, dst, prefix_len, oif, gateway, pref_src: if local { None } else { Some(src) }, local };
        agent.add_table_route(&route).await?;
    }
    Ok(())
}

/// The uplink's shared table: its own address and subnet, and the default route.
async fn apply_uplink_table(agent: &Netlink, table: u32, addr: &UplinkAddr) -> Result<()> {
    let subnet = Ipv4Net::new(addr.ip, addr.prefix_len)?.trunc();
    let mut routes = vec![(addr.ip, 32, None, true), (subnet.network(), subnet.prefix_len(), None, false)];
    if let Some(gw) = addr.gateway {
        routes.push((Ipv4Addr::UNSPECIFIED, 0, Some(gw), false));
    }
    add_routes(agent, table, addr.ifindex, addr.ip, &routes).await
}

/// The NI's routes in its uplink's table: the agent-side address and the veth /30.
pub async fn add_ni_uplink_routes(agent: &Netlink, table: u32, ni: &NiPlan, agent_veth_index: u32) -> Result<()> {
    let routes = [(ni.agent_ip, 32, None, true), (ni.veth_net().network(), VETH_PREFIX, None, false)];
    add_routes(agent, table, agent_veth_index, ni.agent_ip, &routes).await
}

/// The table through which the agent's netns reaches the NI (sockets bound to vethN or
/// to its address), as the seed's EVE table: everything goes into the NI.
pub async fn apply_eve_table(agent: &Netlink, ni: &NiPlan, agent_veth_index: u32) -> Result<()> {
    let table = ni.eve_table();
    let routes = [
        (ni.agent_ip, 32, None, true),
        (ni.veth_net().network(), VETH_PREFIX, None, false),
        (Ipv4Addr::UNSPECIFIED, 0, Some(ni.ni_ip), false),
    ];
    add_routes(agent, table, agent_veth_index, ni.agent_ip, &routes).await?;
    agent.add_rule(&Rule { priority: EVE_RULE_PRIORITY, table, iif: None, oif: None, from: Some(ni.agent_ip) }).await?;
    agent.add_rule(&Rule { priority: EVE_RULE_PRIORITY, table, iif: None, oif: Some(ni.agent_veth.clone()), from: None }).await?;
    Ok(())
}

/// Source NAT of NI traffic (from the veth /24) to the uplink's address; port maps on it.
fn uplink_nat(ports: (u16, u16), addr: &UplinkAddr) -> NatIface {
    NatIface::new(addr.ip.octets(), (VETH_NET.octets(), 24), [0; 4], addr.ifindex, ports)
}

/// The NI side: NI subnet -> NI veth address, except toward the agent-side address.
pub fn ni_side_nat(ports: (u16, u16), ni: &NiPlan) -> NatIface {
    NatIface::new(ni.ni_ip.octets(), (ni.subnet.network().octets(), ni.subnet.prefix_len()), ni.agent_ip.octets(), 0, ports)
}

/// The agent side: port-mapped flows entering the NI get the agent-side address.
pub fn agent_side_nat(ports: (u16, u16), ni: &NiPlan, uplink: &UplinkAddr) -> NatIface {
    NatIface::new(ni.agent_ip.octets(), ([0; 4], 0), [0; 4], uplink.ifindex, ports)
}
