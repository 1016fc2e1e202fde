//! Applies a plan to the kernel and removes it again.
//!
//! `apply` checks every precondition before it changes anything, and rolls back what it
//! built when a step fails midway, so a config is applied whole or not at all.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use netns_ebpf_common::{
    nat::{NatIface, PortmapKey, PortmapTarget, DOMAIN_AGENT},
    IfaceInfo, IfaceKey, IFACE_FLAG_SWITCH,
};
use tracing::{info, warn};

use crate::{
    datapath::{self, Maps, NiPrograms},
    netlink::{Netlink, Rule, TableRoute, UplinkAddr},
    netns::{self, Netns},
    plan::{NiPlan, Plan, BRIDGE, VETH_NET},
    state::AppliedState,
};

/// Policy generation of a freshly applied ACL.
const FIRST_POLICY_GEN: u32 = 1;
/// Rule priorities of the seed PoC: NI traffic -> its uplink's table, then the agent's
/// own traffic toward an NI -> that NI's EVE table, then (moved) `local`.
const UPLINK_RULE_PRIORITY: u32 = 1000;
const EVE_RULE_PRIORITY: u32 = 2000;

/// The kernel's view of each uplink the plan uses, read once per apply.
pub type Uplinks = HashMap<String, UplinkAddr>;

/// Everything that must hold before `apply` touches the kernel.
pub async fn preflight(plan: &Plan, agent: &Netlink) -> Result<Uplinks> {
    let mut problems = Vec::new();
    let mut uplinks = Uplinks::new();
    for u in &plan.uplinks {
        // A switch NI bridges its uplink as it is: it only has to exist.
        if plan.nis.iter().any(|n| n.is_switch() && n.uplink.as_deref() == Some(u.name.as_str())) {
            if agent.link_index(&u.name).await?.is_none() {
                problems.push(format!("uplink {} does not exist in the agent's netns", u.name));
            }
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
    for ni in &plan.nis {
        if netns::exists(&ni.name) {
            problems.push(format!(
                "netns {:?} already exists (left by an earlier run? `netns-agent down --config ...` removes it)",
                ni.name
            ));
        }
        if !ni.is_switch() && agent.link_index(&ni.agent_veth).await?.is_some() {
            problems.push(format!("interface {} already exists in the agent's netns", ni.agent_veth));
        }
        if plan.pin_dir.join(&ni.name).exists() {
            problems.push(format!("pins of {:?} already exist under {}", ni.name, plan.pin_dir.display()));
        }
        for port in &ni.ports {
            if let Some(tap) = &port.tap {
                if agent.link_index(tap).await?.is_none() {
                    problems.push(format!("tap {tap} of app {:?} does not exist in the agent's netns", port.app));
                }
                continue;
            }
            let path = netns::resolve(&port.app_netns);
            let app_ns = Netns::open(&path).with_context(|| format!("app {:?}: opening netns {}", port.app, path.display()))?;
            let app_nl = Netlink::open(&app_ns)?;
            if app_nl.link_index(&port.app_ifname).await?.is_some() {
                problems.push(format!("interface {} already exists in netns of app {:?}", port.app_ifname, port.app));
            }
        }
    }
    if !problems.is_empty() {
        bail!("cannot apply the config, nothing was changed:\n  {}", problems.join("\n  "));
    }
    Ok(uplinks)
}

/// Applies `plan`; returns the uplinks as they were read, for `refresh_uplinks`.
pub async fn apply(plan: &Plan) -> Result<Uplinks> {
    let agent_ns = Netns::current()?;
    let agent = Netlink::open(&agent_ns)?;
    let uplinks = preflight(plan, &agent).await?;
    datapath::prepare_pin_dir(&plan.pin_dir)?;
    let result = apply_all(plan, &uplinks, &agent_ns, &agent).await;
    if let Err(e) = result {
        warn!("apply failed; rolling back everything this run created");
        for ni in plan.nis.iter().rev() {
            if let Err(undo) = remove_ni(plan, ni, &agent).await {
                warn!("rollback of {}: {undo:#}", ni.name);
            }
        }
        if let Err(undo) = remove_agent_level(plan, &agent).await {
            warn!("rollback of the agent netns' state: {undo:#}");
        }
        return Err(e);
    }
    AppliedState::from_plan(plan).write(&plan.state_dir)?;
    info!("applied {} network instances", plan.nis.len());
    Ok(uplinks)
}

/// Follows uplink changes: an uplink whose address or gateway changed gets its NAT
/// config, its port maps and its routing table rewritten. Flows translated to the old
/// address end, as with the kernel's masquerade.
pub async fn refresh_uplinks(plan: &Plan, known: &mut Uplinks, agent: &Netlink) -> Result<()> {
    for (name, old) in known.iter_mut() {
        let new = match agent.uplink_addr(name).await {
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
        if new == *old {
            continue;
        }
        info!(
            "uplink {name} changed: {}/{} gateway {:?} -> {}/{} gateway {:?}",
            old.ip, old.prefix_len, old.gateway, new.ip, new.prefix_len, new.gateway
        );
        let mut maps = Maps::open(&plan.pin_dir)?;
        maps.remove_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: old.ifindex });
        maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: new.ifindex }, uplink_nat(plan, &new))?;
        let old_ip = old.ip.octets();
        maps.remove_portmaps(|k, _| k.domain == DOMAIN_AGENT && k.addr == old_ip);
        let table = plan.uplink(name).table;
        agent.flush_table(table).await?;
        apply_uplink_table(agent, table, &new).await?;
        for ni in plan.nis.iter().filter(|n| n.uplink.as_deref() == Some(name.as_str())) {
            let veth = agent.link_index(&ni.agent_veth).await?.with_context(|| format!("{} is missing", ni.agent_veth))?;
            add_ni_uplink_routes(agent, table, ni, veth).await?;
            if let Some(mut nif) = maps.nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: veth }) {
                nif.uplink_ifindex = new.ifindex;
                maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: veth }, nif)?;
            }
            set_uplink_portmaps(&mut maps, ni, &new)?;
        }
        *old = new;
    }
    Ok(())
}

