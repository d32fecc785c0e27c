//! Push rules, pushers and `/notifications`.

use std::sync::Arc;

use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
        set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{AnyPushRule, InsertPushRuleError, RemovePushRuleError, RuleKind, Ruleset},
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    push::{self, pushers},
    rooms::receipts,
    server::Server,
    sync::{format, parse_token, token},
};

fn rule_json(rule: AnyPushRule) -> Result<Value> {
    Ok(match rule {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => serde_json::to_value(r)?,
        AnyPushRule::Content(r) => serde_json::to_value(r)?,
        AnyPushRule::Room(r) => serde_json::to_value(r)?,
        AnyPushRule::Sender(r) => serde_json::to_value(r)?,
        _ => return Err(not_found()),
    })
}

fn ruleset(server: &Server, user: &ruma::UserId) -> Result<Ruleset> {
    Ok((*server.push.ruleset(&server.maps, user)?).clone())
}

fn not_found() -> Error {
    Error::not_found("Push rule not found")
}

pub async fn all(
    server: Arc<Server>,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> Result<Value> {
    Ok(json!({ "global": ruleset(&server, request.user()?)? }))
}

pub async fn global(
    server: Arc<Server>,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<Value> {
    Ok(serde_json::to_value(ruleset(&server, request.user()?)?)?)
}

pub async fn get(server: Arc<Server>, request: Ruma<get_pushrule::v3::Request>) -> Result<Value> {
    let rules = ruleset(&server, request.user()?)?;
    let rule = rules
        .get(request.body.kind.clone(), &request.body.rule_id)
        .ok_or_else(not_found)?;
    rule_json(rule.to_owned())
}

pub async fn set(
    server: Arc<Server>,
    request: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    let mut rules = ruleset(&server, &user)?;
    rules
        .insert(
            body.rule.clone(),
            body.after.as_deref(),
            body.before.as_deref(),
        )
        .map_err(|error| match error {
            InsertPushRuleError::UnknownRuleId => {
                Error::not_found("The rule named by before/after does not exist")
            }
            other => Error::bad_json(format!("Invalid push rule: {other}")),
        })?;
    server.push.save(&server, &user, rules)?;
    Ok(set_pushrule::v3::Response::new())
}

pub async fn delete(
    server: Arc<Server>,
    request: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let user = request.owned_user()?;
    let mut rules = ruleset(&server, &user)?;
    rules
        .remove(request.body.kind.clone(), &request.body.rule_id)
        .map_err(|error| match error {
            RemovePushRuleError::NotFound => not_found(),
            RemovePushRuleError::ServerDefault => {
                Error::invalid_param("Server-default rules cannot be deleted; disable them instead")
            }
            other => Error::invalid_param(format!("Cannot delete this rule: {other}")),
        })?;
    server.push.save(&server, &user, rules)?;
    Ok(delete_pushrule::v3::Response::new())
}

pub async fn get_enabled(
    server: Arc<Server>,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let rules = ruleset(&server, request.user()?)?;
    let rule = rules
        .get(request.body.kind.clone(), &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

pub async fn set_enabled(
    server: Arc<Server>,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    let mut rules = ruleset(&server, &user)?;
    rules
        .set_enabled(body.kind.clone(), &body.rule_id, body.enabled)
        .map_err(|_| not_found())?;
    server.push.save(&server, &user, rules)?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

pub async fn get_actions(
    server: Arc<Server>,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let rules = ruleset(&server, request.user()?)?;
    let rule = rules
        .get(request.body.kind.clone(), &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(
        rule.actions().to_vec(),
    ))
}

pub async fn set_actions(
    server: Arc<Server>,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    let mut rules = ruleset(&server, &user)?;
    rules
        .set_actions(body.kind.clone(), &body.rule_id, body.actions.clone())
        .map_err(|_| not_found())?;
    server.push.save(&server, &user, rules)?;
    Ok(set_pushrule_actions::v3::Response::new())
}

pub async fn pushers_list(
    server: Arc<Server>,
    request: Ruma<get_pushers::v3::Request>,
) -> Result<Value> {
    let pushers = pushers::list(&server.maps, request.user()?)?;
    let pushers: Vec<Value> = pushers
        .into_iter()
        .map(|p| {
            let mut value = serde_json::to_value(&p).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.remove("pushkey_ts");
            }
            value
        })
        .collect();
    Ok(json!({ "pushers": pushers }))
}

/// `/pushers/set`, read from the JSON body: `kind: null` deletes.
pub async fn pushers_set(
    server: Arc<Server>,
    request: Ruma<set_pusher::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body: Value =
        serde_json::from_slice(&request.json).map_err(|_| Error::not_json("Invalid JSON"))?;
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    let app_id = field("app_id").ok_or_else(|| Error::missing_param("app_id is required"))?;
    let pushkey = field("pushkey").ok_or_else(|| Error::missing_param("pushkey is required"))?;
    if app_id.len() > 64 || pushkey.len() > 512 {
        return Err(Error::invalid_param("app_id or pushkey is too long"));
    }
    match body.get("kind") {
        Some(Value::Null) => {
            pushers::remove(&server, &user, &app_id, &pushkey)?;
            return Ok(json!({}));
        }
        Some(Value::String(kind)) if kind == "http" => {}
        Some(Value::String(kind)) if kind == "email" => {
            return Err(Error::invalid_param("Email pushers are not supported"));
        }
        _ => return Err(Error::invalid_param("kind must be \"http\" or null")),
    }
    let pusher = pushers::Pusher {
        kind: "http".into(),
        app_id,
        pushkey,
        app_display_name: field("app_display_name")
            .ok_or_else(|| Error::missing_param("app_display_name is required"))?,
        device_display_name: field("device_display_name")
            .ok_or_else(|| Error::missing_param("device_display_name is required"))?,
        profile_tag: field("profile_tag"),
        lang: field("lang").ok_or_else(|| Error::missing_param("lang is required"))?,
        data: body
            .get("data")
            .cloned()
            .filter(Value::is_object)
            .ok_or_else(|| Error::missing_param("data is required"))?,
        pushkey_ts: 0,
    };
    let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
    pushers::set(&server, &user, pusher, append)?;
    Ok(json!({}))
}

pub async fn notifications(
    server: Arc<Server>,
    request: Ruma<get_notifications::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = &request.body;
    let maps = &server.maps;
    let limit = body
        .limit
        .map_or(20, |l| u64::from(l).clamp(1, 100) as usize);
    let before = body
        .from
        .as_deref()
        .map(parse_token)
        .transpose()?
        .unwrap_or(u64::MAX);
    let only_highlight = body.only.as_deref() == Some("highlight");
    let mut out = Vec::new();
    let mut cursor = before;
    let mut next = None;
    'pages: loop {
        let page = push::notifications(&server, &user, cursor, 100)?;
        if page.is_empty() {
            break;
        }
        for (count, notification) in page {
            cursor = count;
            if only_highlight && !notification.highlight {
                continue;
            }
            if out.len() == limit {
                next = Some(count + 1);
                break 'pages;
            }
            let Some(pdu) = server.rooms.pdu(maps, &notification.event_id)? else {
                continue;
            };
            let meta = server.rooms.event_meta(maps, &pdu.event_id)?;
            let read_up_to = receipts::read_by_receipts(maps, &notification.room_id, &user);
            let read = count <= read_up_to.for_thread(notification.thread.as_deref());
            out.push(json!({
                "actions": notification.actions,
                "event": format::client_event_for(&server, &pdu, meta.as_deref(), Some(&user), request.device().ok(), true)?,
                "read": read,
                "room_id": notification.room_id,
                "ts": notification.ts,
            }));
        }
    }
    let mut response = json!({ "notifications": out });
    if let Some(next) = next {
        response["next_token"] = json!(token(next));
    }
    Ok(response)
}

#[allow(dead_code)]
fn _kinds() -> [RuleKind; 0] {
    []
}
