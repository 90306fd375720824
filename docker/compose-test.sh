#!/usr/bin/env bash
# `make compose-test`: run the two-guest docker-compose demo on a real engine
# and check its verdict. Installs Debian's docker.io and docker-compose when
# missing, starts dockerd (no bridge, no iptables: every service has
# network_mode none) when none runs, builds the debootstrap base image and the
# wheels, runs the demo, and tears down everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=daxfs-demo
STARTED_DOCKERD=""
DOCKERD_LOG=/var/tmp/daxfs-dockerd.log
export COMPOSE_PROJECT_NAME=$PROJECT
export BASE_IMAGE="${BASE_IMAGE:-daxfs-base:bookworm}"
# docker-compose 1.29 talks to the engine through docker-py; keep the API at the engine's.
export DOCKER_API_VERSION="${DOCKER_API_VERSION:-1.41}"

log() { echo "compose-test: $*"; }

cleanup() {
  local rc=$?
  if docker info >/dev/null 2>&1; then
    docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    log "stopping the dockerd it started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.2; done
  fi
  exit $rc
}
trap cleanup EXIT

need=""
command -v dockerd >/dev/null || need="$need docker.io"
command -v docker-compose >/dev/null || need="$need docker-compose"
command -v debootstrap >/dev/null || need="$need debootstrap"
if [ -n "$need" ]; then
  log "installing$need"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd --bridge=none --iptables=false"
  dockerd --bridge=none --iptables=false --ip6tables=false >"$DOCKERD_LOG" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  if ! docker info >/dev/null 2>&1; then
    log "SKIPPED: no Docker engine could be started here; dockerd said:"
    tail -5 "$DOCKERD_LOG" | sed 's/^/    /'
    STARTED_DOCKERD=""
    exit 0
  fi
fi

if [ "$BASE_IMAGE" = "daxfs-base:bookworm" ]; then
  docker/build-base.sh "$BASE_IMAGE"
fi
log "building wheels on the host"
rm -rf build/wheels
.venv/bin/pip wheel -q --wheel-dir build/wheels . >build/wheels.log 2>&1 || { cat build/wheels.log; exit 1; }
log "building the image (BASE_IMAGE=$BASE_IMAGE)"
docker-compose build -q
docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
log "running the demo"
set +e
timeout 600 docker-compose up --no-color --abort-on-container-exit --exit-code-from guest-b guest-a guest-b host
up_rc=$?
set -e
a_rc=$(docker inspect -f '{{.State.ExitCode}}' "$(docker-compose ps -q guest-a)" 2>/dev/null || echo 99)
logs=$(docker-compose logs --no-color guest-a guest-b)
a_ok=$(grep -c "guest-a\] VERDICT: PASS" <<<"$logs" || true)
b_ok=$(grep -c "guest-b\] VERDICT: PASS" <<<"$logs" || true)
if [ "$up_rc" -eq 0 ] && [ "$a_ok" -ge 1 ] && [ "$b_ok" -ge 1 ]; then
  log "PASS: both guests report VERDICT: PASS"
  exit 0
fi
log "FAIL: up=$up_rc guest-a exit=$a_rc verdicts a=$a_ok b=$b_ok"
docker-compose logs --no-color host | tail -30
exit 1
