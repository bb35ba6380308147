//! The `addn-hosts` file dnsmasq reads, as text; writing it and the
//! SIGHUP that makes dnsmasq read it again are `gatemesh-dnsmasq`'s.

use std::net::IpAddr;

/// First line of every file the manager writes.
pub const HEADER: &str = "# written by vps-gateway's DHCP manager; edits are overwritten\n";

/// The file's content: one `<ip> <name>` line per entry, sorted and
/// deduplicated so equal state always gives equal bytes.
pub fn render<'a>(entries: impl IntoIterator<Item = (IpAddr, &'a str)>) -> String {
    let mut lines: Vec<(IpAddr, &str)> = entries.into_iter().collect();
    lines.sort_unstable();
    lines.dedup();
    let mut out = String::with_capacity(HEADER.len() + lines.len() * 32);
    out.push_str(HEADER);
    for (ip, name) in lines {
        out.push_str(&ip.to_string());
        out.push(' ');
        out.push_str(name);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_sorted_and_stable() {
        let a: IpAddr = "10.0.0.10".parse().unwrap();
        let b: IpAddr = "10.0.0.9".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let one = render([(a, "vps-a"), (v6, "vps-a"), (b, "vps-b"), (a, "vps-a")]);
        let two = render([(b, "vps-b"), (a, "vps-a"), (v6, "vps-a")]);
        assert_eq!(one, two);
        assert_eq!(
            one,
            format!("{HEADER}10.0.0.9 vps-b\n10.0.0.10 vps-a\nfd00::1 vps-a\n")
        );
        assert_eq!(render([]), HEADER);
    }
}
