"""The built-in SFU with a real LiveKit client: the LiveKit Python SDK (PyPI ``livekit``: the
LiveKit Rust SDK and libwebrtc inside) joins meetings on Sparks over ``/livekit/sfu`` with
tokens signed by Sparks' API secret, in its two-peer-connection mode (LiveKit protocol v0).

Covered: bad, expired and foreign tokens are refused with 401 (``/rtc/validate`` and the
WebSocket); two participants each publish a tone (440 Hz and 660 Hz) and each hears the
other's, through ICE-lite, DTLS-SRTP and the server's RTP forwarding; leaving is seen; video
(a solid colour) arrives, in VP8, H.264 and VP9; a late joiner gets the tracks already published; data messages
reach whom they are addressed to, stamped with the sender; mute is seen; a screen share is
its own track with its source, and its end is seen; a participant without publish permission
cannot publish;
end-to-end encrypted media passes untouched (a receiver with the key decodes it, one without
cannot); without auto-subscription tracks come when subscribed to and go when unsubscribed;
the active speaker is announced; simulcast follows the requested quality (VP8 and
H.264).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
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


async def connect(hs: Homeserver, identity: str, room: str, key: bytes | None = None,
                  dynacast: bool = False, auto_subscribe: bool = True, **grant) -> rtc.Room:
    lk = rtc.Room()
    # Why a room ends is what a failure report needs (the SDK logs it below WARNING).
    lk.on("disconnected", lambda reason: logging.warning("%s disconnected: %s", identity, reason))
    encryption = (rtc.E2EEOptions(key_provider_options=rtc.KeyProviderOptions(shared_key=key))
                  if key else None)
    await asyncio.wait_for(
        lk.connect(sfu_url(hs), make_token(identity, room, **grant),
                   rtc.RoomOptions(auto_subscribe=auto_subscribe, single_peer_connection=False,
                                   encryption=encryption, dynacast=dynacast)),
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


def share_near(pcm: np.ndarray, freq: float, width: float = 20) -> float:
    """The share of the signal's power within ``width`` Hz of ``freq``: about 1 for a clean
    tone there, small for noise (whose loudest bin may still fall near it by chance)."""
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)
    total = float(power.sum())
    return float(power[np.abs(freqs - freq) <= width].sum()) / total if total else 0.0


async def remote_track(lk: rtc.Room, from_identity: str, kind, seconds: float = 15):
    """The subscribed track of ``kind`` from ``from_identity`` (waits for it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        participant = next((p for p in lk.remote_participants.values()
                            if p.identity == from_identity), None)
        if participant:
            track = next((pub.track for pub in participant.track_publications.values()
                          if pub.track is not None and pub.kind == kind), None)
            if track is not None:
                return track
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} track from {from_identity}")


async def heard_frequency(lk: rtc.Room, from_identity: str, seconds: float = 15) -> float:
    """Waits for the audio track of ``from_identity`` and returns the dominant frequency of
    one second of what arrives (after the first half second, when the decoder has settled)."""
    freq, rms = await heard(lk, from_identity, seconds)
    assert rms > 500, "what arrived is silence"
    return freq


async def heard(lk: rtc.Room, from_identity: str, seconds: float = 15) -> tuple[float, float]:
    """(dominant frequency, RMS) of one second of ``from_identity``'s audio."""
    pcm = await heard_pcm(lk, from_identity, seconds)
    return dominant_frequency(pcm), float(np.sqrt(np.mean(pcm ** 2)))


async def heard_pcm(lk: rtc.Room, from_identity: str, seconds: float = 15) -> np.ndarray:
    """One second of ``from_identity``'s audio (after the first half second)."""
    deadline = time.monotonic() + seconds
    track = await remote_track(lk, from_identity, rtc.TrackKind.KIND_AUDIO, seconds)
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
    return np.concatenate(collected)


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