/// The agent-netns port maps of `ni`: uplink address:lport -> NI veth address:lport.
fn set_uplink_portmaps(maps: &mut Maps, ni: &NiPlan, uplink: &UplinkAddr) -> Result<()> {
    for pm in &ni.portmaps {
        maps.set_portmap(
            PortmapKey { domain: DOMAIN_AGENT, addr: uplink.ip.octets(), port: pm.lport, proto: pm.proto, _pad: 0 },
            PortmapTarget { addr: ni.ni_ip.octets(), port: pm.lport, _pad: 0, mark: 0, uplink_ifindex: uplink.ifindex },
        )?;
    }
    Ok(())
}

/// The NI's routes in its uplink's table: the agent-side address and the veth /30.
async fn add_ni_uplink_routes(agent: &Netlink, table: u32, ni: &NiPlan, agent_veth_index: u32) -> Result<()> {
    let route = |dst: Ipv4Addr, prefix_len, local| TableRoute {
        table,
        dst,
        prefix_len,
        oif: agent_veth_index,
        gateway: None,
        pref_src: if local { None } else { Some(ni.agent_ip) },
        local,
    };
    agent.add_table_route(&route(ni.agent_ip, 32, true)).await?;
    agent.add_table_route(&route(ni.veth_net().network(), 30, false)).await
}

async fn apply_all(plan: &Plan, uplinks: &Uplinks, agent_ns: &Netns, agent: &Netlink) -> Result<()> {
    let mut agent_programs = apply_agent_level(plan, uplinks, agent_ns, agent).await?;
    let total = plan.nis.len();
    for (i, ni) in plan.nis.iter().enumerate() {
        info!("[{}/{}] network instance {} (zone {}, {} app ports)", i + 1, total, ni.name, ni.zone(), ni.ports.len());
        apply_ni(plan, ni, uplinks, agent_ns, agent, agent_programs.as_mut())
            .await
            .with_context(|| format!("applying network instance {}", ni.name))?;
    }
    Ok(())
}

