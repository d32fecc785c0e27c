"""Delayed events (MSC4140), as MatrixRTC clients use them: schedule a message or a state
event, restart its timer, cancel it, send it early, list them; a delay over the maximum is
refused with the fields matrix-js-sdk reads. And the reason they exist: a call member whose
client stops restarting its delayed "left" state (it crashed) leaves the call by itself, and
the server keeps scheduled events across a restart.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest

from harness import Homeserver, raw_request
from test_federation_synapse import register
from test_sfu_matrixrtc import call_room

pytestmark = pytest.mark.asyncio

BASE = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
CALL_MEMBER = "org.matrix.msc3401.call.member"


@pytest.fixture(scope="module")
def sparks():
    hs = Homeserver("sparks")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


async def room_with(hs: Homeserver):
    """A room where call memberships need no power (Alice created it)."""
    room_id, (alice, token), _ = await call_room(hs)
    return alice, token, room_id


async def schedule_state(hs, token, room_id, key, content, delay_ms):
    status, reply = await raw_request(
        hs, "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/{CALL_MEMBER}/{quote(key)}",
        token, json=content, params={"org.matrix.msc4140.delay": str(delay_ms)})
    assert status == 200, reply
    assert "delay_id" in reply and "event_id" not in reply, reply
    return reply["delay_id"]


async def member_state(hs, token, room_id, key):
    status, reply = await raw_request(
        hs, "GET", f"/_matrix/client/v3/rooms/{room_id}/state/{CALL_MEMBER}/{quote(key)}",
        token)
    return status, reply


async def test_schedule_restart_cancel_send_and_list(sparks):
    alice, token, room_id = await room_with(sparks)
    # A message, cancelled: never sent.
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1", token,
        json={"msgtype": "m.text", "body": "never"},
        params={"org.matrix.msc4140.delay": "60000"})
    assert status == 200, reply
    cancelled = reply["delay_id"]
    # A message sent early on request.
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t2", token,
        json={"msgtype": "m.text", "body": "early"},
        params={"org.matrix.msc4140.delay": "60000"})
    early = reply["delay_id"]

    status, listed = await raw_request(sparks, "GET", BASE, token)
    assert status == 200, listed
    assert {d["delay_id"] for d in listed["scheduled"]} == {cancelled, early}
    assert all(d["room_id"] == room_id and d["delay"] == 60000 for d in listed["scheduled"])

    # The older form (action in the body, authenticated) and the newer (action in the path).
    status, reply = await raw_request(sparks, "POST", f"{BASE}/{cancelled}", token,
                                      json={"action": "cancel"})
    assert (status, reply) == (200, {}), reply
    status, reply = await raw_request(sparks, "POST", f"{BASE}/{early}/send")
    assert (status, reply) == (200, {}), reply
    status, reply = await raw_request(sparks, "POST", f"{BASE}/{cancelled}/restart")
    assert (status, reply["errcode"]) == (404, "M_NOT_FOUND"), reply
    status, reply = await raw_request(sparks, "POST", f"{BASE}/{early}/explode")
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), reply

    status, page = await raw_request(sparks, "GET", f"/_matrix/client/v3/rooms/{room_id}/messages",
                                     token, params={"dir": "b", "limit": "10"})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["early"], bodies

    status, listed = await raw_request(sparks, "GET", BASE, token,
                                       params={"status": "finalised"})
    assert status == 200 and listed["scheduled"] == [], listed
    outcomes = {f["delayed_event"]["delay_id"]: (f["outcome"], f["reason"])
                for f in listed["finalised"]}
    assert outcomes == {cancelled: ("cancel", "action"), early: ("send", "action")}

    # Someone else cannot touch Alice's delayed events, even knowing the id.
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t3", token,
        json={"msgtype": "m.text", "body": "mine"},
        params={"org.matrix.msc4140.delay": "60000"})
    mine = reply["delay_id"]
    _, bob_token = await register(sparks, "bob")
    status, reply = await raw_request(sparks, "POST", f"{BASE}/{mine}/cancel", bob_token)
    assert status == 404, reply

    # Over the maximum (a day): refused with the fields clients read to retry shorter.
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t4", token,
        json={"msgtype": "m.text", "body": "too late"},
        params={"org.matrix.msc4140.delay": str(2 * 86400000)})
    assert status == 400, reply
    assert reply["errcode"] == "M_UNKNOWN"
    assert reply["org.matrix.msc4140.errcode"] == "M_MAX_DELAY_EXCEEDED"
    assert reply["org.matrix.msc4140.max_delay"] == 86400000


async def test_a_crashed_call_member_leaves_by_itself(sparks):
    # As Element Call does: schedule "left" ({}), join, keep restarting while alive.
    alice, token, room_id = await room_with(sparks)
    status, me = await raw_request(sparks, "GET", "/_matrix/client/v3/account/whoami", token)
    key = f"_{alice}_{me['device_id']}_m.call"
    delay_id = await schedule_state(sparks, token, room_id, key, {}, 1500)
    status, reply = await raw_request(
        sparks, "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/{CALL_MEMBER}/{quote(key)}",
        token, json={"application": "m.call", "call_id": "", "scope": "m.room",
                     "device_id": me["device_id"]})
    assert status == 200 and "event_id" in reply, reply
    for _ in range(4):  # alive for 2 s, longer than the delay
        await asyncio.sleep(0.5)
        status, reply = await raw_request(sparks, "POST", f"{BASE}/{delay_id}/restart")
        assert status == 200, reply
    status, state = await member_state(sparks, token, room_id, key)
    assert state.get("application") == "m.call", state

    # The client stops (crashed): within the delay the member state is empty.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, state = await member_state(sparks, token, room_id, key)
        if state == {}:
            break
        await asyncio.sleep(0.2)
    assert state == {}, state


async def test_scheduled_events_survive_a_restart(sparks):
    alice, token, room_id = await room_with(sparks)
    key = "_restart_test"
    await schedule_state(sparks, token, room_id, key, {"left": True}, 3000)
    sparks.restart()
    status, _ = await member_state(sparks, token, room_id, key)
    assert status == 404
    deadline = time.monotonic() + 8
    state = None
    while time.monotonic() < deadline:
        status, state = await member_state(sparks, token, room_id, key)
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert state == {"left": True}, state