async def publish_colour(lk: rtc.Room, rgb: tuple[int, int, int],
                         kind=rtc.TrackSource.SOURCE_CAMERA, width: int = 320,
                         height: int = 240, codec=None, simulcast: bool = True
                         ) -> asyncio.Task:
    screen = kind == rtc.TrackSource.SOURCE_SCREENSHARE
    source = rtc.VideoSource(width, height, is_screencast=screen)
    track = rtc.LocalVideoTrack.create_video_track("screen" if screen else "camera", source)
    options = rtc.TrackPublishOptions(source=kind, simulcast=simulcast)
    if codec is not None:
        options.video_codec = codec
    await lk.local_participant.publish_track(track, options)
    pixel = bytes([*rgb, 255])

    async def feed():
        frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, pixel * (width * height))
        while True:
            source.capture_frame(frame)
            await asyncio.sleep(1 / 15)
    return asyncio.create_task(feed())


async def seen_colour(lk: rtc.Room, from_identity: str, seconds: float = 20) -> np.ndarray:
    """The mean RGB of a frame of ``from_identity``'s video, after the first few."""
    track = await remote_track(lk, from_identity, rtc.TrackKind.KIND_VIDEO, seconds)
    return await mean_colour(track, seconds)


async def mean_colour(track, seconds: float = 20) -> np.ndarray:
    """The mean RGB of a frame of a video track, after the first few."""
    stream = rtc.VideoStream(track)
    frames = 0

    async def read():
        nonlocal frames
        async for event in stream:
            frames += 1
            if frames < 5:
                continue
            rgba = event.frame.convert(rtc.VideoBufferType.RGBA)
            pixels = np.frombuffer(bytes(rgba.data), dtype=np.uint8).reshape(-1, 4)
            return pixels[:, :3].mean(axis=0)
    try:
        return await asyncio.wait_for(read(), timeout=seconds)
    finally:
        await stream.aclose()


async def test_video_data_mute_and_a_late_joiner(sparks):
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    feeders = []
    rooms = [alice, bob]
    try:
        feeders.append(await publish_colour(alice, (220, 30, 30)))
        feeders.append(await publish_tone(alice, 440))
        colour = await seen_colour(bob, "alice")
        assert colour[0] > 150 and colour[1] < 90 and colour[2] < 90, colour

        # Carol comes later and gets what is already published.
        carol = await connect(sparks, "carol", room)
        rooms.append(carol)
        colour = await seen_colour(carol, "alice")
        assert colour[0] > 150 and colour[1] < 90, colour
        assert abs(await heard_frequency(carol, "alice") - 440) < 20

        # Data goes to whom it is addressed to, with the sender's identity.
        got: dict[str, list] = {"bob": [], "carol": []}
        bob.on("data_received", lambda p: got["bob"].append(p))
        carol.on("data_received", lambda p: got["carol"].append(p))
        await alice.local_participant.publish_data(b"for bob only", reliable=True,
                                                   destination_identities=["bob"], topic="t")
        await alice.local_participant.publish_data(b"for everyone", reliable=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(got["bob"]) < 2 or len(got["carol"]) < 1):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sorted(p.data for p in got["bob"]) == [b"for bob only", b"for everyone"]
        assert [p.data for p in got["carol"]] == [b"for everyone"]
        assert all(p.participant.identity == "alice" for p in got["bob"] + got["carol"])

        # Mute is seen by the others.
        muted = asyncio.Event()
        bob.on("track_muted", lambda participant, publication:
               participant.identity == "alice" and muted.set())
        audio = next(p for p in alice.local_participant.track_publications.values()
                     if p.kind == rtc.TrackKind.KIND_AUDIO)
        audio.track.mute()
        await asyncio.wait_for(muted.wait(), timeout=10)
    finally:
        for task in feeders:
            task.cancel()
        for lk in rooms:
            await lk.disconnect()


