"""Federation with a real Synapse (PyPI ``matrix-synapse``) on loopback.

Synapse runs as ``127.0.0.2:<port>`` and Sparks as ``127.0.0.3:<port>``: IP-literal server
names with explicit ports, self-signed TLS on both federation listeners, certificate checks
off and loopback allowed on both sides (../shared/reference/federation-loopback.md).

Covered, both directions where it applies: signing keys fetched and checked over TLS;
signed (``X-Matrix``) requests (profile queries; unsigned and forged ones refused); joining by
alias with history from before the join; invites, accepting, rejecting and leaving; knocking
and admitting; messages, typing, receipts, presence, state changes and redactions crossing;
public room directories; space hierarchies; media and thumbnails. Hand-made hostile PDUs are in test_federation_security.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio

from harness import PASSWORD, Homeserver, raw_request, rand_localpart

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def synapse():
    hs = Homeserver("synapse", federation_ip="127.0.0.2")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


@pytest.fixture(scope="module")
def sparks():
    hs = Homeserver("sparks", federation_ip="127.0.0.3")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


async def register(hs: Homeserver, prefix: str, displayname: str | None = None):
    """Registers a user (m.login.dummy); returns (user_id, access_token)."""
    localpart = rand_localpart(prefix)
    body = {"username": localpart, "password": PASSWORD,
            "auth": {"type": "m.login.dummy"}, "inhibit_login": False}
    status, reply = await raw_request(hs, "POST", "/_matrix/client/v3/register", json=body)
    assert status == 200, reply
    user_id, token = reply["user_id"], reply["access_token"]
    if displayname is not None:
        status, reply = await raw_request(
            hs, "PUT", f"/_matrix/client/v3/profile/{user_id}/displayname", token,
            json={"displayname": displayname})
        assert status == 200, reply
    return user_id, token


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def federation_get(hs: Homeserver, path: str, headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.get(hs.federation_url + path, ssl=insecure(), headers=headers or {}) as r:
            return r.status, await r.json(content_type=None)


async def test_sparks_serves_its_keys_over_tls(sparks):
    status, doc = await federation_get(sparks, "/_matrix/key/v2/server")
    assert status == 200, doc
    assert doc["server_name"] == sparks.server_name
    (key_id, key), = doc["verify_keys"].items()
    assert key_id.startswith("ed25519:")
    assert len(base64.b64decode(key["key"] + "==")) == 32
    assert list(doc["signatures"][sparks.server_name]) == [key_id]


async def test_synapse_fetches_and_accepts_sparks_keys(synapse, sparks):
    # Synapse's notary endpoint makes Synapse fetch Sparks' keys over TLS and check their
    # self-signature; it answers with them, countersigned.
    # (Synapse answers nothing for a key criteria without minimum_valid_until_ts, though the
    # spec makes it optional.)
    _, ours = await federation_get(sparks, "/_matrix/key/v2/server")
    key_id = next(iter(ours["verify_keys"]))
    body = {"server_keys": {sparks.server_name: {
        key_id: {"minimum_valid_until_ts": int(time.time() * 1000)}}}}
    async with aiohttp.ClientSession() as s:
        async with s.post(synapse.federation_url + "/_matrix/key/v2/query", json=body,
                          ssl=insecure()) as r:
            assert r.status == 200, await r.text()
            reply = await r.json()
    docs = [d for d in reply["server_keys"] if d["server_name"] == sparks.server_name]
    assert docs, reply
    assert docs[0]["verify_keys"] == ours["verify_keys"]
    assert synapse.server_name in docs[0]["signatures"]


async def test_sparks_client_reads_a_synapse_profile(synapse, sparks):
    # Sparks signs a federation query to Synapse, which checks the signature with the keys it
    # fetches from Sparks; Sparks checks nothing here but TLS and the answer.
    alice, _ = await register(synapse, "alice", displayname="Alice on Synapse")
    _, bob_token = await register(sparks, "bob")
    status, profile = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/profile/{alice}", bob_token)
    assert status == 200, profile
    assert profile.get("displayname") == "Alice on Synapse"
    status, field = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/profile/{alice}/displayname", bob_token)
    assert status == 200, field
    assert field == {"displayname": "Alice on Synapse"}


async def test_synapse_client_reads_a_sparks_profile(synapse, sparks):
    # Synapse signs a federation query to Sparks; Sparks fetches Synapse's keys and verifies.
    bob, _ = await register(sparks, "bob", displayname="Bob on Sparks")
    _, alice_token = await register(synapse, "alice")
    status, profile = await raw_request(
        synapse, "GET", f"/_matrix/client/v3/profile/{bob}", alice_token)
    assert status == 200, profile
    assert profile.get("displayname") == "Bob on Sparks"
    # A user Sparks does not have is a 404 on the Synapse side too.
    status, _ = await raw_request(
        synapse, "GET", f"/_matrix/client/v3/profile/@nobody:{sparks.server_name}",
        alice_token)
    assert status == 404


async def test_unsigned_and_forged_requests_are_refused(synapse, sparks):
    bob, _ = await register(sparks, "bob")
    path = f"/_matrix/federation/v1/query/profile?user_id={bob}"
    status, body = await federation_get(sparks, path)
    assert status == 401, body
    assert body["errcode"] == "M_UNAUTHORIZED"
    # Claims to come from Synapse, with a signature that is not Synapse's.
    _, synapse_keys = await federation_get(synapse, "/_matrix/key/v2/server")
    key_id = next(iter(synapse_keys["verify_keys"]))
    forged = (f'X-Matrix origin="{synapse.server_name}",destination="{sparks.server_name}",'
              f'key="{key_id}",sig="{base64.b64encode(bytes(64)).decode().rstrip("=")}"')
    status, body = await federation_get(sparks, path, headers={"Authorization": forged})
    assert status == 401, body
    assert body["errcode"] == "M_UNAUTHORIZED"
    # Signed for another destination: refused as well.
    wrong_dest = forged.replace(sparks.server_name, "127.0.0.9:8448")
    status, body = await federation_get(sparks, path, headers={"Authorization": wrong_dest})
    assert status == 401, body


async def sync_until_message(hs: Homeserver, token: str, room_id: str, body: str,
                             timeout: float = 20.0) -> dict:
    """Polls /sync (incrementally) until a message with ``body`` shows up in the room."""
    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        params = {"timeout": "1000"}
        if since:
            params["since"] = since
        status, reply = await raw_request(hs, "GET", "/_matrix/client/v3/sync", token,
                                          params=params)
        assert status == 200, reply
        since = reply["next_batch"]
        room = reply.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("timeline", {}).get("events", []):
            if event.get("content", {}).get("body") == body:
                return event
    raise AssertionError(f"{body!r} did not reach {hs.impl} within {timeout}s")


async def send_text(hs: Homeserver, token: str, room_id: str, body: str) -> str:
    status, reply = await raw_request(
        hs, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{rand_localpart('t')}",
        token, json={"msgtype": "m.text", "body": body})
    assert status == 200, reply
    return reply["event_id"]


async def test_synapse_user_joins_a_sparks_room_by_alias_and_they_talk(synapse, sparks):
    bob, bob_token = await register(sparks, "bob", displayname="Bob")
    alias_local = rand_localpart("fedroom")
    status, room = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "public_chat", "room_alias_name": alias_local, "name": "Federated"})
    assert status == 200, room
    room_id = room["room_id"]
    await send_text(sparks, bob_token, room_id, "before anyone from synapse")

    alice, alice_token = await register(synapse, "alice", displayname="Alice")
    alias = f"#{alias_local}:{sparks.server_name}"
    status, joined = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/join/{quote(alias, safe='')}", alice_token,
        json={})
    assert status == 200, joined
    assert joined["room_id"] == room_id

    # Synapse has the room's state from the join: the name and both members.
    status, state = await raw_request(
        synapse, "GET", f"/_matrix/client/v3/rooms/{room_id}/state", alice_token)
    assert status == 200, state
    kinds = {(e["type"], e.get("state_key")) for e in state}
    assert ("m.room.name", "") in kinds
    assert ("m.room.member", bob) in kinds and ("m.room.member", alice) in kinds

    # Sparks sees the remote join, and messages cross both ways.
    status, members = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members", bob_token)
    assert status == 200, members
    assert alice in members["joined"], members
    await send_text(synapse, alice_token, room_id, "hello from synapse")
    await sync_until_message(sparks, bob_token, room_id, "hello from synapse")
    await send_text(sparks, bob_token, room_id, "hello from sparks")
    event = await sync_until_message(synapse, alice_token, room_id, "hello from sparks")
    assert event["sender"] == bob

    # History from before the join: Synapse backfills it from Sparks when its client pages back.
    status, page = await raw_request(
        synapse, "GET", f"/_matrix/client/v3/rooms/{room_id}/messages", alice_token,
        params={"dir": "b", "limit": "50"})
    assert status == 200, page
    bodies = [e.get("content", {}).get("body") for e in page["chunk"]]
    assert "before anyone from synapse" in bodies, bodies
    kinds = [e["type"] for e in page["chunk"]]
    assert "m.room.create" in kinds or page.get("end"), kinds


async def test_sparks_user_joins_a_synapse_room_by_alias_and_they_talk(synapse, sparks):
    alice, alice_token = await register(synapse, "alice", displayname="Alice")
    alias_local = rand_localpart("synroom")
    status, room = await raw_request(
        synapse, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "public_chat", "room_alias_name": alias_local, "name": "On Synapse",
              "topic": "federation test"})
    assert status == 200, room
    room_id = room["room_id"]
    await send_text(synapse, alice_token, room_id, "synapse history")

    bob, bob_token = await register(sparks, "bob", displayname="Bob")
    alias = f"#{alias_local}:{synapse.server_name}"
    status, joined = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/join/{quote(alias, safe='')}", bob_token, json={})
    assert status == 200, joined
    assert joined["room_id"] == room_id

    # Sparks took the room's state from Synapse (verified) and shows it to its client.
    status, name = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.name/", bob_token)
    assert status == 200, name
    assert name["name"] == "On Synapse"
    status, members = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members", bob_token)
    assert status == 200, members
    assert {alice, bob} <= set(members["joined"]), members

    # Synapse sees Bob's join; messages cross both ways.
    status, members = await raw_request(
        synapse, "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members", alice_token)
    assert status == 200, members
    assert bob in members["joined"], members
    await send_text(sparks, bob_token, room_id, "bob from sparks says hi")
    await sync_until_message(synapse, alice_token, room_id, "bob from sparks says hi")
    await send_text(synapse, alice_token, room_id, "alice answers")
    event = await sync_until_message(sparks, bob_token, room_id, "alice answers")
    assert event["sender"] == alice


async def test_sparks_backfills_history_from_before_its_join(synapse, sparks):
    # 60 messages and a topic change before anyone from Sparks is in the room: more than one
    # backfill round (50 events each), and state that changed in the history.
    alice, alice_token = await register(synapse, "alice")
    status, room = await raw_request(
        synapse, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "public_chat", "topic": "first topic"})
    assert status == 200, room
    room_id = room["room_id"]
    for i in range(30):
        await send_text(synapse, alice_token, room_id, f"old {i}")
    status, reply = await raw_request(
        synapse, "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/", alice_token,
        json={"topic": "second topic"})
    assert status == 200, reply
    for i in range(30, 60):
        await send_text(synapse, alice_token, room_id, f"old {i}")

    bob, bob_token = await register(sparks, "bob")
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", bob_token,
        json={}, params={"server_name": synapse.server_name})
    assert status == 200, reply
    status, first = await raw_request(sparks, "GET", "/_matrix/client/v3/sync", bob_token)
    assert status == 200, first

    # Bob pages back from his join to the room's creation, as a client does.
    events, token, pages = [], None, 0
    while pages < 20:
        params = {"dir": "b", "limit": "20"}
        if token:
            params["from"] = token
        status, page = await raw_request(
            sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/messages", bob_token,
            params=params)
        assert status == 200, page
        events.extend(page["chunk"])
        pages += 1
        token = page.get("end")
        if not token:
            break
    bodies = [e["content"].get("body") for e in events if e["type"] == "m.room.message"]
    assert bodies == [f"old {i}" for i in reversed(range(60))], bodies
    assert events[-1]["type"] == "m.room.create", [e["type"] for e in events[-3:]]
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was returned twice"
    topics = [e["content"].get("topic") for e in events if e["type"] == "m.room.topic"]
    assert topics == ["second topic", "first topic"], topics

    # History is not news: an incremental sync does not deliver the backfilled events.
    status, later = await raw_request(sparks, "GET", "/_matrix/client/v3/sync", bob_token,
                                      params={"since": first["next_batch"], "timeout": "0"})
    assert status == 200, later
    timeline = later.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
    assert not [e for e in timeline.get("events", []) if e["type"] == "m.room.message"]
    # The current state is still the room's latest.
    status, topic = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/", bob_token)
    assert status == 200 and topic["topic"] == "second topic", topic


async def sync_until(hs: Homeserver, token: str, predicate, timeout: float = 20.0):
    """Polls /sync until ``predicate(reply)`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        params = {"timeout": "1000"}
        if since:
            params["since"] = since
        status, reply = await raw_request(hs, "GET", "/_matrix/client/v3/sync", token,
                                          params=params)
        assert status == 200, reply
        since = reply["next_batch"]
        found = predicate(reply)
        if found:
            return found
    raise AssertionError(f"sync condition not met on {hs.impl} within {timeout}s")


async def test_invites_cross_both_ways_and_are_accepted(synapse, sparks):
    alice, alice_token = await register(synapse, "alice", displayname="Alice")
    bob, bob_token = await register(sparks, "bob", displayname="Bob")

    # Synapse -> Sparks: a private room on Synapse; Bob sees the invite with the room's name.
    status, room = await raw_request(
        synapse, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "private_chat", "name": "Private on Synapse", "invite": [bob]})
    assert status == 200, room
    on_synapse = room["room_id"]
    invite = await sync_until(
        sparks, bob_token, lambda r: r.get("rooms", {}).get("invite", {}).get(on_synapse))
    stripped = {e["type"]: e for e in invite["invite_state"]["events"]}
    assert stripped["m.room.name"]["content"]["name"] == "Private on Synapse"
    assert stripped["m.room.member"]["sender"] == alice
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{on_synapse}/join", bob_token, json={})
    assert status == 200, reply
    await send_text(sparks, bob_token, on_synapse, "thanks for the invite")
    await sync_until_message(synapse, alice_token, on_synapse, "thanks for the invite")

    # Sparks -> Synapse: a private room on Sparks; Alice is invited, joins, and talks.
    status, room = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "private_chat", "name": "Private on Sparks"})
    assert status == 200, room
    on_sparks = room["room_id"]
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{on_sparks}/invite", bob_token,
        json={"user_id": alice})
    assert status == 200, reply
    invite = await sync_until(
        synapse, alice_token, lambda r: r.get("rooms", {}).get("invite", {}).get(on_sparks))
    names = [e for e in invite["invite_state"]["events"] if e["type"] == "m.room.name"]
    assert names and names[0]["content"]["name"] == "Private on Sparks", invite
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/rooms/{on_sparks}/join", alice_token, json={})
    assert status == 200, reply
    await send_text(synapse, alice_token, on_sparks, "joined your private room")
    await sync_until_message(sparks, bob_token, on_sparks, "joined your private room")

    # Leaving crosses too.
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/rooms/{on_sparks}/leave", alice_token, json={})
    assert status == 200, reply
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, members = await raw_request(
            sparks, "GET", f"/_matrix/client/v3/rooms/{on_sparks}/joined_members", bob_token)
        assert status == 200, members
        if alice not in members["joined"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("Alice's leave did not reach Sparks")


def ephemeral(reply: dict, room_id: str, kind: str) -> list:
    room = reply.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == kind]


def timeline_events(reply: dict, room_id: str) -> list:
    room = reply.get("rooms", {}).get("join", {}).get(room_id, {})
    return room.get("timeline", {}).get("events", [])


async def test_typing_receipts_state_and_redactions_cross(synapse, sparks):
    bob, bob_token = await register(sparks, "bob")
    alice, alice_token = await register(synapse, "alice")
    status, room = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
                                     json={"preset": "public_chat"})
    assert status == 200, room
    room_id = room["room_id"]
    status, reply = await raw_request(synapse, "POST", f"/_matrix/client/v3/join/{room_id}",
                                      alice_token, json={},
                                      params={"server_name": sparks.server_name})
    assert status == 200, reply

    # Typing, both ways.
    status, _ = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/{bob}", bob_token,
        json={"typing": True, "timeout": 20000})
    assert status == 200
    await sync_until(synapse, alice_token, lambda r: any(
        bob in e["content"]["user_ids"] for e in ephemeral(r, room_id, "m.typing")))
    status, _ = await raw_request(
        synapse, "PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/{alice}", alice_token,
        json={"typing": True, "timeout": 20000})
    assert status == 200
    await sync_until(sparks, bob_token, lambda r: any(
        alice in e["content"]["user_ids"] for e in ephemeral(r, room_id, "m.typing")))

    # Read receipts, both ways.
    from_bob = await send_text(sparks, bob_token, room_id, "read me")
    await sync_until_message(synapse, alice_token, room_id, "read me")
    status, _ = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{from_bob}",
        alice_token, json={})
    assert status == 200
    await sync_until(sparks, bob_token, lambda r: any(
        alice in e["content"].get(from_bob, {}).get("m.read", {})
        for e in ephemeral(r, room_id, "m.receipt")))
    from_alice = await send_text(synapse, alice_token, room_id, "and me")
    await sync_until_message(sparks, bob_token, room_id, "and me")
    status, _ = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{from_alice}",
        bob_token, json={})
    assert status == 200
    await sync_until(synapse, alice_token, lambda r: any(
        bob in e["content"].get(from_alice, {}).get("m.read", {})
        for e in ephemeral(r, room_id, "m.receipt")))

    # A state change on Sparks shows on Synapse.
    status, _ = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/", bob_token,
        json={"topic": "set on sparks"})
    assert status == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, topic = await raw_request(
            synapse, "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/",
            alice_token)
        if status == 200 and topic.get("topic") == "set on sparks":
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("topic did not reach Synapse")

    # Alice redacts her own message on Synapse; Sparks keeps only the redacted event.
    status, reply = await raw_request(
        synapse, "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/redact/{from_alice}/{rand_localpart('r')}",
        alice_token, json={"reason": "oops"})
    assert status == 200, reply
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, event = await raw_request(
            sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{from_alice}", bob_token)
        assert status == 200, event
        if "body" not in event["content"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the redaction did not reach Sparks")


async def test_public_room_directories_of_the_other_server(synapse, sparks):
    _, bob_token = await register(sparks, "bob")
    _, alice_token = await register(synapse, "alice")
    marker = rand_localpart("dir")
    status, on_sparks = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "public_chat", "visibility": "public", "name": f"sparks {marker}"})
    assert status == 200, on_sparks
    status, on_synapse = await raw_request(
        synapse, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "public_chat", "visibility": "public", "name": f"synapse {marker}"})
    assert status == 200, on_synapse

    # Synapse's client browses Sparks' directory, and the other way round (GET and POST).
    status, listing = await raw_request(
        synapse, "GET", "/_matrix/client/v3/publicRooms", alice_token,
        params={"server": sparks.server_name})
    assert status == 200, listing
    assert on_sparks["room_id"] in [r["room_id"] for r in listing["chunk"]], listing
    # (Synapse fills its directory from room statistics a moment after the room is made.)
    deadline = time.monotonic() + 20
    while True:
        status, listing = await raw_request(
            sparks, "GET", "/_matrix/client/v3/publicRooms", bob_token,
            params={"server": synapse.server_name})
        assert status == 200, listing
        if on_synapse["room_id"] in [r["room_id"] for r in listing["chunk"]]:
            break
        assert time.monotonic() < deadline, listing
        await asyncio.sleep(0.3)
    status, listing = await raw_request(
        sparks, "POST", "/_matrix/client/v3/publicRooms", bob_token,
        params={"server": synapse.server_name},
        json={"filter": {"generic_search_term": f"synapse {marker}"}, "limit": 5})
    assert status == 200, listing
    assert [r["room_id"] for r in listing["chunk"]] == [on_synapse["room_id"]], listing


def png_bytes() -> bytes:
    """A real 64x48 PNG (so both servers can thumbnail it)."""
    import struct
    import zlib

    width, height = 64, 48
    raw = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 128)) for x in range(width))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


async def upload(hs: Homeserver, token: str, data: bytes, content_type: str) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.post(hs.base_url + "/_matrix/media/v3/upload", data=data,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": content_type},
                          params={"filename": "picture.png"}) as r:
            body = await r.json()
            assert r.status == 200, body
            return body["content_uri"]


async def download(hs: Homeserver, token: str, mxc: str, thumbnail: bool = False):
    server_name, media_id = mxc[len("mxc://"):].split("/", 1)
    kind = "thumbnail" if thumbnail else "download"
    params = {"width": "32", "height": "32", "method": "scale"} if thumbnail else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{hs.base_url}/_matrix/client/v1/media/{kind}/{server_name}/{media_id}",
                         headers={"Authorization": f"Bearer {token}"}, params=params) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_media_from_the_other_server(synapse, sparks):
    _, bob_token = await register(sparks, "bob")
    _, alice_token = await register(synapse, "alice")
    picture = png_bytes()
    on_sparks = await upload(sparks, bob_token, picture, "image/png")
    on_synapse = await upload(synapse, alice_token, picture, "image/png")

    # Synapse's client fetches Sparks' media (Synapse asks Sparks over federation) ...
    status, kind, body = await download(synapse, alice_token, on_sparks)
    assert status == 200, body[:200]
    assert body == picture and kind.startswith("image/png")
    status, kind, body = await download(synapse, alice_token, on_sparks, thumbnail=True)
    assert status == 200, body[:200]
    assert body[:8] == b"\x89PNG\r\n\x1a\n" or body[:2] == b"\xff\xd8", kind
    # ... and Sparks' client fetches Synapse's (twice: the second comes from Sparks' cache).
    for _ in range(2):
        status, kind, body = await download(sparks, bob_token, on_synapse)
        assert status == 200, body[:200]
        assert body == picture and kind.startswith("image/png")
    status, kind, body = await download(sparks, bob_token, on_synapse, thumbnail=True)
    assert status == 200, body[:200]
    assert kind.startswith("image/")
    # Media the other server does not have is a 404 here too.
    status, _, _ = await download(sparks, bob_token, f"mxc://{synapse.server_name}/nosuchmedia")
    assert status == 404


async def member_state(hs: Homeserver, token: str, room_id: str, user: str) -> str | None:
    status, event = await raw_request(
        hs, "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{user}", token)
    return event.get("membership") if status == 200 else None


async def wait_for_membership(hs: Homeserver, token: str, room_id: str, user: str,
                              membership: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await member_state(hs, token, room_id, user) == membership:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user} is not '{membership}' on {hs.impl}")


KNOCK_ROOM = {"preset": "private_chat",
              "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                                 "content": {"join_rule": "knock"}}]}


async def test_knock_and_admit_both_ways_and_reject_an_invite(synapse, sparks):
    alice, alice_token = await register(synapse, "alice")
    bob, bob_token = await register(sparks, "bob")

    # Alice (Synapse) knocks on Bob's room on Sparks; Bob admits her with an invite.
    status, room = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
                                     json=KNOCK_ROOM)
    assert status == 200, room
    on_sparks = room["room_id"]
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/knock/{on_sparks}", alice_token,
        json={"reason": "let me in"}, params={"server_name": sparks.server_name})
    assert status == 200, reply
    await wait_for_membership(sparks, bob_token, on_sparks, alice, "knock")
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{on_sparks}/invite", bob_token,
        json={"user_id": alice})
    assert status == 200, reply
    await sync_until(synapse, alice_token,
                     lambda r: r.get("rooms", {}).get("invite", {}).get(on_sparks))
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/rooms/{on_sparks}/join", alice_token, json={})
    assert status == 200, reply
    await wait_for_membership(sparks, bob_token, on_sparks, alice, "join")

    # Bob (Sparks) knocks on Alice's room on Synapse; Alice admits him; he joins.
    status, room = await raw_request(synapse, "POST", "/_matrix/client/v3/createRoom",
                                     alice_token, json=KNOCK_ROOM)
    assert status == 200, room
    on_synapse = room["room_id"]
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/knock/{on_synapse}", bob_token,
        json={"reason": "me too"}, params={"via": synapse.server_name})
    assert status == 200, reply
    knock = await sync_until(sparks, bob_token,
                             lambda r: r.get("rooms", {}).get("knock", {}).get(on_synapse))
    assert knock["knock_state"]["events"], knock
    await wait_for_membership(synapse, alice_token, on_synapse, bob, "knock")
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/rooms/{on_synapse}/invite", alice_token,
        json={"user_id": bob})
    assert status == 200, reply
    await sync_until(sparks, bob_token,
                     lambda r: r.get("rooms", {}).get("invite", {}).get(on_synapse))
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{on_synapse}/join", bob_token, json={})
    assert status == 200, reply
    await wait_for_membership(synapse, alice_token, on_synapse, bob, "join")

    # An invite from Synapse that Bob rejects: Synapse sees him leave.
    status, room = await raw_request(synapse, "POST", "/_matrix/client/v3/createRoom",
                                     alice_token, json={"preset": "private_chat",
                                                        "invite": [bob]})
    assert status == 200, room
    rejected = room["room_id"]
    await sync_until(sparks, bob_token,
                     lambda r: r.get("rooms", {}).get("invite", {}).get(rejected))
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{rejected}/leave", bob_token, json={})
    assert status == 200, reply
    await wait_for_membership(synapse, alice_token, rejected, bob, "leave")
    left = await sync_until(sparks, bob_token,
                            lambda r: r.get("rooms", {}).get("leave", {}).get(rejected) or
                            (rejected not in r.get("rooms", {}).get("invite", {}) and {"ok": 1}))
    assert left


async def test_presence_crosses_between_room_mates(synapse, sparks):
    bob, bob_token = await register(sparks, "bob")
    alice, alice_token = await register(synapse, "alice")
    status, room = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
                                     json={"preset": "public_chat"})
    assert status == 200, room
    status, reply = await raw_request(synapse, "POST", f"/_matrix/client/v3/join/{room['room_id']}",
                                      alice_token, json={},
                                      params={"server_name": sparks.server_name})
    assert status == 200, reply

    async def set_and_wait(source, source_token, user, presence, message, target, token):
        # Set again every few seconds: right after a join Synapse may not count the user as a
        # room-mate yet and drops presence from them (its own cache, not the EDU).
        deadline = time.monotonic() + 30
        next_set = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_set:
                status, _ = await raw_request(
                    source, "PUT", f"/_matrix/client/v3/presence/{user}/status", source_token,
                    json={"presence": presence, "status_msg": message})
                assert status == 200
                next_set = time.monotonic() + 5
            status, seen = await raw_request(
                target, "GET", f"/_matrix/client/v3/presence/{user}/status", token)
            if status == 200 and seen.get("status_msg") == message:
                return seen
            await asyncio.sleep(0.3)
        raise AssertionError(f"{user}'s status {message!r} did not reach {target.impl}")

    presence = await set_and_wait(sparks, bob_token, bob, "online", "on sparks",
                                  synapse, alice_token)
    assert presence["presence"] == "online"
    presence = await set_and_wait(synapse, alice_token, alice, "unavailable", "on synapse",
                                  sparks, bob_token)
    assert presence["presence"] == "unavailable"


async def test_synapse_reads_the_hierarchy_of_a_sparks_space(synapse, sparks):
    bob, bob_token = await register(sparks, "bob")
    _, alice_token = await register(synapse, "alice")
    status, space = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "public_chat", "creation_content": {"type": "m.space"},
              "name": "Sparks space"})
    assert status == 200, space
    status, child = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom",
                                      bob_token, json={"preset": "public_chat",
                                                       "name": "Child on sparks"})
    assert status == 200, child
    status, reply = await raw_request(
        sparks, "PUT",
        f"/_matrix/client/v3/rooms/{space['room_id']}/state/m.space.child/{child['room_id']}",
        bob_token, json={"via": [sparks.server_name], "suggested": True})
    assert status == 200, reply
    # Alice joins the space; the child she is not in comes from Sparks' federation hierarchy.
    status, reply = await raw_request(
        synapse, "POST", f"/_matrix/client/v3/join/{space['room_id']}", alice_token, json={},
        params={"server_name": sparks.server_name})
    assert status == 200, reply
    status, tree = await raw_request(
        synapse, "GET", f"/_matrix/client/v1/rooms/{space['room_id']}/hierarchy", alice_token)
    assert status == 200, tree
    names = {r["room_id"]: r.get("name") for r in tree["rooms"]}
    assert names.get(child["room_id"]) == "Child on sparks", tree


async def test_a_sparks_user_explores_a_synapse_space_without_joining(synapse, sparks):
    # Sparks is not in the space: its servers (the one in the room id) answer over federation.
    alice, alice_token = await register(synapse, "alice")
    status, space = await raw_request(
        synapse, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "public_chat", "creation_content": {"type": "m.space"},
              "name": "Synapse space", "room_version": "10"})
    assert status == 200, space
    status, child = await raw_request(synapse, "POST", "/_matrix/client/v3/createRoom",
                                      alice_token, json={"preset": "public_chat",
                                                         "name": "Child on synapse"})
    assert status == 200, child
    status, reply = await raw_request(
        synapse, "PUT",
        f"/_matrix/client/v3/rooms/{space['room_id']}/state/m.space.child/{child['room_id']}",
        alice_token, json={"via": [synapse.server_name], "suggested": True})
    assert status == 200, reply
    _, bob_token = await register(sparks, "bob")
    status, tree = await raw_request(
        sparks, "GET", f"/_matrix/client/v1/rooms/{space['room_id']}/hierarchy", bob_token)
    assert status == 200, tree
    names = {r["room_id"]: r.get("name") for r in tree["rooms"]}
    assert names.get(space["room_id"]) == "Synapse space", tree
    assert names.get(child["room_id"]) == "Child on synapse", tree
    space_entry = next(r for r in tree["rooms"] if r["room_id"] == space["room_id"])
    assert any(e["state_key"] == child["room_id"] for e in space_entry["children_state"])


async def test_signing_key_rotation_keeps_the_old_key_verifiable(synapse):
    # A Sparks of its own: it is restarted.
    hs = Homeserver("sparks", federation_ip="127.0.0.7")
    hs.start()
    try:
        _, before = await federation_get(hs, "/_matrix/key/v2/server")
        (old_id, old_key), = before["verify_keys"].items()
        hs.restart(between=["--rotate-signing-key"])
        _, after = await federation_get(hs, "/_matrix/key/v2/server")
        (new_id, _), = after["verify_keys"].items()
        assert new_id != old_id
        assert after["old_verify_keys"][old_id]["key"] == old_key["key"]
        assert after["old_verify_keys"][old_id]["expired_ts"] <= int(time.time() * 1000)
        assert list(after["signatures"][hs.server_name]) == [new_id]
        # Synapse accepts the rotated document (it checks the self-signature).
        body = {"server_keys": {hs.server_name: {
            new_id: {"minimum_valid_until_ts": int(time.time() * 1000)}}}}
        async with aiohttp.ClientSession() as s:
            async with s.post(synapse.federation_url + "/_matrix/key/v2/query", json=body,
                              ssl=insecure()) as r:
                assert r.status == 200, await r.text()
                reply = await r.json()
        docs = [d for d in reply["server_keys"] if d["server_name"] == hs.server_name]
        assert docs and new_id in docs[0]["verify_keys"], reply
    finally:
        hs.stop()


async def test_a_synapse_user_gets_a_call_token_from_sparks(synapse, sparks):
    # MatrixRTC across servers: Sparks checks the OpenID token of a Synapse user with Synapse
    # (federation openid/userinfo) and that user's membership of the room, as it knows it.
    bob, bob_token = await register(sparks, "bob")
    status, room = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "public_chat",
              "power_level_content_override": {"events": {"org.matrix.msc3401.call.member": 0}}})
    assert status == 200, room
    room_id = room["room_id"]
    alice, alice_token = await register(synapse, "alice")
    status, reply = await raw_request(synapse, "POST", f"/_matrix/client/v3/join/{room_id}",
                                      alice_token, json={},
                                      params={"server_name": sparks.server_name})
    assert status == 200, reply

    async def openid(hs, user, token):
        status, reply = await raw_request(
            hs, "POST", f"/_matrix/client/v3/user/{quote(user)}/openid/request_token", token,
            json={})
        assert status == 200, reply
        assert reply["matrix_server_name"] == hs.server_name
        return reply

    service = f"http://{sparks.ip}:{sparks.port}/livekit/jwt"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{service}/sfu/get", json={
                "room": room_id, "openid_token": await openid(synapse, alice, alice_token),
                "device_id": "ALICEDEV"}) as r:
            assert r.status == 200, await r.text()
            reply = await r.json()
        payload = reply["jwt"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["sub"] == f"{alice}:ALICEDEV"

        # Someone on Synapse who is not in the room, and a token Synapse never issued.
        carol, carol_token = await register(synapse, "carol")
        async with s.post(f"{service}/sfu/get", json={
                "room": room_id, "openid_token": await openid(synapse, carol, carol_token),
                "device_id": "X"}) as r:
            assert r.status == 403, await r.text()
        forged = {"access_token": "forged", "token_type": "Bearer",
                  "matrix_server_name": synapse.server_name, "expires_in": 3600}
        async with s.post(f"{service}/sfu/get", json={
                "room": room_id, "openid_token": forged, "device_id": "X"}) as r:
            assert r.status == 401, await r.text()
