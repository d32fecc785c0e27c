"""Megolm across servers: a matrix-nio client on Synapse and one on Sparks, each with its own
Olm/Megolm crypto, share an encrypted room and each decrypts the other's messages. Everything
the clients need crosses federation: device keys (/user/keys/query), one-time keys
(/user/keys/claim), the room keys (to-device, as m.direct_to_device EDUs) and device-list
changes."""

from __future__ import annotations

import secrets

import pytest
from nio import (
    AsyncClient,
    InviteMemberEvent,
    JoinResponse,
    RegisterResponse,
    RoomCreateResponse,
)

from harness import PASSWORD, Homeserver, raw_request, rand_localpart
from test_federation_synapse import sparks, synapse  # noqa: F401
from test_nio_e2ee import (
    ENCRYPTION,
    e2e_config,
    send_text,
    settle,
    tick,
    wait_for_device,
    wait_for_text,
)

pytestmark = pytest.mark.asyncio


async def client_on(hs: Homeserver, tmp_path, prefix: str) -> AsyncClient:
    store = tmp_path / f"store-{prefix}-{secrets.token_hex(3)}"
    store.mkdir()
    c = AsyncClient(hs.base_url, store_path=str(store), config=e2e_config())
    r = await c.register(rand_localpart(prefix), PASSWORD, device_name=f"{prefix}-1")
    assert isinstance(r, RegisterResponse), f"register failed: {r}"
    await tick(c)
    return c


async def test_megolm_between_synapse_and_sparks(synapse, sparks, tmp_path):  # noqa: F811
    alice = await client_on(synapse, tmp_path, "alice")
    bob = await client_on(sparks, tmp_path, "bob")
    try:
        cr = await alice.room_create(invite=[bob.user_id], initial_state=[ENCRYPTION])
        assert isinstance(cr, RoomCreateResponse), cr
        room = cr.room_id
        # Bob waits for the invite to cross, then joins through Alice's server.
        for _ in range(40):
            r = await tick(bob, 250)
            if room in r.rooms.invite:
                break
        else:
            raise AssertionError("the invite did not reach Sparks")
        assert any(isinstance(e, InviteMemberEvent) for e in r.rooms.invite[room].invite_state)
        assert isinstance(await bob.join(room), JoinResponse)
        await settle([alice, bob])
        assert bob.rooms[room].encrypted and alice.rooms[room].encrypted

        # Each knows the other's device (keys fetched over federation).
        await wait_for_device(alice, bob.user_id, bob.device_id)
        await wait_for_device(bob, alice.user_id, alice.device_id)

        from_alice = f"from synapse {secrets.token_hex(4)}"
        await send_text(alice, room, from_alice)
        await wait_for_text(bob, room, from_alice, timeout=30)
        from_bob = f"from sparks {secrets.token_hex(4)}"
        await send_text(bob, room, from_bob)
        await wait_for_text(alice, room, from_bob, timeout=30)

        # Sparks only ever had ciphertext.
        status, page = await raw_request(
            sparks, "GET", f"/_matrix/client/v3/rooms/{room}/messages", token=bob.access_token,
            params={"dir": "b", "limit": "100"})
        assert status == 200, page
        messages = [e for e in page["chunk"] if e["type"] in ("m.room.message",
                                                               "m.room.encrypted")]
        assert messages and all(e["type"] == "m.room.encrypted" for e in messages), messages
    finally:
        await alice.close()
        await bob.close()
