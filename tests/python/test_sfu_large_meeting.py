"""A meeting large enough that the SFU shares each packet's receivers out over threads.

When one batch of input goes to 16 receivers or more, the SFU makes their packets on its
sending threads as well as its own (``[rtc] send_threads``). The meeting here is run by
``sfu-bench`` (built with the workspace): str0m clients, each with LiveKit's two peer
connections, joining a real ``sparks`` over the signalling WebSocket and sending synthetic
audio over UDP on loopback. Every packet must reach every other participant, with two
sending threads (more than this machine may have cores, so they really share the work) and
with none (everything on one thread), as a control.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import sparks_binary

PUBLISHERS = 2
SUBSCRIBERS = 17


def bench_binary() -> Path:
    # Built beside the sparks binary under test (same target directory and profile).
    bench = sparks_binary().with_name("sfu-bench")
    if not bench.exists():
        pytest.fail(f"{bench} is missing: build the workspace with --all-targets")
    return bench


def run_meeting(tmp_path: Path, send_threads: int) -> dict:
    out = tmp_path / f"meeting-{send_threads}.json"
    env = dict(os.environ, SPARKS_RTC__SEND_THREADS=str(send_threads))
    subprocess.run(
        [str(bench_binary()), "--sparks", str(sparks_binary()),
         "--publishers", str(PUBLISHERS), "--subscribers", str(SUBSCRIBERS),
         "--seconds", "3", "--json", str(out)],
        env=env, check=True, timeout=120, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


@pytest.mark.parametrize("send_threads", [2, 0])
def test_every_packet_reaches_every_receiver(tmp_path, send_threads):
    result = run_meeting(tmp_path, send_threads)
    total = PUBLISHERS + SUBSCRIBERS
    # Each publisher's packets go to everyone else: 18 receivers per packet, over the
    # threshold for sharing out.
    assert total - 1 >= 16
    assert result["participants_receiving_everything"] == total, result
    expected = result["expected_packets_per_second"]
    assert expected == PUBLISHERS * (total - 1) * 50
    # Packets counted over the measured seconds: a second's edges may shift a few.
    assert result["egress_packets_per_second"] >= 0.97 * expected, result
    assert result["egress_packets_per_second"] <= 1.03 * expected, result
