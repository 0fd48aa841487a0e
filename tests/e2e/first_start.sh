#!/usr/bin/env bash
# make first-start (and the first stage of .ci/run): what a new user does, in an environment with the runtime
# requirements only. `make install` (what `make run` installs), the import-and-build check of harness.runtime_check,
# then the README's `make run`; waits until all three services are ready (the first start converts the GGUF and
# compiles the decode step), sends the README's seed curl and one /chat per expert, checks the answers and that no
# log holds a traceback, and stops the stack with Ctrl-C's signal. Any failure prints the services' log.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-1200}
LOG=$(mktemp -t conclave-first-start.XXXXXX.log)
export VENV
started=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - started ))s] $*"; }

if [ -e "$VENV/.installed-dev" ]; then
  echo "$VENV has the dev requirements in it: run this from a fresh clone, or with VENV=.venv-runtime" >&2
  exit 2
fi

stamp "make install ($VENV, runtime requirements only)"
make --no-print-directory install VENV="$VENV"
stamp "runtime check: every module imports and every app builds with these requirements alone"
"$VENV/bin/python" -m harness.runtime_check

stack=
stop_stack() {
  [ -n "$stack" ] || return 0
  kill -INT -- "-$stack" 2>/dev/null || true  # Ctrl-C: the signal a terminal sends the whole foreground group
  for _ in $(seq 30); do kill -0 -- "-$stack" 2>/dev/null || break; sleep 1; done
  if kill -0 -- "-$stack" 2>/dev/null; then
    echo "the stack did not stop within 30 s of Ctrl-C" >&2
    kill -KILL -- "-$stack" 2>/dev/null || true
    stack=
    return 1
  fi
  stack=
}
fail() {
  echo "first start FAILED: $*" >&2
  echo "---- the services' log ($LOG) ----" >&2
  tail -n 300 "$LOG" >&2
  stop_stack || true
  exit 1
}
trap 'stop_stack || true' EXIT

for port in 5000 5001 5002; do
  ! curl -s -o /dev/null "http://127.0.0.1:$port/health" || fail ":$port is taken by another process already"
done
stamp "make run (the README's first command)"
setsid make --no-print-directory run VENV="$VENV" >"$LOG" 2>&1 &
stack=$!
ready() {  # PORT: /ready answers 200, and the orchestrator's has found every expert
  local body
  body=$(curl -s -f "http://127.0.0.1:$1/ready") || return 1
  [ "$1" != 5002 ] || [[ "$body" == *'"experts_missing":[]'* ]]
}
for port in 5000 5001 5002; do
  until ready "$port"; do
    kill -0 "$stack" 2>/dev/null || fail "the stack exited before :$port was ready"
    [ $(( $(date +%s) - started )) -lt "$READY_TIMEOUT_S" ] || fail ":$port not ready after ${READY_TIMEOUT_S}s"
    sleep 2
  done
  stamp ":$port ready: $(curl -s "http://127.0.0.1:$port/ready")"
done

answer() {  # URL BODY FIELD: POST, expect 200 and a non-empty FIELD; print a line of it
  local out status
  out=$(mktemp)
  status=$(curl -s -o "$out" -w '%{http_code}' --max-time 600 -X POST "$1" -H 'Content-Type: application/json' \
    -d "$2") || fail "POST $1: curl failed"
  [ "$status" = 200 ] || fail "POST $1: HTTP $status $(head -c 500 "$out")"
  python3 - "$out" "$3" <<'PY' || fail "POST $1: no answer in $(head -c 500 "$out")"
import json, sys
body = json.load(open(sys.argv[1]))
text = body[sys.argv[2]].strip()
assert text, body
extra = {k: body[k] for k in ("experts", "merge", "sources", "finish_reason") if k in body}
print(f"   {text[:300]!r} {json.dumps(extra, ensure_ascii=False)[:300]}")
PY
  rm -f "$out"
}
stamp "the README's seed curl"
answer http://localhost:5002/integrate '{"task": "制定人工智能合规标准，避免人工智能伤害人类"}' response
stamp "one /chat per expert"
answer http://localhost:5000/chat '{"intent": "How does differential privacy work?"}' response
answer http://localhost:5001/chat '{"intent": "What does GDPR say about erasure?", "max_new_tokens": 200}' response

! grep -n "Traceback" "$LOG" >&2 || fail "a traceback in the services' log"
stamp "stopping the stack (Ctrl-C)"
stop_stack || fail "the stack did not stop cleanly"
for port in 5000 5001 5002; do
  ! curl -s -o /dev/null "http://127.0.0.1:$port/health" || fail ":$port still answers after the stack stopped"
done
rm -f "$LOG"
stamp "first start: OK"
