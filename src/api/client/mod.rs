//! Client-server API handlers, one file per spec area.

pub mod account;
pub mod account_data;
pub mod alias;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod membership;
pub mod message;
pub mod profile;
pub mod room;
pub mod session;
pub mod state;
pub mod sync;
pub mod typing;
