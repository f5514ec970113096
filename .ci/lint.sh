#!/usr/bin/env bash
# Static checks: mypy (--strict over notary/ and client/, config in pyproject.toml)
# and ruff (rules in pyproject.toml).  Uses the venv given (default .venv),
# installing the pinned linters of the 'lint' extra into it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! "$VENV/bin/pip" install -q -e '.[test,lint]' >"$LOG" 2>&1; then
  grep -v "^WARNING: Location" "$LOG" >&2; exit 1
fi
"$VENV/bin/python" -m mypy
"$VENV/bin/python" -m ruff check .
