#!/usr/bin/env bash
# Sparks vs Synapse homeserver benchmark. See benches/README.md.
#
#   benches/run.sh [--only sparks|synapse] [--duration S] [--concurrency 1,32]
#                  [--wake-samples N] [--rooms N] [--msgs-per-room N]
#                  [--initial-runs N] [--cold-runs N] [--tests LIST]
#                  [--media-uploads N] [--media-downloads N] [--thumb-samples N]
#                  [--search-messages N] [--busy-rooms N] [--busy-rate N]
#                  [--json FILE] [--keep]
#
# Servers run one at a time (never side by side), each on a loopback port, each
# stopped by its own PID. Nothing but 127.0.0.1 is contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

SYNAPSE_VERSION="1.163.2"
VENV="${SPARKS_BENCH_VENV:-$ROOT/.venv}"
SPARKS_BIN="${SPARKS_BIN:-$HOME/.cache/sparks/target/release/sparks}"
SPARKS_BUILD="${SPARKS_BUILD:-0}"
SPARKS_PORT="${SPARKS_PORT:-18448}"
SYNAPSE_PORT="${SYNAPSE_PORT:-18008}"
SYNAPSE_LOG_LEVEL="${SYNAPSE_LOG_LEVEL:-INFO}"
LOADGEN_TARGET="${LOADGEN_TARGET_DIR:-$HOME/.cache/sparks/loadgen-target}"
IDLE_SETTLE="${IDLE_SETTLE:-2}"   # seconds between /health OK and the idle RSS read

ONLY=""
DURATION=10
CONCURRENCY="1,32"
WAKE_SAMPLES=200
ROOMS=200
MSGS_PER_ROOM=3
INITIAL_RUNS=5
COLD_RUNS=3
TESTS="send,wake,initial,busy,sliding,e2ee,media,search"
SLIDING_ROOMS=500
BUSY_ROOMS=50
BUSY_RATE=10
SEARCH_MESSAGES=100000
MEDIA_UPLOADS=64
MEDIA_DOWNLOADS=128
THUMB_SAMPLES=20
JSON_OUT=""
KEEP=0

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --wake-samples) WAKE_SAMPLES="$2"; shift 2 ;;
    --rooms) ROOMS="$2"; shift 2 ;;
    --msgs-per-room) MSGS_PER_ROOM="$2"; shift 2 ;;
    --initial-runs) INITIAL_RUNS="$2"; shift 2 ;;
    --cold-runs) COLD_RUNS="$2"; shift 2 ;;
    --tests) TESTS="$2"; shift 2 ;;
    --search-messages) SEARCH_MESSAGES="$2"; shift 2 ;;
    --busy-rooms) BUSY_ROOMS="$2"; shift 2 ;;
    --busy-rate) BUSY_RATE="$2"; shift 2 ;;
    --sliding-rooms) SLIDING_ROOMS="$2"; shift 2 ;;
    --media-uploads) MEDIA_UPLOADS="$2"; shift 2 ;;
    --media-downloads) MEDIA_DOWNLOADS="$2"; shift 2 ;;
    --thumb-samples) THUMB_SAMPLES="$2"; shift 2 ;;
    --json) JSON_OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done
case "$ONLY" in
  "") SERVERS="synapse sparks" ;;
  sparks|synapse) SERVERS="$ONLY" ;;
  *) echo "run.sh: --only must be sparks or synapse" >&2; exit 2 ;;
esac

log() { printf '[run.sh] %s\n' "$*" >&2; }
die() { printf '[run.sh] ERROR: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/sparks-bench.XXXXXX)"
SERVER_PID=""
FAILED=1
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ] || { [ "$FAILED" = 1 ] && [ -n "$(ls -A "$WORK")" ]; }; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build / install
log "building loadgen (target dir $LOADGEN_TARGET)"
CARGO_TARGET_DIR="$LOADGEN_TARGET" cargo build --release --quiet \
  --manifest-path "$HERE/loadgen/Cargo.toml" || die "loadgen build failed"
LOADGEN="$LOADGEN_TARGET/release/loadgen"

