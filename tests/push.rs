//! Push: the spec's default push rules, push rule CRUD, how rules drive notifications
//! (`/sync` counts, `/notifications`), pushers, and delivery to a push gateway.
//!
//! Delivery tests run a real HTTP push gateway on 127.0.0.1 inside the test (an axum server that
//! records each request): Sygnal (`matrix-sygnal`) is not available from the package index here,
//! so they are named `..._with_local_http_receiver`.

mod common;
#[path = "notify_helpers/mod.rs"]
mod nh;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, User, assert_error, enc};
use nh::*;
use serde_json::{Value, json};

fn position(ids: &[String], id: &str) -> usize {
    ids.iter()
        .position(|i| i == id)
        .unwrap_or_else(|| panic!("{id} missing from {ids:?}"))
}

fn rule<'a>(ruleset: &'a Value, kind: &str, id: &str) -> &'a Value {
    ruleset[kind]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule_id"] == id))
        .unwrap_or_else(|| panic!("{kind}/{id} missing: {ruleset}"))
}

#[tokio::test]
async fn default_push_rules_follow_the_spec() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let (status, all) = s.get(&format!("{V3}/pushrules/"), &bob.token).await;
    assert_eq!(status, 200, "{all}");
    let global = &all["global"];
    let (status, scoped) = s.get(&format!("{V3}/pushrules/global/"), &bob.token).await;
    assert_eq!(status, 200, "{scoped}");
    assert_eq!(&scoped, global, "/pushrules/global/ is the global ruleset");

    let overrides = rule_ids(&s, &bob, "override").await;
    assert_eq!(overrides[0], ".m.rule.master", "{overrides:?}");
    let in_order = [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ];
    let positions: Vec<usize> = in_order.iter().map(|id| position(&overrides, id)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "override order: {overrides:?}"
    );
    for id in [".m.rule.is_room_mention", ".m.rule.tombstone"] {
        let at = position(&overrides, id);
        assert!(
            at > position(&overrides, ".m.rule.is_user_mention")
                && at < position(&overrides, ".m.rule.reaction"),
            "{id} misplaced: {overrides:?}"
        );
    }
    // Removed in v1.17 (legacy body-based mentions).
    for legacy in [
        ".m.rule.contains_display_name",
        ".m.rule.roomnotif",
        ".m.rule.contains_user_name",
    ] {
        assert!(
            !global.to_string().contains(legacy),
            "{legacy} was removed from the defaults in v1.17: {global}"
        );
    }
    let underrides = rule_ids(&s, &bob, "underride").await;
    let in_order = [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ];
    let positions: Vec<usize> = in_order
        .iter()
        .map(|id| position(&underrides, id))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "underride order: {underrides:?}"
    );

    assert_eq!(
        rule(global, "override", ".m.rule.master"),
        &json!({ "rule_id": ".m.rule.master", "default": true, "enabled": false, "conditions": [], "actions": [] })
    );
    let mention = rule(global, "override", ".m.rule.is_user_mention");
    assert_eq!(mention["default"], true);
    assert_eq!(mention["enabled"], true);
    assert_eq!(
        mention["conditions"],
        json!([{ "kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": bob.user_id }])
    );
    assert_eq!(
        mention["actions"],
        json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }])
    );
    let message = rule(global, "underride", ".m.rule.message");
    assert_eq!(message["actions"], json!(["notify"]));
    assert_eq!(
        message["conditions"],
        json!([{ "kind": "event_match", "key": "type", "pattern": "m.room.message" }])
    );
    let one_to_one = rule(global, "underride", ".m.rule.room_one_to_one");
    assert_eq!(
        one_to_one["actions"],
        json!(["notify", { "set_tweak": "sound", "value": "default" }])
    );

    let (status, master) = s
        .get(&pushrule_path("override", ".m.rule.master", ""), &bob.token)
        .await;
    assert_eq!(status, 200, "{master}");
    assert_eq!(master["rule_id"], ".m.rule.master");
    assert_eq!(master["enabled"], false);
    assert_eq!(master["default"], true);
}

