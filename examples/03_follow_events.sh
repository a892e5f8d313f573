#!/usr/bin/env bash
# Follow the service's events with curl, and resume after a disconnect.
#
# Streams GET /events/stream (Server-Sent Events) with `curl -N`, printing the
# raw stream: `id:`, `event:` and `data:` lines, and `: keep-alive` comments.
# It remembers the last `id:` it saw; when the connection drops it waits and
# reconnects with `Last-Event-ID`, and the service replays every event missed
# in between, in order, before the live ones.
#
#   RECOVERY_URL=http://127.0.0.1:8000 examples/03_follow_events.sh
#
# Environment (all optional):
#   RECOVERY_URL     the service (default http://127.0.0.1:8000)
#   RECOVERY_TOKEN   a bearer token, when the service has RECOVERY_API_TOKENS
#   RUN_ID           only the events of this run
#   LAST_EVENT_ID    start after this event id (0 replays everything kept);
#                    without it the stream starts with new events only
#   MAX_EVENTS       stop after this many events (default: follow forever)
#   RETRY_SECONDS    wait before reconnecting (default 2)
# Needs bash 5 and curl 7.76 or later. Exit codes: 0 done, 1 the service
# answered with an HTTP error, 2 no curl.
set -euo pipefail

url="${RECOVERY_URL:-http://127.0.0.1:8000}"
last_id="${LAST_EVENT_ID:-}"
max_events="${MAX_EVENTS:-0}"
retry="${RETRY_SECONDS:-2}"
seen=0
curl_pid=""
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }

query=()
if [[ -n "${RUN_ID:-}" ]]; then
  query=(--data-urlencode "run_id=${RUN_ID}")
fi

# Stop the stream still open when the script ends early (MAX_EVENTS, Ctrl-C).
trap 'if [[ -n "$curl_pid" ]]; then kill "$curl_pid" 2>/dev/null || true; fi' EXIT

open_stream() {
  local headers=(-H "Accept: text/event-stream")
  if [[ -n "$last_id" ]]; then
    headers+=(-H "Last-Event-ID: ${last_id}")
  fi
  if [[ -n "${RECOVERY_TOKEN:-}" ]]; then
    headers+=(-H "Authorization: Bearer ${RECOVERY_TOKEN}")
  fi
  # -G sends --data-urlencode as the query; an HTTP error ends curl with 22.
  exec 3< <(exec curl -sS -N -G --fail-with-body "${headers[@]}" "${query[@]}" \
    "${url}/events/stream")
  curl_pid=$!
}

read_stream() {
  local line has_id=""
  while IFS= read -r line <&3; do
    line="${line%$'\r'}"
    printf '%s\n' "$line"
    case "$line" in
      id:*)
        last_id="${line#id:}"
        last_id="${last_id# }"
        has_id=1
        ;;
      "")
        # A blank line ends a message: count those that carried an id.
        if [[ -n "$has_id" ]]; then
          has_id=""
          seen=$((seen + 1))
          if ((max_events > 0 && seen >= max_events)); then
            exit 0
          fi
        fi
        ;;
    esac
  done
}

while true; do
  open_stream
  read_stream
  exec 3<&-
  status=0
  wait "$curl_pid" || status=$?
  curl_pid=""
  if ((status == 22)); then
    echo "# the service answered with an HTTP error" >&2
    exit 1
  fi
  echo "# disconnected; resuming after event ${last_id:-none} in ${retry} s" >&2
  sleep "$retry"
done
