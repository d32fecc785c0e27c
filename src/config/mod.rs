//! Configuration: an embedded default, a TOML file (`--config FILE`), then `SPARKS_*` environment
//! variables (`__` separates sections: `SPARKS_LISTEN__CLIENT=127.0.0.1:8008`).
//!
//! Each domain has its own small struct in its own file; this file only assembles and validates
//! them. Every key is documented with its default in `config.example.toml`.

mod federation;
mod limits;
mod listen;
mod log;
mod media;
mod ratelimit;
mod registration;
mod rtc;
mod search;
mod storage;

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

pub use self::{
    federation::FederationConfig,
    limits::LimitsConfig,
    listen::ListenConfig,
    log::{LogConfig, LogFormat},
    media::MediaConfig,
    ratelimit::RateLimitConfig,
    ratelimit::RateLimitRule,
    registration::RegistrationConfig,
    rtc::RtcConfig,
    search::SearchConfig,
    storage::StorageConfig,
};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Matrix server name: the part after the colon in user IDs. Cannot change later.
    pub server_name: OwnedServerName,
    /// Where RocksDB keeps its files.
    pub database_path: PathBuf,
    /// Room version for new rooms when the client does not ask for one.
    pub default_room_version: RoomVersionId,
    /// The base URL clients should use, advertised in `/.well-known/matrix/client`.
    /// Empty: derived from the client listener.
    pub public_base_url: String,
    pub listen: ListenConfig,
    pub registration: RegistrationConfig,
    pub limits: LimitsConfig,
    pub ratelimit: RateLimitConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub media: MediaConfig,
    pub search: SearchConfig,
    pub federation: FederationConfig,
    pub rtc: RtcConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: ruma::server_name!("localhost").to_owned(),
            database_path: PathBuf::from("./sparks-data"),
            default_room_version: RoomVersionId::V12,
            public_base_url: String::new(),
            listen: ListenConfig::default(),
            registration: RegistrationConfig::default(),
            limits: LimitsConfig::default(),
            ratelimit: RateLimitConfig::default(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            media: MediaConfig::default(),
            search: SearchConfig::default(),
            federation: FederationConfig::default(),
            rtc: RtcConfig::default(),
        }
    }
}

/// The top-level keys (and sections) of the configuration, for filtering the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server_name",
    "database_path",
    "default_room_version",
    "public_base_url",
    "listen",
    "registration",
    "limits",
    "ratelimit",
    "log",
    "storage",
    "media",
    "search",
    "federation",
    "rtc",
];

/// A configuration the server refuses to start with, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Embedded defaults, overlaid by the file (if any), overlaid by `SPARKS_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only variables naming a config key: other SPARKS_* variables (SPARKS_BIN in scripts,
        // say) are not configuration and must not stop the server.
        figment = figment.merge(
            Env::prefixed("SPARKS_")
                .filter(|key| {
                    let section = key
                        .as_str()
                        .split("__")
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    TOP_LEVEL_KEYS.contains(&section.as_str())
                })
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|error| ConfigError(describe(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that serde cannot express: cross-key rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.default_room_version.rules().is_none()
            || !crate::rooms::version::is_supported(&self.default_room_version)
        {
            return Err(ConfigError(format!(
                "default_room_version: room version {} is not supported",
                self.default_room_version
            )));
        }
        self.registration.validate(&self.listen)?;
        self.limits.validate()?;
        self.ratelimit.validate()?;
        self.media.validate()?;
        self.search.validate()?;
        self.federation.validate()?;
        self.rtc.validate()?;
        if !self.public_base_url.is_empty() && !self.public_base_url.starts_with("http") {
            return Err(ConfigError(
                "public_base_url: must start with http:// or https://".into(),
            ));
        }
        Ok(())
    }

    /// The URL clients are told to use.
    pub fn client_base_url(&self) -> String {
        if self.public_base_url.is_empty() {
            format!("http://{}", self.listen.client)
        } else {
            self.public_base_url.trim_end_matches('/').to_owned()
        }
    }
}

/// Turns figment's error into one line per problem, each naming the key.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let kind = e.kind.to_string();
            if key.is_empty() {
                kind
            } else {
                format!("{key}: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
