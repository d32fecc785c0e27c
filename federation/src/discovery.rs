//! Server discovery (server-server API, "Resolving server names"): from a server name to the
//! address to connect to, the `Host` header to send and the name the TLS certificate must
//! carry. The network lookups (`.well-known`, SRV, A/AAAA) are the caller's; this holds the
//! order of the steps and what each result means.

use std::net::IpAddr;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;

/// A server name split into host and optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// Host name, or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: Option<u16>,
}

impl Name {
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(rest) = name.strip_prefix('[') {
            // [v6]:port or [v6]
            let (ip, after) = rest.split_once(']')?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            return Some(Self {
                host: ip.to_owned(),
                port,
            });
        }
        match name.rsplit_once(':') {
            Some((host, port)) => Some(Self {
                host: host.to_owned(),
                port: Some(port.parse().ok()?),
            }),
            None => Some(Self {
                host: name.to_owned(),
                port: None,
            }),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host[:port]` with IPv6 in brackets, as it goes in a `Host` header.
    pub fn authority(&self) -> String {
        let host = match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
}

/// Where to connect: `host` (a name to resolve, or an IP) and `port`; send `host_header`, and
/// expect a certificate for `tls_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    pub host_header: String,
    pub tls_name: String,
}

/// What to do next while resolving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Done: connect here.
    Connect(Destination),
    /// Fetch `https://{host}/.well-known/matrix/server` and call [`after_well_known`].
    WellKnown { host: String },
    /// Look up SRV `_matrix-fed._tcp.{name}` (then the deprecated `_matrix._tcp.{name}`) and
    /// call [`after_srv`]; `host_header` is what to send whatever the result.
    Srv { name: String, host_header: String },
}

/// The first step for a server name (steps 1 and 2 of the spec need no lookup).
pub fn start(server_name: &str) -> Option<Step> {
    let name = Name::parse(server_name)?;
    Some(literal_or_port(&name, server_name).unwrap_or(Step::WellKnown { host: name.host }))
}

/// IP literals and explicit ports connect directly (spec steps 1 and 2, and 3.1/3.2 for a
/// delegated name).
fn literal_or_port(name: &Name, host_header: &str) -> Option<Step> {
    if name.ip().is_some() || name.port.is_some() {
        return Some(Step::Connect(Destination {
            host: name.host.clone(),
            port: name.port.unwrap_or(DEFAULT_PORT),
            host_header: host_header.to_owned(),
            tls_name: name.host.clone(),
        }));
    }
    None
}

/// The step after `.well-known`: `delegated` is its `m.server` (None when there was none or
/// it was invalid).
pub fn after_well_known(server_name: &str, delegated: Option<&str>) -> Option<Step> {
    match delegated.and_then(Name::parse) {
        Some(name) => {
            let header = name.authority();
            Some(literal_or_port(&name, &header).unwrap_or(Step::Srv {
                name: name.host.clone(),
                host_header: header,
            }))
        }
        None => {
            let name = Name::parse(server_name)?;
            Some(Step::Srv {
                name: name.host,
                host_header: server_name.to_owned(),
            })
        }
    }
}

/// The step after SRV: the target and port it gave, or none (then the name on port 8448).
pub fn after_srv(name: &str, host_header: &str, srv: Option<(String, u16)>) -> Destination {
    match srv {
        Some((target, port)) => Destination {
            host: target.trim_end_matches('.').to_owned(),
            port,
            host_header: host_header.to_owned(),
            tls_name: name.to_owned(),
        },
        None => Destination {
            host: name.to_owned(),
            port: DEFAULT_PORT,
            host_header: host_header.to_owned(),
            tls_name: name.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(step: Option<Step>) -> Destination {
        match step {
            Some(Step::Connect(d)) => d,
            other => panic!("expected a direct connection, got {other:?}"),
        }
    }

    #[test]
    fn literals_and_ports_connect_directly() {
        let d = connect(start("127.0.0.2:8448"));
        assert_eq!((d.host.as_str(), d.port), ("127.0.0.2", 8448));
        assert_eq!(d.host_header, "127.0.0.2:8448");
        let d = connect(start("[::1]"));
        assert_eq!((d.host.as_str(), d.port), ("::1", 8448));
        let d = connect(start("matrix.example.org:443"));
        assert_eq!((d.host.as_str(), d.port), ("matrix.example.org", 443));
        assert_eq!(d.tls_name, "matrix.example.org");
    }

    #[test]
    fn names_go_through_well_known_then_srv() {
        assert_eq!(
            start("example.org"),
            Some(Step::WellKnown {
                host: "example.org".into()
            })
        );
        // Delegation with a port: direct, Host header is the delegated name.
        let d = connect(after_well_known(
            "example.org",
            Some("matrix.example.org:8449"),
        ));
        assert_eq!(d.port, 8449);
        assert_eq!(d.host_header, "matrix.example.org:8449");
        // Delegation without a port: SRV on the delegated name.
        assert_eq!(
            after_well_known("example.org", Some("matrix.example.org")),
            Some(Step::Srv {
                name: "matrix.example.org".into(),
                host_header: "matrix.example.org".into()
            })
        );
        // No well-known: SRV on the name itself, then port 8448.
        let Some(Step::Srv { name, host_header }) = after_well_known("example.org", None) else {
            panic!("expected SRV");
        };
        let d = after_srv(&name, &host_header, None);
        assert_eq!((d.host.as_str(), d.port), ("example.org", 8448));
        let d = after_srv(&name, &host_header, Some(("fed.example.org.".into(), 443)));
        assert_eq!((d.host.as_str(), d.port), ("fed.example.org", 443));
        assert_eq!(d.tls_name, "example.org");
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(start("example.org:notaport"), None);
        assert_eq!(start("[::1"), None);
    }
}
