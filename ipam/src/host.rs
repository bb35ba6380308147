//! The node's own IPv4 addresses, from its interfaces: an address the
//! node holds is never a VM's, whatever the pool says.

use std::net::Ipv4Addr;

/// Every IPv4 address of the node's interfaces, loopback included.
pub fn node_addresses() -> Result<Vec<Ipv4Addr>, nix::Error> {
    let mut addresses: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|interface| Some(interface.address?.as_sockaddr_in()?.ip()))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_among_the_nodes_addresses() {
        let own = super::node_addresses().unwrap();
        assert!(own.contains(&std::net::Ipv4Addr::LOCALHOST), "{own:?}");
    }
}
