"""End-to-end encryption with a real crypto client: matrix-nio with Olm/Megolm (python-olm).

Two users with two devices each talk in an encrypted room; every device decrypts the other
user's messages (Megolm sessions shared over Olm: /keys/query, /keys/claim, to-device). The
server only ever stores and serves `m.room.encrypted`. A device logging in later gets the old
room key from another device of its user (nio's key request / forwarded room key, after local
verification), and a device removal shows in the other user's `device_lists.changed`.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
import pytest_asyncio
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    JoinResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from harness import PASSWORD, raw_request, rand_localpart

pytestmark = pytest.mark.asyncio

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


def e2e_config() -> AsyncClientConfig:
    # As the suite's nio_config, with end-to-end encryption on.
    return AsyncClientConfig(
        max_limit_exceeded=0,
        max_timeouts=0,
        request_timeout=60,
        store_sync_tokens=False,
        encryption_enabled=True,
    )


@pytest_asyncio.fixture
async def devices(homeserver, tmp_path):
    """Factory for encrypting nio clients, each with its own crypto store; closed at teardown.

    ``await devices.register(prefix)`` registers a user (first device);
    ``await devices.login(user_id)`` logs that user in again (another device)."""
    clients: list[AsyncClient] = []

    class Factory:
        def _client(self, user: str = "") -> AsyncClient:
            store = tmp_path / f"store{len(clients)}"
            store.mkdir()
            c = AsyncClient(homeserver.base_url, user=user, store_path=str(store),
                            config=e2e_config())
            clients.append(c)
            return c

        async def register(self, prefix: str) -> AsyncClient:
            c = self._client()
            r = await c.register(rand_localpart(prefix), PASSWORD, device_name=f"{prefix}-1")
            assert isinstance(r, RegisterResponse), f"register failed: {r}"
            await tick(c)
            return c

        async def login(self, user_id: str, name: str) -> AsyncClient:
            c = self._client(user_id)
            r = await c.login(PASSWORD, device_name=name)
            assert isinstance(r, LoginResponse), f"login failed: {r}"
            await tick(c)
            return c

    yield Factory()
    for c in clients:
        await c.close()


async def tick(client: AsyncClient, timeout_ms: int = 0) -> SyncResponse:
    """One sync plus the key housekeeping nio's sync_forever does between syncs."""
    r = await client.sync(timeout=timeout_ms)
    assert isinstance(r, SyncResponse), f"sync failed: {r}"
    await client.send_to_device_messages()
    if client.should_upload_keys:
        up = await client.keys_upload()
        assert isinstance(up, KeysUploadResponse), up
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()
    return r


async def settle(clients: list[AsyncClient], rounds: int = 3) -> None:
    for _ in range(rounds):
        for c in clients:
            await tick(c)


