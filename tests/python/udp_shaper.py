"""A UDP relay that stands between WebRTC clients and the SFU and limits the bandwidth towards
the clients, like a slow access link: packets queue up to a bound and beyond it are lost.

The SFU advertises the relay's address (``[rtc] public_ip`` = the relay's IP, same port), so
clients send their media and checks to it; the relay forwards each client's packets from a
socket of its own (the SFU sees one address per client, as behind a NAT) and sends what comes
back through the limit. This is a network condition, not a stand-in for any peer: both ends
are the real client and the real server.

It runs as its own process (``ShaperProcess``), so that its timing does not depend on the
test's event loop, which is busy with the clients; the limit is changed through its stdin:
``rate <bits/s>`` or ``rate none``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time


class _Upstream(asyncio.DatagramProtocol):
    """The relay's socket towards the SFU for one client."""

    def __init__(self, shaper: "UdpShaper", client: tuple[str, int]):
        self.shaper = shaper
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.shaper._downstream(self.client, data)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, shaper: "UdpShaper"):
        self.shaper = shaper

    def datagram_received(self, data, addr):
        self.shaper._upstream(addr, data)


class UdpShaper:
    """Relays ``listen`` ⇄ ``server``; ``rate_bps`` (None: unlimited) caps each client's
    downstream, with at most ``max_queue_s`` of queueing before packets are dropped."""

    def __init__(self, listen: tuple[str, int], server: tuple[str, int],
                 max_queue_s: float = 0.25):
        self.listen = listen
        self.server = server
        self.max_queue_s = max_queue_s
        self.rate_bps: float | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.upstreams: dict[tuple[str, int], _Upstream] = {}
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        # When each client's link is next free (monotonic seconds).
        self.busy_until: dict[tuple[str, int], float] = {}
        self.dropped = 0
        self.relayed = 0

    async def start(self):
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=self.listen)

    def close(self):
        for upstream in self.upstreams.values():
            if upstream.transport:
                upstream.transport.close()
        if self.front:
            self.front.close()

    def _upstream(self, client, data):
        upstream = self.upstreams.get(client)
        if upstream is None:
            upstream = _Upstream(self, client)
            self.upstreams[client] = upstream
            loop = asyncio.get_running_loop()
            # The first packet waits for the socket; later ones find it ready.
            task = loop.create_task(loop.create_datagram_endpoint(
                lambda: upstream, local_addr=(self.server[0], 0), remote_addr=self.server))
            task.add_done_callback(lambda _: upstream.transport and upstream.transport.sendto(data))
            return
        if upstream.transport:
            upstream.transport.sendto(data)

    def _downstream(self, client, data):
        if self.front is None:
            return
        if self.rate_bps is None:
            self.relayed += 1
            self.front.sendto(data, client)
            return
        now = time.monotonic()
        start = max(now, self.busy_until.get(client, now))
        if start - now > self.max_queue_s:
            self.dropped += 1
            return
        done = start + (len(data) + 28) * 8 / self.rate_bps
        self.busy_until[client] = done
        self.relayed += 1
        asyncio.get_running_loop().call_later(done - now, self.front.sendto, data, client)


class ShaperProcess:
    """A ``UdpShaper`` in a process of its own."""

    def __init__(self, listen: tuple[str, int], server: tuple[str, int]):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, listen[0], str(listen[1]), server[0], str(server[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the UDP shaper did not start: {ready!r}")

    def limit(self, rate_bps: int | None):
        self.proc.stdin.write(f"rate {rate_bps if rate_bps else 'none'}\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the UDP shaper did not take the limit")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def _serve(listen, server):
    shaper = UdpShaper(listen, server)
    await shaper.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().split():
        if line[0] == "rate":
            shaper.rate_bps = None if line[1] == "none" else float(line[1])
            print("ok", flush=True)
    shaper.close()


if __name__ == "__main__":
    ip, port, server_ip, server_port = sys.argv[1:5]
    asyncio.run(_serve((ip, int(port)), (server_ip, int(server_port))))