for s in $SERVERS; do
  case "$s" in
    synapse)
      log "ensuring Synapse $SYNAPSE_VERSION in $VENV"
      flock /tmp/sparks-venv.lock sh -c "test -x '$VENV/bin/python' || python3 -m venv '$VENV'; '$VENV/bin/pip' install -q 'matrix-synapse==$SYNAPSE_VERSION'" \
        || die "installing matrix-synapse==$SYNAPSE_VERSION failed"
      ;;
    sparks)
      if [ "$SPARKS_BUILD" = 1 ]; then
        log "building Sparks (cargo build --release in $ROOT)"
        (cd "$ROOT" && cargo build --release) || die "Sparks build failed"
      fi
      [ -x "$SPARKS_BIN" ] || die "Sparks binary not found at $SPARKS_BIN (set SPARKS_BIN, or SPARKS_BUILD=1)"
      ;;
  esac
done

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- per-server setup
# prepare_<server>: write config (once); reset_<server>: fresh, empty data dir;
# spawn_<server>: start in background, set SERVER_PID.
prepare_sparks() {
  local d="$WORK/sparks"
  mkdir -p "$d"
  cat >"$d/sparks.toml" <<EOF
server_name = "localhost"
database_path = "$d/db"

[listen]
client = "127.0.0.1:$SPARKS_PORT"

[registration]
enabled = true

[ratelimit]
enabled = false

[media]
path = "$d/media"
EOF
}
reset_sparks() { rm -rf "$WORK/sparks/db" "$WORK/sparks/media"; }
spawn_sparks() {
  "$SPARKS_BIN" --config "$WORK/sparks/sparks.toml" >>"$WORK/sparks/server.log" 2>&1 &
  SERVER_PID=$!
}
url_sparks() { echo "http://127.0.0.1:$SPARKS_PORT"; }
version_sparks() {
  echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none), binary sha256 $(sha256sum "$SPARKS_BIN" | cut -c1-12)"
}

prepare_synapse() {
  local d="$WORK/synapse"
  mkdir -p "$d"
  sed -e "s|@DIR@|$d|g" -e "s|@PORT@|$SYNAPSE_PORT|g" "$HERE/synapse/homeserver.yaml.in" >"$d/homeserver.yaml"
  sed -e "s|@DIR@|$d|g" -e "s|@LEVEL@|$SYNAPSE_LOG_LEVEL|g" "$HERE/synapse/log.config.in" >"$d/log.config"
  "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" --generate-keys \
    >"$d/generate-keys.log" 2>&1 || { cat "$d/generate-keys.log" >&2; die "synapse --generate-keys failed"; }
  [ -s "$d/localhost.signing.key" ] || die "synapse signing key was not generated"
}
reset_synapse() { rm -rf "$WORK/synapse/data"; mkdir -p "$WORK/synapse/data"; }
spawn_synapse() {
  "$VENV/bin/python" -m synapse.app.homeserver -c "$WORK/synapse/homeserver.yaml" \
    >>"$WORK/synapse/server.log" 2>&1 &
  SERVER_PID=$!
}
url_synapse() { echo "http://127.0.0.1:$SYNAPSE_PORT"; }
version_synapse() { "$VENV/bin/python" -c 'import synapse; print(synapse.__version__)'; }

server_log() { echo "$WORK/$1/server.log"; }

# Start server $1 (port $2) and wait for /health; sets SERVER_PID and START_MS
# (ms from spawn to the first 200). Not to be called in a subshell.
start_server() {
  local s="$1" t0
  port_busy "$2" && die "port $2 is already in use (set SPARKS_PORT / SYNAPSE_PORT)"
  t0=$(date +%s%N)
  "spawn_$s"
  if ! START_MS=$("$LOADGEN" wait-health --url "$("url_$s")" --t0-ns "$t0" --pid "$SERVER_PID" --timeout 180); then
    log "--- last lines of $(server_log "$s") ---"
    tail -n 40 "$(server_log "$s")" >&2 || true
    [ "$s" = synapse ] && tail -n 40 "$WORK/synapse/homeserver.log" >&2 2>/dev/null
    die "$s did not become healthy"
  fi
}

