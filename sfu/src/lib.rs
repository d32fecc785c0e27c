//! The SFU: forwards media between the participants of a meeting, spoken to with LiveKit's
//! signalling so unmodified LiveKit clients (and Element Call) work.
//!
//! - [`Sfu`] is a sans-IO core in the style of str0m: one [`str0m::Rtc`] per peer connection
//!   (each participant has a *publisher* connection it sends on and a *subscriber* connection
//!   it receives on), rooms that route RTP between them, time passed in. No sockets, clocks
//!   or tasks inside, so it can be tested deterministically.
//! - [`driver`] runs it on tokio: one UDP socket (ICE-lite, DTLS-SRTP), a command channel
//!   for the WebSocket tasks, timers.
//! - [`token`] reads and writes LiveKit access tokens.
//! - [`latency`] measures how long forwarded packets spend inside the SFU.
//!
//! Media is forwarded in RTP mode: payloads are passed on untouched (so end-to-end encrypted
//! frames stay opaque), only sequence numbers are rewritten per receiver.

pub mod driver;
mod forward;
mod ids;
pub mod latency;
mod peer;
mod sfu;
mod signal;
mod speaker;
pub mod token;

pub use sfu::{ConnId, JoinParams, Output, SendJob, Sfu, SfuConfig};
