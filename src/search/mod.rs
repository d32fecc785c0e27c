//! Full-text search over room events (issue 3).

use ruma::EventId;

use crate::{config::Config, rooms::pdu::Pdu};

pub struct Search {}

impl Search {
    pub fn open(_config: &Config) -> Result<Self, String> {
        Ok(Self {})
    }

    /// Called after an event is committed (not for rejected events).
    pub fn index_event(&self, _pdu: &Pdu) {}

    /// Called after an event is redacted.
    pub fn remove_event(&self, _event_id: &EventId) {}
}
