#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Runs fs_smoke.py (e2b==2.63.0 in debug mode) against a real hearth-envd on port
# 49983 inside a private network namespace, as root:
#   PYTHON=/tmp/venv/bin/python crates/hearth-envd/tests/sdk/fs_smoke.sh target/debug/hearth-envd
set -euo pipefail
if [[ "${1:-}" != "--inside" ]]; then
    exec unshare -n "$0" --inside "$(realpath "${1:?usage: fs_smoke.sh <hearth-envd binary>}")"
fi
BIN=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(mktemp -d)
trap 'kill $ENVD 2>/dev/null; wait $ENVD 2>/dev/null; rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/etc" "$ROOT/home/user"
chown 1000:1000 "$ROOT/home/user"
printf 'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::%s/home/user:/bin/bash\n' "$ROOT" > "$ROOT/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$ROOT/etc/group"
ip link set lo up
"$BIN" --root "$ROOT" --log-level info 2>"$ROOT/envd.log" &
ENVD=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:49983/health && break; sleep 0.1; done
E2B_DEBUG=true SMOKE_HOME="$ROOT/home/user" timeout 300 "${PYTHON:-python3}" "$HERE/fs_smoke.py"
