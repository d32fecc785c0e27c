"""Messaging: send/sync ordering, pagination, context, long-poll, filters, typing."""

from __future__ import annotations

import asyncio
import time

import pytest
from nio import (
    JoinResponse,
    MessageDirection,
    RoomContextResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomPreset,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
    UploadFilterResponse,
)

from harness import raw_request, sync_until, timeline

pytestmark = pytest.mark.asyncio


# Sync filter that leaves out presence and account data, so a long-poll is
# only woken by room activity.
QUIET = {"presence": {"types": []}, "account_data": {"types": []}}


def text(body: str) -> dict:
    return {"msgtype": "m.text", "body": body}


def bodies(events) -> list[str]:
    return [e.source["content"].get("body") for e in events
            if e.source["type"] == "m.room.message"]


async def shared_room(alice, bob) -> str:
    """Alice creates a private room, invites Bob, Bob joins; Bob has synced once."""
    cr = await alice.room_create(preset=RoomPreset.private_chat, invite=[bob.user_id])
    assert isinstance(cr, RoomCreateResponse), cr
    j = await bob.join(cr.room_id)
    assert isinstance(j, JoinResponse), j
    r = await bob.sync(timeout=0)
    assert isinstance(r, SyncResponse), r
    return cr.room_id


async def send_texts(client, room: str, texts: list[str]) -> list[str]:
    ids = []
    for t in texts:
        s = await client.room_send(room, "m.room.message", text(t))
        assert isinstance(s, RoomSendResponse), s
        ids.append(s.event_id)
    return ids


async def test_send_and_incremental_sync_order(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)

    texts = [f"message {i}" for i in range(5)]
    ids = await send_texts(alice, room, texts)
    assert len(set(ids)) == 5 and all(i.startswith("$") for i in ids)

    got = []

    def collect(r):
        got.extend(e for e in timeline(r, room) if e.source["type"] == "m.room.message")
        return len(got) >= 5

    await sync_until(bob, collect)
    assert bodies(got) == texts
    assert [e.event_id for e in got] == ids
    assert {e.sender for e in got} == {alice.user_id}
    ts = [e.server_timestamp for e in got]
    assert ts == sorted(ts)

    # Nothing new: an immediate incremental sync has no timeline events for the room.
    r = await bob.sync(timeout=0)
    assert isinstance(r, SyncResponse), r
    assert [e for e in timeline(r, room) if e.source["type"] == "m.room.message"] == []


async def test_send_idempotent_txn_id(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)
    s1 = await alice.room_send(room, "m.room.message", text("once"), tx_id="txn-fixed-1")
    s2 = await alice.room_send(room, "m.room.message", text("once"), tx_id="txn-fixed-1")
    assert isinstance(s1, RoomSendResponse) and isinstance(s2, RoomSendResponse)
    assert s1.event_id == s2.event_id
    m = await bob.room_messages(room, limit=5)
    assert bodies(m.chunk).count("once") == 1


async def test_room_messages_pagination(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)
    texts = [f"page {i}" for i in range(6)]
    ids = await send_texts(alice, room, texts)

    p1 = await bob.room_messages(room, limit=3)
    assert isinstance(p1, RoomMessagesResponse), p1
    assert [e.event_id for e in p1.chunk] == ids[:2:-1]  # newest first: 5,4,3
    assert bodies(p1.chunk) == ["page 5", "page 4", "page 3"]
    assert p1.start and p1.end and p1.end != p1.start

    p2 = await bob.room_messages(room, start=p1.end, limit=3)
    assert isinstance(p2, RoomMessagesResponse), p2
    assert bodies(p2.chunk) == ["page 2", "page 1", "page 0"]
    assert [e.event_id for e in p2.chunk] == ids[2::-1]
    assert p2.start == p1.end

    # Keep going back to the room's creation; the last page has no `end`.
    token, seen_types = p2.end, []
    for _ in range(20):
        p = await bob.room_messages(room, start=token, limit=5)
        assert isinstance(p, RoomMessagesResponse), p
        seen_types += [e.source["type"] for e in p.chunk]
        if not p.end or not p.chunk:
            break
        token = p.end
    assert seen_types[-1] == "m.room.create"
    assert "m.room.message" not in seen_types

    # Forward pagination from the first page's `end` returns 3,4,5 in order.
    fwd = await bob.room_messages(room, start=p2.start, direction=MessageDirection.front, limit=10)
    assert isinstance(fwd, RoomMessagesResponse), fwd
    assert bodies(fwd.chunk) == ["page 3", "page 4", "page 5"]


