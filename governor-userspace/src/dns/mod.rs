//! Hostname allowlists: the DNS proxy agents' queries are redirected to, the admission of
//! answer addresses into the kernel's allowlist before the agent sees the answer, and the
//! bounded cache that expires them by last use.
//!
//! Flow: an agent's connect/sendmsg to port 53 of a configured resolver is rewritten by the
//! kernel to 127.(64 + resolver).(slot >> 8).(slot & 255):proxy_port (see governor-ebpf's
//! dns.rs). The proxy reads agent and resolver from that address, forwards the query to the
//! resolver, and if the name is allowed for the agent writes the answer's addresses into the
//! allowlist, and only then replies. If the write fails the agent gets SERVFAIL.

pub mod admit;
pub mod cache;
pub mod message;
pub mod proxy;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr};

use governor_common::{MAX_RESOLVERS, PROXY_OCTET};

/// The nameservers of a resolv.conf text, in order (at most MAX_RESOLVERS).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        // Link-local IPv6 servers carry a zone ("fe80::1%eth0"); the zone is not part of the address.
        .filter_map(|a| a.split('%').next().and_then(|a| a.parse().ok()))
        .take(MAX_RESOLVERS as usize)
        .collect()
}

/// The nameservers of /etc/resolv.conf (the default `[dns] resolvers`).
pub fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf").map(|t| parse_resolv_conf(&t)).unwrap_or_default()
}

/// The resolvers in force: the configured ones, or the system's.
pub fn resolvers(policy: &crate::policy::DnsPolicy) -> Vec<IpAddr> {
    policy.resolvers.clone().unwrap_or_else(system_resolvers)
}

/// The (resolver index, agent slot) a proxy address stands for.
pub fn decode_proxy_addr(a: Ipv4Addr) -> Option<(usize, u32)> {
    let [o0, o1, o2, o3] = a.octets();
    let index = o1.checked_sub(PROXY_OCTET)?;
    (o0 == 127 && u32::from(index) < MAX_RESOLVERS).then_some((usize::from(index), u32::from(o2) << 8 | u32::from(o3)))
}

/// CLOCK_BOOTTIME in seconds: the clock the kernel stamps an admitted address's use with.
pub fn boot_secs() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| t.tv_sec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let t = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(parse_resolv_conf(t), vec![IpAddr::from([127, 0, 0, 53]), "fe80::1".parse().unwrap()]);
    }

    #[test]
    fn proxy_addresses_decode_to_resolver_and_slot() {
        assert_eq!(decode_proxy_addr(Ipv4Addr::new(127, 64, 0, 5)), Some((0, 5)));
        assert_eq!(decode_proxy_addr(Ipv4Addr::new(127, 66, 15, 255)), Some((2, 4095)));
        assert_eq!(decode_proxy_addr(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(decode_proxy_addr(Ipv4Addr::new(127, 128, 0, 1)), None);
        assert_eq!(decode_proxy_addr(Ipv4Addr::new(10, 64, 0, 1)), None);
    }
}
