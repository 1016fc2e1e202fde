//! rtnetlink requests against one network namespace.
//!
//! The netlink socket is created on a thread inside the target namespace and then driven
//! from the agent's tokio runtime: a socket stays bound to the namespace it was made in.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags},
        route::{RouteAttribute, RouteMessage, RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
        AddressFamily,
    },
    Handle, IpVersion, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tracing::debug;

use crate::netns::{self, Netns};

/// An uplink as the kernel has it configured right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAddr {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The next hop of the main table's default route through this interface.
    pub gateway: Option<Ipv4Addr>,
}

/// A link as `links` lists it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub is_veth: bool,
}

/// The kernel's view of each uplink the plan uses, by name.
pub type Uplinks = std::collections::HashMap<String, UplinkAddr>;

/// A route in a given table (what `ip route add ... table T` says).
#[derive(Debug, Clone, Copy)]
pub struct TableRoute {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
    pub pref_src: Option<Ipv4Addr>,
    /// A `local` route: deliver to this host.
    pub local: bool,
}

/// A policy rule (what `ip rule add pref P [iif I] [oif O] [from S] lookup T` says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub table: u32,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub from: Option<Ipv4Addr>,
}

const RT_TABLE_LOCAL: u32 = 255;
/// The interface group of links about to be deleted together (`delete_links`); the
/// kernel's default group is 0.
const DOOMED_GROUP: u32 = 0x6e65_6270;
/// Where the `local` rule moves to, so NI traffic toward another uplink's address is
/// routed out of the box first (the seed PoC's layout).
pub const LOCAL_RULE_MOVED_PRIORITY: u32 = 10000;

pub struct Netlink {
    handle: Handle,
    ns: PathBuf,
}

