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
        route::{RouteAttribute, RouteMessage},
    },
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tracing::debug;

use crate::netns::{self, Netns};

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

    async fn index_of(&self, name: &str) -> Result<u32> {
        self.link_index(name).await?.ok_or_else(|| anyhow!(self.ctx(format!("no interface {name}"))))
    }

    pub async fn create_bridge(&self, name: &str) -> Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("creating bridge {name}")))?;
        debug!(ns = %self.ns.display(), name, "bridge created");
        self.index_of(name).await
    }

    /// Creates a veth pair with both ends in this namespace.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("creating veth {name} <-> {peer}")))?;
        debug!(ns = %self.ns.display(), name, peer, "veth created");
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

    pub async fn set_up(&self, name: &str) -> Result<()> {
        let index = self.index_of(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| self.ctx(format!("setting {name} up")))
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

    pub async fn add_address(&self, name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let index = self.index_of(name).await?;
        self.handle
            .address()
            .add(index, addr.into(), prefix_len)
            .execute()
            .await
            .with_context(|| self.ctx(format!("adding {addr}/{prefix_len} to {name}")))?;
        debug!(ns = %self.ns.display(), name, %addr, prefix_len, "address added");
        Ok(())
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| self.ctx(format!("adding default route via {gateway}")))
    }

    /// Adds `dst/prefix_len via gateway` with `metric` to the main table.
    pub async fn add_route(&self, dst: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr, metric: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .gateway(gateway)
            .priority(metric)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| self.ctx(format!("adding route {dst}/{prefix_len} via {gateway} metric {metric}")))
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

    /// Deletes a link; Ok(false) if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name).await? else { return Ok(false) };
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| self.ctx(format!("deleting {name}")))?;
        debug!(ns = %self.ns.display(), name, "link deleted");
        Ok(true)
    }

}

fn is_main_default(route: &RouteMessage) -> bool {
    const RT_TABLE_MAIN: u32 = 254;
    let table = route
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(route.header.table as u32);
    route.header.destination_prefix_length == 0 && table == RT_TABLE_MAIN
}