#[tokio::test]
async fn push_rules_are_synced_as_account_data() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let initial = sync(&s, &bob, &Value::Null, None).await;
    let events = arr(&initial["account_data"]["events"]);
    let rules = content_of(&events, "m.push_rules")
        .unwrap_or_else(|| panic!("m.push_rules in the initial sync: {initial}"));
    assert_eq!(rules["global"]["override"][0]["rule_id"], ".m.rule.master");
    assert!(rules["global"]["underride"].is_array(), "{rules}");

    let since = next_batch(&initial);
    ok(
        &s.put(
            &pushrule_path("override", "my.rule", ""),
            &bob.token,
            json!({ "conditions": [], "actions": ["notify"] }),
        )
        .await,
        "put rule",
    );
    let inc = sync(&s, &bob, &Value::Null, Some(&since)).await;
    let events = arr(&inc["account_data"]["events"]);
    let rules = content_of(&events, "m.push_rules")
        .unwrap_or_else(|| panic!("changed rules in the next sync: {inc}"));
    assert!(rules.to_string().contains("my.rule"), "{rules}");
}

#[tokio::test]
async fn push_rule_crud_and_ordering() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let put = |id: &'static str, query: &'static str| {
        let s = &s;
        let bob = &bob;
        async move {
            s.put(
                &format!("{}{query}", pushrule_path("override", id, "")),
                &bob.token,
                json!({
                    "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": id }],
                    "actions": ["notify"],
                }),
            )
            .await
        }
    };
    ok(&put("my.b", "").await, "put my.b");
    ok(&put("my.a", "").await, "put my.a");
    let ids = rule_ids(&s, &bob, "override").await;
    assert!(
        position(&ids, "my.a") < position(&ids, "my.b"),
        "a new rule is the most important user rule: {ids:?}"
    );
    assert!(
        position(&ids, "my.b") < position(&ids, ".m.rule.suppress_notices"),
        "user rules outrank server defaults: {ids:?}"
    );
    assert_eq!(
        ids[0], ".m.rule.master",
        "master stays first whatever is added: {ids:?}"
    );
    ok(&put("my.c", "?after=my.b").await, "after");
    ok(&put("my.d", "?before=my.a").await, "before");
    let ids = rule_ids(&s, &bob, "override").await;
    let order: Vec<usize> = ["my.d", "my.a", "my.b", "my.c"]
        .iter()
        .map(|id| position(&ids, id))
        .collect();
    assert_eq!(
        order,
        vec![order[0], order[0] + 1, order[0] + 2, order[0] + 3],
        "{ids:?}"
    );

    let (status, rule) = s
        .get(&pushrule_path("override", "my.a", ""), &bob.token)
        .await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(
        rule,
        json!({
            "rule_id": "my.a",
            "default": false,
            "enabled": true,
            "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "my.a" }],
            "actions": ["notify"],
        })
    );

    // enabled
    ok(
        &s.put(
            &pushrule_path("override", "my.a", "/enabled"),
            &bob.token,
            json!({ "enabled": false }),
        )
        .await,
        "disable",
    );
    let (status, enabled) = s
        .get(&pushrule_path("override", "my.a", "/enabled"), &bob.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(enabled, json!({ "enabled": false }));

    // actions
    let actions = json!(["notify", { "set_tweak": "sound", "value": "ping" }]);
    ok(
        &s.put(
            &pushrule_path("override", "my.a", "/actions"),
            &bob.token,
            json!({ "actions": actions }),
        )
        .await,
        "set actions",
    );
    let (status, got) = s
        .get(&pushrule_path("override", "my.a", "/actions"), &bob.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got, json!({ "actions": actions }));
    // Server-default rules' actions and enabled flag can be changed.
    ok(
        &s.put(
            &pushrule_path("underride", ".m.rule.message", "/actions"),
            &bob.token,
            json!({ "actions": [] }),
        )
        .await,
        "default actions",
    );
    let (_, got) = s
        .get(
            &pushrule_path("underride", ".m.rule.message", "/actions"),
            &bob.token,
        )
        .await;
    assert_eq!(got, json!({ "actions": [] }));

    // delete
    ok(
        &s.request(
            reqwest::Method::DELETE,
            &pushrule_path("override", "my.a", ""),
            Some(&bob.token),
            None,
        )
        .await,
        "delete",
    );
    let gone = s
        .get(&pushrule_path("override", "my.a", ""), &bob.token)
        .await;
    assert_error(&gone, 404, "M_NOT_FOUND");
    assert!(
        !rule_ids(&s, &bob, "override")
            .await
            .contains(&"my.a".to_owned())
    );
}

