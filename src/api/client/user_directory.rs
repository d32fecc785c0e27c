//! `POST /user_directory/search` (issue 3). The directory is `crate::directory::users`.

use std::sync::Arc;

use ruma::api::client::user_directory::search_users;
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    directory::users,
    error::{Error, Result},
    server::Server,
};

pub async fn search(
    server: Arc<Server>,
    request: Ruma<search_users::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let term = request.body.search_term.clone();
    let limit = u64::from(request.body.limit) as usize;
    let (results, limited) = tokio::task::spawn_blocking(move || {
        // Member events queued before this request are in the directory.
        server.search.wait_applied();
        users::search(&server, &user, &term, limit)
    })
    .await
    .map_err(Error::internal)??;
    Ok(json!({ "results": results, "limited": limited }))
}
