//! Client-server API handlers, one file per spec area.

pub mod account;
pub mod account_data;
pub mod alias;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod media;
pub mod membership;
pub mod message;
pub mod presence;
pub mod profile;
pub mod public_rooms;
pub mod push;
pub mod receipt;
pub mod relations;
pub mod report;
pub mod room;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod sync;
pub mod tag;
pub mod typing;
pub mod user_directory;
