//! IP ranges in CIDR notation, and the filter that URL previews and outbound federation apply to
//! every address they would connect to (SSRF protection).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Ranges a URL preview never connects to unless an allowlist says otherwise: everything that
/// is not the public internet.
pub const BUILTIN_DENYLIST: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network", unspecified
    "10.0.0.0/8",      // private (RFC 1918)
    "100.64.0.0/10",   // carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local
    "172.16.0.0/12",   // private (RFC 1918)
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // TEST-NET-1
    "192.88.99.0/24",  // 6to4 relay anycast
    "192.168.0.0/16",  // private (RFC 1918)
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // TEST-NET-2
    "203.0.113.0/24",  // TEST-NET-3
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, broadcast
    // IPv6 (IPv4-mapped addresses are checked as IPv4)
    "::/128",         // unspecified
    "::1/128",        // loopback
    "::/96",          // IPv4-compatible (deprecated)
    "64:ff9b::/96",   // NAT64: would reach any IPv4 address
    "64:ff9b:1::/48", // local-use NAT64
    "100::/64",       // discard
    "2001::/23",      // IETF protocol assignments (Teredo ...)
    "2001:db8::/32",  // documentation
    "2002::/16",      // 6to4: embeds any IPv4 address
    "fc00::/7",       // unique local
    "fe80::/10",      // link-local
    "fec0::/10",      // site-local (deprecated)
    "ff00::/8",       // multicast
];

/// A network: an address and a prefix length (`10.0.0.0/8`, `fe80::/10`; a bare address is a
/// single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub struct InvalidRange(String);

impl fmt::Display for InvalidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidRange {}

impl FromStr for IpRange {
    type Err = InvalidRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| InvalidRange(format!("`{s}` is not an IP address or CIDR range")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    InvalidRange(format!("`{s}`: prefix length must be 0 to {max}"))
                })?,
            };
        Ok(Self {
            network: mask(addr, prefix),
            prefix,
        })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl IpRange {
    /// Whether `ip` is in this range. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) count as
    /// the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        mask(ip, self.prefix) == self.network
    }
}

/// Which addresses URL previews may connect to: the built-in and configured denylists, with
/// the allowlist taking precedence.
#[derive(Clone, Debug, Default)]
pub struct IpFilter {
    deny: Vec<IpRange>,
    allow: Vec<IpRange>,
}

impl IpFilter {
    /// The built-in denylist plus `deny`, with the exceptions in `allow`.
    pub fn new(deny: &[String], allow: &[String]) -> Result<Self, InvalidRange> {
        let parse = |list: &mut dyn Iterator<Item = &str>| {
            list.map(str::parse::<IpRange>)
                .collect::<Result<Vec<_>, _>>()
        };
        let deny = parse(
            &mut BUILTIN_DENYLIST
                .iter()
                .copied()
                .chain(deny.iter().map(String::as_str)),
        )?;
        let allow = parse(&mut allow.iter().map(String::as_str))?;
        Ok(Self { deny, allow })
    }

    /// Exactly the ranges in `deny` (no built-in ones): `[]` allows everything.
    pub fn only(deny: &[String]) -> Result<Self, InvalidRange> {
        let deny = deny
            .iter()
            .map(|r| r.parse::<IpRange>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            deny,
            allow: Vec::new(),
        })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|r| r.contains(ip)) || !self.deny.iter().any(|r| r.contains(ip))
    }
}

/// The error [`GuardedResolver`] returns when a name resolves only to refused addresses; callers
/// find it again in reqwest's error chain to answer 403.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves only to refused addresses", self.0)
    }
}

impl std::error::Error for Refused {}

/// How a [`GuardedResolver`] finds a host's addresses, when not with the system resolver.
pub type Lookup = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>>
        + Send
        + Sync,
>;

/// A reqwest resolver that returns only the addresses the filter allows, so the connection goes
/// to an address that was checked (no DNS rebinding between check and connect).
pub struct GuardedResolver {
    filter: Arc<IpFilter>,
    lookup: Option<Lookup>,
}

impl GuardedResolver {
    pub fn new(filter: Arc<IpFilter>) -> Self {
        Self {
            filter,
            lookup: None,
        }
    }

    /// Addresses come from `lookup` instead of the system resolver.
    pub fn with_lookup(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let filter = self.filter.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<IpAddr> = match lookup {
                Some(lookup) => lookup(host.clone()).await?,
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect(),
            };
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|ip| filter.allows(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn range(s: &str) -> IpRange {
        s.parse().expect("test range")
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(range("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(range("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(range("fe80::1/10").to_string(), "fe80::/10");
        assert_eq!(range("::1").to_string(), "::1/128");
        assert_eq!(range("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("::/129".parse::<IpRange>().is_err());
        assert!("10.0.0/8".parse::<IpRange>().is_err());
        assert!("example.org/8".parse::<IpRange>().is_err());
        assert!("10.0.0.0/x".parse::<IpRange>().is_err());
        assert!("".parse::<IpRange>().is_err());
    }

    #[test]
    fn ipv4_matching() {
        let r = range("172.16.0.0/12");
        assert!(r.contains(ip("172.16.0.1")));
        assert!(r.contains(ip("172.31.255.255")));
        assert!(!r.contains(ip("172.32.0.0")));
        assert!(!r.contains(ip("172.15.255.255")));
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(range("1.2.3.4/32").contains(ip("1.2.3.4")));
        assert!(!range("1.2.3.4/32").contains(ip("1.2.3.5")));
        // Families never match each other...
        assert!(!range("0.0.0.0/0").contains(ip("2001:4860::1")));
        assert!(!range("::/0").contains(ip("8.8.8.8")));
        // ... except IPv4-mapped IPv6, which is the IPv4 address.
        assert!(range("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn ipv6_matching() {
        let r = range("fc00::/7");
        assert!(r.contains(ip("fd12:3456::1")));
        assert!(r.contains(ip("fc00::")));
        assert!(!r.contains(ip("fe00::1")));
        assert!(range("fe80::/10").contains(ip("febf::1")));
        assert!(!range("fe80::/10").contains(ip("fec0::1")));
        assert!(range("::/0").contains(ip("2a00::1")));
    }

    #[test]
    fn default_filter_refuses_internal_addresses() {
        let filter = IpFilter::new(&[], &[]).expect("filter");
        for denied in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.20.1.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
        ] {
            assert!(!filter.allows(ip(denied)), "{denied} should be denied");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(filter.allows(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn allowlist_overrides_and_denylist_extends() {
        let filter = IpFilter::new(
            &["8.8.8.0/24".to_owned()],
            &["127.0.0.1/32".to_owned(), "fd00::/8".to_owned()],
        )
        .expect("filter");
        assert!(filter.allows(ip("127.0.0.1")));
        assert!(filter.allows(ip("::ffff:127.0.0.1")));
        assert!(!filter.allows(ip("127.0.0.2")));
        assert!(filter.allows(ip("fd00::5")));
        assert!(!filter.allows(ip("fc00::5")));
        assert!(!filter.allows(ip("8.8.8.8")));
        assert!(filter.allows(ip("8.8.4.4")));
        assert!(IpFilter::new(&["nonsense".to_owned()], &[]).is_err());
    }
}
