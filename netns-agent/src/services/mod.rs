//! Per-NI services run by the agent: DHCP (a supervised dnsmasq), the DNS proxy, the
//! metadata server and, for VPN NIs, the IPsec tunnel (a supervised charon).
//!
//! Their listening sockets are created on a thread inside the NI's netns and then driven
//! from the agent's runtime; upstream sockets live in the agent's own netns.

pub mod caller;
pub mod dhcp;
pub mod dns;
pub mod metadata;
pub mod share;
pub mod supervise;
pub mod vpn;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::{
    datapath::HostLayouts,
    netlink::{Netlink, Uplinks},
    netns::{self, Netns},
    plan::{NiPlan, Plan, VpnPlan},
};

/// How long a service's accept loop pauses after a failed accept (out of file
/// descriptors, say) before it tries again, rather than spin.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Where the DNS proxies append their request log (JSON lines).
pub fn dns_log_path(state_dir: &Path) -> std::path::PathBuf {
    crate::state::StateDir::dns_log(state_dir)
}

/// The services of one NI, each with what it was started from (to tell a change).
#[derive(Default)]
struct NiServices {
    dhcp: Option<(dhcp::Dnsmasq, String)>,
    dns: Option<dns::DnsHandle>,
    metadata: Option<metadata::MetaHandle>,
    vpn: Option<(vpn::Charon, VpnPlan)>,
}

impl NiServices {
    async fn stop(self) {
        if let Some((d, _)) = self.dhcp {
            d.stop().await;
        }
        if let Some(h) = self.dns {
            h.stop();
        }
        if let Some(h) = self.metadata {
            h.stop();
        }
        if let Some((c, _)) = self.vpn {
            c.stop().await;
        }
    }
}

/// Every NI's services, brought in line with each applied plan.
pub struct Services {
    nis: BTreeMap<String, NiServices>,
    uplinks: Arc<RwLock<Uplinks>>,
    dns: Arc<dns::DnsObserver>,
    host_layouts: Arc<HostLayouts>,
}

impl Services {
    /// `uplinks` is kept current by the agent (the metadata server reports the uplink
    /// address); the DNS proxies report to `dns` and write the host sets under the
    /// applier's `host_layouts`.
    pub fn new(uplinks: Arc<RwLock<Uplinks>>, dns: Arc<dns::DnsObserver>, host_layouts: Arc<HostLayouts>) -> Services {
        Services { nis: BTreeMap::new(), uplinks, dns, host_layouts }
    }

    /// Starts, updates and stops services to match `plan`. NIs in `rebuilt` have a new
    /// netns: theirs start anew. Elsewhere the DNS proxy and the metadata server take the
    /// new app list in place, dnsmasq restarts only when its config changed (its lease
    /// file stays), charon only when the tunnel's parameters changed. Returns the errors
    /// (an NI whose services failed keeps its data path).
    pub async fn reconcile(&mut self, plan: &Plan, rebuilt: &BTreeSet<String>) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        let wanted: BTreeSet<&str> = plan.nis.iter().filter(|n| !n.is_switch()).map(|n| n.name.as_str()).collect();
        let leaving: Vec<String> = self.nis.keys().filter(|n| !wanted.contains(n.as_str()) || rebuilt.contains(*n)).cloned().collect();
        for name in leaving {
            if let Some(s) = self.nis.remove(&name) {
                s.stop().await;
            }
        }
        for ni in plan.nis.iter().filter(|n| !n.is_switch()) {
            let mut s = self.nis.remove(&ni.name).unwrap_or_default();
            if let Err(e) = self.ensure_ni(plan, ni, &mut s).await {
                errors.push(e.context(format!("the services of {}", ni.name)));
            }
            self.nis.insert(ni.name.clone(), s);
        }
        errors
    }

    async fn ensure_ni(&self, plan: &Plan, ni: &NiPlan, s: &mut NiServices) -> Result<()> {
        let ns = Netns::open(&netns::resolve(&ni.name))?;
        let dhcp_cfg = dhcp_config(plan, ni);
        let conf = dhcp::dnsmasq_conf(&dhcp_cfg);
        if s.dhcp.as_ref().is_none_or(|(_, c)| *c != conf) {
            if let Some((old, _)) = s.dhcp.take() {
                info!("{}: DHCP config changed, restarting dnsmasq", ni.name);
                old.stop().await;
            }
            s.dhcp = Some((dhcp::Dnsmasq::spawn(dhcp_cfg, Netns::open(&netns::resolve(&ni.name))?)?, conf));
        }
        let dns_cfg = dns_config(plan, ni, &ns).await?;
        match &s.dns {
            Some(h) => h.update(dns_cfg),
            None => {
                s.dns = Some(
                    dns::DnsProxy::spawn(dns_cfg, &ns, &plan.pin_dir, self.host_layouts.clone(), self.dns.clone())
                        .context("starting the DNS proxy")?,
                )
            }
        }
        let meta = metadata::NiMetaConfig {
            ni: ni.name.clone(),
            subnet: ni.subnet,
            gateway: ni.gateway,
            apps: ni
                .ports
                .iter()
                .map(|p| {
                    (
                        (p.app_num, p.ip),
                        metadata::AppMeta { app: p.app.clone(), app_num: p.app_num, ip: p.ip, mac: p.mac, user_data: p.user_data.clone() },
                    )
                })
                .collect(),
            uplink: ni.uplink.clone(),
            uplinks: self.uplinks.clone(),
        };
        match &s.metadata {
            Some(h) => h.update(meta),
            None => s.metadata = Some(metadata::spawn(meta, &ns).context("starting the metadata server")?),
        }
        if s.vpn.as_ref().map(|(_, v)| v) != ni.vpn.as_ref() {
            if let Some((old, _)) = s.vpn.take() {
                info!("{}: tunnel parameters changed, restarting charon", ni.name);
                old.stop().await;
            }
            if let Some(v) = &ni.vpn {
                s.vpn = Some((vpn::Charon::spawn(&ni.name, v, &plan.state_dir, Netns::open(&netns::resolve(&ni.name))?)?, v.clone()));
            }
        }
        Ok(())
    }

    /// Stops every child process and waits until they are reaped.
    pub async fn stop(self) {
        for (_, s) in self.nis {
            s.stop().await;
        }
    }
}

