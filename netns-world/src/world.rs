//! The router and what hangs off it: zedbox's uplinks, the internet host, the clouds.
//! One implementation of what the demo and the tests had each written out, command for
//! command (the review's "the seed world is built twice").

use anyhow::{Context, Result};

use crate::{add_netns, ip, BLOCKED_SITE_IP, CLOUD_LAN_IP, DNS_SERVER_IP, INTERNET_IP, SWITCH_UPLINK};

/// The names of the world's namespaces: the seed's (`zedbox`, `gw`, `internet`) in the
/// demo, unique ones per test scenario.
///
/// Uplink `ethI` of zedbox is a bridge holding a veth `kethI` whose peer `upI` is in gw;
/// gw has 192.168.I.1/24 on it, the uplink 192.168.I.2/24 and a default route via it of
/// metric 100+I. [`SWITCH_UPLINK`] (eth3) is instead a plain veth without an address (a
/// switch NI moves it into its own netns, which a bridge cannot). Behind gw (`inet0`,
/// 10.99.0.1/24) the internet host has [`INTERNET_IP`] on its `wan0`.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    pub zedbox: &'a str,
    pub gw: &'a str,
    pub internet: &'a str,
}

impl World<'_> {
    /// Adds gw and the internet host (zedbox exists already), uplinks `eth0..eth<uplinks-1>`
    /// and the link from gw to the internet host.
    pub fn build(&self, uplinks: usize) -> Result<()> {
        for ns in [self.gw, self.internet] {
            add_netns(ns)?;
        }
        ip(&["netns", "exec", self.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for i in 0..uplinks {
            self.add_uplink(i)?;
        }
        self.add_internet().context("linking gw to the internet host")
    }

    /// Uplink `eth<i>` of zedbox, to gw's `up<i>` (see [`World`]).
    pub fn add_uplink(&self, i: usize) -> Result<()> {
        let (z, gw) = (self.zedbox, self.gw);
        let (eth, keth, up) = (format!("eth{i}"), format!("keth{i}"), format!("up{i}"));
        let gw_ip = format!("192.168.{i}.1");
        if i == SWITCH_UPLINK {
            // The switch NI's uplink moves into the NI's netns, which a bridge cannot.
            ip(&["-n", z, "link", "add", &eth, "type", "veth", "peer", "name", &up, "netns", gw])?;
            ip(&["-n", gw, "addr", "add", &format!("{gw_ip}/24"), "dev", &up])?;
            return ip(&["-n", gw, "link", "set", &up, "up"]);
        }
        ip(&["-n", z, "link", "add", &eth, "type", "bridge"])?;
        ip(&["-n", z, "link", "add", &keth, "type", "veth", "peer", "name", &up, "netns", gw])?;
        ip(&["-n", z, "link", "set", &keth, "master", &eth, "up"])?;
        ip(&["-n", z, "addr", "add", &format!("192.168.{i}.2/24"), "dev", &eth])?;
        ip(&["-n", z, "link", "set", &eth, "up"])?;
        ip(&["-n", gw, "addr", "add", &format!("{gw_ip}/24"), "dev", &up])?;
        ip(&["-n", gw, "link", "set", &up, "up"])?;
        let metric = (100 + i).to_string();
        ip(&["-n", z, "route", "add", "default", "via", &gw_ip, "dev", &eth, "metric", &metric])
    }

    fn add_internet(&self) -> Result<()> {
        let (gw, inet) = (self.gw, self.internet);
        ip(&["-n", gw, "link", "add", "inet0", "type", "veth", "peer", "name", "wan0", "netns", inet])?;
        ip(&["-n", gw, "addr", "add", "10.99.0.1/24", "dev", "inet0"])?;
        ip(&["-n", gw, "link", "set", "inet0", "up"])?;
        ip(&["-n", inet, "addr", "add", &format!("{INTERNET_IP}/24"), "dev", "wan0"])?;
        ip(&["-n", inet, "link", "set", "wan0", "up"])?;
        ip(&["-n", inet, "route", "add", "default", "via", "10.99.0.1"])
    }

    /// The seed's other internet addresses: its blocked site [`BLOCKED_SITE_IP`] (gw
    /// 10.98.0.1 in front of it) and the DNS server [`DNS_SERVER_IP`].
    pub fn add_seed_sites(&self) -> Result<()> {
        ip(&["-n", self.gw, "addr", "add", "10.98.0.1/24", "dev", "inet0"])?;
        ip(&["-n", self.internet, "addr", "add", &format!("{BLOCKED_SITE_IP}/24"), "dev", "wan0"])?;
        ip(&["-n", self.internet, "addr", "add", &format!("{DNS_SERVER_IP}/24"), "dev", "wan0"])
    }

    /// A cloud behind gw (as the seed's cloud1/cloud2), in the existing netns `cloud`:
    /// `wan0` at `wan_ip`/24 to gw's `gw_if` (gw at .254 of that /24, the cloud's default
    /// route), and [`CLOUD_LAN_IP`] on its lo, where its servers listen.
    pub fn add_cloud(&self, cloud: &str, gw_if: &str, wan_ip: &str) -> Result<()> {
        let net = wan_ip.rsplit_once('.').with_context(|| format!("{wan_ip}: not an IPv4 address"))?.0;
        let gw_ip = format!("{net}.254");
        let gw = self.gw;
        ip(&["-n", gw, "link", "add", gw_if, "type", "veth", "peer", "name", "wan0", "netns", cloud])?;
        ip(&["-n", gw, "addr", "add", &format!("{gw_ip}/24"), "dev", gw_if])?;
        ip(&["-n", gw, "link", "set", gw_if, "up"])?;
        ip(&["-n", cloud, "addr", "add", &format!("{wan_ip}/24"), "dev", "wan0"])?;
        ip(&["-n", cloud, "link", "set", "wan0", "up"])?;
        ip(&["-n", cloud, "route", "add", "default", "via", &gw_ip])?;
        ip(&["-n", cloud, "addr", "add", &format!("{CLOUD_LAN_IP}/32"), "dev", "lo"])
    }
}
