//! DNS for server discovery: SRV records (`_matrix-fed._tcp`, then the deprecated
//! `_matrix._tcp`) and the addresses of other servers. With `[federation] dns_servers` every
//! lookup goes to those servers; without, SRV records come from the servers in
//! `/etc/resolv.conf` and addresses from the system resolver (which also reads `/etc/hosts`).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use futures::future::BoxFuture;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};
use parking_lot::Mutex;

pub struct Dns {
    resolver: Option<TokioResolver>,
    /// Whether addresses come from `resolver` too (configured servers) or from the system.
    addresses_from_resolver: bool,
    /// Server names whose connections go to another host (an SRV target): the URL keeps the
    /// server name, so TLS checks the certificate for it as the spec asks, and the address
    /// lookup is redirected here.
    targets: Mutex<HashMap<String, String>>,
}

impl Dns {
    pub fn new(servers: &[String]) -> Result<Self, String> {
        if servers.is_empty() {
            let resolver = match TokioResolver::builder_tokio() {
                Ok(builder) => Some(builder.build()),
                Err(error) => {
                    tracing::warn!(%error, "no system DNS configuration: SRV lookups are skipped");
                    None
                }
            };
            return Ok(Self {
                resolver,
                addresses_from_resolver: false,
                targets: Mutex::new(HashMap::new()),
            });
        }
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            let addr: SocketAddr = server
                .parse()
                .map_err(|e| format!("federation.dns_servers: {server}: {e}"))?;
            group.push(NameServerConfig::new(addr, Protocol::Udp));
            group.push(NameServerConfig::new(addr, Protocol::Tcp));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build();
        Ok(Self {
            resolver: Some(resolver),
            addresses_from_resolver: true,
            targets: Mutex::new(HashMap::new()),
        })
    }

    /// The target and port of `name`'s federation SRV record, if it has one: the record with
    /// the lowest priority (and of those the highest weight).
    pub async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let resolver = self.resolver.as_ref()?;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let Ok(found) = resolver.srv_lookup(format!("{service}.{name}.")).await else {
                continue;
            };
            let best = found
                .iter()
                .min_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
            if let Some(record) = best {
                let target = record.target().to_utf8();
                // "." as the target means the service is decidedly not available there.
                if target == "." {
                    return None;
                }
                return Some((target.trim_end_matches('.').to_owned(), record.port()));
            }
        }
        None
    }

    /// Connections to `name` go to `target` from now on.
    pub fn redirect(&self, name: &str, target: &str) {
        self.targets
            .lock()
            .insert(name.to_owned(), target.to_owned());
    }

    /// The addresses to connect to for `host` (following [`Dns::redirect`]).
    pub fn addresses(
        self: &Arc<Self>,
        host: String,
    ) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let dns = self.clone();
        Box::pin(async move {
            let host = dns.targets.lock().get(&host).cloned().unwrap_or(host);
            match (&dns.resolver, dns.addresses_from_resolver) {
                (Some(resolver), true) => {
                    let found = resolver
                        .lookup_ip(format!("{host}."))
                        .await
                        .map_err(io::Error::other)?;
                    Ok(found.iter().collect())
                }
                _ => Ok(tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect()),
            }
        })
    }
}
