#!/usr/bin/env bash
# make compose-e2e: build the image, bring the stack up with docker compose, wait for health, ask a task, tear down.
# Needs a Docker engine. Where none runs, Debian's docker.io is installed and started here (no bridge, no iptables:
# host networking only). Where python:3.11-slim cannot be pulled, a stand-in is built from Debian bookworm with
# debootstrap (with the Python headers python:3.11-slim has). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${E2E_WORK:-/tmp/conclave-e2e}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
COMPOSE="docker compose -f compose.yaml -f tests/e2e/compose.e2e.yaml"
mkdir -p "$WORK"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
  mkdir -p ~/.docker/cli-plugins
  ln -sf "$(command -v docker-compose || echo "$ROOT/.venv/bin/docker-compose")" ~/.docker/cli-plugins/docker-compose
fi
if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd (host networking only)"
  dockerd --bridge=none --iptables=false --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

if ! docker image inspect python:3.11-slim >/dev/null 2>&1 && ! timeout 60 docker pull python:3.11-slim; then
  echo "== no registry: standing in python:3.11-slim from Debian bookworm"
  if ! docker image inspect conclave-bookworm-raw >/dev/null 2>&1; then
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,libpython3-dev,ca-certificates \
      bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | docker import - conclave-bookworm-raw
  fi
  CERT=$(pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)
  mkdir -p "$WORK/base" && cp "$CERT" "$WORK/base/ca.crt"
  cat >"$WORK/base/Dockerfile" <<DOCKERFILE
FROM conclave-bookworm-raw
RUN echo "deb $MIRROR bookworm main" > /etc/apt/sources.list && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python-is-python3 curl && rm -rf /var/lib/apt/lists/* \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
COPY ca.crt /usr/local/share/ca-certificates/machine.crt
RUN cat /usr/local/share/ca-certificates/machine.crt >> /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
  docker build --network host -t python:3.11-slim "$WORK/base"
fi

# The CPU build of torch from this machine's disk, served on loopback to the build (instead of the CUDA build).
mkdir -p "$WORK/wheels"
ls "$WORK"/wheels/torch-2.13.0* >/dev/null 2>&1 || pip download --no-deps torch==2.13.0 -d "$WORK/wheels" -q
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/wheels" >/dev/null 2>&1 &
SERVER=$!
cleanup() { $COMPOSE down -v >/dev/null 2>&1 || true; kill $SERVER 2>/dev/null || true; }
trap cleanup EXIT
export PIP_FIND_LINKS="http://127.0.0.1:$PORT/"

echo "== docker compose build"
built=$(date +%s)
$COMPOSE build
echo "== built in $(( $(date +%s) - built ))s: $(docker image inspect conclave:latest --format '{{.Size}}') bytes"
echo "== docker compose up"
up=$(date +%s)
$COMPOSE up -d
for _ in $(seq 120); do
  status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5002/ready || true)
  [ "$status" = 200 ] && break
  sleep 5
done
$COMPOSE ps
[ "$status" = 200 ] || { $COMPOSE logs --tail 50; echo "orchestrator never became ready"; exit 1; }
echo "== all ready $(( $(date +%s) - up ))s after up"
for port in 5000 5001 5002; do
  ready=$(curl -s "http://127.0.0.1:$port/ready")
  echo ":$port $ready"
  # the image's g++ compiles the decode step on an x86-64 CPU with AVX2 (4-bit weights on AVX512, float16 copies
  # without), as outside a container (Dockerfile: CXX)
  if grep -qw avx2 /proc/cpuinfo && [[ "$ready" != *'"decode_step":"compiled"'* ]]; then
    $COMPOSE logs --tail 80; echo ":$port did not compile its decode step on this AVX2 CPU"; exit 1
  fi
done
echo "== the README's seed curl"
answer=$(curl -s -X POST http://127.0.0.1:5002/integrate -H 'Content-Type: application/json' \
  -d '{"task": "制定人工智能合规标准，避免人工智能伤害人类"}')
echo "$answer" | python3 -c '
import json, sys
body = json.load(sys.stdin)
print("experts consulted:", body["experts"])
print("answer:", body["response"][:400])
assert body["response"].strip() and body["experts"], body'
if $COMPOSE logs 2>&1 | grep -n Traceback; then $COMPOSE logs --tail 80; echo "a traceback in the logs"; exit 1; fi
echo "compose e2e: OK"