stop_server() {
  local pid="$SERVER_PID" i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive 30 s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  SERVER_PID=""
}

rss_mib() {
  local kb
  kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null) || true
  [ -n "$kb" ] || die "cannot read VmRSS of pid $1 (server died?)"
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

port_of() { if [ "$1" = sparks ]; then echo "$SPARKS_PORT"; else echo "$SYNAPSE_PORT"; fi; }

# ---------------------------------------------------------------- benchmark
REPORT_ARGS=()
for s in $SERVERS; do
  log "===== $s ====="
  "prepare_$s"
  port=$(port_of "$s")

  cold=()
  for i in $(seq 1 "$COLD_RUNS"); do
    "reset_$s"
    start_server "$s" "$port"
    stop_server
    log "$s cold start $i/$COLD_RUNS: $START_MS ms"
    cold+=("$START_MS")
  done

  "reset_$s"
  start_server "$s" "$port"
  log "$s started (pid $SERVER_PID) in $START_MS ms; idling ${IDLE_SETTLE}s before RSS read"
  sleep "$IDLE_SETTLE"
  rss_idle=$(rss_mib "$SERVER_PID")
  log "$s idle RSS: $rss_idle MiB"

  if ! "$LOADGEN" run --url "$("url_$s")" --name "$s" --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --wake-samples "$WAKE_SAMPLES" --rooms "$ROOMS" \
        --msgs-per-room "$MSGS_PER_ROOM" --initial-sync-runs "$INITIAL_RUNS" \
        --tests "$TESTS" --media-uploads "$MEDIA_UPLOADS" \
        --media-downloads "$MEDIA_DOWNLOADS" --thumb-samples "$THUMB_SAMPLES" \
        --search-messages "$SEARCH_MESSAGES" --busy-rooms "$BUSY_ROOMS" --busy-rate "$BUSY_RATE" --sliding-rooms "$SLIDING_ROOMS" \
        --json "$WORK/$s.load.json"; then
    log "--- last lines of $(server_log "$s") ---"
    tail -n 40 "$(server_log "$s")" >&2 || true
    die "loadgen failed against $s"
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || die "$s died during the load run"
  rss_after=$(rss_mib "$SERVER_PID")
  log "$s RSS after load: $rss_after MiB"
  version=$("version_$s")
  stop_server

  # Restart on the data the load run left behind (users, ~100k events, 200+ rooms).
  start_server "$s" "$port"
  restart_ms="$START_MS"
  log "$s restart with data: $restart_ms ms"
  stop_server

  cold_json=$(IFS=,; echo "${cold[*]}")
  cat >"$WORK/$s.proc.json" <<EOF
{"version": "$version", "rss_idle_mb": $rss_idle, "rss_after_mb": $rss_after, "cold_start_ms": [$cold_json], "restart_ms": $restart_ms}
EOF
  REPORT_ARGS+=(--load "$s=$WORK/$s.load.json" --proc "$s=$WORK/$s.proc.json")
done

[ -n "$JSON_OUT" ] && REPORT_ARGS+=(--json "$JSON_OUT")
"$LOADGEN" report "${REPORT_ARGS[@]}" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" --meta "host_cpus=$(nproc)" \
  --meta "duration_s=$DURATION" --meta "concurrency=$CONCURRENCY" \
  --meta "wake_samples=$WAKE_SAMPLES" --meta "rooms=$ROOMS" \
  --meta "msgs_per_room=$MSGS_PER_ROOM" --meta "initial_sync_runs=$INITIAL_RUNS" \
  --meta "cold_runs=$COLD_RUNS" --meta "tests=$TESTS" \
  --meta "media_uploads=$MEDIA_UPLOADS" --meta "media_downloads=$MEDIA_DOWNLOADS" \
  --meta "thumb_samples=$THUMB_SAMPLES" \
  --meta "search_messages=$SEARCH_MESSAGES" --meta "synapse_version=$SYNAPSE_VERSION"
FAILED=0