/// The agent netns' part of NAT and routing: the uplinks' programs, NAT config and
/// routing tables, and the `local` rule moved behind the NI rules. Nothing when no NI
/// uses an uplink.
async fn apply_agent_level(plan: &Plan, uplinks: &Uplinks, agent_ns: &Netns, agent: &Netlink) -> Result<Option<NiPrograms>> {
    if !plan.nis.iter().any(|n| n.routed_uplink().is_some()) {
        return Ok(None);
    }
    // NI traffic is routed through the agent's netns to the uplinks.
    netns::write_sysctl(agent_ns, "net/ipv4/ip_forward", "1")?;
    let mut programs = NiPrograms::load_agent(&plan.pin_dir)?;
    let mut maps = Maps::open(&plan.pin_dir)?;
    for u in &plan.uplinks {
        if !plan.nis.iter().any(|n| n.routed_uplink() == Some(u.name.as_str())) {
            continue;
        }
        let addr = uplinks[&u.name];
        maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: addr.ifindex }, uplink_nat(plan, &addr))?;
        programs.attach_nat(agent_ns, &u.name)?;
        apply_uplink_table(agent, u.table, &addr).await?;
        info!(
            "uplink {}: {}/{} gateway {}, table {}",
            u.name,
            addr.ip,
            addr.prefix_len,
            addr.gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            u.table
        );
    }
    if agent.move_local_rule().await? {
        info!("moved the `local` rule to priority {}", crate::netlink::LOCAL_RULE_MOVED_PRIORITY);
    }
    Ok(Some(programs))
}

/// Source NAT of NI traffic (from the veth /24) to the uplink's address; port maps on it.
fn uplink_nat(plan: &Plan, addr: &UplinkAddr) -> NatIface {
    NatIface {
        snat_ip: addr.ip.octets(),
        snat_from: VETH_NET.octets(),
        snat_except_dst: [0; 4],
        uplink_ifindex: addr.ifindex,
        port_min: plan.nat_ports.0,
        port_max: plan.nat_ports.1,
        snat_from_len: 24,
        snat: 1,
        portmaps: 1,
        _pad: 0,
    }
}

/// The uplink's shared table: its own address and subnet, and the default route.
async fn apply_uplink_table(agent: &Netlink, table: u32, addr: &UplinkAddr) -> Result<()> {
    let subnet = Ipv4Net::new(addr.ip, addr.prefix_len)?.trunc();
    let route = |dst: Ipv4Addr, prefix_len, gateway, local| TableRoute {
        table,
        dst,
        prefix_len,
        oif: addr.ifindex,
        gateway,
        pref_src: if local { None } else { Some(addr.ip) },
        local,
    };
    agent.add_table_route(&route(addr.ip, 32, None, true)).await?;
    agent.add_table_route(&route(subnet.network(), subnet.prefix_len(), None, false)).await?;
    if let Some(gw) = addr.gateway {
        agent.add_table_route(&route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), false)).await?;
    }
    Ok(())
}