async def test_room_messages_end_omitted_at_start(new_user):
    """Spec: `end` is omitted when there are no more events to paginate."""
    alice = await new_user("alice")
    cr = await alice.room_create(preset=RoomPreset.private_chat)
    room = cr.room_id
    token, pages = None, 0
    while pages < 20:
        pages += 1
        p = await alice.room_messages(room, start=token, limit=50)
        assert isinstance(p, RoomMessagesResponse), p
        if p.end is None:
            break
        token = p.end
    assert p.end is None
    assert pages <= 2


async def test_room_context(homeserver, new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)
    texts = [f"ctx {i}" for i in range(5)]
    ids = await send_texts(alice, room, texts)

    c = await bob.room_context(room, ids[2], limit=10)
    assert isinstance(c, RoomContextResponse), c
    assert c.event.event_id == ids[2]
    assert c.event.source["content"]["body"] == "ctx 2"
    assert [e.event_id for e in c.events_after] == ids[3:]  # chronological
    assert [e.event_id for e in c.events_before][:2] == [ids[1], ids[0]]  # reverse-chronological
    assert c.start and c.end
    assert len(c.events_before) + len(c.events_after) <= 10

    small = await bob.room_context(room, ids[2], limit=2)
    assert isinstance(small, RoomContextResponse), small
    assert small.event.event_id == ids[2]
    assert len(small.events_before) + len(small.events_after) <= 2
    for e in small.events_before:
        assert e.event_id in ids[:2] or e.source["type"] != "m.room.message"
    for e in small.events_after:
        assert e.event_id in ids[3:]

    # limit=0 still returns the event itself (raw: nio drops a falsy limit).
    st, zero = await raw_request(homeserver, "GET",
                                 f"/_matrix/client/v3/rooms/{room}/context/{ids[2]}",
                                 token=bob.access_token, params={"limit": "0"})
    assert st == 200, zero
    assert zero["event"]["event_id"] == ids[2]
    assert zero.get("events_before", []) == [] and zero.get("events_after", []) == []

    # `end` from the context continues forward after what it returned.
    after = await bob.room_messages(room, start=small.end, direction=MessageDirection.front, limit=10)
    assert isinstance(after, RoomMessagesResponse), after
    shown = [e.event_id for e in small.events_after]
    assert [e.event_id for e in after.chunk] == [i for i in ids[3:] if i not in shown]

    missing = await bob.room_context(room, "$doesnotexist00000000000000000000000000000000")
    assert not isinstance(missing, RoomContextResponse), missing
    assert missing.status_code == "M_NOT_FOUND"
    assert missing.transport_response.status == 404


async def test_long_poll_wakes_on_message(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)

    for _ in range(3):
        poll = asyncio.create_task(bob.sync(timeout=30000, sync_filter=QUIET))
        await asyncio.sleep(0.5)
        if not poll.done():
            break
        assert isinstance(await poll, SyncResponse)  # woken by something unrelated; re-poll
    else:
        pytest.fail("sync with timeout=30000 keeps returning immediately")

    sent_at = time.monotonic()
    s = await alice.room_send(room, "m.room.message", text("wake up"))
    assert isinstance(s, RoomSendResponse), s
    r = await asyncio.wait_for(poll, timeout=10)
    elapsed = time.monotonic() - sent_at
    assert isinstance(r, SyncResponse), r
    assert elapsed < 5, f"long-poll returned {elapsed:.2f}s after the send"
    if s.event_id not in [e.event_id for e in timeline(r, room)]:
        # Woken by something else first (e.g. a receipt); the next sync has it.
        r = await bob.sync(timeout=5000, sync_filter=QUIET)
    assert s.event_id in [e.event_id for e in timeline(r, room)]


