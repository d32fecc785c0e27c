//! The one error type of the server, mapped to a Matrix `errcode` and HTTP status at the edge.
//!
//! Every fallible path in services and handlers returns [`Error`]. Internal failures (storage,
//! serialisation of our own data) become `500 M_UNKNOWN` with the detail logged, never sent to the
//! client; everything a client can cause has its own errcode.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: Cow<'static, str>,
    /// Extra top-level fields of the error body (`retry_after_ms`, `soft_logout`, UIA flows ...).
    pub extra: Option<Box<Map<String, Value>>>,
    /// Send `Connection: close` (the request body was not read, so the connection is unusable).
    pub close: bool,
}

macro_rules! constructors {
    ($($name:ident => $status:ident, $code:literal;)*) => {
        impl Error {
            $(
                pub fn $name(message: impl Into<Cow<'static, str>>) -> Self {
                    Self::new(StatusCode::$status, $code, message)
                }
            )*
        }
    };
}

constructors! {
    forbidden => FORBIDDEN, "M_FORBIDDEN";
    not_found => NOT_FOUND, "M_NOT_FOUND";
    bad_json => BAD_REQUEST, "M_BAD_JSON";
    not_json => BAD_REQUEST, "M_NOT_JSON";
    invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
    missing_param => BAD_REQUEST, "M_MISSING_PARAM";
    missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
    user_in_use => BAD_REQUEST, "M_USER_IN_USE";
    invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
    room_in_use => BAD_REQUEST, "M_ROOM_IN_USE";
    unsupported_room_version => BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION";
    too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
    unrecognized => NOT_FOUND, "M_UNRECOGNIZED";
    unknown => INTERNAL_SERVER_ERROR, "M_UNKNOWN";
    bad_state => BAD_REQUEST, "M_BAD_STATE";
    bad_alias => BAD_REQUEST, "M_BAD_ALIAS";
    guest_access_forbidden => FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN";
    user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
    weak_password => BAD_REQUEST, "M_WEAK_PASSWORD";
    unknown_device => NOT_FOUND, "M_NOT_FOUND";
    exclusive => BAD_REQUEST, "M_EXCLUSIVE";
    invalid_room_state => BAD_REQUEST, "M_INVALID_ROOM_STATE";
}

impl Error {
    pub fn new(
        status: StatusCode,
        errcode: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: None,
            close: false,
        }
    }

    /// `409 M_UNKNOWN`: a resource (alias ...) is already taken, as the spec asks.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, "M_UNKNOWN", message)
    }

    /// `413 M_TOO_LARGE` for a body that was not read: the connection is closed after it.
    pub fn too_large_closing(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            close: true,
            ..Self::too_large(message)
        }
    }

    /// `405 M_UNRECOGNIZED`: known path, wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed for this endpoint",
        )
    }

    /// `401 M_UNKNOWN_TOKEN`; `soft_logout` tells the client it may refresh or re-login the device.
    pub fn unknown_token(soft_logout: bool) -> Self {
        let message = if soft_logout {
            "Access token has expired"
        } else {
            "Unknown access token"
        };
        Self::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", message)
            .with_field("soft_logout", Value::Bool(soft_logout))
    }

    /// `429 M_LIMIT_EXCEEDED` with the `retry_after_ms` field (and a `Retry-After` header).
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with_field("retry_after_ms", json!(retry_after_ms))
    }

    /// A `500` whose detail is logged but not shown to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::unknown("Internal server error")
    }

    /// A user-interactive authentication challenge: status 401 and the UIA body as the whole
    /// response (`flows`, `session`, `completed`, `params`, optionally errcode/error).
    pub fn uiaa(body: Map<String, Value>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            errcode: "",
            message: Cow::Borrowed(""),
            extra: Some(Box::new(body)),
            close: false,
        }
    }

    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    pub fn body(&self) -> Value {
        let mut body = self.extra.as_deref().cloned().unwrap_or_default();
        if !self.errcode.is_empty() {
            body.insert("errcode".to_owned(), Value::String(self.errcode.to_owned()));
            body.insert("error".to_owned(), Value::String(self.message.to_string()));
        }
        Value::Object(body)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.errcode,
            self.message
        )
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let retry_after = self
            .extra
            .as_ref()
            .and_then(|extra| extra.get("retry_after_ms"))
            .and_then(Value::as_u64)
            .map(|ms| ms.div_ceil(1000));
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<rocksdb::Error> for Error {
    fn from(error: rocksdb::Error) -> Self {
        Self::internal(format_args!("storage: {error}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::internal(format_args!("json: {error}"))
    }
}
