"""MatrixRTC on Sparks, as Element Call uses it: discover the built-in SFU (well-known and
``rtc/transports``), trade a Matrix OpenID token for a call token at the lk-jwt-service
endpoints Sparks serves (``/livekit/jwt/sfu/get`` and ``/get_token``), join with the LiveKit
Python SDK, and be removed from the call when removed from the Matrix room.

Unlike lk-jwt-service, Sparks only gives tokens to members of the Matrix room, and grants
publishing only to those whose power level lets them send call membership events.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from urllib.parse import quote

import aiohttp
import pytest
from livekit import rtc

from harness import Homeserver, raw_request
from test_federation_synapse import register
from test_sfu_livekit import heard_frequency, publish_tone

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def sparks():
    hs = Homeserver("sparks")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


def unpadded_sha256(parts: list[str]) -> str:
    text = json.dumps(parts, separators=(",", ":"))
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def claims_of(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def openid(hs: Homeserver, user: str, token: str) -> dict:
    status, reply = await raw_request(
        hs, "POST", f"/_matrix/client/v3/user/{quote(user)}/openid/request_token", token,
        json={})
    assert status == 200, reply
    return reply


async def whoami(hs: Homeserver, token: str) -> dict:
    status, reply = await raw_request(hs, "GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 200, reply
    return reply


async def post(url: str, body) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)


async def call_room(hs: Homeserver):
    """A room where everyone may send call memberships (as Element Call's rooms have it):
    Alice created it, Bob joined."""
    alice, alice_token = await register(hs, "alice")
    bob, bob_token = await register(hs, "bob")
    status, room = await raw_request(
        hs, "POST", "/_matrix/client/v3/createRoom", alice_token,
        json={"preset": "public_chat", "power_level_content_override": {
            "events": {"org.matrix.msc3401.call.member": 0}}})
    assert status == 200, room
    status, reply = await raw_request(hs, "POST", f"/_matrix/client/v3/join/{room['room_id']}",
                                      bob_token, json={})
    assert status == 200, reply
    return room["room_id"], (alice, alice_token), (bob, bob_token)


async def test_clients_discover_the_sfu(sparks):
    _, token = await register(sparks, "dora")
    status, well_known = await raw_request(sparks, "GET", "/.well-known/matrix/client")
    assert status == 200, well_known
    foci = well_known["org.matrix.msc4143.rtc_foci"]
    assert foci == [{"type": "livekit",
                     "livekit_service_url": f"http://{sparks.ip}:{sparks.port}/livekit/jwt"}]
    status, transports = await raw_request(
        sparks, "GET", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", token)
    assert status == 200, transports
    assert transports["rtc_transports"] == foci
    status, _ = await raw_request(
        sparks, "GET", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
    assert status == 401
    status, versions = await raw_request(sparks, "GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc4143"] is True


async def test_tokens_only_for_members_with_identities_as_lk_jwt_service(sparks):
    room_id, (alice, alice_token), _ = await call_room(sparks)
    service = f"http://{sparks.ip}:{sparks.port}/livekit/jwt"
    device = (await whoami(sparks, alice_token))["device_id"]
    openid_token = await openid(sparks, alice, alice_token)

    status, reply = await post(f"{service}/sfu/get", {
        "room": room_id, "openid_token": openid_token, "device_id": device})
    assert status == 200, reply
    assert reply["url"] == f"ws://{sparks.ip}:{sparks.port}/livekit/sfu"
    claims = claims_of(reply["jwt"])
    assert claims["sub"] == f"{alice}:{device}"
    assert claims["video"]["room"] == unpadded_sha256([room_id, "m.call#ROOM"])
    assert claims["video"]["roomJoin"] and claims["video"]["canPublish"]

    member = {"id": "member-1", "claimed_user_id": alice, "claimed_device_id": device}
    status, reply = await post(f"{service}/get_token", {
        "room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid_token,
        "member": member})
    assert status == 200, reply
    claims = claims_of(reply["jwt"])
    assert claims["sub"] == unpadded_sha256([alice, device, "member-1"])
    assert claims["video"]["room"] == unpadded_sha256([room_id, "m.call#ROOM"])

    # Someone else's claim, a bad OpenID token, a non-member, bad bodies.
    forged = dict(member, claimed_user_id="@mallory:" + sparks.server_name)
    status, reply = await post(f"{service}/get_token", {
        "room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid_token,
        "member": forged})
    assert (status, reply["errcode"]) == (401, "M_UNAUTHORIZED"), reply
    bad = dict(openid_token, access_token="nope")
    status, reply = await post(f"{service}/sfu/get", {
        "room": room_id, "openid_token": bad, "device_id": device})
    assert (status, reply["errcode"]) == (401, "M_UNAUTHORIZED"), reply
    carol, carol_token = await register(sparks, "carol")
    status, reply = await post(f"{service}/sfu/get", {
        "room": room_id, "openid_token": await openid(sparks, carol, carol_token),
        "device_id": "X"})
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), reply
    status, reply = await post(f"{service}/sfu/get", b"{not json")
    assert (status, reply["errcode"]) == (400, "M_NOT_JSON"), reply
    status, reply = await post(f"{service}/sfu/get", {"room": room_id})
    assert (status, reply["errcode"]) == (400, "M_BAD_JSON"), reply


async def test_publishing_follows_power_levels(sparks):
    # In a room with the default levels, call memberships need level 50: a plain member
    # gets a token that lets them watch but not publish.
    alice, alice_token = await register(sparks, "alice")
    bob, bob_token = await register(sparks, "bob")
    status, room = await raw_request(sparks, "POST", "/_matrix/client/v3/createRoom",
                                     alice_token, json={"preset": "public_chat"})
    assert status == 200, room
    status, _ = await raw_request(sparks, "POST", f"/_matrix/client/v3/join/{room['room_id']}",
                                  bob_token, json={})
    assert status == 200
    service = f"http://{sparks.ip}:{sparks.port}/livekit/jwt"
    for user, token, can in ((alice, alice_token, True), (bob, bob_token, False)):
        status, reply = await post(f"{service}/sfu/get", {
            "room": room["room_id"], "openid_token": await openid(sparks, user, token),
            "device_id": "D"})
        assert status == 200, reply
        assert claims_of(reply["jwt"])["video"]["canPublish"] is can, user


async def test_a_call_through_matrix_and_a_kick_ends_it_at_once(sparks):
    room_id, (alice, alice_token), (bob, bob_token) = await call_room(sparks)
    service = f"http://{sparks.ip}:{sparks.port}/livekit/jwt"

    async def join(user, token):
        device = (await whoami(sparks, token))["device_id"]
        status, reply = await post(f"{service}/sfu/get", {
            "room": room_id, "openid_token": await openid(sparks, user, token),
            "device_id": device})
        assert status == 200, reply
        lk = rtc.Room()
        await asyncio.wait_for(lk.connect(reply["url"], reply["jwt"], rtc.RoomOptions(
            single_peer_connection=False)), timeout=20)
        return lk, f"{user}:{device}"

    (alice_lk, alice_identity), (bob_lk, bob_identity) = await join(alice, alice_token), \
        await join(bob, bob_token)
    feeder = await publish_tone(alice_lk, 440)
    try:
        assert abs(await heard_frequency(bob_lk, alice_identity) - 440) < 20

        removed = asyncio.Event()
        gone = asyncio.Event()
        bob_lk.on("disconnected", lambda reason: removed.set())
        alice_lk.on("participant_disconnected",
                    lambda p: p.identity == bob_identity and gone.set())
        started = time.monotonic()
        status, reply = await raw_request(sparks, "POST",
                                          f"/_matrix/client/v3/rooms/{room_id}/kick",
                                          alice_token, json={"user_id": bob, "reason": "bye"})
        assert status == 200, reply
        await asyncio.wait_for(asyncio.gather(removed.wait(), gone.wait()), timeout=5)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"removed from the call after {elapsed:.2f} s"
    finally:
        feeder.cancel()
        await alice_lk.disconnect()
        await bob_lk.disconnect()


async def test_the_homeserver_endpoint_of_msc4195(sparks):
    # No OpenID round trip: the homeserver issues the token to its authenticated user.
    room_id, (alice, alice_token), _ = await call_room(sparks)
    device = (await whoami(sparks, alice_token))["device_id"]
    path = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"
    for body in ({"room_id": room_id, "slot_id": "m.call#ROOM",
                  "member": {"id": "m1", "claimed_device_id": device}},
                 {"room_id": room_id, "slot_id": "m.call#ROOM", "member_id": "m1"}):
        status, reply = await raw_request(sparks, "POST", path, alice_token, json=body)
        assert status == 200, reply
        claims = claims_of(reply["jwt"])
        assert claims["sub"] == unpadded_sha256([alice, device, "m1"])
        assert claims["video"]["room"] == unpadded_sha256([room_id, "m.call#ROOM"])
    status, reply = await raw_request(sparks, "POST", path, json={
        "room_id": room_id, "slot_id": "m.call#ROOM", "member_id": "m1"})
    assert status == 401, reply
    _, carol_token = await register(sparks, "carol")
    status, reply = await raw_request(sparks, "POST", path, carol_token, json={
        "room_id": room_id, "slot_id": "m.call#ROOM", "member_id": "m1"})
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), reply


async def test_a_handed_over_delayed_leave_is_kept_alive_then_sent_when_the_member_goes(sparks):
    # As Element Call in its newer mode: schedule "left" ({}), join, hand the delayed event to
    # the server (delegate_delayed_leave). The server restarts it while the member is in the
    # meeting, and sends it the moment the SFU sees them go.
    room_id, (alice, alice_token), _ = await call_room(sparks)
    device = (await whoami(sparks, alice_token))["device_id"]
    key = f"_{alice}_{device}_m.call"
    state_path = f"/_matrix/client/v3/rooms/{room_id}/state/org.matrix.msc3401.call.member/{quote(key)}"
    status, reply = await raw_request(sparks, "PUT", state_path, alice_token, json={},
                                      params={"org.matrix.msc4140.delay": "3000"})
    assert status == 200, reply
    delay_id = reply["delay_id"]
    status, reply = await raw_request(sparks, "PUT", state_path, alice_token,
                                      json={"application": "m.call", "device_id": device})
    assert status == 200, reply

    service = f"http://{sparks.ip}:{sparks.port}/livekit/jwt"
    openid_token = await openid(sparks, alice, alice_token)
    member = {"id": "m1", "claimed_user_id": alice, "claimed_device_id": device}
    status, token = await post(f"{service}/get_token", {
        "room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid_token,
        "member": member})
    assert status == 200, token
    status, reply = await post(f"{service}/delegate_delayed_leave", {
        "room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid_token,
        "member": member, "delay_id": delay_id, "delay_timeout": 3000})
    assert (status, reply) == (200, {}), reply
    status, reply = await post(f"{service}/delegate_delayed_leave", {
        "room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid_token,
        "member": member, "delay_id": "syd_not_mine", "delay_timeout": 3000})
    assert status == 404, reply

    lk = rtc.Room()
    await asyncio.wait_for(lk.connect(token["url"], token["jwt"], rtc.RoomOptions(
        single_peer_connection=False)), timeout=20)
    await asyncio.sleep(5)  # longer than the delay: only the server's restarts keep it back
    status, state = await raw_request(sparks, "GET", state_path, alice_token)
    assert state.get("application") == "m.call", state

    await lk.disconnect()
    started = time.monotonic()
    while time.monotonic() - started < 5:
        status, state = await raw_request(sparks, "GET", state_path, alice_token)
        if state == {}:
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    assert state == {}, state
    assert elapsed < 1.5, f"sent {elapsed:.2f} s after leaving (the timer would take longer)"
