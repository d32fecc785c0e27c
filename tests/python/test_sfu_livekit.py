"""The built-in SFU with a real LiveKit client: the LiveKit Python SDK (PyPI ``livekit``: the
LiveKit Rust SDK and libwebrtc inside) joins meetings on Sparks over ``/livekit/sfu`` with
tokens signed by Sparks' API secret, in its two-peer-connection mode (LiveKit protocol v0).

Covered: bad, expired and foreign tokens are refused with 401 (``/rtc/validate`` and the
WebSocket); two participants each publish a tone (440 Hz and 660 Hz) and each hears the
other's, through ICE-lite, DTLS-SRTP and the server's RTP forwarding; leaving is seen.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import numpy as np
import pytest
from livekit import rtc

from harness import RTC_API_KEY, RTC_API_SECRET, Homeserver, rand_localpart

pytestmark = pytest.mark.asyncio

SAMPLE_RATE = 48000
FRAME = 480  # 10 ms


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_token(identity: str, room: str, secret: str = RTC_API_SECRET, ttl: int = 600,
               **grant) -> str:
    """A LiveKit access token (HS256 JWT), as livekit-api would mint it."""
    now = int(time.time())
    claims = {"iss": RTC_API_KEY, "sub": identity, "name": identity, "nbf": now - 10,
              "exp": now + ttl, "video": {"roomJoin": True, "room": room, **grant}}
    signing = (b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"."
               + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    signature = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return (signing + b"." + signature).decode()


@pytest.fixture(scope="module")
def sparks():
    hs = Homeserver("sparks")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


def sfu_url(hs: Homeserver) -> str:
    return f"ws://{hs.ip}:{hs.port}/livekit/sfu"


async def connect(hs: Homeserver, identity: str, room: str) -> rtc.Room:
    lk = rtc.Room()
    await asyncio.wait_for(
        lk.connect(sfu_url(hs), make_token(identity, room),
                   rtc.RoomOptions(auto_subscribe=True, single_peer_connection=False)),
        timeout=20)
    return lk


async def publish_tone(lk: rtc.Room, freq: float) -> asyncio.Task:
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await lk.local_participant.publish_track(track, options)

    async def feed():
        t = 0
        while True:
            samples = np.arange(t, t + FRAME) / SAMPLE_RATE
            pcm = (np.sin(2 * np.pi * freq * samples) * 12000).astype(np.int16)
            await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, FRAME))
            t += FRAME
    return asyncio.create_task(feed())


def dominant_frequency(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


async def heard_frequency(lk: rtc.Room, from_identity: str, seconds: float = 15) -> float:
    """Waits for the audio track of ``from_identity`` and returns the dominant frequency of
    one second of what arrives (after the first half second, when the decoder has settled)."""
    deadline = time.monotonic() + seconds
    track = None
    while time.monotonic() < deadline and track is None:
        participant = next((p for p in lk.remote_participants.values()
                            if p.identity == from_identity), None)
        if participant:
            track = next((pub.track for pub in participant.track_publications.values()
                          if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO),
                         None)
        if track is None:
            await asyncio.sleep(0.1)
    assert track is not None, f"no audio track from {from_identity}"
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    collected: list[np.ndarray] = []
    skipped = 0
    async def read():
        nonlocal skipped
        async for event in stream:
            pcm = np.frombuffer(bytes(event.frame.data), dtype=np.int16).astype(np.float64)
            if skipped < SAMPLE_RATE // 2:
                skipped += len(pcm)
                continue
            collected.append(pcm)
            if sum(len(c) for c in collected) >= SAMPLE_RATE:
                return
    await asyncio.wait_for(read(), timeout=max(1.0, deadline - time.monotonic()))
    await stream.aclose()
    pcm = np.concatenate(collected)
    assert np.sqrt(np.mean(pcm ** 2)) > 500, "what arrived is silence"
    return dominant_frequency(pcm)


async def validate(hs: Homeserver, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{hs.ip}:{hs.port}/livekit/sfu/rtc/validate",
                         headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.text()


async def test_tokens_are_checked_like_livekit_does(sparks):
    room = rand_localpart("room")
    assert await validate(sparks, make_token("alice", room)) == (200, "success")
    status, reason = await validate(sparks, make_token("alice", room, secret="x" * 40))
    assert status == 401 and "signature" in reason
    status, reason = await validate(sparks, make_token("alice", room, ttl=-3600))
    assert status == 401 and "expired" in reason
    status, _ = await validate(sparks, "not-a-token")
    assert status == 401
    # The SDK refuses to join with a bad token (the WebSocket upgrade gets the 401).
    lk = rtc.Room()
    with pytest.raises(Exception):
        await asyncio.wait_for(
            lk.connect(sfu_url(sparks), make_token("alice", room, secret="y" * 40),
                       rtc.RoomOptions(single_peer_connection=False)), timeout=20)
    # v1 (single peer connection) is not served: 404, so clients fall back to v0.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{sparks.ip}:{sparks.port}/livekit/sfu/rtc/v1/validate") as r:
            assert r.status == 404


async def test_two_participants_hear_each_other(sparks):
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    feeders = []
    try:
        feeders.append(await publish_tone(alice, 440))
        feeders.append(await publish_tone(bob, 660))
        bob_hears, alice_hears = await asyncio.gather(
            heard_frequency(bob, "alice"), heard_frequency(alice, "bob"))
        assert abs(bob_hears - 440) < 20, bob_hears
        assert abs(alice_hears - 660) < 20, alice_hears

        left = asyncio.Event()
        alice.on("participant_disconnected", lambda p: p.identity == "bob" and left.set())
        await bob.disconnect()
        await asyncio.wait_for(left.wait(), timeout=10)
    finally:
        for task in feeders:
            task.cancel()
        await alice.disconnect()
        await bob.disconnect()