async fn apply_ni(
    plan: &Plan,
    ni: &NiPlan,
    uplinks: &Uplinks,
    agent_ns: &Netns,
    agent: &Netlink,
    agent_programs: Option<&mut NiPrograms>,
) -> Result<()> {
    let ns = netns::create_named(&ni.name)?;
    let nl = Netlink::open(&ns)?;
    nl.set_up("lo").await?;
    nl.create_bridge(BRIDGE).await?;
    if let (true, Some(uplink)) = (ni.is_switch(), &ni.uplink) {
        // A switch NI: the uplink joins the bridge; no address, no routing, no NAT here.
        agent.move_to_netns(uplink, &ns).await?;
        nl.set_master(uplink, BRIDGE).await?;
        nl.set_up(uplink).await?;
        nl.set_up(BRIDGE).await?;
        info!("  uplink {uplink} bridged into {}", ni.name);
        let programs = NiPrograms::load(&plan.pin_dir, &ni.name, ni.zone())?;
        return apply_ports(plan, ni, &ns, &nl, agent, programs).await;
    }
    netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1")?;
    nl.add_address(BRIDGE, ni.gateway, ni.subnet.prefix_len()).await?;
    nl.set_up(BRIDGE).await?;

    nl.create_veth(&ni.ni_veth, &ni.agent_veth).await?;
    nl.move_to_netns(&ni.agent_veth, agent_ns).await?;
    nl.add_address(&ni.ni_veth, ni.ni_ip, 30).await?;
    nl.set_up(&ni.ni_veth).await?;
    agent.add_address(&ni.agent_veth, ni.agent_ip, 30).await?;
    agent.set_up(&ni.agent_veth).await?;
    nl.add_default_route(ni.agent_ip).await?;
    let agent_veth_index = agent
        .link_index(&ni.agent_veth)
        .await?
        .with_context(|| format!("{} vanished after creation", ni.agent_veth))?;
    apply_eve_table(agent, ni, agent_veth_index).await?;

    let mut programs = NiPrograms::load(&plan.pin_dir, &ni.name, ni.zone())?;
    let mut maps = Maps::open(&plan.pin_dir)?;
    if let (Some(uplink_name), Some(agent_programs)) = (&ni.uplink, agent_programs) {
        let uplink = plan.uplink(uplink_name);
        let addr = uplinks[uplink_name];
        // NI side: NI subnet -> NI veth address; port maps toward the apps.
        let ni_veth_index = nl.link_index(&ni.ni_veth).await?.context("NI veth vanished")?;
        maps.set_nat_iface(IfaceKey { zone: ni.zone(), ifindex: ni_veth_index }, ni_side_nat(plan, ni))?;
        programs.attach_nat(&ns, &ni.ni_veth)?;
        // Agent side: port-mapped flows entering the NI get the agent-side address as
        // source (no collision with the NI subnet); hairpin port maps of the same uplink.
        maps.set_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: agent_veth_index }, agent_side_nat(plan, ni, &addr))?;
        agent_programs.attach_nat(agent_ns, &ni.agent_veth)?;
        set_uplink_portmaps(&mut maps, ni, &addr)?;
        for pm in &ni.portmaps {
            maps.set_portmap(
                PortmapKey { domain: ni.zone(), addr: ni.ni_ip.octets(), port: pm.lport, proto: pm.proto, _pad: 0 },
                PortmapTarget { addr: pm.app_ip.octets(), port: pm.target, _pad: 0, mark: pm.mark, uplink_ifindex: 0 },
            )?;
            info!("  port map {}:{} -> {}:{} ({})", addr.ip, pm.lport, pm.app_ip, pm.target, proto_name(pm.proto));
        }
        // The NI's traffic is routed by its uplink's table.
        add_ni_uplink_routes(agent, uplink.table, ni, agent_veth_index).await?;
        agent
            .add_rule(&Rule { priority: UPLINK_RULE_PRIORITY, table: uplink.table, iif: Some(ni.agent_veth.clone()), oif: None, from: None })
            .await?;
    }
    if let Some(vpn) = &ni.vpn {
        // charon routes the remote selectors into the tunnel (table 220, ahead of main)
        // while its CHILD_SA is up; without it they must not leave in the clear, SNATed.
        for ts in &vpn.remote_ts {
            nl.add_unreachable_route(ts.network(), ts.prefix_len()).await?;
        }
        info!("  vpn to {} ({:?}): {:?} unreachable unless the tunnel is up", vpn.remote, vpn.backend, vpn.remote_ts);
    }
    apply_ports(plan, ni, &ns, &nl, agent, programs).await
}

