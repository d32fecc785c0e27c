"""Federation security against hand-made PDUs: the test speaks for a real Synapse (it signs
with that Synapse's own signing key, read from its config dir, using Synapse's and
signedjson's signing code), so Sparks fetches genuine keys and every check is the real one.

A well-formed PDU is accepted (the control); one allowed before a ban but not after it is
soft-failed (kept, never shown); a redaction takes effect only where its sender may redact,
and also when it arrives before its target; history a server may not see is served redacted; a bad
signature, a sender from a server that did not sign, a forged transaction origin, an
oversized PDU, a power-level grab and a server the room's ACL denies are all refused and
never enter the room; a PDU whose content does not match its hash is kept only redacted.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import ssl
import time
from urllib.parse import quote

import aiohttp
from yarl import URL
import pytest
from signedjson.key import read_signing_keys
from signedjson.sign import sign_json
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

from harness import Homeserver, raw_request
from test_federation_synapse import register, send_text, sparks, synapse  # noqa: F401

pytestmark = pytest.mark.asyncio


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class AsSynapse:
    """Signed federation requests to Sparks in the name of the Synapse under test."""

    def __init__(self, synapse: Homeserver, sparks: Homeserver):
        with open(synapse.tmp / "signing.key") as f:
            self.key = read_signing_keys(f)[0]
        self.origin = synapse.server_name
        self.sparks = sparks

    def header(self, method: str, uri: str, content, origin: str | None = None) -> str:
        request = {"method": method, "uri": uri, "origin": origin or self.origin,
                   "destination": self.sparks.server_name}
        if content is not None:
            request["content"] = content
        signed = sign_json(request, self.origin, self.key)
        sig = signed["signatures"][self.origin][f"ed25519:{self.key.version}"]
        return (f'X-Matrix origin="{origin or self.origin}",destination="{self.sparks.server_name}",'
                f'key="ed25519:{self.key.version}",sig="{sig}"')

    async def request(self, method: str, uri: str, content=None, origin_in_body=None):
        headers = {"Authorization": self.header(method, uri, content)}
        async with aiohttp.ClientSession() as s:
            # encoded=True: sent exactly as signed (yarl would otherwise normalise "%24").
            async with s.request(method, URL(self.sparks.federation_url + uri, encoded=True),
                                 ssl=insecure(),
                                 headers=headers,
                                 data=None if content is None else json.dumps(content),
                                 ) as r:
                return r.status, await r.json(content_type=None)

    async def send(self, pdus: list[dict], origin: str | None = None):
        txn = secrets.token_hex(8)
        body = {"origin": origin or self.origin,
                "origin_server_ts": int(time.time() * 1000), "pdus": pdus, "edus": []}
        return await self.request("PUT", f"/_matrix/federation/v1/send/{txn}", body)

    async def pdu(self, event_id: str) -> dict:
        status, reply = await self.request("GET", f"/_matrix/federation/v1/event/{quote(event_id)}")
        assert status == 200, reply
        return reply["pdus"][0]

    def sign(self, event: dict) -> tuple[str, dict]:
        """Adds hashes and Synapse's signature; returns (event id, event)."""
        room_version = KNOWN_ROOM_VERSIONS["12"]
        add_hashes_and_signatures(room_version, event, self.origin, self.key)
        return make_event_from_dict(copy.deepcopy(event), room_version).event_id, event


@pytest.fixture(scope="module")
def setup(synapse, sparks):  # noqa: F811
    """A Sparks room Alice (on Synapse) has joined; Bob owns it."""
    return asyncio.run(make_room(synapse, sparks))


async def make_room(synapse, sparks):  # noqa: F811
    bob, bob_token = await register(sparks, "bob")
    alice, alice_token = await register(synapse, "alice")
    status, room = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom",
                                     bob_token, json={"preset": "public_chat"})
    assert status == 200, room
    room_id = room["room_id"]
    status, reply = await raw_request(synapse, "POST", f"/_matrix/client/v3/join/{room_id}",
                                      alice_token, json={},
                                      params={"server_name": sparks.server_name})
    assert status == 200, reply
    return {"room": room_id, "bob": bob, "bob_token": bob_token, "alice": alice,
            "alice_token": alice_token}


