//! Applies a plan to the kernel and removes it again.
//!
//! `apply` checks every precondition before it changes anything, and rolls back what it
//! built when a step fails midway, so a config is applied whole or not at all.

use anyhow::{bail, Context, Result};
use netns_ebpf_common::{IfaceInfo, IfaceKey};
use tracing::{info, warn};

use crate::{
    datapath::{self, Maps, NiPrograms},
    netlink::Netlink,
    netns::{self, Netns},
    plan::{NiPlan, Plan, BRIDGE},
    state::AppliedState,
};

/// Policy generation of a freshly applied ACL.
const FIRST_POLICY_GEN: u32 = 1;
/// Metric base of the agent-side routes to NI subnets: overlapping subnets of different
/// NIs get distinct metrics, and a socket bound to `vethN` picks that NI's route.
const NI_ROUTE_METRIC_BASE: u32 = 1000;

/// Everything that must hold before `apply` touches the kernel.
pub async fn preflight(plan: &Plan, agent: &Netlink) -> Result<()> {
    let mut problems = Vec::new();
    for ni in &plan.nis {
        if netns::exists(&ni.name) {
            problems.push(format!(
                "netns {:?} already exists (left by an earlier run? `netns-agent down --config ...` removes it)",
                ni.name
            ));
        }
        if agent.link_index(&ni.agent_veth).await?.is_some() {
            problems.push(format!("interface {} already exists in the agent's netns", ni.agent_veth));
        }
        if plan.pin_dir.join(&ni.name).exists() {
            problems.push(format!("pins of {:?} already exist under {}", ni.name, plan.pin_dir.display()));
        }
        for port in &ni.ports {
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
    Ok(())
}

pub async fn apply(plan: &Plan) -> Result<()> {
    let agent_ns = Netns::current()?;
    let agent = Netlink::open(&agent_ns)?;
    preflight(plan, &agent).await?;
    datapath::prepare_pin_dir(&plan.pin_dir)?;
    let total = plan.nis.len();
    for (i, ni) in plan.nis.iter().enumerate() {
        info!("[{}/{}] network instance {} (zone {}, {} app ports)", i + 1, total, ni.name, ni.zone(), ni.ports.len());
        if let Err(e) = apply_ni(plan, ni, &agent_ns, &agent).await {
            warn!("applying {} failed; rolling back everything this run created", ni.name);
            for done in plan.nis[..=i].iter().rev() {
                if let Err(undo) = remove_ni(plan, done, &agent).await {
                    warn!("rollback of {}: {undo:#}", done.name);
                }
            }
            datapath::remove_shared_pins_if_unused(&plan.pin_dir).ok();
            return Err(e.context(format!("applying network instance {}", ni.name)));
        }
    }
    AppliedState::from_plan(plan).write(&plan.state_dir)?;
    info!("applied {} network instances", total);
    Ok(())
}

async fn apply_ni(plan: &Plan, ni: &NiPlan, agent_ns: &Netns, agent: &Netlink) -> Result<()> {
    let ns = netns::create_named(&ni.name)?;
    let nl = Netlink::open(&ns)?;
    nl.set_up("lo").await?;
    netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1")?;

    nl.create_bridge(BRIDGE).await?;
    nl.add_address(BRIDGE, ni.gateway, ni.subnet.prefix_len()).await?;
    nl.set_up(BRIDGE).await?;

    nl.create_veth(&ni.ni_veth, &ni.agent_veth).await?;
    nl.move_to_netns(&ni.agent_veth, agent_ns).await?;
    nl.add_address(&ni.ni_veth, ni.ni_ip, 30).await?;
    nl.set_up(&ni.ni_veth).await?;
    agent.add_address(&ni.agent_veth, ni.agent_ip, 30).await?;
    agent.set_up(&ni.agent_veth).await?;
    nl.add_default_route(ni.agent_ip).await?;
    agent
        .add_route(ni.subnet.network(), ni.subnet.prefix_len(), ni.ni_ip, NI_ROUTE_METRIC_BASE + ni.index)
        .await?;

    let mut programs = NiPrograms::load(&plan.pin_dir, &ni.name, ni.zone())?;
    let mut maps = Maps::open(&plan.pin_dir)?;
    let mut apps_with_default_route = std::collections::HashSet::new();
    for port in &ni.ports {
        let app_ns = Netns::open(&netns::resolve(&port.app_netns))?;
        let app = Netlink::open(&app_ns)?;
        nl.create_veth(&port.bridge_port, &port.app_ifname).await?;
        nl.move_to_netns(&port.app_ifname, &app_ns).await?;
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
            eve_ip: ni.agent_ip.octets(),
            _pad: 0,
        };
        // Config first, programs second, link up last: no packet ever crosses the port
        // unjudged.
        maps.set_port(IfaceKey { zone: ni.zone(), ifindex }, info, &port.acl)?;
        programs.attach_port(&ns, &port.bridge_port)?;
        nl.set_up(&port.bridge_port).await?;

        app.set_up("lo").await?;
        app.add_address(&port.app_ifname, port.ip, ni.subnet.prefix_len()).await?;
        app.set_up(&port.app_ifname).await?;
        // An app with several interfaces gets its default route via the first one only.
        if apps_with_default_route.insert(port.app_netns.clone()) && !app.default_route_exists().await? {
            app.add_default_route(ni.gateway).await?;
        }
        info!("  {} -> app {} ({} {}), {} ACEs", port.bridge_port, port.app, port.app_ifname, port.ip, port.acl.count);
    }
    Ok(())
}

/// Removes one NI: programs (by unpinning their links), map entries of its zone, its
/// veths and its netns. Missing pieces are skipped, so it is safe to run twice.
pub async fn remove_ni(plan: &Plan, ni: &NiPlan, agent: &Netlink) -> Result<()> {
    datapath::remove_ni_pins(&plan.pin_dir, &ni.name)?;
    if let Ok(mut maps) = Maps::open(&plan.pin_dir) {
        let flows = maps.remove_zone(ni.zone())?;
        info!("{}: removed {} conntrack entries", ni.name, flows);
    }
    if netns::exists(&ni.name) {
        let ns = Netns::open(&netns::resolve(&ni.name))?;
        let nl = Netlink::open(&ns)?;
        // Deleting a veth end takes its peer (in the app's or agent's netns) with it,
        // right now rather than when the kernel gets round to tearing the netns down.
        for port in &ni.ports {
            nl.delete_link(&port.bridge_port).await?;
        }
        nl.delete_link(&ni.ni_veth).await?;
        netns::delete_named(&ni.name)?;
    }
    agent.delete_link(&ni.agent_veth).await?;
    Ok(())
}

pub async fn down(plan: &Plan) -> Result<()> {
    let agent = Netlink::open(&Netns::current()?)?;
    for ni in &plan.nis {
        info!("removing network instance {}", ni.name);
        remove_ni(plan, ni, &agent).await.with_context(|| format!("removing {}", ni.name))?;
    }
    if datapath::remove_shared_pins_if_unused(&plan.pin_dir)? {
        info!("removed shared maps under {}", plan.pin_dir.display());
    }
    AppliedState::remove(&plan.state_dir)?;
    Ok(())
}
