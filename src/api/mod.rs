//! The HTTP layer: axum handlers that parse, authorise and call services.

pub mod client;
pub mod federation;
pub mod router;
pub mod rtc;
pub mod ruma;
