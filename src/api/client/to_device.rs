//! `/sendToDevice` (issue 4). The logic is in `crate::e2ee::to_device`.

use std::sync::Arc;

use ruma::api::client::to_device::send_event_to_device;

use crate::{api::ruma::Ruma, e2ee::to_device, error::Result, server::Server};

pub async fn send(
    server: Arc<Server>,
    request: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let body = &request.body;
    let messages: Vec<to_device::Message<'_>> = body
        .messages
        .iter()
        .flat_map(|(user, devices)| {
            devices
                .iter()
                .map(move |(device, content)| (&**user, device, content.json().get()))
        })
        .collect();
    to_device::send(
        &server,
        request.user()?,
        request.device()?,
        &body.event_type.to_string(),
        body.txn_id.as_str(),
        &messages,
    )?;
    Ok(send_event_to_device::v3::Response::new())
}
