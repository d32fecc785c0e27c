use serde::{Deserialize, Serialize};

/// `[log]`: what is logged and how.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `sparks=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    /// `pretty` for humans or `json` for log collectors.
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info,ruma_state_res=warn".into(),
            format: LogFormat::Pretty,
        }
    }
}