async def wait_for_text(client: AsyncClient, room: str, body: str,
                        timeout: float = 20.0) -> RoomMessageText:
    """Syncs until `client` has decrypted a message `body` in `room` (events that arrived
    before their key are retried as keys come in)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    undecrypted: list[MegolmEvent] = []
    while True:
        r = await tick(client, 500)
        info = r.rooms.join.get(room)
        events = list(info.timeline.events) if info else []
        for e in events:
            if isinstance(e, MegolmEvent):
                undecrypted.append(e)
            elif isinstance(e, RoomMessageText) and e.body == body:
                assert e.decrypted, "the server served an unencrypted message"
                return e
        for e in list(undecrypted):
            try:
                d = client.decrypt_event(e)
            except Exception:  # noqa: BLE001 - no key yet
                continue
            undecrypted.remove(e)
            if isinstance(d, RoomMessageText) and d.body == body:
                return d
        if loop.time() > deadline:
            raise AssertionError(f"{client.device_id} could not decrypt {body!r} in {timeout}s")


async def wait_for_device(client: AsyncClient, user_id: str, device_id: str,
                          timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await tick(client, 200)
        if client.should_query_keys:
            await client.keys_query()
        devices = client.device_store.active_user_devices(user_id)
        for d in devices:
            if d.device_id == device_id:
                return d
        if loop.time() > deadline:
            raise AssertionError(f"{client.device_id} never learned of {user_id}'s {device_id}")


async def send_text(client: AsyncClient, room: str, body: str) -> str:
    r = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body},
                               ignore_unverified_devices=True)
    assert isinstance(r, RoomSendResponse), r
    return r.event_id


async def test_two_users_two_devices_encrypted_room(homeserver, devices):
    alice1 = await devices.register("alice")
    bob1 = await devices.register("bob")
    alice2 = await devices.login(alice1.user_id, "alice-2")
    bob2 = await devices.login(bob1.user_id, "bob-2")
    everyone = [alice1, alice2, bob1, bob2]

    cr = await alice1.room_create(invite=[bob1.user_id], initial_state=[ENCRYPTION])
    assert isinstance(cr, RoomCreateResponse), cr
    room = cr.room_id
    assert isinstance(await bob1.join(room), JoinResponse)
    await settle(everyone)
    for c in everyone:
        assert c.rooms[room].encrypted, f"{c.device_id} sees an unencrypted room"

    # Each device knows the others' keys, as served by /keys/query.
    for c in everyone:
        for other in everyone:
            if other is not c:
                await wait_for_device(c, other.user_id, other.device_id)

    secret_a = f"alice's secret {secrets.token_hex(4)}"
    secret_b = f"bob's secret {secrets.token_hex(4)}"
    await send_text(alice1, room, secret_a)
    for c in (bob1, bob2, alice2):
        await wait_for_text(c, room, secret_a)
    await send_text(bob1, room, secret_b)
    for c in (alice1, alice2, bob2):
        await wait_for_text(c, room, secret_b)

    # The server stores and serves ciphertext only.
    status, body = await raw_request(
        homeserver, "GET", f"/_matrix/client/v3/rooms/{room}/messages",
        token=bob1.access_token, params={"dir": "b", "limit": "100"})
    assert status == 200, body
    types = [e["type"] for e in body["chunk"]]
    assert types.count("m.room.encrypted") >= 2, types
    assert "m.room.message" not in types, types
    raw = json.dumps(body)
    assert secret_a not in raw and secret_b not in raw

    # A device logging in later gets the old room key from another device of its user
    # (a key request answered with a forwarded room key, after verifying each other).
    alice3 = await devices.login(alice1.user_id, "alice-3")
    r = await tick(alice3)
    old = [e for e in (r.rooms.join[room].timeline.events if room in r.rooms.join else [])
           if isinstance(e, MegolmEvent)]
    if not old:
        messages = await alice3.room_messages(room, start=r.rooms.join[room].timeline.prev_batch
                                              if room in r.rooms.join else "", limit=50)
        old = [e for e in messages.chunk if isinstance(e, MegolmEvent)]
    target = next((e for e in old if e.sender == alice1.user_id), None)
    assert target is not None, "alice-3 sees alice's encrypted message, undecryptable yet"

    alice1.verify_device(await wait_for_device(alice1, alice1.user_id, alice3.device_id))
    alice3.verify_device(await wait_for_device(alice3, alice1.user_id, alice1.device_id))
    await alice3.request_room_key(target)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    decrypted = None
    while decrypted is None:
        await tick(alice1, 200)
        # nio turns queued key requests into forwarded keys only after a sync with a new
        # token; once it has claimed a key for an Olm session with alice-3 nothing else may
        # move alice-1's stream, so run that step here.
        alice1.olm.collect_key_requests()
        await alice1.send_to_device_messages()
        await tick(alice3, 200)
        try:
            d = alice3.decrypt_event(target)
        except Exception:  # noqa: BLE001 - the key has not arrived yet
            d = None
        if isinstance(d, RoomMessageText):
            decrypted = d
        assert loop.time() < deadline, "alice-3 never got the room key"
    assert decrypted.body == secret_a

    # Alice removes her second device: Bob's next syncs say her device list changed, and his
    # client no longer lists the device.
    await tick(bob1)
    r = await alice1.delete_devices([alice2.device_id])
    assert isinstance(r, DeleteDevicesAuthResponse), r
    r = await alice1.delete_devices([alice2.device_id], auth={
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice1.user_id},
        "password": PASSWORD,
        "session": r.session,
    })
    assert isinstance(r, DeleteDevicesResponse), r
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        s = await bob1.sync(timeout=1000)
        assert isinstance(s, SyncResponse), s
        if alice1.user_id in s.device_list.changed:
            break
        assert loop.time() < deadline, "the device removal never showed in device_lists"
    await bob1.keys_query()
    remaining = {d.device_id for d in bob1.device_store.active_user_devices(alice1.user_id)}
    assert alice2.device_id not in remaining, remaining
    assert alice1.device_id in remaining

    # Messaging goes on after the removal.
    secret_c = f"after removal {secrets.token_hex(4)}"
    await send_text(bob1, room, secret_c)
    await wait_for_text(alice1, room, secret_c)
