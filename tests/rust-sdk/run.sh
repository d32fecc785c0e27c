#!/usr/bin/env bash
# matrix-rust-sdk scenarios (E2EE between two real SDK clients, sliding-sync room list)
# against a throw-away homeserver on 127.0.0.1. See tests/rust-sdk/README.md.
#
#   tests/rust-sdk/run.sh [--server sparks|synapse|both] [--scenario NAME]... [--no-build]
#
# Env: SPARKS_BIN (default ~/.cache/sparks/target/debug/sparks), SDK_TARGET_DIR (default
# ~/.cache/sparks/sdk-target), VENV (default <repo>/.venv, needs matrix-synapse for
# --server synapse), SDK_LOG (the SDK's RUST_LOG; default warn + HTTP requests at debug),
# SDK_WAIT (seconds per wait, default 30), SDK_LOG_DIR (keep logs there; default a temp dir,
# kept only when something failed).
# Prints one "[server] PASS|FAIL scenario" line per run and "N passed, N failed" at the end;
# exits non-zero when anything failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SERVERS="${HS_IMPL:-sparks}"
SCENARIOS=()
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVERS="$2"; shift 2 ;;
    --scenario) SCENARIOS+=("$2"); shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$SERVERS" = both ] && SERVERS="synapse sparks"
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(e2ee-exchange e2ee-second-device room-list)

TARGET="${SDK_TARGET_DIR:-$HOME/.cache/sparks/sdk-target}"
BIN="$TARGET/release/sdk-scenarios"
if [ "$BUILD" = 1 ]; then
  echo "[run.sh] building sdk-scenarios (target dir $TARGET)" >&2
  CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build --release --locked --quiet \
    --manifest-path "$HERE/Cargo.toml"
fi
[ -x "$BIN" ] || { echo "[run.sh] $BIN missing (build it or drop --no-build)" >&2; exit 1; }

VENV="${VENV:-$ROOT/.venv}"
PY=python3
[ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"
for s in $SERVERS; do
  case "$s" in
    sparks) export SPARKS_BIN="${SPARKS_BIN:-$HOME/.cache/sparks/target/debug/sparks}"
            [ -x "$SPARKS_BIN" ] || { echo "[run.sh] Sparks binary not found at $SPARKS_BIN" >&2; exit 1; } ;;
    synapse) "$PY" -c 'import synapse' 2>/dev/null \
               || { echo "[run.sh] matrix-synapse not importable by $PY (set VENV)" >&2; exit 1; } ;;
    *) echo "[run.sh] unknown server $s" >&2; exit 2 ;;
  esac
done

LOG_DIR="${SDK_LOG_DIR:-$(mktemp -d /tmp/sdk-scenarios.XXXXXX)}"
mkdir -p "$LOG_DIR"
export SDK_LOG="${SDK_LOG:-warn,matrix_sdk::http_client=debug}"
export SDK_WAIT="${SDK_WAIT:-30}"

# The launcher reuses tests/python/harness.py (fresh temp dir, free loopback port, server
# stopped by its own PID), one server per --server, all scenarios against it.
set +e
"$PY" - "$ROOT/tests/python" "$BIN" "$LOG_DIR" "$SERVERS" "${SCENARIOS[@]}" <<'PY'
import os, shutil, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from harness import Homeserver  # noqa: E402

binary, log_dir, servers, scenarios = sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
passed = failed = 0
for impl in servers:
    hs = Homeserver(impl=impl)
    try:
        hs.start()
    except Exception as e:  # noqa: BLE001
        print(f"[{impl}] FAIL server start: {e}", flush=True)
        failed += len(scenarios)
        continue
    try:
        for name in scenarios:
            sdk_log = os.path.join(log_dir, f"{impl}-{name}.sdk.log")
            env = dict(os.environ, RUST_LOG=os.environ["SDK_LOG"])
            start = time.monotonic()
            with open(sdk_log, "wb") as err:
                try:
                    r = subprocess.run(
                        [binary, "--homeserver", hs.base_url, "--wait", os.environ["SDK_WAIT"], name],
                        stdout=subprocess.PIPE, stderr=err, env=env, timeout=600,
                    )
                    out, code = r.stdout.decode(errors="replace").strip(), r.returncode
                except subprocess.TimeoutExpired:
                    out, code = f"FAIL {name}: timed out after 600 s", 1
            line = out.splitlines()[-1] if out else f"FAIL {name}: no output (exit {code})"
            if code == 0 and line.startswith("PASS"):
                passed += 1
            else:
                failed += 1
                if line.startswith("PASS"):
                    line = f"FAIL {name}: exit {code}"
            print(f"[{impl}] {line}", flush=True)
            if not line.startswith("PASS"):
                print(f"[{impl}]   SDK log: {sdk_log}", flush=True)
    finally:
        try:
            shutil.copy(hs.log_path, os.path.join(log_dir, f"{impl}.server.log"))
        except OSError:
            pass
        hs.stop()
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
PY
rc=$?
set -e
if [ $rc -ne 0 ] || [ -n "${SDK_LOG_DIR:-}" ]; then
  echo "[run.sh] logs kept in $LOG_DIR" >&2
else
  rm -rf "$LOG_DIR"
fi
exit $rc
