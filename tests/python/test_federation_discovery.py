"""Server discovery through DNS SRV records, against a real Synapse.

Synapse is named ``syn.test``: no port and not an IP literal, so Sparks must discover where
it listens. ``https://syn.test/.well-known/matrix/server`` does not resolve, so the next step
is the SRV record ``_matrix-fed._tcp.syn.test``, which a DNS server on loopback (dnslib)
answers with ``localhost:<Synapse's federation port>`` (localhost's address Sparks' resolver
knows itself, RFC 6761). Sparks asks that DNS server
(``[federation] dns_servers``); Synapse finds Sparks by its IP-literal name.

Certificates are not verified in this test (self-signed), so the claim that Sparks checks an
SRV target's certificate for the server name rests on the URL it builds, not on this test.
"""

from __future__ import annotations

import threading
from urllib.parse import quote

import pytest
from dnslib import QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from harness import Homeserver, raw_request
from test_federation_synapse import register, send_text, sync_until_message

pytestmark = pytest.mark.asyncio

NAME = "syn.test"


class Zone(BaseResolver):
    """Answers the SRV record for NAME and localhost's addresses; NXDOMAIN for the rest.
    Records every question, to check what was asked."""

    def __init__(self):
        self.srv_port: int | None = None
        self.questions: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        qname, qtype = str(request.q.qname), QTYPE[request.q.qtype]
        with self.lock:
            self.questions.append((qname, qtype))
        if qname == f"_matrix-fed._tcp.{NAME}." and qtype == "SRV" and self.srv_port:
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=60,
                                rdata=SRV(priority=10, weight=5, port=self.srv_port,
                                          target="localhost.")))
        elif qname == "localhost." and qtype == "A":
            reply.add_answer(RR(qname, QTYPE.A, ttl=60, rdata=A("127.0.0.1")))
        elif qname == "localhost.":
            pass  # no other records: an empty answer
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture(scope="module")
def zone():
    zone = Zone()
    quiet = DNSLogger(prefix=False, logf=lambda _: None)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    zone.address = "127.0.0.1:%d" % server.server.server_address[1]
    try:
        yield zone
    finally:
        server.stop()


@pytest.fixture(scope="module")
def synapse_by_name(zone):
    hs = Homeserver("synapse", server_name=NAME, federation_ip="127.0.0.1")
    zone.srv_port = hs.federation_port
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


@pytest.fixture(scope="module")
def sparks_with_dns(zone):
    hs = Homeserver("sparks", federation_ip="127.0.0.6",
                    federation_extra=f'dns_servers = ["{zone.address}"]\n')
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


async def test_sparks_finds_a_server_through_its_srv_record(zone, synapse_by_name,
                                                              sparks_with_dns):
    alice, _ = await register(synapse_by_name, "alice", displayname="Alice by SRV")
    assert alice.endswith(":" + NAME)
    _, bob_token = await register(sparks_with_dns, "bob")
    status, profile = await raw_request(
        sparks_with_dns, "GET", f"/_matrix/client/v3/profile/{alice}", bob_token)
    assert status == 200, profile
    assert profile.get("displayname") == "Alice by SRV"
    with zone.lock:
        asked = list(zone.questions)
    assert (f"_matrix-fed._tcp.{NAME}.", "SRV") in asked, asked
    # Before SRV, the .well-known step looked for the name's own address (there is none).
    assert asked.index((f"{NAME}.", "A")) < asked.index((f"_matrix-fed._tcp.{NAME}.", "SRV"))


async def test_a_room_on_a_server_found_by_srv_works_both_ways(synapse_by_name,
                                                                sparks_with_dns):
    alice, alice_token = await register(synapse_by_name, "alice")
    status, room = await raw_request(synapse_by_name, "POST", "/_matrix/client/v3/createRoom",
                                     alice_token, json={"preset": "public_chat"})
    assert status == 200, room
    room_id = room["room_id"]
    bob, bob_token = await register(sparks_with_dns, "bob")
    status, reply = await raw_request(
        sparks_with_dns, "POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
        bob_token, json={}, params={"server_name": NAME})
    assert status == 200, reply
    await send_text(sparks_with_dns, bob_token, room_id, "found you by SRV")
    await sync_until_message(synapse_by_name, alice_token, room_id, "found you by SRV")
    await send_text(synapse_by_name, alice_token, room_id, "and I answer")
    event = await sync_until_message(sparks_with_dns, bob_token, room_id, "and I answer")
    assert event["sender"] == alice
