//! Outbound federation HTTP: server discovery, `X-Matrix` signing, and the guards every
//! request passes (address denylist, certificate verification, time limit).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedServerName, ServerName};
use serde_json::Value;
use sparks_federation::discovery::{self, Destination, Step};

use super::remote_error;
use crate::{
    cidr::{GuardedResolver, IpFilter},
    config::FederationConfig,
    error::{Error, Result},
    server::Server,
};

/// How long a resolved destination is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(60 * 60);
/// Largest response body we read from another server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The certificates of the PEM files in `ca_certificates` (each must hold at least one).
fn extra_roots(paths: &[std::path::PathBuf]) -> Result<Vec<reqwest::Certificate>, String> {
    let mut roots = Vec::new();
    for path in paths {
        let context = |e: &dyn std::fmt::Display| {
            format!("federation.ca_certificates: {}: {e}", path.display())
        };
        let pem = std::fs::read(path).map_err(|e| context(&e))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| context(&e))?;
        if certificates.is_empty() {
            return Err(context(&"no PEM certificate in it"));
        }
        roots.extend(certificates);
    }
    Ok(roots)
}

pub struct Client {
    filter: Arc<IpFilter>,
    dns: Arc<super::dns::Dns>,
    verify_certificates: bool,
    /// Certificate authorities trusted besides the system's (`[federation] ca_certificates`).
    extra_roots: Vec<reqwest::Certificate>,
    timeout: Duration,
    /// Built on first use: building a TLS client costs more than the whole server start.
    http: OnceLock<std::result::Result<reqwest::Client, String>>,
    resolved: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
}

impl Client {
    pub fn new(config: &FederationConfig) -> Result<Self, String> {
        let filter = IpFilter::only(&config.ip_range_denylist)
            .map_err(|e| format!("federation.ip_range_denylist: {e}"))?;
        Ok(Self {
            filter: Arc::new(filter),
            dns: Arc::new(super::dns::Dns::new(&config.dns_servers)?),
            verify_certificates: config.verify_certificates,
            extra_roots: extra_roots(&config.ca_certificates)?,
            timeout: Duration::from_millis(config.request_timeout_ms),
            http: OnceLock::new(),
            resolved: Mutex::new(HashMap::new()),
        })
    }

    fn http(&self) -> Result<&reqwest::Client> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .dns_resolver(Arc::new(self.guarded_resolver()))
                    .tls_danger_accept_invalid_certs(!self.verify_certificates)
                    .tls_certs_merge(self.extra_roots.iter().cloned())
                    .connect_timeout(self.timeout.min(Duration::from_secs(10)))
                    .timeout(self.timeout)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .user_agent(concat!("Sparks/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::internal(format_args!("federation HTTP client: {e}")))
    }

    /// Where to reach `name` (server discovery), cached for an hour.
    pub async fn resolve(&self, name: &ServerName) -> Result<Destination> {
        if let Some((found, at)) = self.resolved.lock().get(name).cloned()
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(found);
        }
        let mut step = discovery::start(name.as_str())
            .ok_or_else(|| remote_error(name, "not a valid server name"))?;
        let destination = loop {
            step = match step {
                Step::Connect(destination) => break destination,
                Step::WellKnown { host } => {
                    let delegated = self.well_known(&host).await;
                    discovery::after_well_known(name.as_str(), delegated.as_deref())
                        .ok_or_else(|| remote_error(name, "not a valid server name"))?
                }
                Step::Srv {
                    name: host,
                    host_header,
                } => {
                    let srv = self.dns.srv(&host).await;
                    Step::Connect(discovery::after_srv(&host, &host_header, srv))
                }
            };
        };
        if destination.host != destination.tls_name {
            self.dns.redirect(&destination.tls_name, &destination.host);
        }
        self.resolved
            .lock()
            .insert(name.to_owned(), (destination.clone(), Instant::now()));
        Ok(destination)
    }

