//! Per-NI services run by the agent: DHCP (a supervised dnsmasq), the DNS proxy, the
//! metadata server and, for VPN NIs, the IPsec tunnel (a supervised charon).
//!
//! Their listening sockets are created on a thread inside the NI's netns and then driven
//! from the agent's runtime; upstream sockets live in the agent's own netns.

pub mod dhcp;
pub mod dns;
pub mod metadata;
pub mod vpn;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};

use crate::{
    netlink::Netlink,
    netns::{self, Netns},
    plan::Plan,
    reconcile::Uplinks,
};

/// Where the DNS proxies append their request log (JSON lines).
pub fn dns_log_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("dns.log")
}

/// The running services that need stopping (the others end with the runtime).
pub struct Services {
    dhcp: Vec<dhcp::Dnsmasq>,
    vpn: Vec<vpn::Charon>,
}

impl Services {
    /// Stops the child processes and waits until they are reaped.
    pub async fn stop(self) {
        for d in self.dhcp {
            d.stop().await;
        }
        for c in self.vpn {
            c.stop().await;
        }
    }
}

/// Starts every NI's services on the current runtime. `uplinks` is kept current by the
/// agent (the metadata server reports the uplink address).
pub async fn start(plan: &Plan, uplinks: Arc<RwLock<Uplinks>>) -> Result<Services> {
    let mut services = Services { dhcp: Vec::new(), vpn: Vec::new() };
    // A switch NI's apps use the servers behind its uplink.
    for ni in plan.nis.iter().filter(|n| !n.is_switch()) {
        let leases = ni
            .ports
            .iter()
            .map(|p| dhcp::Lease { mac: p.mac, ip: p.ip, name: p.app.clone() })
            .collect();
        let dhcp_cfg = dhcp::NiDhcpConfig {
            ni: ni.name.clone(),
            subnet: ni.subnet,
            gateway: ni.gateway,
            range: ni.dhcp_range,
            leases,
            state_dir: plan.state_dir.clone(),
        };
        services.dhcp.push(dhcp::Dnsmasq::spawn(dhcp_cfg, Netns::open(&netns::resolve(&ni.name))?)?);
        let ns = Netns::open(&netns::resolve(&ni.name))?;
        let nl = Netlink::open(&ns)?;
        let mut apps = HashMap::new();
        let mut names = HashMap::new();
        for port in &ni.ports {
            let ifindex = nl.link_index(&port.bridge_port).await?.with_context(|| format!("{} is missing", port.bridge_port))?;
            apps.insert(port.ip, dns::AppView { app: port.app.clone(), ifindex, hosts: port.hosts.clone() });
            names.insert(port.app.to_ascii_lowercase(), port.ip);
        }
        let upstreams = match &ni.uplink {
            None => Vec::new(),
            Some(u) => {
                let configured = &plan.uplink(u).dns;
                if configured.is_empty() {
                    dns::system_resolvers()
                } else {
                    configured.iter().map(|ip| std::net::SocketAddrV4::new(*ip, 53)).collect()
                }
            }
        };
        let cfg = dns::NiDnsConfig {
            ni: ni.name.clone(),
            zone: ni.zone(),
            gateway: ni.gateway,
            apps,
            names,
            upstreams,
            log_path: dns_log_path(&plan.state_dir),
            host_grace: plan.dns_host_grace,
        };
        dns::DnsProxy::spawn(cfg, &ns, &plan.pin_dir).with_context(|| format!("starting the DNS proxy of {}", ni.name))?;
        let meta = metadata::NiMetaConfig {
            ni: ni.name.clone(),
            gateway: ni.gateway,
            apps: ni
                .ports
                .iter()
                .map(|p| (p.ip, metadata::AppMeta { app: p.app.clone(), user_data: p.user_data.clone() }))
                .collect(),
            uplink: ni.uplink.clone(),
            uplinks: uplinks.clone(),
        };
        metadata::spawn(meta, &ns).with_context(|| format!("starting the metadata server of {}", ni.name))?;
        if let Some(v) = &ni.vpn {
            services.vpn.push(vpn::Charon::spawn(&ni.name, v, &plan.state_dir, Netns::open(&netns::resolve(&ni.name))?)?);
        }
    }
    Ok(services)
}
