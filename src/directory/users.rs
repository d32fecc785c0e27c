//! The user directory (`/user_directory/search`).
//!
//! Kept incrementally from member events (the search worker calls [`update_user`] for every
//! committed `m.room.member` event; a profile change reaches it as the member events it sends):
//! `userdir_term` holds `(word, user_id)` for the lowercased words of each user's localpart
//! and display name, so a prefix scan finds candidates; `userdir_user` holds the entry itself.
//! Who may be found is decided at query time from current memberships: users who share a
//! joined room with the requester, or who are joined to a public room.

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    error::Result,
    server::Server,
    storage::keys::{Key, SEP},
};

/// Largest `limit` honoured.
pub const MAX_LIMIT: usize = 100;
/// Candidates looked at per query word before giving up (the answer is then `limited`).
const MAX_CANDIDATES: usize = 5_000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub terms: Vec<String>,
}

/// Lowercased words: maximal runs of alphanumeric characters.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn terms_for(user: &UserId, displayname: Option<&str>) -> Vec<String> {
    let mut terms: BTreeSet<String> = BTreeSet::new();
    terms.insert(user.localpart().to_lowercase());
    terms.extend(words(user.localpart()));
    terms.extend(words(user.server_name().as_str()));
    if let Some(name) = displayname {
        terms.extend(words(name));
    }
    // Terms are key parts: never empty, never absurdly long.
    terms
        .into_iter()
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .collect()
}

fn entry(server: &Server, user: &UserId) -> Result<Option<Entry>> {
    match server.maps.userdir_user.get(user.as_bytes())? {
        Some(raw) => Ok(serde_json::from_slice(&raw).ok()),
        None => Ok(None),
    }
}

/// Re-indexes a user after a member event about them. Local users are indexed by their
/// global profile; remote users by the member event's `displayname`/`avatar_url`.
pub fn update_user(
    server: &Server,
    user: &UserId,
    event_displayname: Option<String>,
    event_avatar: Option<String>,
) -> Result<()> {
    let (displayname, avatar_url) = if server.is_local(user.server_name()) {
        if server.maps.userid_deactivated.contains(user.as_bytes())? {
            return remove_user(server, user);
        }
        let profile = server.users.profile(&server.maps, user)?;
        (profile.displayname, profile.avatar_url)
    } else {
        (event_displayname, event_avatar)
    };
    let terms = terms_for(user, displayname.as_deref());
    let old = entry(server, user)?;
    if let Some(old) = &old
        && old.terms == terms
        && old.displayname == displayname
        && old.avatar_url == avatar_url
    {
        return Ok(());
    }
    let maps = &server.maps;
    let mut batch = server.db.batch();
    let key = |term: &str| Key::new().s(term).s(user.as_str()).build();
    if let Some(old) = &old {
        for term in old.terms.iter().filter(|t| !terms.contains(t)) {
            batch.delete(&maps.userdir_term, key(term));
        }
    }
    for term in &terms {
        batch.put(&maps.userdir_term, key(term), b"");
    }
    let entry = Entry {
        displayname,
        avatar_url,
        terms,
    };
    batch.put(
        &maps.userdir_user,
        user.as_bytes(),
        serde_json::to_vec(&entry)?,
    );
    server.db.commit(batch)
}

fn remove_user(server: &Server, user: &UserId) -> Result<()> {
    let Some(old) = entry(server, user)? else {
        return Ok(());
    };
    let mut batch = server.db.batch();
    for term in &old.terms {
        batch.delete(
            &server.maps.userdir_term,
            Key::new().s(term).s(user.as_str()).build(),
        );
    }
    batch.delete(&server.maps.userdir_user, user.as_bytes());
    server.db.commit(batch)
}