    /// Addresses through our DNS (SRV targets followed), then the denylist.
    fn guarded_resolver(&self) -> GuardedResolver {
        let dns = self.dns.clone();
        GuardedResolver::new(self.filter.clone())
            .with_lookup(Arc::new(move |host| dns.addresses(host)))
    }

    /// `m.server` from `https://{host}/.well-known/matrix/server`, if there is a valid one.
    async fn well_known(&self, host: &str) -> Option<String> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let response = self.http().ok()?.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.bytes().await.ok()?;
        let value: Value = serde_json::from_slice(&body).ok()?;
        value["m.server"].as_str().map(str::to_owned)
    }

    fn url(&self, destination: &Destination, path: &str) -> Result<String> {
        if let Ok(ip) = destination.host.parse::<IpAddr>()
            && !self.filter.allows(ip)
        {
            return Err(Error::forbidden(format!(
                "federation to {ip} is refused by [federation] ip_range_denylist"
            )));
        }
        // An SRV target is connected to under the server's name (see `Dns::redirect`), so
        // the certificate is checked for the name, as the spec asks.
        let host = match destination.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", destination.host),
            Ok(IpAddr::V4(_)) => destination.host.clone(),
            Err(_) => destination.tls_name.clone(),
        };
        Ok(format!("https://{host}:{}{path}", destination.port))
    }

    /// An unauthenticated GET (key documents).
    pub async fn get_unsigned(&self, destination: &ServerName, path: &str) -> Result<Value> {
        let target = self.resolve(destination).await?;
        let url = self.url(&target, path)?;
        let response = self
            .http()?
            .get(url)
            .header(http::header::HOST, &target.host_header)
            .send()
            .await
            .map_err(|e| remote_error(destination, describe(&e)))?;
        read_json(destination, response).await
    }

    /// A request signed with our key (`X-Matrix`); the parsed JSON answer, or the remote error.
    pub async fn send(
        &self,
        server: &Server,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let value: Value = self
            .send_as(server, destination, method, path_and_query, body)
            .await?;
        json_answer(destination, value)
    }

    /// As [`Client::send`], with the answer parsed into `T`.
    pub async fn send_as<T: serde::de::DeserializeOwned>(
        &self,
        server: &Server,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let response = self
            .signed_request(server, destination, method, path_and_query, body)
            .await?;
        read_as(destination, response).await
    }

    async fn signed_request(
        &self,
        server: &Server,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        if server.is_local(destination) {
            return Err(Error::invalid_param(
                "a federation request to ourselves is a bug",
            ));
        }
        let target = self.resolve(destination).await?;
        let url = self.url(&target, path_and_query)?;
        let bytes = match body {
            Some(body) => serde_json::to_vec(body)?,
            None => Vec::new(),
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(bytes)
            .map_err(|e| Error::internal(format_args!("federation request: {e}")))?;
        sparks_federation::auth::sign_request(
            &mut request,
            server.server_name(),
            destination,
            &server.signing_key,
        )
        .map_err(|e| Error::internal(format_args!("signing: {e}")))?;
        let (parts, bytes) = request.into_parts();
        let mut outbound = self
            .http()?
            .request(method, url)
            .header(http::header::HOST, &target.host_header);
        if let Some(auth) = parts.headers.get(http::header::AUTHORIZATION) {
            outbound = outbound.header(http::header::AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            outbound = outbound
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        outbound
            .send()
            .await
            .map_err(|e| remote_error(destination, describe(&e)))
    }
}

impl Client {
    /// A signed GET whose answer is bytes (media): (content type, body), at most `max` bytes.
    pub async fn get_bytes(
        &self,
        server: &Server,
        destination: &ServerName,
        path: &str,
        max: u64,
    ) -> Result<(String, Vec<u8>)> {
        let target = self.resolve(destination).await?;
        let url = self.url(&target, path)?;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .body(Vec::new())
            .map_err(|e| Error::internal(format_args!("federation request: {e}")))?;
        sparks_federation::auth::sign_request(
            &mut request,
            server.server_name(),
            destination,
            &server.signing_key,
        )
        .map_err(|e| Error::internal(format_args!("signing: {e}")))?;
        let mut outbound = self
            .http()?
            .get(url)
            .header(http::header::HOST, &target.host_header);
        if let Some(auth) = request.headers().get(http::header::AUTHORIZATION) {
            outbound = outbound.header(http::header::AUTHORIZATION, auth.clone());
        }
        let response = outbound
            .send()
            .await
            .map_err(|e| remote_error(destination, describe(&e)))?;
        if !response.status().is_success() {
            return read_json(destination, response)
                .await
                .map(|_| (String::new(), Vec::new()));
        }
        read_limited(destination, response, max).await
    }

    /// An unsigned GET of a URL another server pointed us to (media `Location`), through the
    /// same address guard.
    pub async fn get_url(&self, url: &str, max: u64) -> Result<(String, Vec<u8>)> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| Error::bad_json(format!("Location: {e}")))?;
        if let Some(host) = parsed.host_str()
            && let Ok(ip) = host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            && !self.filter.allows(ip)
        {
            return Err(Error::forbidden(
                "Location refused by [federation] ip_range_denylist",
            ));
        }
        let response =
            self.http()?.get(parsed).send().await.map_err(|e| {
                Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", describe(&e))
            })?;
        if !response.status().is_success() {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("media Location answered {}", response.status()),
            ));
        }
        let name = ruma::server_name!("localhost");
        read_limited(name, response, max).await
    }
}