/// The NI's app ports: veths into the apps' netns (or the VMs' taps) on the bridge, each
/// with its config in the maps and its programs attached before it comes up.
async fn apply_ports(plan: &Plan, ni: &NiPlan, ns: &Netns, nl: &Netlink, agent: &Netlink, mut programs: NiPrograms) -> Result<()> {
    let mut maps = Maps::open(&plan.pin_dir)?;
    let mut apps_with_default_route = std::collections::HashSet::new();
    for port in &ni.ports {
        let app = match &port.tap {
            Some(tap) => {
                agent.move_to_netns(tap, ns).await?;
                None
            }
            None => {
                let app_ns = Netns::open(&netns::resolve(&port.app_netns))?;
                let app = Netlink::open(&app_ns)?;
                nl.create_veth(&port.bridge_port, &port.app_ifname).await?;
                nl.move_to_netns(&port.app_ifname, &app_ns).await?;
                Some(app)
            }
        };
        nl.set_master(&port.bridge_port, BRIDGE).await?;
        let ifindex = nl
            .link_index(&port.bridge_port)
            .await?
            .with_context(|| format!("{} vanished after creation", port.bridge_port))?;
        let info = IfaceInfo {
            app_num: port.app_num,
            policy_gen: FIRST_POLICY_GEN,
            app_ip: port.ip.octets(),
            gateway: ni.gateway.octets(),
            // A switch NI has no EVE side: nothing in it is the agent's own traffic.
            eve_ip: if ni.is_switch() { [0; 4] } else { ni.agent_ip.octets() },
            flags: if ni.is_switch() { IFACE_FLAG_SWITCH } else { 0 },
        };
        // Config first, programs second, link up last: no packet ever crosses the port
        // unjudged.
        maps.set_port(IfaceKey { zone: ni.zone(), ifindex }, info, &port.acl)?;
        maps.set_eid(ni.zone(), port.ip.octets(), port.app_num)?;
        for (index, bucket) in &port.limits {
            maps.set_limit(netns_ebpf_common::limit::LimitKey { zone: ni.zone(), ifindex, ace_index: *index as u32 }, *bucket)?;
        }
        programs.attach_port(ns, &port.bridge_port)?;
        nl.set_up(&port.bridge_port).await?;

        // A VM configures its own side.
        let Some(app) = app else {
            info!("  {} -> app {} (tap of a VM), {} ACEs", port.bridge_port, port.app, port.acl.count);
            continue;
        };
        app.set_up("lo").await?;
        app.set_mac(&port.app_ifname, port.mac).await?;
        // A DHCP app takes address and routes from the NI's DHCP server itself.
        if !port.dhcp {
            app.add_address(&port.app_ifname, port.ip, ni.subnet.prefix_len()).await?;
        }
        app.set_up(&port.app_ifname).await?;
        // An app with several interfaces gets its default route via the first one only.
        if !port.dhcp && apps_with_default_route.insert(port.app_netns.clone()) && !app.default_route_exists().await? {
            app.add_default_route(ni.gateway).await?;
        }
        info!("  {} -> app {} ({} {}), {} ACEs", port.bridge_port, port.app, port.app_ifname, port.ip, port.acl.count);
    }
    Ok(())
}

/// The table through which the agent's netns reaches the NI (sockets bound to vethN or
/// to its address), as the seed's EVE table: everything goes into the NI.
async fn apply_eve_table(agent: &Netlink, ni: &NiPlan, agent_veth_index: u32) -> Result<()> {
    let table = ni.eve_table();
    let route = |dst: Ipv4Addr, prefix_len, gateway, local| TableRoute {
        table,
        dst,
        prefix_len,
        oif: agent_veth_index,
        gateway,
        pref_src: if local { None } else { Some(ni.agent_ip) },
        local,
    };
    agent.add_table_route(&route(ni.agent_ip, 32, None, true)).await?;
    agent.add_table_route(&route(ni.veth_net().network(), 30, None, false)).await?;
    agent.add_table_route(&route(Ipv4Addr::UNSPECIFIED, 0, Some(ni.ni_ip), false)).await?;
    agent.add_rule(&Rule { priority: EVE_RULE_PRIORITY, table, iif: None, oif: None, from: Some(ni.agent_ip) }).await?;
    agent.add_rule(&Rule { priority: EVE_RULE_PRIORITY, table, iif: None, oif: Some(ni.agent_veth.clone()), from: None }).await?;
    Ok(())
}

fn ni_side_nat(plan: &Plan, ni: &NiPlan) -> NatIface {
    NatIface {
        snat_ip: ni.ni_ip.octets(),
        snat_from: ni.subnet.network().octets(),
        snat_except_dst: ni.agent_ip.octets(),
        uplink_ifindex: 0,
        port_min: plan.nat_ports.0,
        port_max: plan.nat_ports.1,
        snat_from_len: ni.subnet.prefix_len(),
        snat: 1,
        portmaps: 1,
        _pad: 0,
    }
}

