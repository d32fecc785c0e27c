//! User-interactive authentication: sessions, stages, and the 401 challenge body.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    OwnedUserId, UserId,
    api::client::uiaa::{AuthData, UserIdentifier},
};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    server::{Server, rand_alnum},
};

const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
pub struct UiaaSessions {
    sessions: Mutex<HashMap<String, UiaaSession>>,
}

struct UiaaSession {
    completed: Vec<String>,
    created: Instant,
    /// The endpoint the session belongs to, so a session cannot be replayed elsewhere.
    endpoint: &'static str,
}

/// The stages a flow needs, e.g. `[["m.login.password"]]`.
pub type Flows = Vec<Vec<&'static str>>;

impl UiaaSessions {
    /// Runs one round of UIA. `Ok(())` when a flow is complete; otherwise the 401 challenge.
    /// `user` is who must prove identity for password stages (None during registration).
    pub async fn check(
        &self,
        server: &Server,
        endpoint: &'static str,
        auth: Option<&AuthData>,
        flows: &Flows,
        user: Option<&UserId>,
        params: Map<String, Value>,
    ) -> Result<()> {
        self.expire();
        let Some(auth) = auth else {
            let session = self.start(endpoint);
            return Err(self.challenge(&session, flows, &params, None));
        };
        let session = match auth.session() {
            Some(session)
                if self
                    .sessions
                    .lock()
                    .get(session)
                    .is_some_and(|s| s.endpoint == endpoint) =>
            {
                session.to_owned()
            }
            Some(_) => return Err(Error::forbidden("Unknown or expired UIA session")),
            // A client may complete a stage without a session (e.g. password first).
            None => self.start(endpoint),
        };
        let stage = match auth {
            AuthData::Dummy(_) => Some("m.login.dummy"),
            AuthData::Password(password) => {
                let user = user.ok_or_else(|| {
                    Error::forbidden("Password authentication is not possible here")
                })?;
                let claimed = identifier_user(server, &password.identifier);
                if claimed.as_deref() != Some(user) {
                    return Err(self.challenge(
                        &session,
                        flows,
                        &params,
                        Some(Error::forbidden("Invalid username or password")),
                    ));
                }
                if !server
                    .users
                    .check_password(&server.maps, user, &password.password)
                    .await?
                {
                    return Err(self.challenge(
                        &session,
                        flows,
                        &params,
                        Some(Error::forbidden("Invalid username or password")),
                    ));
                }
                Some("m.login.password")
            }
            AuthData::RegistrationToken(token) => match &server.config.registration.token {
                Some(expected) if constant_time_eq(expected.as_bytes(), token.token.as_bytes()) => {
                    Some("m.login.registration_token")
                }
                _ => {
                    return Err(self.challenge(
                        &session,
                        flows,
                        &params,
                        Some(Error::forbidden("Invalid registration token")),
                    ));
                }
            },
            _ => None,
        };
        let Some(stage) = stage else {
            return Err(self.challenge(
                &session,
                flows,
                &params,
                Some(Error::unrecognized("Unsupported authentication type")),
            ));
        };
        let allowed = flows.iter().any(|flow| flow.contains(&stage));
        if !allowed {
            return Err(self.challenge(
                &session,
                flows,
                &params,
                Some(Error::invalid_param("Authentication type not allowed here")),
            ));
        }
        let done = {
            let mut sessions = self.sessions.lock();
            let Some(entry) = sessions.get_mut(&session) else {
                return Err(Error::forbidden("Unknown UIA session"));
            };
            if !entry.completed.iter().any(|s| s == stage) {
                entry.completed.push(stage.to_owned());
            }
            let done = flows
                .iter()
                .any(|flow| flow.iter().all(|s| entry.completed.iter().any(|c| c == s)));
            if done {
                sessions.remove(&session);
            }
            done
        };
        if done {
            Ok(())
        } else {
            Err(self.challenge(&session, flows, &params, None))
        }
    }

    fn start(&self, endpoint: &'static str) -> String {
        let session = rand_alnum(24);
        self.sessions.lock().insert(
            session.clone(),
            UiaaSession {
                completed: vec![],
                created: Instant::now(),
                endpoint,
            },
        );
        session
    }

    fn expire(&self) {
        self.sessions
            .lock()
            .retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
    }

    fn challenge(
        &self,
        session: &str,
        flows: &Flows,
        params: &Map<String, Value>,
        error: Option<Error>,
    ) -> Error {
        let completed = self
            .sessions
            .lock()
            .get(session)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let mut body = Map::new();
        body.insert(
            "flows".into(),
            Value::Array(flows.iter().map(|f| json!({ "stages": f })).collect()),
        );
        body.insert("params".into(), Value::Object(params.clone()));
        body.insert("session".into(), json!(session));
        if !completed.is_empty() {
            body.insert("completed".into(), json!(completed));
        }
        if let Some(error) = error {
            body.insert("errcode".into(), json!(error.errcode));
            body.insert("error".into(), json!(error.message));
        }
        Error::uiaa(body)
    }
}

/// The user an `m.id.user` identifier names (localpart or full id), on this server.
pub fn identifier_user(server: &Server, identifier: &UserIdentifier) -> Option<OwnedUserId> {
    match identifier {
        UserIdentifier::Matrix(id) => parse_user(server, &id.user),
        _ => None,
    }
}

pub fn parse_user(server: &Server, user: &str) -> Option<OwnedUserId> {
    let user = user.trim();
    if user.starts_with('@') {
        OwnedUserId::try_from(user).ok()
    } else {
        OwnedUserId::try_from(format!("@{}:{}", user.to_lowercase(), server.server_name())).ok()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