#[tokio::test]
async fn push_rule_errors() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let delete = |path: String| {
        let s = &s;
        let token = bob.token.clone();
        async move {
            s.request(reqwest::Method::DELETE, &path, Some(&token), None)
                .await
        }
    };
    assert_error(
        &s.get(&pushrule_path("override", "nope", ""), &bob.token)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &s.get(&pushrule_path("override", "nope", "/enabled"), &bob.token)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &s.get(&pushrule_path("override", "nope", "/actions"), &bob.token)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &s.put(
            &pushrule_path("override", "nope", "/enabled"),
            &bob.token,
            json!({ "enabled": true }),
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &s.put(
            &pushrule_path("override", "nope", "/actions"),
            &bob.token,
            json!({ "actions": [] }),
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &delete(pushrule_path("override", "nope", "")).await,
        404,
        "M_NOT_FOUND",
    );
    // A rule id starting with "." is reserved for server-default rules.
    let reserved = s
        .put(
            &pushrule_path("override", ".my.rule", ""),
            &bob.token,
            json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(reserved.0, 400, "{}", reserved.1);
    // Rules cannot be placed relative to a server-default rule.
    let relative = s
        .put(
            &format!(
                "{}?after=.m.rule.master",
                pushrule_path("override", "my.rule", "")
            ),
            &bob.token,
            json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(relative.0, 400, "{}", relative.1);
    assert_error(
        &s.get(&pushrule_path("override", "my.rule", ""), &bob.token)
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn put_rule_relative_to_unknown_rule_is_400() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    // Spec (setPushRule 400): "There was a problem configuring this push rule", example
    // "before/after rule not found"; 404 is for updating a rule that does not exist.
    let result = s
        .put(
            &format!(
                "{}?before=not.there",
                pushrule_path("override", "my.rule", "")
            ),
            &bob.token,
            json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(
        result.0, 400,
        "before/after naming an unknown rule: {}",
        result.1
    );
}

#[tokio::test]
async fn deleting_server_default_rule_is_refused() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let result = s
        .request(
            reqwest::Method::DELETE,
            &pushrule_path("override", ".m.rule.suppress_notices", ""),
            Some(&bob.token),
            None,
        )
        .await;
    // The spec lists only 404 (no such rule) for this endpoint; a server-default rule exists,
    // so Sparks refuses the request itself: 400 M_INVALID_PARAM (clients disable such rules).
    assert_error(&result, 400, "M_INVALID_PARAM");
    assert!(
        rule_ids(&s, &bob, "override")
            .await
            .contains(&".m.rule.suppress_notices".to_owned()),
        "the default rule is still there"
    );
}

#[tokio::test]
async fn enabling_master_rule_mutes_everything() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    ok(
        &s.put(
            &pushrule_path("override", ".m.rule.master", "/enabled"),
            &bob.token,
            json!({ "enabled": true }),
        )
        .await,
        "enable master",
    );
    let (_, enabled) = s
        .get(
            &pushrule_path("override", ".m.rule.master", "/enabled"),
            &bob.token,
        )
        .await;
    assert_eq!(enabled, json!({ "enabled": true }));
    // A user-defined override does not outrank master either.
    ok(
        &s.put(
            &pushrule_path("override", "my.always", ""),
            &bob.token,
            json!({ "conditions": [], "actions": ["notify"] }),
        )
        .await,
        "put rule",
    );
    s.send_text(&alice, &room, "hello").await;
    send_msg(
        &s,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "bob!", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));
    let (status, body) = s.get(&format!("{V3}/notifications"), &bob.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(arr(&body["notifications"]).len(), 0, "{body}");

    // Disabling it again restores notifications.
    ok(
        &s.put(
            &pushrule_path("override", ".m.rule.master", "/enabled"),
            &bob.token,
            json!({ "enabled": false }),
        )
        .await,
        "disable master",
    );
    s.send_text(&alice, &room, "again").await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
}

#[tokio::test]
async fn room_rule_mutes_a_room_but_not_mentions() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let muted = public_room(&s, &alice, &[&bob, &carol]).await;
    let legacy = public_room(&s, &alice, &[&bob, &carol]).await;
    let loud = public_room(&s, &alice, &[&bob, &carol]).await;
    ok(
        &s.put(
            &pushrule_path("room", &muted, ""),
            &bob.token,
            json!({ "actions": [] }),
        )
        .await,
        "room rule",
    );
    // "dont_notify" is a historical action that MUST be treated as no action.
    ok(
        &s.put(
            &pushrule_path("room", &legacy, ""),
            &bob.token,
            json!({ "actions": ["dont_notify"] }),
        )
        .await,
        "room rule dont_notify",
    );
    let (status, rule) = s.get(&pushrule_path("room", &muted, ""), &bob.token).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["rule_id"], muted.as_str());
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["default"], false);

    for room in [&muted, &legacy, &loud] {
        s.send_text(&alice, room, "chatter").await;
    }
    assert_eq!(counts(&s, &bob, &muted).await, (0, 0), "muted room");
    assert_eq!(counts(&s, &bob, &legacy).await, (0, 0), "dont_notify room");
    assert_eq!(
        counts(&s, &bob, &loud).await,
        (1, 0),
        "other rooms unaffected"
    );
    assert_eq!(counts(&s, &carol, &muted).await, (1, 0), "only bob's rules");

    // Override rules (.m.rule.is_user_mention) outrank room rules.
    send_msg(
        &s,
        &alice,
        &muted,
        json!({ "msgtype": "m.text", "body": "bob, urgent", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    assert_eq!(counts(&s, &bob, &muted).await, (1, 1));
}

/// Most members share one stored notification per event; a member who joins later must not
/// inherit the ones from before their join, and one who leaves and rejoins not those from while
/// they were away.
#[tokio::test]
async fn members_count_only_what_was_sent_while_they_were_joined() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob]).await;
    s.send_text(&alice, &room, "before carol").await;
    s.send_text(&alice, &room, "still before carol").await;
    let (status, body) = s.join(&carol, &room).await;
    assert_eq!(status, 200, "{body}");
    s.send_text(&alice, &room, "carol is here").await;
    assert_eq!(counts(&s, &bob, &room).await, (3, 0));
    assert_eq!(counts(&s, &carol, &room).await, (1, 0));
    let (status, body) = s.get(&format!("{V3}/notifications"), &carol.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(arr(&body["notifications"]).len(), 1, "{body}");

    let (status, body) = s
        .post(
            &format!("{V3}/rooms/{}/leave", enc(&room)),
            &carol.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.send_text(&alice, &room, "carol is away").await;
    let (status, body) = s.join(&carol, &room).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        counts(&s, &carol, &room).await,
        (0, 0),
        "nothing since the rejoin"
    );
    // The sender's own messages never count for them.
    assert_eq!(counts(&s, &alice, &room).await, (0, 0));
}

#[tokio::test]
async fn content_rule_matches_whole_words() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    ok(
        &s.put(
            &pushrule_path("content", "cake", ""),
            &bob.token,
            json!({ "pattern": "cake", "actions": ["notify", { "set_tweak": "highlight" }] }),
        )
        .await,
        "content rule",
    );
    s.send_text(&alice, &room, "Who wants CAKE?").await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (1, 1),
        "case-insensitive word"
    );
    s.send_text(&alice, &room, "cakes and pancakes").await;
    assert_eq!(
        counts(&s, &bob, &room).await,
        (2, 1),
        "not a whole word: only .m.rule.message"
    );
    let (_, rule) = s
        .get(&pushrule_path("content", "cake", ""), &bob.token)
        .await;
    assert_eq!(rule["pattern"], "cake", "{rule}");
}