async def template(as_synapse: AsSynapse, sparks: Homeserver, setup: dict, sender: str,
                   kind: str, content: dict, state_key: str | None = None) -> dict:
    """An event on top of the room's latest event, with the right auth events."""
    room, token = setup["room"], setup["bob_token"]
    status, page = await raw_request(sparks, "GET", f"/_matrix/client/v3/rooms/{room}/messages",
                                     token, params={"dir": "b", "limit": "1"})
    assert status == 200, page
    latest = await as_synapse.pdu(page["chunk"][0]["event_id"])
    status, state = await raw_request(sparks, "GET", f"/_matrix/client/v3/rooms/{room}/state",
                                      token)
    assert status == 200, state
    ids = {(e["type"], e["state_key"]): e["event_id"] for e in state}
    auth = [ids[("m.room.power_levels", "")]]
    if ("m.room.member", sender) in ids:
        auth.append(ids[("m.room.member", sender)])
    event = {"room_id": room, "sender": sender, "type": kind, "content": content,
             "origin_server_ts": int(time.time() * 1000), "depth": latest["depth"] + 1,
             "prev_events": [page["chunk"][0]["event_id"]], "auth_events": auth}
    if state_key is not None:
        event["state_key"] = state_key
    return event


async def bodies_in_room(sparks: Homeserver, setup: dict) -> list:
    status, page = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{setup['room']}/messages", setup["bob_token"],
        params={"dir": "b", "limit": "30"})
    assert status == 200, page
    return [(e["event_id"], e.get("content", {}).get("body")) for e in page["chunk"]]


async def test_a_well_signed_pdu_is_accepted(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "genuine"})
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert reply["pdus"][event_id] == {}, reply
    assert (event_id, "genuine") in await bodies_in_room(sparks, setup)


async def test_bad_signature_is_rejected(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "badly signed"})
    event_id, event = as_synapse.sign(event)
    sigs = event["signatures"][as_synapse.origin]
    key_id = next(iter(sigs))
    sigs[key_id] = ("A" if sigs[key_id][0] != "A" else "B") + sigs[key_id][1:]
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert "error" in reply["pdus"][event_id], reply
    assert event_id not in [e for e, _ in await bodies_in_room(sparks, setup)]


async def test_wrong_content_hash_is_kept_only_redacted(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "original"})
    event_id, event = as_synapse.sign(event)
    event["content"]["body"] = "tampered"  # the signature covers the redacted form only
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert reply["pdus"][event_id] == {}, reply
    found = dict(await bodies_in_room(sparks, setup))
    assert event_id in found and found[event_id] is None, found


async def test_sender_of_a_server_that_did_not_sign_is_rejected(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, setup, "@eve:127.0.0.9:8448", "m.room.message",
                           {"msgtype": "m.text", "body": "not my server"})
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert "error" in reply["pdus"][event_id], reply
    assert event_id not in [e for e, _ in await bodies_in_room(sparks, setup)]


async def test_forged_transaction_origin_is_refused(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    status, reply = await as_synapse.send([], origin="127.0.0.9:8448")
    assert status == 403, reply
    assert reply["errcode"] == "M_FORBIDDEN"


async def test_oversized_pdu_is_rejected(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "x" * 70_000})
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    # Too large to even compute an id for: not acknowledged as accepted, not in the room.
    assert reply["pdus"].get(event_id) != {}, reply
    assert event_id not in [e for e, _ in await bodies_in_room(sparks, setup)]


async def test_power_levels_are_enforced_across_servers(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    status, levels = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{setup['room']}/state/m.room.power_levels/",
        setup["bob_token"])
    assert status == 200, levels
    grab = dict(levels)
    grab["users"] = {**levels.get("users", {}), setup["alice"]: 100}
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.power_levels",
                           grab, state_key="")
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert "error" in reply["pdus"][event_id], reply
    status, after = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{setup['room']}/state/m.room.power_levels/",
        setup["bob_token"])
    assert after == levels


