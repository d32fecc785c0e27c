"""Federation benchmark: Sparks beside Synapse, both as a server joining a room hosted on a
third server (Synapse), and both ingesting PDUs over /send.

    .venv/bin/python benches/federation/run.py [--members 1000,10000] [--pdus 5000]
                                               [--json FILE]

Servers (all on loopback, each with its own IP in 127.0.0.0/8, stopped by their own PID):
  host     Synapse on 127.0.0.2 — creates a public room and fills it with --members users
  sparks   Sparks on 127.0.0.3 (release build: SPARKS_BIN, default
           ~/.cache/sparks/release-target/release/sparks)
  synapse  a second Synapse on 127.0.0.4, the comparison

Measured, per member count:
  join     a fresh user of each server joins the room by id (POST /join with server_name):
           wall time of the request (make_join, send_join, checking the whole state and auth
           chain), the time until the server lists every member (Synapse joins with partial
           state and completes it in the background), and the joining server's RSS before
           and after.
Measured once (on the largest room):
  ingest   PDUs signed with the host's real key (a chain of m.room.message events from the
           host's user, built beforehand) sent to each server in transactions of 50, one after
           another, as the host would; PDUs/s with every check (signatures, hashes, auth
           against auth events and state). Each server must accept every PDU.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import aiohttp  # noqa: E402
from yarl import URL  # noqa: E402

from harness import PASSWORD, Homeserver, raw_request, rand_localpart  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def insecure():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def register(hs: Homeserver, prefix: str, session: aiohttp.ClientSession) -> tuple[str, str]:
    body = {"username": rand_localpart(prefix), "password": PASSWORD,
            "auth": {"type": "m.login.dummy"}}
    async with session.post(hs.base_url + "/_matrix/client/v3/register", json=body) as r:
        reply = await r.json()
        assert r.status == 200, reply
        return reply["user_id"], reply["access_token"]


async def fill_room(host: Homeserver, room: str, members: int, have: int) -> None:
    """Registers and joins users on the host until the room has `members`."""
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with sem:
                _, token = await register(host, "m", session)
                async with session.post(f"{host.base_url}/_matrix/client/v3/join/{quote(room)}",
                                        json={}, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, await r.text()
        start = time.monotonic()
        done = 0

        async def counted() -> None:
            nonlocal done
            await one()
            done += 1
            if done % 1000 == 0:
                print(f"[bench] ... {have + done} members ({time.monotonic() - start:.0f}s)",
                      flush=True)
        await asyncio.gather(*(counted() for _ in range(members - have)))
        print(f"[bench] host room filled to {members} members in "
              f"{time.monotonic() - start:.0f}s", flush=True)


async def timed_join(hs: Homeserver, room: str, host: Homeserver, expected_members: int) -> dict:
    async with aiohttp.ClientSession() as session:
        _, token = await register(hs, "joiner", session)
    before = rss_mib(hs.proc.pid)
    start = time.monotonic()
    status, reply = await raw_request(hs, "POST", f"/_matrix/client/v3/join/{quote(room)}", token,
                                      json={}, params={"server_name": host.server_name})
    elapsed = time.monotonic() - start
    assert status == 200, reply
    # Synapse joins with partial state (MSC3706: members omitted) and fetches the rest in the
    # background; the room is complete when its member list is. Measured for both.
    while True:
        status, members = await raw_request(
            hs, "GET", f"/_matrix/client/v3/rooms/{quote(room)}/joined_members", token)
        assert status == 200, members
        if len(members["joined"]) >= expected_members:
            break
        assert time.monotonic() - start < 600, "the member list never completed"
        await asyncio.sleep(0.05)
    complete = time.monotonic() - start
    await asyncio.sleep(1)
    result = {"seconds": round(elapsed, 3), "complete_seconds": round(complete, 3),
              "rss_before_mib": round(before, 1),
              "rss_after_mib": round(rss_mib(hs.proc.pid), 1), "token": token}
    if hs.impl == "sparks":
        result.update(join_split(hs))
    return result


def join_split(hs: Homeserver) -> dict:
    """Where Sparks' join time went, from its log line "joined a room over federation": the
    hosting server answering make_join and send_join, and Sparks checking and storing."""
    for line in reversed(hs.log_path.read_text(errors="replace").splitlines()):
        if "joined a room over federation" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        host_ms = int(fields["make_join_ms"]) + int(fields["send_join_ms"])
        return {"host_answer_seconds": round(host_ms / 1000, 3),
                "own_seconds": round(int(fields["checked_and_stored_ms"]) / 1000, 3)}
    return {}


class Forger:
    """Signs federation requests and PDUs with the host's own signing key."""

    def __init__(self, host: Homeserver):
        from signedjson.key import read_signing_keys

        with open(host.tmp / "signing.key") as f:
            self.key = read_signing_keys(f)[0]
        self.origin = host.server_name

    def header(self, target: Homeserver, method: str, uri: str, content) -> str:
        from signedjson.sign import sign_json

        request = {"method": method, "uri": uri, "origin": self.origin,
                   "destination": target.server_name}
        if content is not None:
            request["content"] = content
        sig = sign_json(request, self.origin, self.key)["signatures"][self.origin][
            f"ed25519:{self.key.version}"]
        return (f'X-Matrix origin="{self.origin}",destination="{target.server_name}",'
                f'key="ed25519:{self.key.version}",sig="{sig}"')

    async def request(self, session, target: Homeserver, method: str, uri: str, content=None):
        headers = {"Authorization": self.header(target, method, uri, content),
                   "Content-Type": "application/json"}
        async with session.request(method, URL(target.federation_url + uri, encoded=True),
                                   ssl=insecure(), headers=headers,
                                   data=None if content is None else json.dumps(content)) as r:
            return r.status, await r.json(content_type=None)

    def chain(self, room: str, sender: str, prev: str, depth: int, auth: list[str],
              count: int, version: str) -> list[dict]:
        from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
        from synapse.crypto.event_signing import add_hashes_and_signatures
        from synapse.events import make_event_from_dict

        room_version = KNOWN_ROOM_VERSIONS[version]
        events = []
        for i in range(count):
            event = {"room_id": room, "sender": sender, "type": "m.room.message",
                     "content": {"msgtype": "m.text", "body": f"ingest {i} {secrets.token_hex(4)}"},
                     "origin_server_ts": int(time.time() * 1000), "depth": depth + i + 1,
                     "prev_events": [prev], "auth_events": auth}
            add_hashes_and_signatures(room_version, event, self.origin, self.key)
            prev = make_event_from_dict(copy.deepcopy(event), room_version).event_id
            events.append(event)
        return events