// ---------------------------------------------------------------------------------------------
// /notifications

#[tokio::test]
async fn notifications_list_newest_first_with_read_flags_and_pagination() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = public_room(&s, &alice, &[&bob, &carol]).await;
    let m1 = s.send_text(&alice, &room, "one").await;
    let m2 = send_msg(
        &s,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "two, bob", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let m3 = s.send_text(&carol, &room, "three").await;
    // Not notifying for bob: his own message and a reaction.
    s.send_text(&bob, &room, "mine").await;
    send(&s, &alice, &room, "m.reaction", reaction(&m1, "👍")).await;

    let (status, body) = s.get(&format!("{V3}/notifications"), &bob.token).await;
    assert_eq!(status, 200, "{body}");
    let list = arr(&body["notifications"]);
    let event_ids: Vec<String> = list
        .iter()
        .filter_map(|n| n["event"]["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        event_ids,
        vec![m3.clone(), m2.clone(), m1.clone()],
        "{body}"
    );
    for n in &list {
        assert_eq!(n["room_id"], room.as_str(), "{n}");
        assert!(n["ts"].is_u64(), "{n}");
        assert!(n["actions"].is_array(), "{n}");
        assert!(n["actions"].to_string().contains("notify"), "{n}");
        assert!(n["event"]["content"]["body"].is_string(), "{n}");
    }
    let mention_actions = &list[1]["actions"];
    assert!(
        mention_actions.to_string().contains("highlight"),
        "{mention_actions}"
    );
    assert!(body.get("next_token").is_none(), "{body}");

    // only=highlight
    let (_, body) = s
        .get(&format!("{V3}/notifications?only=highlight"), &bob.token)
        .await;
    let highlights: Vec<Value> = arr(&body["notifications"])
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(highlights, vec![json!(m2)], "{body}");

    // Pagination.
    let (_, page1) = s
        .get(&format!("{V3}/notifications?limit=2"), &bob.token)
        .await;
    let ids1: Vec<Value> = arr(&page1["notifications"])
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(ids1, vec![json!(m3), json!(m2)], "{page1}");
    let token = page1["next_token"].as_str().expect("next_token");
    let (_, page2) = s
        .get(
            &format!("{V3}/notifications?limit=2&from={}", enc(token)),
            &bob.token,
        )
        .await;
    let ids2: Vec<Value> = arr(&page2["notifications"])
        .iter()
        .map(|n| n["event"]["event_id"].clone())
        .collect();
    assert_eq!(ids2, vec![json!(m1)], "{page2}");
    assert!(page2.get("next_token").is_none(), "{page2}");

    // read flags follow bob's receipt.
    let read_flags = |body: &Value| -> Vec<bool> {
        arr(&body["notifications"])
            .iter()
            .map(|n| n["read"].as_bool().expect("read flag"))
            .collect()
    };
    let (_, body) = s.get(&format!("{V3}/notifications"), &bob.token).await;
    assert_eq!(read_flags(&body), vec![false, false, false], "{body}");
    read(&s, &bob, &room, &m2).await;
    let (_, body) = s.get(&format!("{V3}/notifications"), &bob.token).await;
    assert_eq!(read_flags(&body), vec![false, true, true], "{body}");
}

// ---------------------------------------------------------------------------------------------
// Pushers

const GATEWAY: &str = "https://push.example.org/_matrix/push/v1/notify";

#[tokio::test]
async fn pushers_set_list_and_delete() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    assert_eq!(pushers(&s, &bob).await, Vec::<Value>::new());

    let body = pusher(
        "key-1",
        GATEWAY,
        json!({ "format": "event_id_only", "custom": 7 }),
    );
    let result = set_pusher(&s, &bob, body).await;
    ok(&result, "set pusher");
    assert_eq!(result.1, json!({}));
    let list = pushers(&s, &bob).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let p = &list[0];
    for (field, want) in [
        ("pushkey", json!("key-1")),
        ("kind", json!("http")),
        ("app_id", json!("org.example.sparks.test")),
        ("app_display_name", json!("Sparks tests")),
        ("device_display_name", json!("Test device")),
        ("profile_tag", json!("tag1")),
        ("lang", json!("en")),
        (
            "data",
            json!({ "url": GATEWAY, "format": "event_id_only", "custom": 7 }),
        ),
    ] {
        assert_eq!(p[field], want, "{field}: {p}");
    }

    // Updating the same (app_id, pushkey) replaces it.
    let mut updated = pusher("key-1", GATEWAY, json!({}));
    updated["lang"] = json!("de");
    ok(&set_pusher(&s, &bob, updated).await, "update");
    let list = pushers(&s, &bob).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["lang"], "de");

    // A second pusher.
    ok(
        &set_pusher(&s, &bob, pusher("key-2", GATEWAY, json!({}))).await,
        "second",
    );
    assert_eq!(pushers(&s, &bob).await.len(), 2);

    // kind: null deletes.
    ok(
        &set_pusher(
            &s,
            &bob,
            json!({ "kind": null, "app_id": "org.example.sparks.test", "pushkey": "key-1" }),
        )
        .await,
        "delete",
    );
    let list = pushers(&s, &bob).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pushkey"], "key-2");

    // Without `append`, the same app_id + pushkey moves from another user to this one.
    ok(
        &set_pusher(&s, &carol, pusher("key-2", GATEWAY, json!({}))).await,
        "carol takes key-2",
    );
    assert_eq!(pushers(&s, &carol).await.len(), 1);
    assert_eq!(
        pushers(&s, &bob).await,
        Vec::<Value>::new(),
        "bob's pusher with the same app_id/pushkey is removed"
    );
    // With `append: true` both keep it.
    let mut appended = pusher("key-2", GATEWAY, json!({}));
    appended["append"] = json!(true);
    ok(&set_pusher(&s, &bob, appended).await, "append");
    assert_eq!(pushers(&s, &bob).await.len(), 1);
    assert_eq!(pushers(&s, &carol).await.len(), 1);
}

