"""Server discovery through DNS SRV records, against a real Synapse.

Synapse is named ``syn.test``: no port and not an IP literal, so Sparks must discover where
it listens. ``https://syn.test/.well-known/matrix/server`` does not resolve, so the next step
is the SRV record ``_matrix-fed._tcp.syn.test``, which a DNS server on loopback (dnslib)
answers with ``localhost:<Synapse's federation port>`` (localhost's address Sparks' resolver
knows itself, RFC 6761). Sparks asks that DNS server
(``[federation] dns_servers``); Synapse finds Sparks by its IP-literal name.

Certificates are verified: a certificate authority made for the test (``[federation]
ca_certificates``, as for a federation on a private PKI) signs Synapse's certificate for
``syn.test`` only. Sparks reaches it through the SRV target ``localhost`` all the same (the
certificate is checked for the server name, as the spec asks), does not reach it without
trusting that authority, and does not reach a server whose certificate names only the SRV
target.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from dnslib import QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from harness import Homeserver, raw_request
from test_federation_synapse import register, send_text, sync_until_message

pytestmark = pytest.mark.asyncio

NAME = "syn.test"
# A second Synapse, found the same way, whose certificate names only the SRV target.
TARGET_ONLY = "syn2.test"


class Zone(BaseResolver):
    """Answers the SRV record for NAME and localhost's addresses; NXDOMAIN for the rest.
    Records every question, to check what was asked."""

    def __init__(self):
        self.srv_ports: dict[str, int] = {}
        self.questions: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        qname, qtype = str(request.q.qname), QTYPE[request.q.qtype]
        with self.lock:
            self.questions.append((qname, qtype))
        srv_port = next((port for name, port in self.srv_ports.items()
                         if qname == f"_matrix-fed._tcp.{name}."), None)
        if qtype == "SRV" and srv_port:
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=60,
                                rdata=SRV(priority=10, weight=5, port=srv_port,
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


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki():
    """A certificate authority and two server certificates it signed: one for NAME, one for
    the SRV target only. Returns the directory."""
    tmp = Path(tempfile.mkdtemp(prefix="hs-pki-"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.crt"),
            "-subj", "/CN=Sparks test federation CA")
    for stem, dns_name in (("name", NAME), ("target", "localhost")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp / f"{stem}.key"),
                "-out", str(tmp / f"{stem}.csr"), "-subj", f"/CN={dns_name}")
        (tmp / f"{stem}.ext").write_text(
            f"subjectAltName=DNS:{dns_name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", str(tmp / f"{stem}.csr"), "-CA", str(tmp / "ca.crt"),
                "-CAkey", str(tmp / "ca.key"), "-CAcreateserial", "-days", "2",
                "-out", str(tmp / f"{stem}.crt"), "-extfile", str(tmp / f"{stem}.ext"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def synapse_found_by_srv(zone, name: str, cert: Path, key: Path):
    hs = Homeserver("synapse", server_name=name, federation_ip="127.0.0.1", tls=(cert, key))
    zone.srv_ports[name] = hs.federation_port
    return hs


def sparks_verifying(zone, pki: Path | None, federation_ip: str) -> Homeserver:
    extra = f'dns_servers = ["{zone.address}"]\n'
    if pki:
        extra += f'ca_certificates = ["{pki / "ca.crt"}"]\n'
    return Homeserver("sparks", federation_ip=federation_ip, federation_extra=extra,
                      verify_certificates=True)


@pytest.fixture(scope="module")
def synapse_by_name(zone, pki):
    with synapse_found_by_srv(zone, NAME, pki / "name.crt", pki / "name.key") as hs:
        yield hs


@pytest.fixture(scope="module")
def sparks_with_dns(zone, pki):
    with sparks_verifying(zone, pki, "127.0.0.6") as hs:
        yield hs


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


async def profile_status(sparks: Homeserver, user: str) -> int:
    _, token = await register(sparks, "viewer")
    status, _ = await raw_request(sparks, "GET", f"/_matrix/client/v3/profile/{user}", token)
    return status


def certificate_refused(hs: Homeserver) -> bool:
    log = hs.log_path.read_text(errors="replace").lower()
    return "certificate" in log and any(
        reason in log for reason in ("unknownissuer", "unknown issuer", "not valid for name"))


async def test_without_trusting_the_authority_the_server_is_not_reached(zone, synapse_by_name):
    alice, _ = await register(synapse_by_name, "alice3")
    with sparks_verifying(zone, None, "127.0.0.7") as sparks:
        assert await profile_status(sparks, alice) != 200
        assert certificate_refused(sparks), "no certificate error in the Sparks log"


async def test_a_certificate_for_the_srv_target_only_is_refused(zone, pki, sparks_with_dns):
    with synapse_found_by_srv(zone, TARGET_ONLY, pki / "target.crt", pki / "target.key") as syn:
        alice, _ = await register(syn, "alice")
        assert await profile_status(sparks_with_dns, alice) != 200
        assert certificate_refused(sparks_with_dns), "no certificate error in the Sparks log"