async def test_a_redaction_applies_only_where_its_sender_may_redact(synapse, sparks, setup):  # noqa: F811
    # Since room version 3 the authorization rules accept a redaction from any member; it takes
    # effect on events of the redacting user's own server, or with the power to redact others'.
    as_synapse = AsSynapse(synapse, sparks)
    bobs = await send_text(sparks, setup["bob_token"], setup["room"], "bob's words")
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "alice's words"})
    alices, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200 and reply["pdus"][alices] == {}, reply
    redactions = []
    for target in (bobs, alices):
        redaction = await template(as_synapse, sparks, setup, setup["alice"], "m.room.redaction",
                                   {"redacts": target})
        redaction_id, redaction = as_synapse.sign(redaction)
        status, reply = await as_synapse.send([redaction])
        assert status == 200 and reply["pdus"][redaction_id] == {}, reply
        redactions.append(redaction_id)
    found = dict(await bodies_in_room(sparks, setup))
    assert found[bobs] == "bob's words", found
    assert alices in found and found[alices] is None, found
    # Clients see the redaction that took effect, not the one that may not (they would apply it).
    assert redactions[1] in found and redactions[0] not in found, (redactions, found)
    status, stored = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{setup['room']}/event/{quote(bobs)}",
        setup["bob_token"])
    assert status == 200 and stored["content"]["body"] == "bob's words", stored
    assert "redacted_because" not in stored.get("unsigned", {}), stored


async def test_a_redaction_that_comes_before_its_target_applies_when_the_target_comes(synapse, sparks, setup):  # noqa: F811
    # The redaction and its target are siblings in the room's graph; the redaction is sent
    # first (as when history arrives newest first): the target is stored redacted.
    as_synapse = AsSynapse(synapse, sparks)
    message = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                             {"msgtype": "m.text", "body": "soon gone"})
    message_id, message = as_synapse.sign(message)
    redaction = await template(as_synapse, sparks, setup, setup["alice"], "m.room.redaction",
                               {"redacts": message_id, "reason": "oops"})
    redaction_id, redaction = as_synapse.sign(redaction)
    status, reply = await as_synapse.send([redaction])
    assert status == 200 and reply["pdus"][redaction_id] == {}, reply
    status, reply = await as_synapse.send([message])
    assert status == 200 and reply["pdus"][message_id] == {}, reply
    found = dict(await bodies_in_room(sparks, setup))
    assert message_id in found and found[message_id] is None, found
    status, stored = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{setup['room']}/event/{quote(message_id)}",
        setup["bob_token"])
    assert status == 200, stored
    assert stored["content"] == {}, stored
    assert stored["unsigned"]["redacted_because"]["event_id"] == redaction_id, stored
    # Other servers asking for it get the redacted form too.
    assert "body" not in (await as_synapse.pdu(message_id))["content"]


