#!/usr/bin/env bash
# Run the core tests (pure core, verdict, vectors, loopback integration, CLI) under
# the newest Python that pyproject.toml's classifiers declare, in its own venv.
# The oldest supported Python (3.11, the machine's python3) runs the whole suite
# in .ci/run.  Interpreters come from pyenv (the machine image ships several) or
# PATH; nothing is downloaded.  Missing interpreter: a failure when
# PARALLAX_REQUIRE_PYTHONS=1 (CI), a skip with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
MINOR=$(python3 -c 'import re,tomllib; c=tomllib.load(open("pyproject.toml","rb"))["project"]["classifiers"]; print(max(int(m) for x in c for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$", x)))')
PY=""
for cand in "python3.$MINOR" /root/.pyenv/versions/3."$MINOR".*/bin/python3 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$MINOR".*/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import sys, venv; sys.exit(sys.version_info[:2] != (3, $MINOR))" 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
if [ -z "$PY" ]; then
  echo "newest-python: no Python 3.$MINOR interpreter found (pyenv or PATH)" >&2
  [ "${PARALLAX_REQUIRE_PYTHONS:-0}" = 1 ] && exit 1
  echo "newest-python: SKIPPED" >&2; exit 0
fi
VENV=${NEWEST_VENV:-.venv-py3$MINOR}
echo "newest-python: $("$PY" --version) at $PY"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! "$VENV/bin/pip" install -q -e '.[test]' >"$LOG" 2>&1; then
  grep -v "^WARNING: Location" "$LOG" >&2; exit 1
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_core.py tests/test_vectors.py tests/test_verdict.py tests/test_bundle.py \
  tests/test_client_verify.py tests/test_prober.py tests/test_server.py tests/test_client_integration.py \
  tests/test_cli_client.py tests/test_cli_notary.py tests/test_packaging.py tests/test_keyfile.py tests/test_cli_usability.py \
  tests/test_serve_direct.py tests/test_connguard.py tests/test_http1.py tests/test_pool_review.py \
  tests/test_client_dnscache.py tests/test_pool_buffer.py tests/test_helper_service.py tests/test_cluster_serving.py \
  tests/test_hpke.py tests/test_ohttp_core.py tests/test_bhttp_fields.py tests/test_relay_forward.py tests/test_ohttp_relay.py \
  tests/test_freshness.py tests/test_store_schema.py tests/test_retention.py tests/test_sightings.py \
  tests/test_prober_handshake.py
