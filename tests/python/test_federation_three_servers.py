"""Three servers in one room: two Sparks and a Synapse. Every message, from each server,
reaches the other two (the room lives on the first Sparks; the others join through it)."""

from __future__ import annotations

import pytest

from harness import Homeserver, raw_request
from test_federation_synapse import register, send_text, sync_until_message, synapse  # noqa: F401

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def sparks_a():
    hs = Homeserver("sparks", federation_ip="127.0.0.5")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


@pytest.fixture(scope="module")
def sparks_b():
    hs = Homeserver("sparks", federation_ip="127.0.0.6")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


async def test_each_event_reaches_all_three_servers(synapse, sparks_a, sparks_b):  # noqa: F811
    anna, anna_token = await register(sparks_a, "anna")
    ben, ben_token = await register(sparks_b, "ben")
    cleo, cleo_token = await register(synapse, "cleo")
    status, room = await raw_request(sparks_a, "POST", "/_matrix/client/v3/createRoom",
                                     anna_token, json={"preset": "public_chat"})
    assert status == 200, room
    room_id = room["room_id"]
    for hs, token in ((sparks_b, ben_token), (synapse, cleo_token)):
        status, reply = await raw_request(hs, "POST", f"/_matrix/client/v3/join/{room_id}",
                                          token, json={},
                                          params={"server_name": sparks_a.server_name})
        assert status == 200, (hs.impl, reply)

    everyone = ((sparks_a, anna_token), (sparks_b, ben_token), (synapse, cleo_token))
    for sender_hs, sender_token in everyone:
        body = f"from {sender_hs.server_name}"
        await send_text(sender_hs, sender_token, room_id, body)
        for hs, token in everyone:
            await sync_until_message(hs, token, room_id, body)

    # And each server lists all three members as joined.
    for hs, token in everyone:
        status, members = await raw_request(
            hs, "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members", token)
        assert status == 200, members
        assert {anna, ben, cleo} <= set(members["joined"]), (hs.impl, members)
