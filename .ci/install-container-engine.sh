#!/usr/bin/env bash
# The container engine for tests/test_containers.py (`pytest -m containers`), from nothing,
# on a Debian bookworm machine, as root.  Reaches only Debian's archive and, through the
# image build, PyPI: no image registry is used (none is reachable here).
#
#   .ci/install-container-engine.sh start   install what is missing, start dockerd, build the base image
#   .ci/install-container-engine.sh stop    stop the dockerd this script started and remove what it left
#
#   what                     from
#   dockerd, docker CLI      Debian bookworm  docker.io
#   Compose v2 plugin        Debian trixie    docker-compose (downloaded into a private apt
#                            directory, its binary unpacked into $DOCKER_CONFIG/cli-plugins;
#                            the system's apt sources are not touched).  Falls back to
#                            bookworm's docker-compose v1 when v2 cannot be had.
#   base image               mmdebstrap bookworm --variant=apt (python3, python3-pip,
#                            ca-certificates, netbase, passwd) + the host's local CA
#                            certificates, `docker import`ed as the tag the Dockerfile's FROM
#                            names.  Rebuilt on every `start` (the proxy's CA differs per machine).
#
# dockerd runs with --bridge=none --iptables=false --ip-forward=false: it creates no docker0
# bridge, no iptables chain and changes no sysctl, so nothing of it can leak into the host
# namespace checks of the namespace lab.  Compose networks (br-*) exist only while a compose
# project is up; published ports go through docker-proxy on 127.0.0.1.  Image builds use the
# host network (docker-compose.yml: build.network: host), since without iptables there is no NAT.
set -euo pipefail

STATE="${PARALLAX_ENGINE_STATE:-/var/lib/parallax-ci}"
DOCKER_CONFIG="${DOCKER_CONFIG:-$HOME/.docker}"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

log() { echo "container engine: $*" >&2; }

base_tag() {  # the tag the Dockerfile's (first) FROM names
    awk 'toupper($1) == "FROM" { print $2; exit }' "$REPO/Dockerfile"
}

install_packages() {
    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    if [ "${#need[@]}" -gt 0 ]; then
        apt-get update -q >/dev/null
        # docker.io's maintainer scripts would start dockerd through /etc/init.d: keep that
        # from happening (this script starts its own, with its own flags).
        local policy=/usr/sbin/policy-rc.d made_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
        fi
        local rc=0
        apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null || rc=$?
        if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
        if [ "$rc" != 0 ]; then exit "$rc"; fi
    fi
}

install_compose() {
    local plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
    if [ -x "$plugin" ] && "$plugin" version >/dev/null 2>&1; then return 0; fi
    # A private apt directory: its own sources list, lists and cache; the system's are untouched.
    local d="$STATE/apt-trixie"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/deb" "$d/root"
    chown -R _apt "$d/lists" "$d/cache" "$d/deb" 2>/dev/null || true  # apt downloads as _apt
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$d/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
                -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o "Dir::State::status=/dev/null"
                -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
    if apt-get "${opts[@]}" -q update >/dev/null \
        && (cd "$d/deb" && rm -f ./*.deb && apt-get "${opts[@]}" -q download docker-compose >/dev/null) \
        && dpkg-deb -x "$d"/deb/docker-compose_*.deb "$d/root" \
        && [ -x "$d/root/usr/libexec/docker/cli-plugins/docker-compose" ]; then
        install -d -m 0755 "$DOCKER_CONFIG/cli-plugins"
        install -m 0755 "$d/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
    else
        log "Compose v2 could not be had from trixie; falling back to bookworm's docker-compose v1"
        command -v docker-compose >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends docker-compose >/dev/null
    fi
}

engine_up() { docker info >/dev/null 2>&1; }

start_dockerd() {
    if engine_up; then log "an engine is already running: using it (and leaving it running)"; return 0; fi
    mkdir -p "$STATE"
    # --bridge=none --iptables=false --ip-forward=false: see the header.
    setsid dockerd --pidfile "$PIDFILE" --data-root "$STATE/docker" --exec-root "$STATE/exec" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false --ip6tables=false \
        </dev/null >"$LOG" 2>&1 &
    echo "$!" >"$STATE/dockerd.started"
    for _ in $(seq 1 120); do
        engine_up && return 0
        kill -0 "$(cat "$STATE/dockerd.started")" 2>/dev/null || break
        sleep 0.5
    done
    log "dockerd did not come up; its log:"; tail -n 30 "$LOG" >&2; exit 1
}

build_base_image() {
    local tag hooks=() ours
    tag="$(base_tag)"
    # Never replace an image of that tag that did not come from here (e.g. pulled from a registry).
    if docker image inspect "$tag" >/dev/null 2>&1; then
        ours="$(docker image inspect -f '{{index .Config.Labels "org.parallax.base"}}' "$tag" 2>/dev/null || true)"
        if [ "$ours" != "mmdebstrap-bookworm" ]; then
            log "base image $tag exists and was not built here: kept as it is"; return 0
        fi
    fi
    # The host's locally added CAs (the directory update-ca-certificates reads local additions
    # from), so that pip inside the image build trusts this machine's intercepting proxy.
    if [ -d /usr/local/share/ca-certificates ]; then
        hooks+=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share')
    fi
    mmdebstrap --quiet --variant=apt --include=python3,python3-pip,ca-certificates,netbase,passwd \
        "${hooks[@]}" \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm - http://deb.debian.org/debian \
        | docker import --change 'LABEL org.parallax.base=mmdebstrap-bookworm' - "$tag" >/dev/null
    log "base image $tag: $(docker image inspect -f '{{.Size}}' "$tag") bytes"
}

stop_dockerd() {
    local started="$STATE/dockerd.started"
    if [ -f "$started" ]; then
        local pid; pid="$(cat "$started")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$started" "$PIDFILE"
    elif engine_up; then
        log "the running engine is not ours: left running"; return 0
    fi
    # Whatever an engine may leave in the host namespace (this script's dockerd creates none of
    # it, but an earlier run with other flags might have).
    ip link show docker0 >/dev/null 2>&1 && ip link del docker0 || true
    for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep '^br-' || true); do
        ip link del "$br" || true
    done
    if command -v iptables >/dev/null 2>&1; then
        for table in filter nat; do
            for jump in "FORWARD -j DOCKER-USER" "FORWARD -j DOCKER-ISOLATION-STAGE-1" \
                        "PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" \
                        "OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"; do
                # shellcheck disable=SC2086
                while iptables -t "$table" -D $jump 2>/dev/null; do :; done
            done
            for chain in DOCKER DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2; do
                iptables -t "$table" -F "$chain" 2>/dev/null && iptables -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    fi
}

case "${1:-start}" in
    start)
        [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
        t0=$(date +%s)
        install_packages
        install_compose
        start_dockerd
        t1=$(date +%s)
        build_base_image
        t2=$(date +%s)
        if docker compose version >/dev/null 2>&1; then c="$(docker compose version --short)"; else c="v1 $(docker-compose version --short)"; fi
        log "dockerd $(docker version -f '{{.Server.Version}}'), compose $c;" \
            "install+start $((t1 - t0)) s, base image $((t2 - t1)) s"
        ;;
    stop)
        stop_dockerd
        ;;
    *)
        echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