async def test_long_poll_times_out_empty(new_user):
    alice = await new_user("alice")
    await alice.sync(timeout=0, sync_filter=QUIET)
    t0 = time.monotonic()
    r = await alice.sync(timeout=1500, sync_filter=QUIET)
    elapsed = time.monotonic() - t0
    assert isinstance(r, SyncResponse), r
    assert 1.0 <= elapsed < 10, elapsed
    assert r.rooms.join == {} or all(not i.timeline.events for i in r.rooms.join.values())


async def test_filter_timeline_limit(homeserver, new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)
    ids = await send_texts(alice, room, ["f0", "f1", "f2"])

    uf = await bob.upload_filter(room={"timeline": {"limit": 1}})
    assert isinstance(uf, UploadFilterResponse), uf
    fid = uf.filter_id
    assert fid

    st, body = await raw_request(homeserver, "GET",
                                 f"/_matrix/client/v3/user/{bob.user_id}/filter/{fid}",
                                 token=bob.access_token)
    assert st == 200, body
    assert body["room"]["timeline"]["limit"] == 1

    # Initial sync with the filter: one event, limited.
    r = await bob.sync(timeout=0, since="", sync_filter=fid)
    assert isinstance(r, SyncResponse), r
    tl = r.rooms.join[room].timeline
    assert [e.event_id for e in tl.events] == [ids[-1]]
    assert tl.limited is True
    assert tl.prev_batch

    # Incremental sync after 3 more messages: still one event, limited.
    ids2 = await send_texts(alice, room, ["g0", "g1", "g2"])
    r = await bob.sync(timeout=0, since=r.next_batch, sync_filter=fid)
    tl = r.rooms.join[room].timeline
    assert [e.event_id for e in tl.events] == [ids2[-1]]
    assert tl.limited is True

    # prev_batch of the limited timeline paginates back to the skipped ones.
    back = await bob.room_messages(room, start=tl.prev_batch, limit=2)
    assert bodies(back.chunk) == ["g1", "g0"]


async def test_filter_event_types(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)
    await send_texts(alice, room, ["t0", "t1"])
    await alice.room_put_state(room, "m.room.topic", {"topic": "t"})

    inline = {"room": {"timeline": {"types": ["m.room.message"], "limit": 10}}}
    r = await bob.sync(timeout=0, since="", sync_filter=inline)
    assert isinstance(r, SyncResponse), r
    evs = timeline(r, room)
    assert {e.source["type"] for e in evs} == {"m.room.message"}
    assert bodies(evs) == ["t0", "t1"]


async def test_typing_notification(new_user):
    alice = await new_user("alice")
    bob = await new_user("bob")
    room = await shared_room(alice, bob)

    t = await alice.room_typing(room, typing_state=True, timeout=20000)
    assert isinstance(t, RoomTypingResponse), t

    def typing_users(r):
        info = r.rooms.join.get(room)
        evs = [e for e in (info.ephemeral if info else []) if isinstance(e, TypingNoticeEvent)]
        return evs[-1].users if evs else None

    users = await sync_until(bob, lambda r: (u := typing_users(r)) and alice.user_id in u and u)
    assert users == [alice.user_id]

    t = await alice.room_typing(room, typing_state=False)
    assert isinstance(t, RoomTypingResponse), t
    stopped = await sync_until(bob, lambda r: (u := typing_users(r)) is not None and u == [] and [1])
    assert stopped