fn dhcp_config(plan: &Plan, ni: &NiPlan) -> dhcp::NiDhcpConfig {
    dhcp::NiDhcpConfig {
        ni: ni.name.clone(),
        subnet: ni.subnet,
        gateway: ni.gateway,
        range: ni.dhcp_range,
        leases: ni.ports.iter().map(|p| dhcp::Lease { mac: p.mac, ip: p.ip, name: p.app.clone() }).collect(),
        state_dir: plan.state_dir.clone(),
    }
}

async fn dns_config(plan: &Plan, ni: &NiPlan, ns: &Netns) -> Result<dns::NiDnsConfig> {
    let nl = Netlink::open(ns)?;
    let mut apps = HashMap::new();
    let mut names = HashMap::new();
    for port in &ni.ports {
        // A port that failed to apply has no interface: its app gets no answers.
        let Some(ifindex) = nl.link_index(&port.bridge_port).await? else { continue };
        apps.insert(port.ip, dns::AppView { app: port.app.clone(), app_num: port.app_num, ifindex });
        names.insert(port.app.to_ascii_lowercase(), port.ip);
    }
    let upstreams = match &ni.uplink {
        None => Vec::new(),
        Some(u) => {
            let configured = &plan.uplink(u)?.dns;
            if configured.is_empty() {
                dns::system_resolvers()
            } else {
                configured.iter().map(|ip| std::net::SocketAddrV4::new(*ip, 53)).collect()
            }
        }
    };
    Ok(dns::NiDnsConfig {
        ni: ni.name.clone(),
        zone: ni.zone(),
        gateway: ni.gateway,
        apps,
        names,
        upstreams,
        host_grace: plan.dns_host_grace,
    })
}

/// Stops what an agent that did not stop cleanly (killed) left running: dnsmasq
/// instances started from this state dir's configs and the charons of `vpn_nis`.
/// Their replacements start right after (leases and lease files stay).
pub fn reap_leftovers(state_dir: &Path, vpn_nis: &[String]) {
    let mut killed = Vec::new();
    let marker = format!("--conf-file={}", crate::state::StateDir::dnsmasq_prefix(state_dir).display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with("dnsmasq")) && args.iter().any(|a| a.starts_with(&marker));
        if is_ours && pid as u32 != std::process::id() {
            info!("stopping dnsmasq (pid {pid}) left by an earlier agent");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            killed.push(pid);
        }
    }
    killed.extend(vpn_nis.iter().filter_map(|ni| vpn::kill_leftover(state_dir, ni)));
    // A killed process holds its NI's netns until its exit gets that far (a zombie holds
    // none): what comes next (`down` deleting the netns, or a fresh start) needs it gone.
    let deadline = std::time::Instant::now() + LEFTOVER_EXIT_WAIT;
    while killed.iter().any(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok()) {
        if std::time::Instant::now() > deadline {
            warn!("processes {killed:?} were killed and still hold their netns after {LEFTOVER_EXIT_WAIT:?}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How long `reap_leftovers` waits for the processes it killed to leave their netns.
const LEFTOVER_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
