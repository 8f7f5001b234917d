//! Which client an address stands for, as far as the per-address limits are concerned.
//!
//! One IPv4 address is one client. One IPv6 address is not: a single host or home network is
//! normally given a whole /64, and can send from any of its 2^64 addresses. Counted per
//! address, such a client would get a fresh rate-limit bucket, connection allowance and
//! failed-authentication budget for every address it picks. So the limits count an IPv6
//! client by its /64, the smallest network an ISP assigns (RFC 6177); what one /64 sends
//! shares one allowance.

use std::net::{IpAddr, Ipv6Addr};

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports) as IPv4;
/// every other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The prefix length by which IPv6 clients are counted.
pub const IPV6_CLIENT_PREFIX: u32 = 64;

/// The address the per-address limits count `ip` under: an IPv4 address (mapped or not) as
/// itself, an IPv6 address as its /64 network (the host bits zeroed).
pub fn limit_scope(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - IPV6_CLIENT_PREFIX);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_64_network() {
        assert_eq!(
            limit_scope(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_scope(ip("2001:db8:1:2::1")),
            limit_scope(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            limit_scope(ip("2001:db8:1:2::1")),
            limit_scope(ip("2001:db8:1:3::1")),
            "the next /64 is another client"
        );
    }

    #[test]
    fn ipv4_is_one_client_per_address_mapped_or_not() {
        assert_eq!(limit_scope(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(limit_scope(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(limit_scope(ip("192.0.2.7")), limit_scope(ip("192.0.2.8")));
        assert_eq!(
            canonical(ip("::1")),
            ip("::1"),
            "only mapped addresses become IPv4"
        );
    }
}
