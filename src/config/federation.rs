use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[federation]`: talking to other homeservers (the server-server API). The listener itself is
/// `[listen] federation`; without it this server does not federate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// PEM certificate chain for the federation listener (TLS). With `tls_private_key`; both
    /// absent: a self-signed certificate for the server name is generated on first start and
    /// kept in the database directory.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key for `tls_certificate`.
    pub tls_private_key: Option<PathBuf>,
    /// Whether other servers' TLS certificates are verified (against the system's roots).
    /// Switch off only for tests and closed networks with self-signed certificates.
    pub verify_certificates: bool,
    /// PEM files of certificate authorities trusted for other servers' certificates besides
    /// the system's roots: for federations on a private PKI (e.g. an authority's own CA).
    pub ca_certificates: Vec<PathBuf>,
    /// Address ranges (CIDR) outbound federation never connects to. Default: loopback,
    /// private (RFC 1918), link-local, CGNAT, multicast, unspecified and reserved ranges, IPv6
    /// ULA and link-local, NAT64 and 6to4. `[]` allows every address.
    pub ip_range_denylist: Vec<String>,
    /// Servers asked for other servers' signing keys when the origin cannot be reached
    /// (notaries, `POST /_matrix/key/v2/query`). Empty: keys come only from their origin.
    pub trusted_key_servers: Vec<String>,
    /// How long other servers may cache our signing key (`valid_until_ts` of our key
    /// document), in milliseconds. 1 hour to 7 days.
    pub key_validity_ms: u64,
    /// Time limit for one outbound federation request, in milliseconds.
    pub request_timeout_ms: u64,
    /// DNS servers (`"IP:PORT"`) for server discovery: SRV records and addresses of other
    /// servers. Empty: the system's resolver (`/etc/resolv.conf`, `/etc/hosts`).
    pub dns_servers: Vec<String>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            tls_certificate: None,
            tls_private_key: None,
            verify_certificates: true,
            ca_certificates: Vec::new(),
            ip_range_denylist: crate::cidr::BUILTIN_DENYLIST
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            trusted_key_servers: Vec::new(),
            key_validity_ms: 24 * 60 * 60 * 1000,
            request_timeout_ms: 30_000,
            dns_servers: Vec::new(),
        }
    }
}

impl FederationConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            return Err(ConfigError(
                "federation.tls_certificate and federation.tls_private_key go together".into(),
            ));
        }
        crate::cidr::IpFilter::only(&self.ip_range_denylist)
            .map_err(|e| ConfigError(format!("federation.ip_range_denylist: {e}")))?;
        for server in &self.trusted_key_servers {
            <&ruma::ServerName>::try_from(server.as_str()).map_err(|e| {
                ConfigError(format!("federation.trusted_key_servers: {server}: {e}"))
            })?;
        }
        if !(3_600_000..=7 * 86_400_000).contains(&self.key_validity_ms) {
            return Err(ConfigError(
                "federation.key_validity_ms: must be between 1 hour and 7 days".into(),
            ));
        }
        for server in &self.dns_servers {
            server.parse::<std::net::SocketAddr>().map_err(|e| {
                ConfigError(format!(
                    "federation.dns_servers: {server}: {e} (want IP:PORT)"
                ))
            })?;
        }
        if !(1_000..=600_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError(
                "federation.request_timeout_ms: must be between 1000 and 600000".into(),
            ));
        }
        Ok(())
    }
}