#[tokio::test]
async fn invalid_pushers_are_rejected() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;
    for (what, body) in [
        ("not a URL", pusher("k", "not a url", json!({}))),
        ("no url", {
            let mut b = pusher("k", GATEWAY, json!({}));
            b["data"] = json!({ "format": "event_id_only" });
            b
        }),
        ("missing lang", {
            let mut b = pusher("k", GATEWAY, json!({}));
            b.as_object_mut().map(|o| o.remove("lang"));
            b
        }),
        ("missing app_display_name", {
            let mut b = pusher("k", GATEWAY, json!({}));
            b.as_object_mut().map(|o| o.remove("app_display_name"));
            b
        }),
    ] {
        let result = set_pusher(&s, &bob, body).await;
        assert_eq!(result.0, 400, "{what}: {}", result.1);
        assert!(
            result.1["errcode"]
                .as_str()
                .is_some_and(|e| e.starts_with("M_")),
            "{what}: {}",
            result.1
        );
    }
    assert_eq!(pushers(&s, &bob).await, Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------------
// Delivery to a push gateway (a real HTTP receiver on 127.0.0.1 inside the test)

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Alice and bob in a named two-person room; bob has a pusher to `gateway` with extra `data`.
async fn pushed_pair(s: &TestServer, gateway: &LocalGateway, data: Value) -> (User, User, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    set_displayname(s, &alice, "Alice Example").await;
    let room = public_room(s, &alice, &[&bob]).await;
    ok(
        &set_pusher(s, &bob, pusher("bobs-pushkey", &gateway.url, data)).await,
        "set pusher",
    );
    (alice, bob, room)
}

#[tokio::test]
async fn notification_is_delivered_to_gateway_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(Vec::new()).await;
    let before = now_secs();
    let (alice, bob, room) = pushed_pair(&s, &gateway, json!({ "custom": "value" })).await;
    let event_id = s.send_text(&alice, &room, "ping").await;

    let received = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "one notification: {received:?}");
    assert_eq!(received[0].path, "/_matrix/push/v1/notify");
    let n = &received[0].body["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{n}");
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["type"], "m.room.message", "{n}");
    assert_eq!(n["sender"], alice.user_id.as_str(), "{n}");
    assert_eq!(
        n["content"],
        json!({ "msgtype": "m.text", "body": "ping" }),
        "{n}"
    );
    assert_eq!(n["sender_display_name"], "Alice Example", "{n}");
    assert_eq!(n["room_name"], "Test room", "{n}");
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    assert!(
        n["prio"] == "high" || n["prio"] == "low",
        "prio is high or low: {n}"
    );
    let devices = arr(&n["devices"]);
    assert_eq!(devices.len(), 1, "{n}");
    let device = &devices[0];
    assert_eq!(device["app_id"], "org.example.sparks.test");
    assert_eq!(device["pushkey"], "bobs-pushkey");
    assert_eq!(
        device["data"],
        json!({ "custom": "value" }),
        "data is forwarded without url: {device}"
    );
    let ts = device["pushkey_ts"].as_u64().expect("pushkey_ts");
    assert!(
        ts >= before.saturating_sub(2) && ts <= now_secs() + 2,
        "pushkey_ts in seconds: {ts} vs {before}"
    );
    assert_eq!(
        device["tweaks"]["sound"], "default",
        ".m.rule.room_one_to_one tweaks: {device}"
    );
    assert!(
        device["tweaks"]["highlight"].is_null() || device["tweaks"]["highlight"] == false,
        "{device}"
    );

    // Bob's own message and a reaction notify nobody: the gateway hears nothing more.
    s.send_text(&bob, &room, "my own").await;
    send(&s, &alice, &room, "m.reaction", reaction(&event_id, "👍")).await;
    sleep_ms(1500).await;
    assert_eq!(gateway.received().len(), 1, "{:?}", gateway.received());
}