/// A body of at most `max` bytes, with its content type.
async fn read_limited(
    destination: &ServerName,
    mut response: reqwest::Response,
    max: u64,
) -> Result<(String, Vec<u8>)> {
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if response.content_length().is_some_and(|len| len > max) {
        return Err(Error::too_large(
            "Remote media is larger than this server accepts",
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| remote_error(destination, describe(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > max {
            return Err(Error::too_large(
                "Remote media is larger than this server accepts",
            ));
        }
    }
    Ok((content_type, body))
}

/// A reqwest error with its causes (they say what actually failed: TLS, refused address ...).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The answer's JSON; a non-2xx answer becomes an error carrying the remote errcode when it
/// is one of ours to pass on (not found, forbidden), else a 502.
async fn read_json(destination: &ServerName, response: reqwest::Response) -> Result<Value> {
    json_answer(destination, read_as(destination, response).await?)
}

/// A successful answer of JSON `null` is no answer (a body that is not JSON at all is refused
/// by [`read_as`]).
fn json_answer(destination: &ServerName, value: Value) -> Result<Value> {
    if value.is_null() {
        return Err(remote_error(destination, "answer is not JSON"));
    }
    Ok(value)
}

/// As [`read_json`], parsed straight into `T` (no intermediate JSON tree: large answers such
/// as a big room's state are read with one copy in memory).
async fn read_as<T: serde::de::DeserializeOwned>(
    destination: &ServerName,
    response: reqwest::Response,
) -> Result<T> {
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(remote_error(destination, "response too large"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| remote_error(destination, describe(&e)))?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(remote_error(destination, "response too large"));
    }
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            remote_error(destination, format!("answer is not the expected JSON: {e}"))
        });
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let errcode = value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
    let message = value["error"].as_str().unwrap_or_default().to_owned();
    match status.as_u16() {
        403 | 404 => Err(Error::new(
            status,
            match errcode.as_str() {
                "M_FORBIDDEN" => "M_FORBIDDEN",
                "M_NOT_FOUND" => "M_NOT_FOUND",
                _ => "M_UNKNOWN",
            },
            format!("{destination}: {message}"),
        )),
        _ => Err(remote_error(
            destination,
            format!("{} {errcode} {message}", status.as_u16()),
        )),
    }
}
