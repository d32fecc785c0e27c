"""The browser path Element Call takes: livekit-client (npm) in headless Chromium (Debian
``chromium``), two pages in a meeting on Sparks' SFU, one publishing Chromium's fake camera
and microphone, the other decoding them (tests/browser/call.mjs; ``npm ci`` there first).
The client runs with its default options, so it also exercises the fallback from the
single-peer-connection protocol (``/rtc/v1``, 404 here) to ``/rtc``. Both pages then resume
their sessions after their WebSockets break, the way the client recovers from a network blip:
media goes on, nobody leaves, and what happened during the gap (a mute) reaches the page.
A page that allows pausing (``subscriberAllowPause``) on a link too slow for even the lowest
simulcast layer (or for a video sent without simulcast) (tests/browser/congestion.mjs, through udp_shaper.py) is told its video is
paused, and active again once the link recovers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import Homeserver, rand_localpart
from test_sfu_livekit import make_token

BROWSER_DIR = Path(__file__).resolve().parent.parent / "browser"


@pytest.fixture(scope="module")
def sparks():
    hs = Homeserver("sparks")
    hs.start()
    try:
        yield hs
    finally:
        hs.stop()


def test_chromium_pages_exchange_camera_and_microphone(sparks):
    assert shutil.which("chromium"), "Debian chromium is needed (scripts/setup --tests)"
    assert (BROWSER_DIR / "node_modules" / "livekit-client").is_dir(), \
        "run npm ci in tests/browser (scripts/setup --tests)"
    room = rand_localpart("room")
    url = f"ws://{sparks.ip}:{sparks.port}/livekit/sfu"
    run = subprocess.run(
        ["node", str(BROWSER_DIR / "call.mjs"), url, make_token("camera", room),
         make_token("viewer", room)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"stdout: {run.stdout}\nstderr: {run.stderr[-3000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["from"] == "camera", result
    assert result["framesDecoded"] > 30 and result["audioPackets"] > 20, result
    resumed = result["resumed"]
    assert resumed["viewer"]["sameSid"] and resumed["camera"]["sameSid"], result
    assert resumed["mutedSeen"], "the mute during the viewer's gap did not reach it"
    assert resumed["afterViewer"] and resumed["afterCamera"], "video stopped after a resume"
    assert resumed["left"] == [], result
    print(result)


RELAY_IP = "127.0.0.8"


@pytest.fixture(scope="module")
def sparks_behind_relay():
    """Sparks advertising a UDP relay's address for media (udp_shaper.py, which the script
    starts), as behind 1:1 NAT."""
    with Homeserver("sparks", rtc_extra=f'public_ip = "{RELAY_IP}"\n') as hs:
        yield hs


@pytest.mark.parametrize("layers", ["simulcast", "single"])
def test_a_congested_browser_is_told_its_video_is_paused_then_resumed(sparks_behind_relay,
                                                                       layers):
    hs = sparks_behind_relay
    room = rand_localpart("room")
    url = f"ws://{hs.ip}:{hs.port}/livekit/sfu"
    run = subprocess.run(
        ["node", str(BROWSER_DIR / "congestion.mjs"), url, make_token("camera", room),
         make_token("viewer", room), RELAY_IP, str(hs.udp_port), hs.ip, layers],
        capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"stdout: {run.stdout}\nstderr: {run.stderr[-3000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["states"][:1] == ["paused"] and "active" in result["states"], result
    print(result)
