//! `m.room.server_acl`: which servers may take part in a room. Checked for every PDU and
//! every room-scoped federation request from a server.

use ruma::{RoomId, ServerName, events::StateEventType};
use serde_json::Value;

use crate::{error::Result, server::Server};

/// Why the room's ACL denies `origin`, or `None` when it may participate.
pub fn denies(server: &Server, room_id: &RoomId, origin: &ServerName) -> Result<Option<String>> {
    let Some(acl) = server.rooms.current_state_event(
        &server.maps,
        room_id,
        &StateEventType::RoomServerAcl,
        "",
    )?
    else {
        return Ok(None);
    };
    Ok((!allows(&acl.content_value(), origin))
        .then(|| format!("Server {origin} is denied by the room's server ACL")))
}

/// The spec's rules: IP literals only if `allow_ip_literals` (default true); denied if any
/// `deny` glob matches; allowed only if an `allow` glob matches. Ports are ignored.
pub fn allows(content: &Value, origin: &ServerName) -> bool {
    let host = origin.host();
    let globs = |field: &str| -> Vec<String> {
        content[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let allow_ip = content["allow_ip_literals"].as_bool().unwrap_or(true);
    let is_ip = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
    if is_ip && !allow_ip {
        return false;
    }
    if globs("deny").iter().any(|g| glob_matches(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_matches(g, host))
}

/// `*` matches any run of characters, `?` exactly one; case-insensitive.
fn glob_matches(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let (mut g, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some(g);
            mark = t;
            g += 1;
        } else if let Some(s) = star {
            g = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while g < glob.len() && glob[g] == '*' {
        g += 1;
    }
    g == glob.len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn acl_rules() {
        let name = |s: &str| <&ServerName>::try_from(s).expect("name").to_owned();
        let acl = json!({ "allow": ["*"], "deny": ["*.evil.example", "bad.example"], "allow_ip_literals": false });
        assert!(allows(&acl, &name("good.example")));
        assert!(allows(&acl, &name("good.example:8448")));
        assert!(!allows(&acl, &name("x.evil.example")));
        assert!(!allows(&acl, &name("BAD.example")));
        assert!(!allows(&acl, &name("127.0.0.2:8448")));
        assert!(!allows(
            &json!({ "allow": ["a?.example"] }),
            &name("abc.example")
        ));
        assert!(allows(
            &json!({ "allow": ["a?.example"] }),
            &name("ab.example")
        ));
        assert!(
            !allows(&json!({}), &name("any.example")),
            "no allow list allows nobody"
        );
    }
}