#[tokio::test]
async fn mention_is_delivered_with_highlight_tweak_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(Vec::new()).await;
    let (alice, bob, room) = pushed_pair(&s, &gateway, json!({})).await;
    send_msg(
        &s,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "bob!", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let received = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let device = &received[0].body["notification"]["devices"][0];
    assert_eq!(
        device["tweaks"],
        json!({ "sound": "default", "highlight": true }),
        ".m.rule.is_user_mention tweaks: {device}"
    );
}

#[tokio::test]
async fn event_id_only_format_omits_event_fields_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(Vec::new()).await;
    let (alice, _bob, room) = pushed_pair(&s, &gateway, json!({ "format": "event_id_only" })).await;
    let event_id = s.send_text(&alice, &room, "secret").await;
    let received = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let n = &received[0].body["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{n}");
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    assert_eq!(
        n["devices"][0]["data"],
        json!({ "format": "event_id_only" }),
        "{n}"
    );
    for field in [
        "content",
        "sender",
        "type",
        "sender_display_name",
        "room_name",
    ] {
        assert!(
            n.get(field).is_none(),
            "{field} omitted with event_id_only: {n}"
        );
    }
    assert!(!n.to_string().contains("secret"), "{n}");
}

#[tokio::test]
async fn rejected_pushkey_removes_pusher_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(vec![Answer {
        status: 200,
        body: json!({ "rejected": ["bobs-pushkey"] }),
    }])
    .await;
    let (alice, bob, room) = pushed_pair(&s, &gateway, json!({})).await;
    s.send_text(&alice, &room, "first").await;
    let received = gateway.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "{received:?}");

    let mut remaining = pushers(&s, &bob).await;
    for _ in 0..50 {
        if remaining.is_empty() {
            break;
        }
        sleep_ms(100).await;
        remaining = pushers(&s, &bob).await;
    }
    assert_eq!(
        remaining,
        Vec::<Value>::new(),
        "a rejected pushkey's pusher is removed"
    );
    s.send_text(&alice, &room, "second").await;
    sleep_ms(1500).await;
    assert_eq!(
        gateway.received().len(),
        1,
        "no more requests for a rejected pushkey"
    );
}

