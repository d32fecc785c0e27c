//! Typing notifications.

use std::sync::Arc;

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::membership::require_joined,
    server::Server,
};

pub async fn set(
    server: Arc<Server>,
    request: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if body.user_id != user {
        return Err(Error::forbidden("You may only set your own typing state"));
    }
    require_joined(&server, &body.room_id, &user)?;
    let timeout = match &body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    server.typing.set(&server, &body.room_id, &user, timeout)?;
    Ok(create_typing_event::v3::Response::new())
}