async def test_event_auth_and_state_ids_are_served_to_room_members(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    room, token = setup["room"], setup["bob_token"]
    status, page = await raw_request(sparks, "GET", f"/_matrix/client/v3/rooms/{room}/messages",
                                     token, params={"dir": "b", "limit": "1"})
    assert status == 200, page
    latest = page["chunk"][0]["event_id"]
    status, reply = await as_synapse.request(
        "GET", f"/_matrix/federation/v1/event_auth/{quote(room)}/{quote(latest)}")
    assert status == 200, reply
    kinds = {e["type"] for e in reply["auth_chain"]}
    assert {"m.room.create", "m.room.power_levels", "m.room.member"} <= kinds, kinds
    status, reply = await as_synapse.request(
        "GET", f"/_matrix/federation/v1/state_ids/{quote(room)}?event_id={quote(latest)}")
    assert status == 200, reply
    assert reply["pdu_ids"] and reply["auth_chain_ids"], reply


async def test_a_server_denied_by_the_acl_cannot_send(synapse, sparks, setup):  # noqa: F811
    as_synapse = AsSynapse(synapse, sparks)
    host = synapse.server_name.split(":")[0]
    # Prepared while Synapse is still allowed to read the room (after the ACL it may not).
    event = await template(as_synapse, sparks, setup, setup["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "after the ACL"})
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{setup['room']}/state/m.room.server_acl/",
        setup["bob_token"], json={"allow": ["*"], "deny": [host], "allow_ip_literals": True})
    assert status == 200, reply
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert "error" in reply["pdus"][event_id], reply
    assert event_id not in [e for e, _ in await bodies_in_room(sparks, setup)]
    # Room-scoped reads are refused too.
    status, reply = await as_synapse.request(
        "GET", f"/_matrix/federation/v1/event/{quote(event_id)}")
    assert status in (403, 404), reply



async def test_an_event_allowed_before_but_not_by_current_state_is_soft_failed(synapse, sparks):  # noqa: F811
    # Alice's message builds on the room as it was before Bob banned her: it passes its auth
    # events and the state before it, but not the current state. It is kept (later events may
    # name it) but shown to no client and not built on.
    room = await make_room(synapse, sparks)
    carol, carol_token = await register(synapse, "carol")  # keeps Synapse in the room
    status, reply = await raw_request(synapse, "POST",
                                      f"/_matrix/client/v3/join/{room['room']}", carol_token,
                                      json={}, params={"server_name": sparks.server_name})
    assert status == 200, reply
    as_synapse = AsSynapse(synapse, sparks)
    event = await template(as_synapse, sparks, room, room["alice"], "m.room.message",
                           {"msgtype": "m.text", "body": "from before the ban"})
    status, reply = await raw_request(
        sparks, "POST", f"/_matrix/client/v3/rooms/{room['room']}/ban", room["bob_token"],
        json={"user_id": room["alice"]})
    assert status == 200, reply
    event_id, event = as_synapse.sign(event)
    status, reply = await as_synapse.send([event])
    assert status == 200, reply
    assert reply["pdus"][event_id] == {}, reply  # soft failure is not a rejection
    assert event_id not in [e for e, _ in await bodies_in_room(sparks, room)]
    status, reply = await raw_request(
        sparks, "GET", f"/_matrix/client/v3/rooms/{room['room']}/event/{quote(event_id)}",
        room["bob_token"])
    assert status == 404, reply
    # Stored all the same (other servers may ask for it) ...
    assert (await as_synapse.pdu(event_id))["content"]["body"] == "from before the ban"
    # ... but Bob's next event does not build on it.
    next_id = await send_text(sparks, room["bob_token"], room["room"], "after the ban")
    following = await as_synapse.pdu(next_id)
    assert event_id not in following["prev_events"], following
    status, member = await raw_request(
        sparks, "GET",
        f"/_matrix/client/v3/rooms/{room['room']}/state/m.room.member/{room['alice']}",
        room["bob_token"])
    assert status == 200 and member["membership"] == "ban", member


async def test_history_a_server_may_not_see_is_served_redacted(synapse, sparks):  # noqa: F811
    # With `joined` history visibility, what was said before anyone from Synapse joined is
    # not Synapse's to read: /event, /backfill and its own client get it redacted.
    bob, bob_token = await register(sparks, "bob")
    alice, alice_token = await register(synapse, "alice")
    status, room = await raw_request(
        sparks, "POST", "/_matrix/client/v3/createRoom", bob_token,
        json={"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "joined"}}]})
    assert status == 200, room
    room_id = room["room_id"]
    secret = await send_text(sparks, bob_token, room_id, "before you joined")
    status, reply = await raw_request(synapse, "POST", f"/_matrix/client/v3/join/{room_id}",
                                      alice_token, json={},
                                      params={"server_name": sparks.server_name})
    assert status == 200, reply
    public = await send_text(sparks, bob_token, room_id, "after you joined")

    as_synapse = AsSynapse(synapse, sparks)
    served = await as_synapse.pdu(secret)
    assert served["content"] == {}, served
    assert (await as_synapse.pdu(public))["content"]["body"] == "after you joined"
    status, reply = await as_synapse.request(
        "GET", f"/_matrix/federation/v1/backfill/{quote(room_id)}?v={quote(public)}&limit=20")
    assert status == 200, reply
    bodies = [p["content"].get("body") for p in reply["pdus"] if p["type"] == "m.room.message"]
    assert bodies == ["after you joined", None], bodies

    status, page = await raw_request(synapse, "GET",
                                     f"/_matrix/client/v3/rooms/{room_id}/messages",
                                     alice_token, params={"dir": "b", "limit": "30"})
    assert status == 200, page
    seen = [e.get("content", {}).get("body") for e in page["chunk"]]
    assert "before you joined" not in seen, seen
