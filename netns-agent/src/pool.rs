//! Address pools: which addresses the agent may hand an app on a network. Config
//! validation allocates from them (so that a config whose pools run out is refused).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The DHCP range `[first, last]`, or else every host address of the subnet, in order,
/// without the gateway.
pub fn addresses(subnet: Ipv4Net, gateway: Ipv4Addr, range: Option<(Ipv4Addr, Ipv4Addr)>) -> impl Iterator<Item = Ipv4Addr> {
    let (first, last) =
        range.unwrap_or((Ipv4Addr::from(u32::from(subnet.network()) + 1), Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)));
    (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from).filter(move |ip| *ip != gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_or_the_subnets_hosts_without_the_gateway() {
        let subnet: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let all: Vec<_> = addresses(subnet, gw, None).map(|a| a.octets()[3]).collect();
        assert_eq!(all, [2, 3, 4, 5, 6]);
        let range = Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)));
        let some: Vec<_> = addresses(subnet, gw, range).map(|a| a.octets()[3]).collect();
        assert_eq!(some, [2, 3]);
    }
}
