"""Start and stop a throw-away Matrix homeserver on loopback for the test suite.

Target is chosen by ``HS_IMPL``: ``sparks`` (default) or ``synapse``.
Every server gets a fresh temp dir and a free 127.0.0.1 port; it is stopped by
its own PID only (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT = float(os.environ.get("HS_READY_TIMEOUT", "30"))
POLL_INTERVAL = 0.02
STOP_GRACE = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def hs_impl() -> str:
    impl = os.environ.get("HS_IMPL", "sparks").strip().lower()
    if impl not in ("sparks", "synapse"):
        raise ValueError(f"HS_IMPL must be 'sparks' or 'synapse', not {impl!r}")
    return impl


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def free_udp_port(ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# The LiveKit API key and secret of every test Sparks' SFU (tests mint tokens with them).
RTC_API_KEY = "sparks"
RTC_API_SECRET = "test-secret-for-the-sfu-0123456789abcdef"


def sparks_binary() -> Path:
    """SPARKS_BIN, else $CARGO_TARGET_DIR/debug/sparks, else
    ~/.cache/sparks/target/debug/sparks, else <repo>/target/debug/sparks."""
    if os.environ.get("SPARKS_BIN"):
        return Path(os.environ["SPARKS_BIN"])
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "sparks")
    candidates.append(Path.home() / ".cache" / "sparks" / "target" / "debug" / "sparks")
    candidates.append(REPO_ROOT / "target" / "debug" / "sparks")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return candidates[-1]


class Homeserver:
    """One running homeserver process. Use ``start()`` / ``stop()`` or as a
    context manager."""

    def __init__(self, impl: str | None = None, server_name: str | None = None,
                 federation_ip: str | None = None, federation_extra: str = "",
                 rtc_extra: str = "", tls: tuple[Path, Path] | None = None,
                 verify_certificates: bool = False):
        """With ``federation_ip`` (an address in 127.0.0.0/8 of its own) the server also
        federates: its name is ``<ip>:<federation port>`` (an IP literal with an explicit
        port, so no discovery is needed), TLS is self-signed and peers' certificates are not
        checked, and loopback peers are allowed (see ../shared/reference/federation-loopback.md).
        ``server_name`` then replaces the IP-literal name (other servers must find it through
        DNS); ``federation_extra`` is appended to Sparks' ``[federation]`` section,
        ``rtc_extra`` to its ``[rtc]`` section. ``tls`` (certificate, key) replaces Synapse's
        self-signed certificate; ``verify_certificates`` makes Sparks check peers' ones."""
        self.impl = impl or hs_impl()
        self.ip = federation_ip or "127.0.0.1"
        self.port = free_port(self.ip)
        self.federation_port = free_port(self.ip) if federation_ip else None
        self.federation_extra = federation_extra
        self.rtc_extra = rtc_extra
        self.tls = tls
        self.verify_certificates = verify_certificates
        self.udp_port = free_udp_port(self.ip)
        if federation_ip:
            self.server_name = server_name or f"{federation_ip}:{self.federation_port}"
        else:
            self.server_name = server_name or os.environ.get("HS_SERVER_NAME", "localhost")
        self.base_url = f"http://{self.ip}:{self.port}"
        self.federation_url = (
            f"https://{self.ip}:{self.federation_port}" if federation_ip else None
        )
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hs-{self.impl}-"))
        self.log_path = self.tmp / f"{self.impl}.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # ---- config writers -------------------------------------------------

    def _sparks_cmd(self) -> list[str]:
        binary = sparks_binary()
        if not binary.is_file():
            raise RuntimeError(
                f"sparks binary not found at {binary}; build it or set SPARKS_BIN"
            )
        cfg = self.tmp / "sparks.toml"
        q = json.dumps  # a JSON string is a valid TOML basic string here
        cfg.write_text(
            f"server_name = {q(self.server_name)}\n"
            f"database_path = {q(str(self.tmp / 'db'))}\n"
            "\n[listen]\n"
            f"client = {q(f'{self.ip}:{self.port}')}\n"
            + (f"federation = {q(f'{self.ip}:{self.federation_port}')}\n"
               if self.federation_port else "")
            + "\n[registration]\n"
            "enabled = true\n"
            "\n[ratelimit]\n"
            "enabled = false\n"
            "\n[rtc]\n"
            f"udp_port = {self.udp_port}\n"
            f"api_key = {q(RTC_API_KEY)}\n"
            f"api_secret = {q(RTC_API_SECRET)}\n"
            + self.rtc_extra
            + ("\n[federation]\n"
               f"verify_certificates = {'true' if self.verify_certificates else 'false'}\n"
               "ip_range_denylist = []\n"
               + self.federation_extra
               if self.federation_port else "")
        )
        return [str(binary), "--config", str(cfg)]

    def _synapse_cmd(self) -> list[str]:
        tmp = self.tmp
        # Signing key in Synapse's on-disk format: "ed25519 <key id> <unpadded b64 seed>".
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        key_path = tmp / "signing.key"
        if not key_path.exists():  # a restart keeps the server's key
            key_path.write_text(f"ed25519 a_{secrets.token_hex(2)} {seed}\n")
        big = {"per_second": 100000, "burst_count": 1000000}
        rc = lambda: "{per_second: %d, burst_count: %d}" % (big["per_second"], big["burst_count"])  # noqa: E731
        cfg = tmp / "homeserver.yaml"
        cfg.write_text(
            f"""\
server_name: "{self.server_name}"
pid_file: "{tmp / 'homeserver.pid'}"
public_baseurl: "{self.base_url}/"
listeners:
  - port: {self.port}
    bind_addresses: ["{self.ip}"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
{self._synapse_federation_yaml()}database:
  name: sqlite3
  args:
    database: "{tmp / 'homeserver.db'}"
media_store_path: "{tmp / 'media_store'}"
signing_key_path: "{key_path}"
report_stats: false
bcrypt_rounds: 4
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "{secrets.token_hex(16)}"
macaroon_secret_key: "{secrets.token_hex(16)}"
form_secret: "{secrets.token_hex(16)}"
trusted_key_servers: []
suppress_key_server_warning: true
presence:
  enabled: true
url_preview_enabled: false
rc_message: {rc()}
rc_registration: {rc()}
rc_registration_token_validity: {rc()}
rc_login:
  address: {rc()}
  account: {rc()}
  failed_attempts: {rc()}
rc_admin_redaction: {rc()}
rc_joins:
  local: {rc()}
  remote: {rc()}
rc_joins_per_room: {rc()}
rc_invites:
  per_room: {rc()}
  per_user: {rc()}
  per_issuer: {rc()}
rc_third_party_invite: {rc()}
rc_3pid_validation: {rc()}
rc_presence:
  per_user: {rc()}
rc_delayed_event_mgmt: {rc()}
rc_room_creation: {rc()}
rc_reports: {rc()}
rc_media_create: {rc()}
rc_federation:
  window_size: 1000
  sleep_limit: 10000
  sleep_delay: 1
  reject_limit: 10000
  concurrent: 1000
"""
        )
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(cfg)]

    def _synapse_federation_yaml(self) -> str:
        """Synapse's TLS federation listener and loopback federation settings (or, without
        federation, a whitelist that allows no other server)."""
        if not self.federation_port:
            return "federation_domain_whitelist: []\n"
        if self.tls:
            cert, key = self.tls
        else:
            cert, key = self.tmp / "tls.crt", self.tmp / "tls.key"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={self.ip}",
                 "-addext", f"subjectAltName=IP:{self.ip},DNS:localhost"],
                check=True, capture_output=True,
            )
        return f"""\
  - port: {self.federation_port}
    bind_addresses: ["{self.ip}"]
    type: http
    tls: true
    resources:
      - names: [federation]
        compress: false
tls_certificate_path: "{cert}"
tls_private_key_path: "{key}"
federation_verify_certificates: false
ip_range_blacklist: []
ip_range_whitelist: ["127.0.0.0/8"]
allow_public_rooms_over_federation: true
room_list_publication_rules: [{{action: allow}}]  # default since 1.1xx: nobody may publish
"""

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "Homeserver":
        cmd = self._sparks_cmd() if self.impl == "sparks" else self._synapse_cmd()
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info,ruma_state_res=warn")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C on pytest must not hit the server first
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"{self.base_url}/health"
        last_err: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.impl} exited with code {self.proc.returncode} during startup\n"
                    f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
                    last_err = r.status
            except (urllib.error.URLError, OSError) as e:
                last_err = e
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(
            f"{self.impl} not ready on {url} after {READY_TIMEOUT}s (last: {last_err})\n"
            f"--- tail of {self.log_path} ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 60) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if os.environ.get("HS_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Ends the process with ``sig`` and keeps its data (``start()`` brings it back)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(timeout=STOP_GRACE)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, between: list[str] | None = None) -> None:
        """Stops the process (keeping its data), runs the server binary with the arguments
        in ``between`` (plus this server's config) if given, and starts it again."""
        self.terminate()
        if between is not None:
            cmd = self._sparks_cmd() + between
            subprocess.run(cmd, cwd=self.tmp, check=True, capture_output=True, timeout=60)
        self.start()

    def __enter__(self) -> "Homeserver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    # Manual use: `python harness.py` starts a server and waits for Ctrl-C.
    with Homeserver() as hs:
        print(f"{hs.impl} up at {hs.base_url} (tmp {hs.tmp})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


# ---------------------------------------------------------------------------
# Client-side helpers shared by the test modules (nio + raw aiohttp).
# ---------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def rand_localpart(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def nio_config():
    from nio import AsyncClientConfig

    # Never let nio silently retry: a 429 or a timeout must fail the test.
    return AsyncClientConfig(
        max_limit_exceeded=0, max_timeouts=0, request_timeout=60, store_sync_tokens=False
    )


async def raw_request(hs: Homeserver, method: str, path: str, token: str | None = None,
                      json=None, params=None):
    """One raw HTTP request; returns (status, parsed JSON body or None)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, hs.base_url + path, json=json, params=params,
                             headers=headers) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = None
            return r.status, body


async def sync_until(client, predicate, timeout: float = 10.0, sync_filter=None):
    """Incremental nio syncs (continuing from client.next_batch) until
    ``predicate(sync_response)`` is truthy; returns that value."""
    import asyncio

    from nio import SyncResponse

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"sync condition not met within {timeout}s")
        r = await client.sync(timeout=int(min(remaining, 2.0) * 1000), sync_filter=sync_filter)
        assert isinstance(r, SyncResponse), f"sync failed: {r}"
        result = predicate(r)
        if result:
            return result


def timeline(resp, room_id: str) -> list:
    """Timeline events of a joined room in a nio SyncResponse ([] if absent)."""
    info = resp.rooms.join.get(room_id)
    return list(info.timeline.events) if info else []