async def ingest(forger: Forger, target: Homeserver, token: str, room: str, sender: str,
                 count: int, version: str) -> dict:
    async with aiohttp.ClientSession() as session:
        status, page = await raw_request(target, "GET", f"/_matrix/client/v3/rooms/{room}/messages",
                                         token, params={"dir": "b", "limit": "1"})
        assert status == 200, page
        latest_id = page["chunk"][0]["event_id"]
        status, reply = await forger.request(session, target, "GET",
                                             f"/_matrix/federation/v1/event/{quote(latest_id)}")
        assert status == 200, reply
        latest = reply["pdus"][0]
        status, state = await raw_request(target, "GET", f"/_matrix/client/v3/rooms/{room}/state",
                                          token)
        assert status == 200, state
        ids = {(e["type"], e["state_key"]): e["event_id"] for e in state}
        auth = [ids[("m.room.power_levels", "")], ids[("m.room.member", sender)]]
        if version not in ("12",):
            auth.append(ids[("m.room.create", "")])
        start = time.monotonic()
        events = forger.chain(room, sender, latest_id, latest["depth"], auth, count, version)
        built = time.monotonic() - start
        start = time.monotonic()
        accepted = 0
        for i in range(0, len(events), 50):
            txn = secrets.token_hex(8)
            body = {"origin": forger.origin, "origin_server_ts": int(time.time() * 1000),
                    "pdus": events[i:i + 50], "edus": []}
            status, reply = await forger.request(session, target, "PUT",
                                                 f"/_matrix/federation/v1/send/{txn}", body)
            assert status == 200, reply
            accepted += sum(1 for r in reply["pdus"].values() if r == {})
        elapsed = time.monotonic() - start
    assert accepted == count, f"{target.impl} accepted {accepted} of {count} PDUs"
    return {"pdus": count, "seconds": round(elapsed, 3),
            "pdus_per_sec": round(count / elapsed, 1), "build_seconds": round(built, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", default="1000")
    parser.add_argument("--pdus", type=int, default=5000)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = sorted(int(m) for m in args.members.split(","))
    os.environ.setdefault("SPARKS_BIN", str(Path.home() / ".cache/sparks/release-target/release/sparks"))
    os.environ.setdefault("RUST_LOG", "warn,sparks::federation::join=info")
    host = Homeserver("synapse", federation_ip="127.0.0.2")
    # The joining servers are fresh for every room size: a server already in the room would
    # only make a local join.
    joiners: list[Homeserver] = []
    results: dict = {"members": {}, "ingest": {}}
    try:
        host.start()
        async with aiohttp.ClientSession() as session:
            creator, creator_token = await register(host, "creator", session)
        status, room = await raw_request(host, "POST", "/_matrix/client/v3/createRoom",
                                         creator_token, json={"preset": "public_chat"})
        assert status == 200, room
        room_id = room["room_id"]
        have = 1
        for size in sizes:
            await fill_room(host, room_id, size, have)
            have = size
            for old in joiners:
                old.stop()
            sparks = Homeserver("sparks", federation_ip="127.0.0.3")
            other = Homeserver("synapse", federation_ip="127.0.0.4")
            joiners = [sparks, other]
            for hs in joiners:
                hs.start()
            row = {}
            for name, hs in (("sparks", sparks), ("synapse", other)):
                joined = await timed_join(hs, room_id, host, size + 1)
                row[name] = {k: v for k, v in joined.items() if k != "token"}
                results.setdefault("tokens", {})[name] = joined["token"]
                print(f"[bench] {size} members: {name} joined in {joined['seconds']:.2f}s, "
                      f"complete member list after {joined['complete_seconds']:.2f}s, "
                      f"RSS {joined['rss_before_mib']} -> {joined['rss_after_mib']} MiB", flush=True)
            row["ratio_complete"] = round(row["synapse"]["complete_seconds"]
                                          / max(row["sparks"]["complete_seconds"], 1e-9), 1)
            # No joining server learns the members before the host has answered: the best
            # ratio any joiner could reach against Synapse's complete time.
            host_answer = row["sparks"].get("host_answer_seconds")
            if host_answer:
                row["ratio_bound_by_host"] = round(row["synapse"]["complete_seconds"]
                                                   / host_answer, 1)
                print(f"[bench] {size} members: the host answered Sparks' make_join and "
                      f"send_join in {host_answer:.2f}s, Sparks checked and stored in "
                      f"{row['sparks']['own_seconds']:.2f}s; no joiner can beat Synapse's "
                      f"complete time by more than {row['ratio_bound_by_host']}x", flush=True)
            results["members"][str(size)] = row
        forger = Forger(host)
        version = "12"
        for name, hs in (("sparks", sparks), ("synapse", other)):
            res = await ingest(forger, hs, results["tokens"][name], room_id, creator, args.pdus,
                               version)
            results["ingest"][name] = res
            print(f"[bench] ingest into {name}: {res['pdus_per_sec']} PDUs/s "
                  f"({res['pdus']} in {res['seconds']}s)", flush=True)
    finally:
        for hs in [host, *joiners]:
            hs.stop()
    results.pop("tokens", None)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