impl Netlink {
    /// Opens a netlink connection inside `ns`. Needs a tokio runtime (the connection task
    /// is spawned on it).
    pub fn open(ns: &Netns) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = netns::run_in(ns, || {
            let _guard = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
            Ok((connection, handle))
        })?;
        runtime.spawn(connection);
        Ok(Netlink { handle, ns: ns.path().to_path_buf() })
    }

    fn ctx(&self, what: impl std::fmt::Display) -> String {
        format!("{what} (netns {})", self.ns.display())
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(e).with_context(|| self.ctx(format!("looking up link {name}"))),
        }
    }

    /// The index and the MAC of link `name` (one request).
    pub async fn link_index_and_mac(&self, name: &str) -> Result<(u32, [u8; 6])> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        let msg = links.try_next().await.with_context(|| self.ctx(format!("looking up link {name}")))?;
        let msg = msg.ok_or_else(|| anyhow!(self.ctx(format!("no interface {name}"))))?;
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| anyhow!(self.ctx(format!("{name} has no Ethernet address"))))?;
        Ok((msg.header.index, mac))
    }

    async fn index_of(&self, name: &str) -> Result<u32> {
        self.link_index(name).await?.ok_or_else(|| anyhow!(self.ctx(format!("no interface {name}"))))
    }

    /// A bridge, with MAC `mac` when given: set, so the kernel never replaces it by a
    /// port's (None: the kernel picks the lowest of its ports').
    pub async fn create_bridge(&self, name: &str, mac: Option<[u8; 6]>) -> Result<u32> {
        let mut link = LinkBridge::new(name);
        if let Some(mac) = mac {
            link = link.address(mac.to_vec());
        }
        self.handle
            .link()
            // No IGMP snooping from the start (`set_snooping_off`): turning it off later
            // sends the apps a report of leaving the all-snoopers group.
            .add(link.set_info_data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(0)])).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("creating bridge {name}")))?;
        debug!(ns = %self.ns.display(), name, "bridge created");
        self.index_of(name).await
    }

    /// Creates a veth pair, one end in this namespace and its peer in `peer_ns`, each end
    /// with the ifindex given (`None`: the kernel's pick). The peer is made where it
    /// belongs rather than moved there: a move waits for an RCU grace period.
    pub async fn create_veth(
        &self,
        (name, index): (&str, Option<u32>),
        (peer, peer_index): (&str, Option<u32>),
        peer_ns: &Netns,
    ) -> Result<()> {
        let mut peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns.as_fd().as_raw_fd()).build();
        peer_msg.header.index = peer_index.unwrap_or(0);
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        msg.header.index = index.unwrap_or(0);
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| self.ctx(format!("creating veth {name} (ifindex {index:?}) <-> {peer} (ifindex {peer_index:?})")))?;
        debug!(ns = %self.ns.display(), name, peer, ?index, ?peer_index, "veth created");
        Ok(())
    }

    pub async fn move_to_netns(&self, name: &str, target: &Netns) -> Result<()> {
        let index = self.index_of(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(target.as_fd().as_raw_fd()).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("moving {name} to netns {}", target.path().display())))?;
        debug!(ns = %self.ns.display(), name, to = %target.path().display(), "link moved");
        Ok(())
    }

    /// Turns multicast off on `name`: it joins no groups, so it sends no IGMP reports.
    pub async fn set_multicast_off(&self, name: &str) -> Result<()> {
        let index = self.index_of(name).await?;
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.header.flags.remove(LinkFlags::Multicast);
        msg.header.change_mask.insert(LinkFlags::Multicast);
        self.handle.link().set(msg).execute().await.with_context(|| self.ctx(format!("turning multicast off on {name}")))?;
        Ok(())
    }

    /// Turns IGMP snooping off on bridge `name` (a bridge made before it was made without):
    /// a snooping bridge joins the all-snoopers group (224.0.0.106) and sends every port
    /// its reports, whatever the bridge's own multicast flag says. Already off: no change.
    pub async fn set_snooping_off(&self, name: &str) -> Result<()> {
        let index = self.index_of(name).await?;
        let msg = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(index)
            .set_info_data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(0)]))
            .build();
        // RTM_NEWLINK on the existing link (its bridge attributes): `set` cannot.
        self.handle.link().set_port(msg).execute().await.with_context(|| self.ctx(format!("turning IGMP snooping off on {name}")))
    }

    pub async fn set_up(&self, name: &str) -> Result<()> {
        let index = self.index_of(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("setting {name} up")))
    }

    /// Gives `name` the MAC `mac` unless it has it; returns the MAC it had when it was
    /// another. (Setting a link's MAC, even to the one it has, empties the neighbour
    /// cache of its netns for it: the apps' ARP caches, at every apply.)
    pub async fn ensure_mac(&self, name: &str, mac: [u8; 6]) -> Result<Option<[u8; 6]>> {
        let (index, had) = self.link_index_and_mac(name).await?;
        if had == mac {
            return Ok(None);
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("setting the MAC of {name}")))?;
        Ok(Some(had))
    }

    pub async fn set_master(&self, name: &str, bridge: &str) -> Result<()> {
        let index = self.index_of(name).await?;
        let master = self.index_of(bridge).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("adding {name} to bridge {bridge}")))
    }

    /// Adds an address to `name`; one that is there already is fine.
    pub async fn add_address(&self, name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let index = self.index_of(name).await?;
        match self.handle.address().add(index, addr.into(), prefix_len).execute().await {
            Ok(()) => debug!(ns = %self.ns.display(), name, %addr, prefix_len, "address added"),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) => {}
            Err(e) => return Err(e).with_context(|| self.ctx(format!("adding {addr}/{prefix_len} to {name}"))),
        }
        Ok(())
    }

    /// Every link of this netns.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        use rtnetlink::packet_route::link::{InfoKind, LinkInfo};
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links.try_next().await.with_context(|| self.ctx("listing links"))? {
            let mut state = LinkState { index: msg.header.index, ..Default::default() };
            for a in &msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => state.name = n.clone(),
                    LinkAttribute::LinkInfo(info) => state.is_veth = info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
                    _ => {}
                }
            }
            out.push(state);
        }
        Ok(out)
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle.route().add(route).replace().execute().await.with_context(|| self.ctx(format!("adding default route via {gateway}")))
    }

    pub async fn default_route_exists(&self) -> Result<bool> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(route) = routes.try_next().await.with_context(|| self.ctx("listing routes"))? {
            if is_main_default(&route) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes the links of `names` that exist, in one request; returns how many went.
    ///
    /// They go in one unregister batch, which waits for the RCU grace periods once: one by
    /// one, each deletion waits for its own (~20 ms each on a quiet machine). The kernel
    /// deletes a batch by interface group, so they join `DOOMED_GROUP` first (a cheap
    /// change); nothing else of ours is ever in that group.
    pub async fn delete_links(&self, names: &[&str]) -> Result<usize> {
        // One dump finds them all; marking takes a request each (links are set one by one).
        let present: std::collections::HashMap<String, u32> = self.links().await?.into_iter().map(|l| (l.name, l.index)).collect();
        let mut doomed = 0;
        for name in names {
            let Some(&index) = present.get(*name) else { continue };
            let group = LinkUnspec::new_with_index(index).append_extra_attribute(LinkAttribute::Group(DOOMED_GROUP)).build();
            self.handle.link().set(group).execute().await.with_context(|| self.ctx(format!("marking {name} for deletion")))?;
            doomed += 1;
        }
        if doomed == 0 {
            return Ok(0);
        }
        let mut del = self.handle.link().del(0);
        del.message_mut().attributes.push(LinkAttribute::Group(DOOMED_GROUP));
        del.execute().await.with_context(|| self.ctx(format!("deleting {}", names.join(", "))))?;
        debug!(ns = %self.ns.display(), ?names, "links deleted");
        Ok(doomed)
    }

    /// Deletes a link; Ok(false) if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name).await? else { return Ok(false) };
        self.handle.link().del(index).execute().await.with_context(|| self.ctx(format!("deleting {name}")))?;
        debug!(ns = %self.ns.display(), name, "link deleted");
        Ok(true)
    }
}

