#!/usr/bin/env bash
# Install the LOWEST versions pyproject.toml declares (every '>=' bound, pinned
# with '==' in a constraints file) into a separate venv, and run the core tests
# (pure core, verdict, vectors, loopback integration) against them.  A lower
# bound that does not really work fails here.
#   usage: .ci/lowest-deps.sh [PYTHON]   (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
VENV=${LOWEST_VENV:-.venv-lowest}
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS" "$CONSTRAINTS.log"' EXIT
"$PY" - "$CONSTRAINTS" <<'PYEOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
lines = []
for req in reqs:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][0-9.]*)(,[^;]*)?(; .+)?", req)
    if not m:
        sys.exit(f"lowest-deps: {req!r} has no '>=' lower bound")
    lines.append(f"{m.group(1)}=={m.group(3)}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("lowest-deps: " + " ".join(lines))
PYEOF
rm -rf "$VENV"
"$PY" -m venv "$VENV"
if ! "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e '.[test]' >"$CONSTRAINTS.log" 2>&1; then
  grep -v "^WARNING: Location" "$CONSTRAINTS.log" >&2
  echo "lowest-deps: the lowest declared versions cannot be installed together (raise a lower bound)" >&2
  exit 1
fi
"$VENV/bin/pip" check
# The constraints are exact pins: check they are what got installed.
"$VENV/bin/python" - "$CONSTRAINTS" <<'PYEOF'
import importlib.metadata as md, sys
bad = []
for line in open(sys.argv[1]).read().split():
    name, want = line.split("==")
    got = md.version(name)
    if tuple(int(x) for x in got.split(".")) != tuple(int(x) for x in want.split(".")) + (0,) * (got.count(".") - want.count(".")):
        bad.append(f"{name} {got} != {want}")
sys.exit("lowest-deps: not the lowest: " + ", ".join(bad) if bad else 0)
PYEOF
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_core.py tests/test_vectors.py tests/test_verdict.py tests/test_policy_custom.py \
  tests/test_bundle.py tests/test_client_verify.py tests/test_prober.py tests/test_store.py \
  tests/test_server.py tests/test_client_integration.py tests/test_keyfile.py tests/test_packaging.py \
  tests/test_serve_direct.py tests/test_connguard.py tests/test_http1.py tests/test_pool_review.py \
  tests/test_client_dnscache.py tests/test_pool_buffer.py tests/test_helper_service.py tests/test_cluster_serving.py \
  tests/test_hpke.py tests/test_ohttp_core.py tests/test_bhttp_fields.py tests/test_relay_forward.py tests/test_ohttp_relay.py \
  tests/test_freshness.py tests/test_store_schema.py tests/test_retention.py tests/test_sightings.py \
  tests/test_prober_handshake.py
