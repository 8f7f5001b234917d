//! The client's address: the TCP peer, or, when the peer is a trusted proxy, the address the
//! proxies say they forwarded for (`Forwarded` or `X-Forwarded-For`).

use crate::domain::address::canonical;
use ipnet::IpNet;
use poem::http::HeaderMap;
use std::net::IpAddr;
use std::str::FromStr;

/// Proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From `CARTSTREAM_TRUSTED_PROXIES` entries: CIDRs (`10.0.0.0/8`) or single addresses.
    ///
    /// # Errors
    /// Names the entry that is neither.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                IpNet::from_str(e)
                    .or_else(|_| IpAddr::from_str(e).map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "trusted_proxies (CARTSTREAM_TRUSTED_PROXIES): {e:?} is neither an \
                             address nor a CIDR like 10.0.0.0/8"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that arrived from `peer`: the peer itself unless it is trusted;
    /// else the rightmost forwarded address that is not a trusted proxy (addresses left of it
    /// were written by the client and prove nothing). When every hop is trusted, the leftmost;
    /// an entry that is not an address (`unknown`, an obfuscated name, garbage) ends the walk
    /// at the hop right of it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.is_empty() || !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop.map(canonical) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// The forwarded-for addresses, leftmost (the original client, by its own word) first:
/// `Forwarded: for=…` when present (RFC 7239), else `X-Forwarded-For`. Every header line
/// counts, in order. `None` for an entry that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all("forwarded")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("for=invalid").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_node(v.trim()))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("invalid").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// A `Forwarded` node: `192.0.2.1`, `"192.0.2.1:8080"`, `"[2001:db8::1]:443"`.
fn parse_forwarded_node(v: &str) -> Option<IpAddr> {
    parse_node(v.trim_matches('"'))
}

/// An address, with an optional port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':')
        .and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(t.client_ip(ip("192.0.2.7"), &h), ip("192.0.2.7"));
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.9".into()]).unwrap();
        // The client wrote 6.6.6.6 itself; 203.0.113.5 reached the first trusted proxy.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.1.1")]);
        assert_eq!(t.client_ip(ip("192.0.2.9"), &h), ip("203.0.113.5"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("203.0.113.5"));
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.4")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &all_trusted), ip("10.0.0.3"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.5, nonsense, 10.0.0.4")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &garbage), ip("10.0.0.4"));
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_wins_and_takes_ports_and_v6() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=198.51.100.17:80;by=10.0.0.2")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("198.51.100.17"));
        let mapped = ip("::ffff:10.0.0.2");
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(t.client_ip(mapped, &h), ip("198.51.100.1"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.contains("CARTSTREAM_TRUSTED_PROXIES") && err.contains("10.0.0.0/33"));
    }
}
