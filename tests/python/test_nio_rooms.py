"""Rooms: creation, invites, aliases, state, redaction and membership, via matrix-nio."""

from __future__ import annotations

import pytest
from nio import (
    JoinError,
    JoinResponse,
    JoinedMembersResponse,
    JoinedRoomsResponse,
    RoomCreateResponse,
    RoomForgetError,
    RoomForgetResponse,
    RoomGetEventResponse,
    RoomGetStateEventError,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomInviteError,
    RoomInviteResponse,
    RoomKickError,
    RoomKickResponse,
    RoomBanResponse,
    RoomUnbanResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomPutStateError,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomResolveAliasError,
    RoomResolveAliasResponse,
    RoomSendResponse,
    RoomPreset,
    RoomVisibility,
)

from harness import rand_localpart, raw_request, sync_until, timeline

pytestmark = pytest.mark.asyncio


def status(resp) -> int:
    return resp.transport_response.status


def text(body: str) -> dict:
    return {"msgtype": "m.text", "body": body}


async def joined_member_ids(client, room_id: str) -> set[str]:
    r = await client.joined_members(room_id)
    assert isinstance(r, JoinedMembersResponse), r
    return {m.user_id for m in r.members}


async def member_state(client, room_id: str, user_id: str) -> dict:
    r = await client.room_get_state_event(room_id, "m.room.member", user_id)
    assert isinstance(r, RoomGetStateEventResponse), r
    return r.content


async def public_room(owner, *joiners) -> str:
    cr = await owner.room_create(preset=RoomPreset.public_chat, name="public")
    assert isinstance(cr, RoomCreateResponse), cr
    for c in joiners:
        j = await c.join(cr.room_id)
        assert isinstance(j, JoinResponse), j
    return cr.room_id


