//! Room versions this server supports.
//!
//! ruma's state resolution supports room versions 6 and later (those with canonical JSON);
//! versions 1-5 are only best-effort there, so they are not advertised.

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::error::{Error, Result};

pub const SUPPORTED: &[RoomVersionId] = &[
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

pub fn is_supported(version: &RoomVersionId) -> bool {
    SUPPORTED.contains(version)
}

/// The rules of a supported room version, or `M_UNSUPPORTED_ROOM_VERSION`.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    if !is_supported(version) {
        return Err(Error::unsupported_room_version(format!(
            "Room version {version} is not supported"
        )));
    }
    version.rules().ok_or_else(|| {
        Error::unsupported_room_version(format!("Room version {version} is not supported"))
    })
}