fn agent_side_nat(plan: &Plan, ni: &NiPlan, uplink: &UplinkAddr) -> NatIface {
    NatIface {
        snat_ip: ni.agent_ip.octets(),
        snat_from: [0; 4],
        snat_except_dst: [0; 4],
        uplink_ifindex: uplink.ifindex,
        port_min: plan.nat_ports.0,
        port_max: plan.nat_ports.1,
        snat_from_len: 0,
        snat: 1,
        portmaps: 1,
        _pad: 0,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

/// Removes one NI: programs (by unpinning their links), map entries of its zone and those
/// of the agent netns that point at it, its rules and tables, its veths and its netns.
/// Missing pieces are skipped, so it is safe to run twice.
pub async fn remove_ni(plan: &Plan, ni: &NiPlan, agent: &Netlink) -> Result<()> {
    datapath::remove_ni_pins(&plan.pin_dir, &ni.name)?;
    datapath::remove_agent_links(&plan.pin_dir, &ni.agent_veth)?;
    if let Ok(mut maps) = Maps::open(&plan.pin_dir) {
        let flows = maps.remove_zone(ni.zone())?;
        if let Some(index) = agent.link_index(&ni.agent_veth).await? {
            maps.remove_nat_iface(IfaceKey { zone: DOMAIN_AGENT, ifindex: index });
        }
        let (ni_ip, agent_ip) = (ni.ni_ip.octets(), ni.agent_ip.octets());
        maps.remove_portmaps(|k, t| k.domain == DOMAIN_AGENT && t.addr == ni_ip);
        maps.remove_nat_entries(|k, v| {
            k.domain == DOMAIN_AGENT && [k.src, k.dst, v.addr].iter().any(|a| *a == ni_ip || *a == agent_ip)
        });
        info!("{}: removed {} conntrack entries", ni.name, flows);
    }
    agent.delete_rules(ni.eve_table(), None).await?;
    agent.flush_table(ni.eve_table()).await?;
    if let Some(uplink) = ni.routed_uplink() {
        agent.delete_rules(plan.uplink(uplink).table, Some(&ni.agent_veth)).await?;
    }
    if netns::exists(&ni.name) {
        let ns = Netns::open(&netns::resolve(&ni.name))?;
        let nl = Netlink::open(&ns)?;
        // Deleting a veth end takes its peer (in the app's or agent's netns) with it,
        // right now rather than when the kernel gets round to tearing the netns down.
        for port in &ni.ports {
            match &port.tap {
                // The hypervisor's tap goes back where it came from.
                Some(tap) if nl.link_index(tap).await?.is_some() => nl.move_to_netns(tap, &Netns::current()?).await?,
                Some(_) => {}
                None => {
                    nl.delete_link(&port.bridge_port).await?;
                }
            }
        }
        if let (true, Some(uplink)) = (ni.is_switch(), &ni.uplink) {
            // The uplink goes back to the agent's netns (its addresses did not survive
            // the move; the uplink's owner configures it again).
            if nl.link_index(uplink).await?.is_some() {
                nl.move_to_netns(uplink, &Netns::current()?).await?;
                agent.set_up(uplink).await?;
            }
        }
        nl.delete_link(&ni.ni_veth).await?;
        netns::delete_named(&ni.name)?;
    }
    agent.delete_link(&ni.agent_veth).await?;
    Ok(())
}

/// Removes the agent netns' NAT and routing state once no NI is left.
async fn remove_agent_level(plan: &Plan, agent: &Netlink) -> Result<()> {
    if datapath::any_ni_pinned(&plan.pin_dir) {
        return Ok(());
    }
    let agent_dir = plan.pin_dir.join(datapath::AGENT_PIN_SUBDIR);
    if agent_dir.exists() {
        std::fs::remove_dir_all(&agent_dir).with_context(|| format!("removing {}", agent_dir.display()))?;
    }
    if let Ok(mut maps) = Maps::open(&plan.pin_dir) {
        maps.remove_agent_domain();
    }
    for u in &plan.uplinks {
        agent.delete_rules(u.table, None).await?;
        agent.flush_table(u.table).await?;
        datapath::detach_legacy_tc(&u.name);
    }
    if agent.restore_local_rule().await? {
        info!("restored the `local` rule to priority 0");
    }
    if datapath::remove_shared_pins_if_unused(&plan.pin_dir)? {
        info!("removed shared maps under {}", plan.pin_dir.display());
    }
    Ok(())
}

pub async fn down(plan: &Plan) -> Result<()> {
    let agent = Netlink::open(&Netns::current()?)?;
    for ni in &plan.nis {
        info!("removing network instance {}", ni.name);
        if ni.vpn.is_some() {
            crate::services::vpn::kill_leftover(&plan.state_dir, &ni.name);
        }
        remove_ni(plan, ni, &agent).await.with_context(|| format!("removing {}", ni.name))?;
    }
    remove_agent_level(plan, &agent).await?;
    AppliedState::remove(&plan.state_dir)?;
    Ok(())
}