async def test_create_invite_join(homeserver, new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    cr = await alice.room_create(name="Test Room", topic="A topic",
                                 preset=RoomPreset.private_chat, invite=[bob.user_id])
    assert isinstance(cr, RoomCreateResponse), cr
    room = cr.room_id
    assert room.startswith("!")

    # Bob sees the invite, with stripped state naming the room.
    inv = await sync_until(bob, lambda r: r.rooms.invite.get(room))
    # (nio's InviteMemberEvent pops "content" out of .source into .content)
    stripped = {(e.source["type"], e.source.get("state_key")): e for e in inv.invite_state}
    me = stripped[("m.room.member", bob.user_id)]
    assert me.membership == "invite"
    assert me.sender == alice.user_id
    assert stripped[("m.room.name", "")].name == "Test Room"
    # nio drops stripped events it has no class for; check the rest raw.
    st_code, body = await raw_request(homeserver, "GET", "/_matrix/client/v3/sync",
                                      token=bob.access_token)
    assert st_code == 200, body
    raw_state = {(e["type"], e["state_key"]): e["content"]
                 for e in body["rooms"]["invite"][room]["invite_state"]["events"]}
    assert raw_state[("m.room.join_rules", "")]["join_rule"] == "invite"
    assert raw_state[("m.room.topic", "")]["topic"] == "A topic"
    assert raw_state[("m.room.member", bob.user_id)]["membership"] == "invite"

    j = await bob.join(room)
    assert isinstance(j, JoinResponse), j
    assert j.room_id == room

    # Alice sees Bob's join in her timeline; Bob now has the room under join.
    def bob_joined(r):
        return [e for e in timeline(r, room) if e.source["type"] == "m.room.member"
                and e.source["state_key"] == bob.user_id
                and e.source["content"]["membership"] == "join"]

    assert await sync_until(alice, bob_joined)
    assert await sync_until(bob, lambda r: room in r.rooms.join and room not in r.rooms.invite)

    expected = {alice.user_id, bob.user_id}
    assert await joined_member_ids(alice, room) == expected
    assert await joined_member_ids(bob, room) == expected
    jr = await bob.joined_rooms()
    assert isinstance(jr, JoinedRoomsResponse), jr
    assert jr.rooms == [room]

    name = await bob.room_get_state_event(room, "m.room.name")
    assert isinstance(name, RoomGetStateEventResponse), name
    assert name.content == {"name": "Test Room"}
    topic = await bob.room_get_state_event(room, "m.room.topic")
    assert topic.content["topic"] == "A topic"
    jrules = await bob.room_get_state_event(room, "m.room.join_rules")
    assert jrules.content == {"join_rule": "invite"}

    st = await bob.room_get_state(room)
    assert isinstance(st, RoomGetStateResponse), st
    by_key = {(e["type"], e["state_key"]): e for e in st.events}
    assert by_key[("m.room.create", "")]["sender"] == alice.user_id
    assert by_key[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert by_key[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    pl = by_key[("m.room.power_levels", "")]["content"]
    version = by_key[("m.room.create", "")]["content"].get("room_version", "1")
    if version.isdigit() and int(version) < 12:
        assert pl["users"][alice.user_id] == 100
    else:  # v12+: creators have unlimited power and must not be listed
        assert alice.user_id not in pl.get("users", {})
    assert pl["users"].get(bob.user_id, pl.get("users_default", 0)) == 0


async def test_join_private_room_without_invite_forbidden(new_user):
    alice = await new_user("alice")
    eve = await new_user("eve")
    cr = await alice.room_create(preset=RoomPreset.private_chat)
    j = await eve.join(cr.room_id)
    assert isinstance(j, JoinError), j
    assert j.status_code == "M_FORBIDDEN"
    assert status(j) == 403


async def test_room_alias(homeserver, new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    local = rand_localpart("alias")
    alias = f"#{local}:{homeserver.server_name}"
    cr = await alice.room_create(alias=local, preset=RoomPreset.public_chat,
                                 visibility=RoomVisibility.public, name="aliased")
    assert isinstance(cr, RoomCreateResponse), cr
    room = cr.room_id

    r = await bob.room_resolve_alias(alias)
    assert isinstance(r, RoomResolveAliasResponse), r
    assert r.room_id == room
    assert homeserver.server_name in r.servers

    canon = await alice.room_get_state_event(room, "m.room.canonical_alias")
    assert isinstance(canon, RoomGetStateEventResponse), canon
    assert canon.content["alias"] == alias

    j = await bob.join(alias)
    assert isinstance(j, JoinResponse), j
    assert j.room_id == room
    assert bob.user_id in await joined_member_ids(alice, room)

    # Creating the same alias again is refused.
    dup = await alice.room_create(alias=local)
    assert not isinstance(dup, RoomCreateResponse), dup
    assert dup.status_code == "M_ROOM_IN_USE"
    assert status(dup) == 400

    # Extra alias via PUT, then delete it.
    extra = f"#{rand_localpart('extra')}:{homeserver.server_name}"
    assert (await alice.room_put_alias(extra, room)).__class__.__name__ == "RoomPutAliasResponse"
    assert (await bob.room_resolve_alias(extra)).room_id == room
    d = await alice.room_delete_alias(extra)
    assert d.__class__.__name__ == "RoomDeleteAliasResponse", d
    gone = await bob.room_resolve_alias(extra)
    assert isinstance(gone, RoomResolveAliasError), gone
    assert gone.status_code == "M_NOT_FOUND"
    assert status(gone) == 404


async def test_resolve_unknown_alias(homeserver, new_user):
    alice = await new_user("alice")
    r = await alice.room_resolve_alias(f"#{rand_localpart('nope')}:{homeserver.server_name}")
    assert isinstance(r, RoomResolveAliasError), r
    assert r.status_code == "M_NOT_FOUND"
    assert status(r) == 404


async def test_room_state_put_get(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await public_room(alice, bob)
    await bob.sync(timeout=0)

    p = await alice.room_put_state(room, "org.sparks.test", {"a": 1, "s": "x"}, state_key="k1")
    assert isinstance(p, RoomPutStateResponse), p
    assert p.event_id.startswith("$")
    g = await bob.room_get_state_event(room, "org.sparks.test", "k1")
    assert isinstance(g, RoomGetStateEventResponse), g
    assert g.content == {"a": 1, "s": "x"}

    p2 = await alice.room_put_state(room, "org.sparks.test", {"a": 2}, state_key="k1")
    assert isinstance(p2, RoomPutStateResponse), p2
    assert p2.event_id != p.event_id
    assert (await bob.room_get_state_event(room, "org.sparks.test", "k1")).content == {"a": 2}

    # Empty state key and another key coexist.
    await alice.room_put_state(room, "org.sparks.test", {"b": True})
    st = await bob.room_get_state(room)
    assert isinstance(st, RoomGetStateResponse), st
    mine = {e["state_key"]: e["content"] for e in st.events if e["type"] == "org.sparks.test"}
    assert mine == {"k1": {"a": 2}, "": {"b": True}}

    missing = await bob.room_get_state_event(room, "org.sparks.test", "nope")
    assert isinstance(missing, RoomGetStateEventError), missing
    assert missing.status_code == "M_NOT_FOUND"
    assert status(missing) == 404

    # Bob (power 0) may not send state (state_default 50).
    denied = await bob.room_put_state(room, "org.sparks.test", {"evil": 1}, state_key="k1")
    assert isinstance(denied, RoomPutStateError), denied
    assert denied.status_code == "M_FORBIDDEN"
    assert status(denied) == 403

    # Name change shows up for Bob in sync as a state event in the timeline.
    await alice.room_put_state(room, "m.room.name", {"name": "Renamed"})

    def renamed(r):
        return [e for e in timeline(r, room) if e.source["type"] == "m.room.name"]

    ev = (await sync_until(bob, renamed))[-1]
    assert ev.source["content"] == {"name": "Renamed"}
    assert ev.sender == alice.user_id


async def test_redaction(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await public_room(alice, bob)
    await bob.sync(timeout=0)

    s = await alice.room_send(room, "m.room.message", text("secret"))
    assert isinstance(s, RoomSendResponse), s
    eid = s.event_id
    seen = await sync_until(bob, lambda r: [e for e in timeline(r, room) if e.event_id == eid])
    assert seen[0].source["content"]["body"] == "secret"

    rr = await alice.room_redact(room, eid, reason="oops")
    assert isinstance(rr, RoomRedactResponse), rr
    assert rr.event_id.startswith("$") and rr.event_id != eid

    def redaction(r):
        return [e for e in timeline(r, room) if e.source["type"] == "m.room.redaction"]

    red = (await sync_until(bob, redaction))[0].source
    assert (red.get("redacts") or red["content"].get("redacts")) == eid
    assert red["sender"] == alice.user_id
    assert red["event_id"] == rr.event_id

    ge = await bob.room_get_event(room, eid)
    assert isinstance(ge, RoomGetEventResponse), ge
    src = ge.event.source
    assert src["event_id"] == eid
    assert src["type"] == "m.room.message"
    assert src["content"] == {}
    assert src["unsigned"]["redacted_because"]["event_id"] == rr.event_id

    msgs = await bob.room_messages(room, limit=10)
    assert isinstance(msgs, RoomMessagesResponse), msgs
    orig = [e.source for e in msgs.chunk if e.source["event_id"] == eid]
    assert orig and orig[0]["content"] == {}

    # Bob (power 0) cannot redact Alice's event.
    s2 = await alice.room_send(room, "m.room.message", text("keep"))
    denied = await bob.room_redact(room, s2.event_id)
    assert not isinstance(denied, RoomRedactResponse), denied
    assert denied.status_code == "M_FORBIDDEN"
    assert status(denied) == 403


async def test_invite_and_reject(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    cr = await alice.room_create(preset=RoomPreset.private_chat)
    room = cr.room_id

    i = await alice.room_invite(room, bob.user_id)
    assert isinstance(i, RoomInviteResponse), i
    assert (await member_state(alice, room, bob.user_id))["membership"] == "invite"
    assert await sync_until(bob, lambda r: room in r.rooms.invite)

    # Inviting an invited/joined user again is refused once joined.
    lv = await bob.room_leave(room)  # reject
    assert isinstance(lv, RoomLeaveResponse), lv
    assert (await member_state(alice, room, bob.user_id))["membership"] == "leave"
    assert await joined_member_ids(alice, room) == {alice.user_id}

    assert isinstance(await alice.room_invite(room, bob.user_id), RoomInviteResponse)
    assert isinstance(await bob.join(room), JoinResponse)
    again = await alice.room_invite(room, bob.user_id)
    assert isinstance(again, RoomInviteError), again
    assert again.status_code == "M_FORBIDDEN"
    assert status(again) == 403


async def test_kick_ban_unban_leave_forget(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    carol = await new_user("carol")
    room = await public_room(alice, bob, carol)
    assert await joined_member_ids(alice, room) == {alice.user_id, bob.user_id, carol.user_id}

    # Bob has power 0 < kick 50.
    k = await bob.room_kick(room, carol.user_id, reason="nope")
    assert isinstance(k, RoomKickError), k
    assert k.status_code == "M_FORBIDDEN"
    assert status(k) == 403
    assert carol.user_id in await joined_member_ids(alice, room)

    # Alice kicks Bob.
    await bob.sync(timeout=0)
    k = await alice.room_kick(room, bob.user_id, reason="bye")
    assert isinstance(k, RoomKickResponse), k
    m = await member_state(alice, room, bob.user_id)
    assert m["membership"] == "leave"
    assert m.get("reason") == "bye"
    assert await sync_until(bob, lambda r: room in r.rooms.leave)
    assert bob.user_id not in await joined_member_ids(alice, room)

    # Kicked from a public room: may rejoin.
    assert isinstance(await bob.join(room), JoinResponse)

    # Ban: Bob is removed and cannot rejoin.
    b = await alice.room_ban(room, bob.user_id, reason="spam")
    assert isinstance(b, RoomBanResponse), b
    m = await member_state(alice, room, bob.user_id)
    assert m["membership"] == "ban"
    assert m.get("reason") == "spam"
    j = await bob.join(room)
    assert isinstance(j, JoinError), j
    # Spec: 403 with "a meaningful errcode" (Synapse: M_BAD_STATE).
    assert j.status_code in ("M_FORBIDDEN", "M_BAD_STATE")
    assert status(j) == 403

    # Unban: membership back to leave, rejoin works.
    u = await alice.room_unban(room, bob.user_id)
    assert isinstance(u, RoomUnbanResponse), u
    assert (await member_state(alice, room, bob.user_id))["membership"] == "leave"
    assert isinstance(await bob.join(room), JoinResponse)
    assert bob.user_id in await joined_member_ids(alice, room)

    # Forget while joined is refused; leave + forget succeeds.
    f = await carol.room_forget(room)
    assert isinstance(f, RoomForgetError), f
    assert status(f) == 400
    assert f.status_code == "M_UNKNOWN"  # the spec's example errcode
    lv = await carol.room_leave(room)
    assert isinstance(lv, RoomLeaveResponse), lv
    assert carol.user_id not in await joined_member_ids(alice, room)
    f = await carol.room_forget(room)
    assert isinstance(f, RoomForgetResponse), f
    jr = await carol.joined_rooms()
    assert room not in jr.rooms
    # A forgotten room is not reported among left rooms any more.
    r = await carol.sync(timeout=0, since="", sync_filter={"room": {"include_leave": True}})
    assert room not in r.rooms.leave and room not in r.rooms.join
