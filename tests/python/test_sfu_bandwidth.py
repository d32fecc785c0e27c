"""A receiver on a slow link gets the simulcast layer its bandwidth carries.

The LiveKit Python SDK publishes 720p simulcast and subscribes, asking for the high layer;
between the clients and the SFU sits a UDP relay (udp_shaper.py) that limits what reaches
the clients, like a slow access link. The SFU, estimating each receiver's bandwidth from the
client's transport-wide congestion control feedback (TWCC), must send the low layer while the
link is slow, and the high one again once it is not. The relay's address is what the SFU
advertises (``[rtc] public_ip``), so this is also the 1:1 NAT set-up: media arrives at the bound
address but the clients know another.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from livekit import rtc

from harness import Homeserver, rand_localpart
from test_sfu_livekit import connect, remote_track
from udp_shaper import ShaperProcess

pytestmark = pytest.mark.asyncio

RELAY_IP = "127.0.0.7"


@pytest.fixture(scope="module")
def sparks():
    with Homeserver("sparks", rtc_extra=f'public_ip = "{RELAY_IP}"\n') as hs:
        yield hs


async def test_a_slow_receiver_gets_the_layer_its_bandwidth_carries(sparks):
    shaper = ShaperProcess((RELAY_IP, sparks.udp_port), (sparks.ip, sparks.udp_port))
    room = rand_localpart("room")
    alice = await connect(sparks, "alice", room)
    bob = await connect(sparks, "bob", room)
    width, height = 1280, 720
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True,
                                      video_codec=rtc.VideoCodec.VP8)
    await alice.local_participant.publish_track(track, options)

    async def feed():
        # Coarse noise changing every third frame: every layer needs a fair part of its
        # bitrate (the low one about 150-250 kbit/s).
        rng = np.random.default_rng(7)
        frames = []
        for _ in range(20):
            pixels = rng.integers(0, 255, size=(height // 80, width // 80, 4), dtype=np.uint8)
            pixels = pixels.repeat(80, axis=0).repeat(80, axis=1)
            pixels[:, :, 3] = 255
            frames.append(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA,
                                         pixels.tobytes()))
        n = 0
        while True:
            source.capture_frame(frames[n // 3 % len(frames)])
            n += 1
            await asyncio.sleep(1 / 15)
    feeder = asyncio.create_task(feed())
    try:
        remote = await remote_track(bob, "alice", rtc.TrackKind.KIND_VIDEO)
        publication = next(p for p in next(iter(bob.remote_participants.values()))
                           .track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        stream = rtc.VideoStream(remote)
        widths: list[tuple[float, int]] = []
        started = time.monotonic()

        async def until(predicate, seconds):
            """Whether a frame whose width satisfies ``predicate`` arrives within ``seconds``
            (frames that stop arriving count as no)."""
            async def watch():
                async for event in stream:
                    widths.append((round(time.monotonic() - started, 1), event.frame.width))
                    if predicate(event.frame.width):
                        return True
            try:
                return await asyncio.wait_for(watch(), seconds)
            except asyncio.TimeoutError:
                return False

        assert await until(lambda w: w >= 640, 30), widths
        shaper.limit(400_000)
        assert await until(lambda w: w <= 400, 30), widths
        # It stays low while the link is slow.
        low_since = len(widths)
        await until(lambda w: False, 6)
        assert len(widths) >= low_since + 3, ("frames stopped while the link was slow",
                                              widths[low_since:])
        assert max(w for _, w in widths[low_since:]) <= 400, widths[low_since:]
        shaper.limit(None)
        # The estimate climbs back slowly (str0m probes now and then): up to a minute here.
        assert await until(lambda w: w >= 640, 90), widths
        await stream.aclose()
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()
        shaper.close()
