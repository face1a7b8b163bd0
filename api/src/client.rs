//! Who a client is, for the per-client limits: a [`ClientKey`].
//!
//! Today a client is its address: an IPv4 address, or the /64 an IPv6
//! address belongs to (what one subscriber line is usually given, so that
//! one host cannot pose as many by changing its low 64 bits). The address
//! is the TCP peer's; only when the peer is one of the operator's
//! [`TrustedProxies`] is it read from `X-Forwarded-For` instead. A client
//! that can set that header itself is never believed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// What a per-client limit counts under.
///
/// Only addresses today; when reads can be authenticated (issue 15) an
/// authenticated identity becomes a key of its own here, and the limits
/// keyed by it ([`crate::limits::Limiter`]) need no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Address(ClientAddr),
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(addr) => addr.fmt(f),
        }
    }
}

/// A client address as limits count it: IPv4 as is (also when it arrives
/// IPv4-mapped on an IPv6 socket), IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    V4(Ipv4Addr),
    /// The address with its low 64 bits cleared.
    V6Net(Ipv6Addr),
}

impl From<IpAddr> for ClientAddr {
    fn from(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => {
                Self::V6Net(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)))
            }
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => v4.fmt(f),
            Self::V6Net(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Networks of the reverse proxies in front of the API, whose
/// `X-Forwarded-For` is believed. Empty by default: the peer is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client a request comes from: the peer, unless the peer is a
    /// trusted proxy; then the nearest address in `X-Forwarded-For` that is
    /// not a trusted proxy (read from the right, where our own proxies
    /// appended). An entry that is not an address ends the walk at the last
    /// proxy read: whoever wrote it is not trusted to name the client.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientKey {
        ClientKey::Address(self.client_ip(peer, headers).into())
    }

    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            match value.to_str() {
                Ok(list) => hops.extend(list.split(',')),
                Err(_) => hops.push(""),
            }
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
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

/// One `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Reads a `--trusted-proxies` entry: a network (`10.0.0.0/8`, `fd00::/8`)
/// or one address.
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{raw:?} is not a network like 10.0.0.0/8 or fd00::/8, nor an address")
        })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(s: &str) -> ClientKey {
        ClientKey::Address(ip(s).into())
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let none = TrustedProxies::default();
        let headers = forwarded(&["198.51.100.9"]);
        assert_eq!(none.client(ip("192.0.2.7"), &headers), key("192.0.2.7"));

        let proxies = TrustedProxies::new(vec![parse_network("10.0.0.0/8").unwrap()]);
        assert_eq!(proxies.client(ip("192.0.2.7"), &headers), key("192.0.2.7"));
        assert_eq!(
            proxies.client(ip("10.1.2.3"), &headers),
            key("198.51.100.9")
        );
        // Mapped on a dual-stack socket, the proxy is still the proxy.
        assert_eq!(
            proxies.client(ip("::ffff:10.1.2.3"), &headers),
            key("198.51.100.9")
        );
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let proxies = TrustedProxies::new(vec![
            parse_network("10.0.0.0/8").unwrap(),
            parse_network("fd00::1").unwrap(),
        ]);
        let peer = ip("10.0.0.1");
        // A client may write anything to the left of what it sent.
        let spoofed = forwarded(&["1.1.1.1, 198.51.100.9", "10.0.0.2"]);
        assert_eq!(proxies.client(peer, &spoofed), key("198.51.100.9"));
        let with_port = forwarded(&["198.51.100.9:4711, fd00::1"]);
        assert_eq!(proxies.client(peer, &with_port), key("198.51.100.9"));
        // Garbage stops the walk at the last proxy.
        let garbage = forwarded(&["198.51.100.9, nonsense, 10.0.0.2"]);
        assert_eq!(proxies.client(peer, &garbage), key("10.0.0.2"));
        assert_eq!(proxies.client(peer, &HeaderMap::new()), key("10.0.0.1"));
        // Only proxies: the farthest one.
        assert_eq!(
            proxies.client(peer, &forwarded(&["10.9.9.9, 10.0.0.2"])),
            key("10.9.9.9")
        );
    }

    #[test]
    fn networks_and_single_addresses_are_read() {
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(parse_network("fd00::/8").is_ok());
        assert_eq!(parse_network("192.0.2.1").unwrap().prefix_len(), 32);
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("proxy.example.com").is_err());
    }
}
