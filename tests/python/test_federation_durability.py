"""Outbound federation survives a crash. While Synapse is down, a Sparks user sends a
to-device message and a room message to a Synapse user; Sparks acknowledges both, is then
killed with SIGKILL, and started again after Synapse is back: both arrive.
"""

from __future__ import annotations

import signal
import time

import pytest

from harness import raw_request, rand_localpart
from test_federation_security import make_room
from test_federation_synapse import (  # noqa: F401
    send_text, sparks, sync_until, sync_until_message, synapse)

pytestmark = pytest.mark.asyncio


async def test_acknowledged_sends_reach_a_server_that_was_down_across_a_kill_9(synapse, sparks):  # noqa: F811
    setup = await make_room(synapse, sparks)
    room_id, alice, alice_token = setup["room"], setup["alice"], setup["alice_token"]
    bob, bob_token = setup["bob"], setup["bob_token"]
    status, me = await raw_request(synapse, "GET", "/_matrix/client/v3/account/whoami",
                                   alice_token)
    assert status == 200, me

    synapse.terminate()
    status, reply = await raw_request(
        sparks, "PUT",
        f"/_matrix/client/v3/sendToDevice/org.example.durable/{rand_localpart('t')}",
        bob_token, json={"messages": {alice: {me["device_id"]: {"n": 1}}}})
    assert status == 200, reply
    await send_text(sparks, bob_token, room_id, "sent while you were away")
    time.sleep(0.5)  # a first delivery attempt fails meanwhile
    sparks.terminate(signal.SIGKILL)

    synapse.start()
    sparks.start()

    def got_it(sync):
        events = sync.get("to_device", {}).get("events", [])
        return next((e for e in events if e["type"] == "org.example.durable"), None)

    message = await sync_until(synapse, alice_token, got_it, timeout=30)
    assert message["sender"] == bob and message["content"] == {"n": 1}, message
    await sync_until_message(synapse, alice_token, room_id, "sent while you were away",
                             timeout=30)