/// Users whose indexed words start with `prefix`.
fn candidates(server: &Server, prefix: &str, out: &mut HashSet<OwnedUserId>) -> bool {
    let mut complete = true;
    for (key, _) in server
        .maps
        .userdir_term
        .scan_prefix(prefix.as_bytes().to_vec())
    {
        if out.len() >= MAX_CANDIDATES {
            complete = false;
            break;
        }
        let Some(at) = key.iter().position(|b| *b == SEP) else {
            continue;
        };
        if let Some(user) = key
            .get(at + 1..)
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|s| OwnedUserId::try_from(s).ok())
        {
            out.insert(user);
        }
    }
    complete
}

/// The rooms a user is joined to.
fn joined_rooms(server: &Server, user: &UserId) -> Result<Vec<OwnedRoomId>> {
    Ok(server
        .rooms
        .rooms_of(&server.maps, user)?
        .into_iter()
        .filter(|(_, m)| m.membership == "join")
        .map(|(room, _)| room)
        .collect())
}

/// `(results, limited)` for a search by `requester`.
pub fn search(
    server: &Server,
    requester: &UserId,
    term: &str,
    limit: usize,
) -> Result<(Vec<Value>, bool)> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let query_words: Vec<String> = words(term).into_iter().take(8).collect();
    if query_words.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut limited = false;
    let mut found: Option<HashSet<OwnedUserId>> = None;
    for word in &query_words {
        let mut users = HashSet::new();
        if !candidates(server, word, &mut users) {
            limited = true;
        }
        found = Some(match found {
            None => users,
            Some(previous) => previous.intersection(&users).cloned().collect(),
        });
    }
    let found = found.unwrap_or_default();

    let mine: HashSet<OwnedRoomId> = joined_rooms(server, requester)?.into_iter().collect();
    let mut public_cache: HashMap<OwnedRoomId, bool> = HashMap::new();
    let term_lower = term.trim().to_lowercase();
    let mut scored = Vec::new();
    for user in found {
        let rooms = joined_rooms(server, &user)?;
        let shares = user == requester || rooms.iter().any(|r| mine.contains(r));
        let mut visible = shares;
        if !visible {
            for room in &rooms {
                let public = match public_cache.get(room) {
                    Some(p) => *p,
                    None => {
                        let p = super::is_public(server, room)?;
                        public_cache.insert(room.clone(), p);
                        p
                    }
                };
                if public {
                    visible = true;
                    break;
                }
            }
        }
        if !visible {
            continue;
        }
        let Some(entry) = entry(server, &user)? else {
            continue;
        };
        let name = entry
            .displayname
            .as_deref()
            .unwrap_or_default()
            .to_lowercase();
        let localpart = user.localpart().to_lowercase();
        let full_id = user.as_str().to_lowercase();
        // Exact match, then prefix of the whole name or id, then a word match.
        let quality = if name == term_lower || localpart == term_lower || full_id == term_lower {
            3
        } else if (!name.is_empty() && name.starts_with(&term_lower))
            || localpart.starts_with(&term_lower)
            || full_id.starts_with(&term_lower)
        {
            2
        } else {
            1
        };
        scored.push((quality, shares, user, entry));
    }
    scored.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| {
                let key = |e: &Entry, u: &OwnedUserId| {
                    e.displayname
                        .as_deref()
                        .map_or_else(|| u.localpart().to_lowercase(), str::to_lowercase)
                };
                key(&a.3, &a.2).cmp(&key(&b.3, &b.2))
            })
            .then_with(|| a.2.cmp(&b.2))
    });
    if scored.len() > limit {
        limited = true;
        scored.truncate(limit);
    }
    let results = scored
        .into_iter()
        .map(|(_, _, user, entry)| {
            let mut out = serde_json::Map::new();
            out.insert("user_id".into(), json!(user));
            if let Some(name) = entry.displayname {
                out.insert("display_name".into(), json!(name));
            }
            if let Some(avatar) = entry.avatar_url {
                out.insert("avatar_url".into(), json!(avatar));
            }
            Value::Object(out)
        })
        .collect();
    Ok((results, limited))
}