@pytest.mark.parametrize("codec", ["H264", "VP9"])
async def test_h264_and_vp9_video_arrives(sparks, codec):
    # The publisher's encoder chooses the codec (the SDK offers only the one asked for); the
    # server forwards it like VP8: simulcast layers for H.264, one SVC stream for VP9.
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    feeder = await publish_colour(alice, (30, 30, 220), codec=getattr(rtc.VideoCodec, codec),
                                  width=640, height=360)
    try:
        colour = await seen_colour(bob, "alice")
        assert colour[2] > 150 and colour[0] < 90 and colour[1] < 90, colour
        publication = next(p for p in next(iter(bob.remote_participants.values()))
                           .track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        assert publication.mime_type.lower() == f"video/{codec.lower()}", publication.mime_type
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()


async def test_without_auto_subscription_tracks_come_when_asked_for(sparks):
    # Bob joins without auto-subscription: he learns of Alice's tone but receives it only
    # once he subscribes (UpdateSubscription), and unsubscribing ends it.
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room, auto_subscribe=False)
    feeder = await publish_tone(alice, 550)
    try:
        deadline = time.monotonic() + 15
        publication = None
        while time.monotonic() < deadline and publication is None:
            publication = next((p for participant in bob.remote_participants.values()
                                for p in participant.track_publications.values()), None)
            await asyncio.sleep(0.1)
        assert publication is not None, "Bob never learnt of the track"
        await asyncio.sleep(1.5)
        assert publication.track is None, "subscribed without asking"

        publication.set_subscribed(True)
        assert abs(await heard_frequency(bob, "alice") - 550) < 20

        gone = asyncio.Event()
        bob.on("track_unsubscribed", lambda track, pub, participant: gone.set())
        publication.set_subscribed(False)
        await asyncio.wait_for(gone.wait(), timeout=10)

        # And back again.
        publication.set_subscribed(True)
        assert abs(await heard_frequency(bob, "alice") - 550) < 20
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()


async def test_without_publish_permission_nothing_is_published(sparks):
    room = rand_localpart("room")
    viewer = await connect(sparks, "viewer", room, canPublish=False)
    bob = await connect(sparks, "bob", room)
    try:
        assert not viewer.local_participant.permissions.can_publish
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        with pytest.raises(Exception):
            await asyncio.wait_for(viewer.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), 10)
        await asyncio.sleep(1)
        watched = next(p for p in bob.remote_participants.values() if p.identity == "viewer")
        assert not watched.track_publications
    finally:
        await viewer.disconnect()
        await bob.disconnect()


async def test_encrypted_media_passes_untouched(sparks):
    # Frames encrypted by the publisher (LiveKit's frame E2EE, shared key) are forwarded as
    # they are: the receiver with the key hears the tone, the one without does not.
    room = rand_localpart("room")
    key = b"a shared meeting key"
    alice = await connect(sparks, "alice", room, key=key)
    bob = await connect(sparks, "bob", room, key=key)
    eve = await connect(sparks, "eve", room)
    feeders = []
    try:
        feeders.append(await publish_tone(alice, 440))
        assert abs(await heard_frequency(bob, "alice") - 440) < 20
        # What Eve's decoder makes of the ciphertext is noise (or silence), not the tone.
        pcm = await heard_pcm(eve, "alice")
        share = share_near(pcm, 440)
        rms = float(np.sqrt(np.mean(pcm ** 2)))
        assert share < 0.5 or rms < 500, (share, rms, dominant_frequency(pcm))
    finally:
        for task in feeders:
            task.cancel()
        for lk in (alice, bob, eve):
            await lk.disconnect()


async def test_the_active_speaker_is_announced(sparks):
    # From the audio level each packet carries (in the clear even with E2EE).
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    updates: list[list[str]] = []
    bob.on("active_speakers_changed",
           lambda speakers: updates.append([p.identity for p in speakers]))
    feeder = await publish_tone(alice, 440)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("alice" in u for u in updates):
            await asyncio.sleep(0.1)
        assert any("alice" in u for u in updates), updates
        # Silence: she is no longer the active speaker.
        feeder.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not updates or "alice" in updates[-1]):
            await asyncio.sleep(0.1)
        assert updates and "alice" not in updates[-1], updates
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()