impl Netlink {
    /// Address, prefix and gateway of `name`; None if the interface does not exist.
    pub async fn uplink_addr(&self, name: &str) -> Result<Option<UplinkAddr>> {
        let Some(ifindex) = self.link_index(name).await? else { return Ok(None) };
        let mut addrs = self.handle.address().get().set_link_index_filter(ifindex).execute();
        let mut found = None;
        while let Some(msg) = addrs.try_next().await.with_context(|| self.ctx(format!("listing addresses of {name}")))? {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                found = Some((ip, msg.header.prefix_len));
                break;
            }
        }
        let Some((ip, prefix_len)) = found else {
            return Err(anyhow!(self.ctx(format!("uplink {name} has no IPv4 address"))));
        };
        let mut gateway = None;
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(route) = routes.try_next().await.with_context(|| self.ctx("listing routes"))? {
            let oif = route.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
            if is_main_default(&route) && oif == Some(ifindex) {
                gateway = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(rtnetlink::packet_route::route::RouteAddress::Inet(gw)) => Some(*gw),
                    _ => None,
                });
            }
        }
        Ok(Some(UplinkAddr { ifindex, ip, prefix_len, gateway }))
    }

    pub async fn add_table_route(&self, r: &TableRoute) -> Result<()> {
        let mut b =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(r.dst, r.prefix_len).output_interface(r.oif).table_id(r.table);
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        if let Some(src) = r.pref_src {
            b = b.pref_source(src);
        }
        if r.local {
            b = b.kind(RouteType::Local).scope(RouteScope::Host);
        } else if r.gateway.is_none() {
            b = b.scope(RouteScope::Link);
        }
        self.handle.route().add(b.build()).replace().execute().await.with_context(|| self.ctx(format!("adding route {r:?}")))
    }

    /// Removes every route of `table`.
    /// An `unreachable` route in the main table: packets to `dst` are refused (ICMP
    /// unreachable) unless a more specific route or an earlier rule takes them.
    pub async fn add_unreachable_route(&self, dst: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .kind(RouteType::Unreachable)
            .scope(RouteScope::Universe)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| self.ctx(format!("adding unreachable route {dst}/{prefix_len}")))
    }

    pub async fn flush_table(&self, table: u32) -> Result<usize> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        let mut doomed = Vec::new();
        while let Some(route) = routes.try_next().await.with_context(|| self.ctx("listing routes"))? {
            if route_table(&route) == table {
                doomed.push(route);
            }
        }
        let n = doomed.len();
        for route in doomed {
            self.handle.route().del(route).execute().await.with_context(|| self.ctx(format!("flushing table {table}")))?;
        }
        Ok(n)
    }

    pub async fn add_rule(&self, rule: &Rule) -> Result<()> {
        let mut req = self.handle.rule().add().v4().priority(rule.priority).table_id(rule.table).action(RuleAction::ToTable);
        if let Some(iif) = &rule.iif {
            req = req.input_interface(iif.clone());
        }
        if let Some(oif) = &rule.oif {
            req = req.output_interface(oif.clone());
        }
        if let Some(from) = rule.from {
            req = req.source_prefix(from, 32);
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) => Ok(()),
            Err(e) => Err(e).with_context(|| self.ctx(format!("adding rule {rule:?}"))),
        }
    }

    async fn rules(&self) -> Result<Vec<RuleMessage>> {
        let mut rules = self.handle.rule().get(IpVersion::V4).execute();
        let mut out = Vec::new();
        while let Some(r) = rules.try_next().await.with_context(|| self.ctx("listing rules"))? {
            out.push(r);
        }
        Ok(out)
    }

    /// Deletes the rules that look up `table` (only those matching input interface `iif`,
    /// when given); returns how many.
    pub async fn delete_rules(&self, table: u32, iif: Option<&str>) -> Result<usize> {
        let doomed: Vec<RuleMessage> = self
            .rules()
            .await?
            .into_iter()
            .filter(|r| rule_table(r) == table)
            .filter(|r| iif.is_none_or(|name| r.attributes.iter().any(|a| matches!(a, RuleAttribute::Iifname(n) if n == name))))
            .collect();
        let n = doomed.len();
        for r in doomed {
            self.handle.rule().del(r).execute().await.with_context(|| self.ctx(format!("deleting a rule to table {table}")))?;
        }
        Ok(n)
    }

    /// Moves `lookup local` from priority 0 to `LOCAL_RULE_MOVED_PRIORITY`; true if it moved.
    pub async fn move_local_rule(&self) -> Result<bool> {
        self.reprioritize_local_rule(0, LOCAL_RULE_MOVED_PRIORITY).await
    }

    /// Puts `lookup local` back at priority 0; true if it moved.
    pub async fn restore_local_rule(&self) -> Result<bool> {
        self.reprioritize_local_rule(LOCAL_RULE_MOVED_PRIORITY, 0).await
    }

    async fn reprioritize_local_rule(&self, from: u32, to: u32) -> Result<bool> {
        let rules = self.rules().await?;
        let at = |p: u32| rules.iter().find(|r| rule_table(r) == RT_TABLE_LOCAL && rule_priority(r) == p).cloned();
        let Some(old) = at(from) else { return Ok(false) };
        if at(to).is_none() {
            self.add_rule(&Rule { priority: to, table: RT_TABLE_LOCAL, iif: None, oif: None, from: None }).await?;
        }
        self.handle.rule().del(old).execute().await.with_context(|| self.ctx(format!("removing the local rule at priority {from}")))?;
        debug!(ns = %self.ns.display(), from, to, "local rule moved");
        Ok(true)
    }
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(route.header.table as u32)
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes.iter().find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None }).unwrap_or(rule.header.table as u32)
}

fn rule_priority(rule: &RuleMessage) -> u32 {
    rule.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}

fn is_main_default(route: &RouteMessage) -> bool {
    const RT_TABLE_MAIN: u32 = 254;
    route.header.destination_prefix_length == 0 && route_table(route) == RT_TABLE_MAIN
}