#[tokio::test]
async fn failed_delivery_is_retried_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(vec![Answer {
        status: 500,
        body: json!({ "error": "try later" }),
    }])
    .await;
    let (alice, bob, room) = pushed_pair(&s, &gateway, json!({})).await;
    let event_id = s.send_text(&alice, &room, "retry me").await;
    let received = gateway.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "retried after a 500: {received:?}");
    for attempt in &received {
        assert_eq!(
            attempt.body["notification"]["event_id"],
            event_id.as_str(),
            "the same notification: {attempt:?}"
        );
    }
    // The pusher survives a server error.
    assert_eq!(pushers(&s, &bob).await.len(), 1);
}

#[tokio::test]
async fn unread_count_counts_messages_with_local_http_receiver() {
    let s = TestServer::start().await;
    let gateway = LocalGateway::start(Vec::new()).await;
    let (alice, _bob, room) = pushed_pair(&s, &gateway, json!({})).await;
    s.send_text(&alice, &room, "one").await;
    gateway.wait_for(1, Duration::from_secs(10)).await;
    s.send_text(&alice, &room, "two").await;
    let received = gateway.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2, "{received:?}");
    // Push gateway API: counts.unread is "the number of unread messages a user has across all
    // of the rooms they are a member of".
    assert_eq!(
        received[1].body["notification"]["counts"]["unread"], 2,
        "two unread messages: {:?}",
        received[1].body
    );
}