@pytest.mark.parametrize("dynacast,codec", [(False, "VP8"), (True, "VP8"), (False, "H264")])
async def test_simulcast_layer_follows_the_requested_quality(sparks, dynacast, codec):
    # Alice sends three layers; Bob gets one, and another when he asks for another quality,
    # switched at a keyframe (frames keep decoding across the switch). With dynacast, Alice
    # stops encoding the layers nobody receives and must be told to resume them. H.264 layers
    # switch at its own keyframes (an IDR NAL unit).
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room, dynacast=dynacast)
    bob = await connect(sparks, "bob", room)
    width, height = 1280, 720
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True,
                                      video_codec=getattr(rtc.VideoCodec, codec))
    await alice.local_participant.publish_track(track, options)

    async def feed():
        frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                               bytes([30, 200, 30, 255]) * (width * height))
        while True:
            source.capture_frame(frame)
            await asyncio.sleep(1 / 10)
    feeder = asyncio.create_task(feed())
    try:
        remote = await remote_track(bob, "alice", rtc.TrackKind.KIND_VIDEO)
        publication = next(p for p in next(iter(bob.remote_participants.values()))
                           .track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        assert publication.simulcasted
        stream = rtc.VideoStream(remote)
        sizes: list[int] = []

        async def widths_until(predicate, seconds=20):
            deadline = time.monotonic() + seconds
            async for event in stream:
                sizes.append(event.frame.width)
                if predicate(event.frame.width) or time.monotonic() > deadline:
                    return event.frame.width
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        high = await widths_until(lambda w: w >= 640)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        low = await widths_until(lambda w: w <= 400)
        assert low < high, sizes
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        back = await widths_until(lambda w: w >= 640)
        assert back > low, sizes
        await stream.aclose()
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()


async def test_screen_share_is_its_own_track_with_its_source(sparks):
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    feeders = []
    try:
        feeders.append(await publish_colour(alice, (220, 30, 30)))  # the camera
        feeders.append(await publish_colour(alice, (30, 30, 220),
                                            kind=rtc.TrackSource.SOURCE_SCREENSHARE,
                                            width=640, height=360))

        deadline = time.monotonic() + 15
        sources = {}
        while time.monotonic() < deadline and len(sources) < 2:
            participant = next((p for p in bob.remote_participants.values()
                                if p.identity == "alice"), None)
            if participant:
                sources = {pub.source: pub for pub in participant.track_publications.values()
                           if pub.kind == rtc.TrackKind.KIND_VIDEO and pub.track is not None}
            await asyncio.sleep(0.1)
        assert set(sources) == {rtc.TrackSource.SOURCE_CAMERA,
                                rtc.TrackSource.SOURCE_SCREENSHARE}, sources
        colour = await mean_colour(sources[rtc.TrackSource.SOURCE_SCREENSHARE].track)
        assert colour[2] > 150 and colour[0] < 90, colour

        # Sharing stops: the others see the track go, and the camera goes on.
        gone = asyncio.Event()
        bob.on("track_unpublished", lambda publication, participant:
               publication.source == rtc.TrackSource.SOURCE_SCREENSHARE and gone.set())
        screen_sid = next(p.sid for p in alice.local_participant.track_publications.values()
                          if p.source == rtc.TrackSource.SOURCE_SCREENSHARE)
        await alice.local_participant.unpublish_track(screen_sid)
        await asyncio.wait_for(gone.wait(), timeout=10)
        colour = await seen_colour(bob, "alice")
        assert colour[0] > 150 and colour[2] < 90, colour
    finally:
        for task in feeders:
            task.cancel()
        await alice.disconnect()
        await bob.disconnect()
