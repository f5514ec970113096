"""Deployment artefacts, validated without a container engine.

* Structural facts, asserted here with PyYAML: the Dockerfile, docker-compose.yml,
  deploy/kubernetes/*.yaml and deploy/systemd/parallax-notary.service.
* Every command line in those files is parsed with the real ``parallax`` parser.
* External validators (hadolint, docker-compose / docker compose, check-jsonschema
  with the compose-spec schema, kubernetes-validate, systemd-analyze).  A missing
  validator skips its test with the install hint, unless
  PARALLAX_REQUIRE_DEPLOY_TOOLS=1 (CI, after ``.ci/install-deploy-tools.sh``),
  where a missing validator fails.
* The image's entrypoint, exactly as written in the Dockerfile and compose file,
  run as a real process outside any container with /data, /bundle and the listen
  address remapped to a temporary directory and a free loopback port; likewise
  the compose ``bundle`` service's command and the systemd unit's ExecStart.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

if os.environ.get("PARALLAX_REQUIRE_DEPLOY_TOOLS") == "1":
    import yaml
else:
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed (needed to read docker-compose.yml and deploy/kubernetes; "
        "pip install pyyaml)")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
LAB_COMPOSE = REPO / "deploy" / "lab.compose.yml"
K8S_DIR = REPO / "deploy" / "kubernetes"
UNIT = REPO / "deploy" / "systemd" / "parallax-notary.service"
UNIT_ENV = REPO / "deploy" / "systemd" / "notary.env.example"
INSTALL_HINT = "install with: bash .ci/install-deploy-tools.sh"
REQUIRE_TOOLS = os.environ.get("PARALLAX_REQUIRE_DEPLOY_TOOLS") == "1"
PY_BIN = Path(sys.executable).parent
CONTAINER_PORT = 8443
NOTARY_UID = 10001


# -- helpers: files -------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, rest = buf.partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def dockerfile_one(instr: str) -> str:
    found = [a for i, a in dockerfile_instructions() if i == instr]
    assert found, f"Dockerfile has no {instr}"
    return found[-1]  # the effective one


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=VALUE form: {word!r}"
                env[key] = value
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose interpolation of ``${VAR:-default}`` / ``${VAR}`` with an empty host environment."""
    def sub(m: re.Match[str]) -> str:
        return m.group(2) or ""
    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}", sub, value)
    assert "$" not in value.replace("$$", ""), f"unhandled interpolation in {value!r}"
    return value.replace("$$", "$")


def notary_services(doc: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    doc = doc or compose()
    return {n: s for n, s in doc["services"].items() if "PARALLAX_NAME" in (s.get("environment") or {})}


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def container_argv(svc: dict[str, Any] | None) -> list[str]:
    """The container's argv: compose entrypoint/command override the image's ENTRYPOINT/CMD."""
    image_entry = json.loads(dockerfile_one("ENTRYPOINT"))
    image_cmd = json.loads(dockerfile_one("CMD"))
    if svc is not None and "entrypoint" in svc:
        return as_list(svc["entrypoint"]) + as_list(svc.get("command"))
    cmd = as_list(svc["command"]) if svc is not None and "command" in svc else image_cmd
    return image_entry + cmd


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def unit_directives() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def systemd_expand(cmdline: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ``${VAR}`` is one word, ``$VAR`` splits on whitespace."""
    out: list[str] = []
    for word in shlex.split(cmdline):
        if m := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            out.extend(env.get(m.group(1), "").split())
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """Parse ``parallax ARGS`` with the real CLI parser (a usage error raises)."""
    from client.cli import make_parser

    assert argv[0] == "parallax" or argv[0].endswith("/parallax"), argv
    args = make_parser().parse_args(argv[1:])
    assert args.command == "serve", argv
    return args


def subcommand_exists(*path: str) -> bool:
    from client.cli import make_parser

    parser: argparse.ArgumentParser = make_parser()
    for name in path:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or name not in subs[0].choices:
            return False
        parser = subs[0].choices[name]
    return True


def tool(name: str) -> str:
    """An external validator, from this interpreter's bin dir first (pyenv shims lie)."""
    local = PY_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        msg = f"{name} not found on PATH or in {PY_BIN}; {INSTALL_HINT}"
        if REQUIRE_TOOLS:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def parallax_exe() -> str:
    exe = PY_BIN / "parallax"
    if not exe.exists():
        found = shutil.which("parallax")
        assert found, "the parallax console script is not installed (pip install -e .)"
        return found
    return str(exe)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remap(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        assert old in text, f"expected {old!r} in {text!r}: the deploy files changed shape"
        text = text.replace(old, new)
    return text


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


# -- Dockerfile ----------------------------------------------------------------

def test_dockerfile_structure() -> None:
    instrs = dockerfile_instructions()
    names = [i for i, _ in instrs]
    assert dockerfile_one("FROM") == "python:3.11-slim"
    assert names.count("FROM") == 1

    user = dockerfile_one("USER")
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert user.split(":")[0].isdigit(), "USER must be numeric so runAsNonRoot can verify it"
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN"), "USER after the last RUN"

    assert str(CONTAINER_PORT) in dockerfile_one("EXPOSE").split()
    assert json.loads(dockerfile_one("VOLUME")) == ["/data"]

    hc = dockerfile_one("HEALTHCHECK")
    assert "CMD [" in hc, "HEALTHCHECK must use the exec form"
    hc_cmd = json.loads(hc[hc.index("CMD") + 3:])
    # python3, not python: the CI base (Debian bookworm imported as the FROM tag) has no `python`.
    assert hc_cmd[0] == "python3" and f"127.0.0.1:{CONTAINER_PORT}/healthz" in hc_cmd[-1]

    # Reproducible: dependencies come from the lock file with the versions CI tested.
    run = " ".join(args for i, args in instrs if i == "RUN")
    copies = [shlex.split(args) for i, args in instrs if i == "COPY"]
    assert ["deploy/constraints.txt", "./constraints.txt"] in copies
    assert "python3 -m pip install --no-cache-dir -c constraints.txt /src" in run

    entry = json.loads(dockerfile_one("ENTRYPOINT"))
    assert entry[:2] == ["/bin/sh", "-c"] and entry[2].startswith("exec parallax serve "), \
        "the entrypoint is `parallax serve` behind a trivial exec"
    for flag in ("--init", "--data-dir /data", f"--listen 0.0.0.0:{CONTAINER_PORT}",
                 '--export-entry "/bundle/entries/$PARALLAX_NAME.json"'):
        assert flag in entry[2]
    assert entry[2].rstrip().endswith('"$@"'), "container arguments must reach parallax"
    assert ";" not in entry[2] and "&&" not in entry[2] and "|" not in entry[2], "keep the wrapper trivial"

    env = dockerfile_env()
    assert {"PARALLAX_NAME", "PARALLAX_REGION", "PARALLAX_URL"} <= env.keys()

    # Build inputs named by COPY exist in the repo.
    for instr, args in instrs:
        if instr == "COPY":
            for src in shlex.split(args)[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} missing"


def test_dockerignore_keeps_build_inputs() -> None:
    import fnmatch

    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert ".git" in patterns and "tests" in patterns
    needed = {"pyproject.toml", "README.md", "notary", "client", "deploy/constraints.txt", "deploy"}
    for p in patterns:
        assert not p.startswith("!"), "no negations: keep the ignore list simple"
        for path in needed:
            assert not fnmatch.fnmatch(path, p.lstrip("/")), f".dockerignore pattern {p} excludes build input {path}"


def _requirement_name(text: str) -> str:
    return re.split(r"[<>=!~\[; ]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_constraints_pin_every_runtime_dependency_within_the_pyproject_bounds() -> None:
    import tomllib
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins: dict[str, Version] = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_requirement_name(name)] = Version(version)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = _requirement_name(req.name)
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name]), f"pin {name}=={pins[name]} is outside pyproject's {req.specifier}"
        # Their own runtime dependencies are pinned too (the lock is complete).
        try:
            sub = requires(req.name) or []
        except PackageNotFoundError:
            continue
        for s in sub:
            r = Requirement(s)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                assert _requirement_name(r.name) in pins, f"{r.name} (needed by {name}) is not pinned"


# -- docker-compose.yml ------------------------------------------------------------

def test_compose_three_notaries_on_separate_networks() -> None:
    doc = compose()
    notaries = notary_services(doc)
    assert len(notaries) == 3, sorted(notaries)
    names = [service_env(s)["PARALLAX_NAME"] for s in notaries.values()]
    regions = [service_env(s)["PARALLAX_REGION"] for s in notaries.values()]
    urls = [service_env(s)["PARALLAX_URL"] for s in notaries.values()]
    assert len(set(names)) == len(set(regions)) == len(set(urls)) == 3

    nets = {n: set(as_list(s.get("networks"))) for n, s in notaries.items()}
    for n, ns in nets.items():
        assert len(ns) == 1, f"{n} must be alone on its own network, has {ns}"
    all_nets = set().union(*nets.values())
    assert len(all_nets) == 3, "each notary has a network of its own"
    assert all_nets <= set(doc["networks"])
    for svc in ("bundle", "client"):
        assert set(as_list(doc["services"][svc]["networks"])) == all_nets, f"{svc} must reach every notary"
    for name, notary_svc in notaries.items():
        url = service_env(notary_svc)["PARALLAX_URL"]
        assert url == f"http://{name}:{CONTAINER_PORT}", "the default URL is the in-compose service name"


def test_compose_volumes_healthchecks_ports_restart() -> None:
    doc = compose()
    notaries = notary_services(doc)
    data_vols = []
    for name, svc in notaries.items():
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        assert "/data" in mounts and "/bundle" in mounts, name
        data_vols.append(mounts["/data"])
        assert mounts["/bundle"] == "bundle"
        assert svc.get("read_only") is True and "ALL" in svc.get("cap_drop", [])
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure")
        hc = svc.get("healthcheck") or {}
        assert not hc.get("disable") and "/healthz" in " ".join(as_list(hc.get("test"))), name
        assert svc.get("ports"), f"{name} publishes its port on loopback"
    assert len(set(data_vols)) == 3, "each notary has its own data volume"
    assert set(data_vols) | {"bundle"} <= set(doc["volumes"])
    assert not any(v.startswith(("/", ".")) for v in data_vols), "named volumes, not bind mounts"

    host_ports = []
    for name, svc in doc["services"].items():
        for p in svc.get("ports", []):
            if isinstance(p, dict):
                host_ip, published = p.get("host_ip"), p.get("published")
            else:
                parts = str(p).split(":")
                assert len(parts) == 3, f"{name}: port {p!r} must name the host address"
                host_ip, published = parts[0], parts[1]
            assert host_ip == "127.0.0.1", f"{name}: port {p!r} must bind 127.0.0.1 only"
            host_ports.append(published)
    assert len(host_ports) == len(set(host_ports))


def test_compose_bundle_service() -> None:
    doc = compose()
    bundle = doc["services"]["bundle"]
    notaries = notary_services(doc)
    deps = bundle["depends_on"]
    assert set(deps) == set(notaries)
    assert all(d["condition"] == "service_healthy" for d in deps.values())
    # Long-running (a one-shot service makes `up --wait` fail), healthy once it serves the bundle.
    assert bundle.get("restart") in ("unless-stopped", "always"), "the bundle service keeps running"
    hc = bundle.get("healthcheck") or {}
    assert not hc.get("disable") and "/bundle.json" in " ".join(as_list(hc.get("test")))
    assert bundle.get("ports") == ["127.0.0.1:8440:8080"], "the bundle is served to the host on loopback only"
    script = " ".join(container_argv(bundle))
    assert "parallax bundle merge /bundle/entries/*.json -o /bundle/bundle.json" in script
    assert "cat /bundle/bundle.json" in script, "the bundle is printed to the service's logs"
    assert "exec python3 -c" in script and script.rstrip().endswith("/bundle/bundle.json 0.0.0.0 8080"), \
        "the server is PID 1 (exec) and serves the merged file"
    for svc in notaries.values():
        assert f"/bundle/entries/{service_env(svc)['PARALLAX_NAME']}.json" in script


def test_lab_override_opts_in_narrowly() -> None:
    """deploy/lab.compose.yml is the only place a notary may probe a private range: its own lab /24."""
    import ipaddress

    assert "--allow-network" not in COMPOSE.read_text() and "--allow-network" not in DOCKERFILE.read_text()
    lab = yaml.safe_load(LAB_COMPOSE.read_text())
    main = compose()
    subnets = {name: net["ipam"]["config"][0]["subnet"] for name, net in lab["networks"].items()}
    for name in notary_services(main):
        over = lab["services"][name]
        extra = set(as_list(over["networks"])) - set(as_list(main["services"][name]["networks"]))
        assert len(extra) == 1, f"{name} joins exactly one lab network: {extra}"
        assert as_list(over["command"]) == ["--allow-network", subnets[extra.pop()]], name
    for sub in subnets.values():
        net = ipaddress.ip_network(sub)
        assert net.is_private and net.prefixlen >= 24, sub
    for name, svc in lab["services"].items():
        assert not svc.get("ports"), f"{name}: the lab publishes nothing on the host"
        if name not in main["services"]:
            assert svc.get("profiles"), f"{name} must be in a profile (never started by a plain `up`)"
    # site.lab: the real site on eu-west's and us-east's paths, the interceptor on ap-south's.
    def seen_as_site(net: str) -> set[str]:
        return {n for n, svc in lab["services"].items()
                if isinstance(svc.get("networks"), dict) and "site.lab" in
                ((svc["networks"].get(net) or {}).get("aliases") or [])}
    assert seen_as_site("lab-eu-west") == seen_as_site("lab-us-east") == seen_as_site("lab-client") == {"site"}
    assert seen_as_site("lab-ap-south") == seen_as_site("lab-intercepted") == {"interceptor"}


def test_compose_commands_parse_with_the_real_cli(tmp_path: Path) -> None:
    """Run the exact container command line with a stand-in `parallax` that prints its argv."""
    fake = tmp_path / "bin" / "parallax"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                    "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    fake.chmod(0o755)
    for svc in notary_services().values():
        env = {"PATH": f"{fake.parent}:/usr/bin:/bin", **dockerfile_env(), **service_env(svc)}
        out = subprocess.run(container_argv(svc), env=env, capture_output=True, text=True, timeout=20, check=True)
        argv = ["parallax", *json.loads(out.stdout)]
        args = parse_serve(argv)
        pname = service_env(svc)["PARALLAX_NAME"]
        assert args.init and args.data_dir == "/data" and args.listen == ("0.0.0.0", CONTAINER_PORT)
        assert args.name == pname and args.region == service_env(svc)["PARALLAX_REGION"]
        assert args.url == service_env(svc)["PARALLAX_URL"]
        assert args.export_entry == f"/bundle/entries/{pname}.json"
    # Without PARALLAX_URL the image passes no --url at all.
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", **dockerfile_env(), "PARALLAX_NAME": "x y",
           "PARALLAX_REGION": "eu-west"}
    out = subprocess.run(container_argv(None) + ["--allow-port", "any"], env=env,
                         capture_output=True, text=True, timeout=20, check=True)
    argv = json.loads(out.stdout)
    assert "--url" not in argv and argv[-2:] == ["--allow-port", "any"]
    assert parse_serve(["parallax", *argv]).export_entry == "/bundle/entries/x y.json"
    # The image has no default region: without PARALLAX_REGION, serve refuses to start.
    del env["PARALLAX_REGION"]
    out = subprocess.run(container_argv(None), env=env, capture_output=True, text=True, timeout=20, check=True)
    from client.cli._common import Exit

    with pytest.raises(Exit, match="--region"):
        parse_serve(["parallax", *json.loads(out.stdout)])


# -- Kubernetes ----------------------------------------------------------------

def test_kubernetes_manifests_structure() -> None:
    docs = k8s_docs()
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert len(sets) == 3
    assert any(d["kind"] == "Namespace" for d in docs)
    regions = set()
    for sts in sets:
        spec = sts["spec"]
        assert spec["replicas"] == 1, "one key, one replica"
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == NOTARY_UID
        assert pod.get("automountServiceAccountToken") is False
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == CONTAINER_PORT
        args = parse_serve(c["command"] + c["args"])
        assert args.init and args.data_dir == "/data" and args.listen[1] == CONTAINER_PORT
        assert args.url and args.url.startswith("https://")
        regions.add(args.region)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        (claim,) = spec["volumeClaimTemplates"]
        assert mounts["/data"] == claim["metadata"]["name"]
        assert "/tmp" in mounts, "a writable /tmp with a read-only root"
        svc = [s for s in services if s["metadata"]["name"] == spec["serviceName"]]
        assert svc, f"no Service {spec['serviceName']}"
        assert svc[0]["spec"]["selector"].items() <= labels.items()
        assert svc[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert len(regions) == 3


# -- systemd -------------------------------------------------------------------

def test_systemd_unit_hardening() -> None:
    d = unit_directives()
    s = {k: v[-1] for k, v in d["Service"].items()}
    expected = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "ProtectHome": "yes", "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
        "StateDirectory": "parallax-notary", "PrivateDevices": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert s.get(key) == value, f"{key}={s.get(key)!r}, want {value!r}"
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert d["Service"]["SystemCallFilter"][0] == "@system-service"
    assert d["Install"]["WantedBy"] == ["multi-user.target"]
    argv = systemd_expand(s["ExecStart"], env_file(UNIT_ENV))
    args = parse_serve(argv)
    assert args.init and args.data_dir == "/var/lib/" + s["StateDirectory"]
    assert args.listen[0] == "127.0.0.1", "behind a local TLS proxy only"
    assert args.url and args.url.startswith("https://")


# -- external validators ---------------------------------------------------------

def run_tool(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, **kw)


def test_hadolint_dockerfile() -> None:
    r = run_tool([tool("hadolint"), "--no-color", "--failure-threshold", "info", "Dockerfile"])
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_compose_config_renders() -> None:
    docker = shutil.which("docker")
    has_plugin = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
    if has_plugin:  # the docker CLI renders compose config without a daemon
        argv = ["docker", "compose", "-f", "docker-compose.yml", "config", "--quiet"]
    else:
        argv = [tool("docker-compose"), "-f", "docker-compose.yml", "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "PARALLAX_"))}
    r = run_tool(argv, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    # With the lab override on top (as deploy/README.md runs it).
    lab = [*argv[:-2], "-f", "deploy/lab.compose.yml", "--profile", "lab", *argv[-2:]]
    r = run_tool(lab, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_spec_schema() -> None:
    r = run_tool([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml",
                  "deploy/lab.compose.yml"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_kubernetes_validate_strict() -> None:
    files = [str(p.relative_to(REPO)) for p in sorted(K8S_DIR.glob("*.yaml"))]
    assert files
    r = run_tool([tool("kubernetes-validate"), "--strict", "--quiet", *files])
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify insists that ExecStart's binary exists: point it at this checkout's parallax.
    unit = tmp_path / UNIT.name
    unit.write_text(remap(UNIT.read_text(), {"/opt/parallax/bin/parallax": os.path.realpath(parallax_exe())}))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if str(unit) in ln or UNIT.name in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "exposure above 2.0:\n" + r.stdout[-2000:] + r.stderr


# -- the entrypoint, run for real ----------------------------------------------------

class Notary:
    """One compose notary service run outside a container with its paths remapped."""

    def __init__(self, service: str, svc: dict[str, Any], root: Path) -> None:
        self.service, self.svc, self.root = service, svc, root
        self.env = {**dockerfile_env(), **service_env(svc)}
        self.name = self.env["PARALLAX_NAME"]
        self.data = root / service / "data"
        self.bundle = root / "bundle"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = container_argv(self.svc)
        assert argv[:2] == ["/bin/sh", "-c"]
        script = remap(argv[2], {
            "--data-dir /data": f"--data-dir {shlex.quote(str(self.data))}",
            "/bundle/entries/": f"{self.bundle}/entries/",
            f"0.0.0.0:{CONTAINER_PORT}": f"127.0.0.1:{self.port}",
        })
        return [*argv[:2], script, *argv[3:]]

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, **self.env, "PATH": f"{PY_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        log = self.root / f"{self.service}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.root, start_new_session=True)

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.service} exited {self.proc.returncode}:\n{self.log()}")
            try:
                status, body = http_get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                assert status == 200
                return json.loads(body)
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.service} not healthy after {timeout}s:\n{self.log()}")
                time.sleep(0.1)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.service} ignored SIGTERM")

    def log(self) -> str:
        return (self.root / f"{self.service}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def notaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Notary]]:
    root = tmp_path_factory.mktemp("compose")
    group = {n: Notary(n, s, root) for n, s in notary_services().items()}
    try:
        for n in group.values():
            n.start()
        for n in group.values():
            n.health = n.wait_healthy()  # type: ignore[attr-defined]
        yield group
    finally:
        for n in group.values():
            n.stop()


def test_first_start_generates_key_and_writes_entry(notaries: dict[str, Notary]) -> None:
    for n in notaries.values():
        key = n.data / "notary.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
        entry = json.loads((n.bundle / "entries" / f"{n.name}.json").read_text())
        assert entry["name"] == n.name and entry["region"] == n.env["PARALLAX_REGION"]
        assert entry["url"] == n.env["PARALLAX_URL"]
        assert entry["public_key"] == (n.data / "notary.pub").read_text().strip()
        assert entry["key_id"] == n.health["key_id"]  # type: ignore[attr-defined]
        # `exec` made parallax itself the process (so it is PID 1 in the container and gets SIGTERM).
        assert n.proc is not None
        cmdline = Path(f"/proc/{n.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(cmdline[0].decode()).name not in ("sh", "dash", "bash") and b"serve" in cmdline, cmdline


def test_image_healthcheck_command_passes(notaries: dict[str, Notary]) -> None:
    hc = dockerfile_one("HEALTHCHECK")
    argv = json.loads(hc[hc.index("CMD") + 3:])
    compose_hc = as_list(notary_services()[next(iter(notaries))]["healthcheck"]["test"])
    assert compose_hc[0] == "CMD"
    for cmd in (argv, compose_hc[1:]):
        n = next(iter(notaries.values()))
        cmd = [sys.executable if c in ("python", "python3") else c for c in cmd]
        cmd[-1] = remap(cmd[-1], {f"127.0.0.1:{CONTAINER_PORT}": f"127.0.0.1:{n.port}"})
        assert subprocess.run(cmd, capture_output=True, timeout=15).returncode == 0
        dead = [*cmd[:-1], cmd[-1].replace(f"127.0.0.1:{n.port}", f"127.0.0.1:{free_port()}")]
        assert subprocess.run(dead, capture_output=True, timeout=15).returncode != 0


def test_bundle_service_merges_entries(notaries: dict[str, Notary]) -> None:
    # Part of this repository, not an external tool: missing is a failure, never a skip.
    assert subcommand_exists("bundle", "merge"), "`parallax bundle merge` is not registered (client/cli/_bundle.py)"
    from client.bundle import load_bundle

    root = next(iter(notaries.values())).root
    bundle_svc = compose()["services"]["bundle"]
    argv = container_argv(bundle_svc)
    assert argv[:2] == ["/bin/sh", "-c"]
    port = free_port()
    script = remap(argv[2], {"/bundle/": f"{root}/bundle/", "0.0.0.0 8080": f"127.0.0.1 {port}"})
    env = {**os.environ, "PATH": f"{PY_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    log = root / "bundle-service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv[:2], script, *argv[3:]], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"bundle service exited {proc.returncode}:\n{log.read_text()}"
            try:
                status, served = http_get(f"http://127.0.0.1:{port}/bundle.json", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, f"bundle service not serving:\n{log.read_text()}"
                time.sleep(0.1)
        on_disk = (root / "bundle" / "bundle.json").read_bytes()
        assert status == 200 and served == on_disk
        assert on_disk.decode().strip() in log.read_text(), "bundle printed to the logs"
        with pytest.raises(urllib.error.HTTPError) as err:
            http_get(f"http://127.0.0.1:{port}/entries/eu-west.json")
        assert err.value.code == 404, "only the bundle is served"
        # The compose healthcheck passes against it, and fails against a dead port.
        hc = as_list(bundle_svc["healthcheck"]["test"])[1:]
        hc = [sys.executable if c == "python3" else c for c in hc]
        assert subprocess.run([*hc[:-1], remap(hc[-1], {"127.0.0.1:8080": f"127.0.0.1:{port}"})],
                              capture_output=True, timeout=15).returncode == 0
        assert subprocess.run([*hc[:-1], hc[-1].replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")],
                              capture_output=True, timeout=15).returncode != 0
        # PID 1 in the container: SIGTERM (what `docker stop` sends) ends it cleanly.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, "the bundle server must exit 0 on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bundle = load_bundle(root / "bundle" / "bundle.json")
    got = {e.name: e.key_id for e in bundle.notaries}
    want = {n.name: n.health["key_id"] for n in notaries.values()}  # type: ignore[attr-defined]
    assert got == want

    # deploy/README.md's publishing flow: operator key, sign, verify.
    assert subcommand_exists("bundle", "sign"), "`parallax bundle sign` is not registered (client/cli/_bundle.py)"
    from notary.core import VerifyKey

    exe, op, signed = parallax_exe(), root / "operator", root / "bundle.signed.json"
    env = {**os.environ, "PARALLAX_KEY_PASSPHRASE": "deploy readme passphrase"}  # the README's scripted form
    for argv in ([exe, "keygen", "--encrypt", "--data-dir", str(op)],
                 [exe, "bundle", "sign", "--key-dir", str(op), "--version", "1", "--valid-for", "30",
                  str(root / "bundle" / "bundle.json"), "-o", str(signed)]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
    assert (op / "operator.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    pub = (op / "operator.pub").read_text().strip()
    verified = load_bundle(signed, operator_keys=[VerifyKey.from_b64(pub)])
    assert {e.name: e.key_id for e in verified.notaries} == want
    r = subprocess.run([exe, "bundle", "show", str(signed), "--operator-key", pub],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_restart_reuses_the_key(notaries: dict[str, Notary]) -> None:
    n = next(iter(notaries.values()))
    key_before = (n.data / "notary.key").read_bytes()
    entry_before = (n.bundle / "entries" / f"{n.name}.json").read_text()
    assert n.stop() == 0, n.log()
    n.start()
    health = n.wait_healthy()
    assert health["key_id"] == n.health["key_id"]  # type: ignore[attr-defined]
    assert (n.data / "notary.key").read_bytes() == key_before
    assert (n.bundle / "entries" / f"{n.name}.json").read_text() == entry_before


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _deny_write_execute() -> None:
    """Like systemd's MemoryDenyWriteExecute=yes, via the kernel's prctl (Linux >= 6.3)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(99)


def test_systemd_execstart_runs_with_write_xor_execute(tmp_path: Path) -> None:
    """The unit's ExecStart (env from notary.env.example), under W^X memory as the unit enforces."""
    probe = subprocess.run([sys.executable, "-c", "import os"], preexec_fn=_deny_write_execute)
    mdwe = probe.returncode == 0
    s = {k: v[-1] for k, v in unit_directives()["Service"].items()}
    port = free_port()
    cmd = remap(s["ExecStart"], {
        "/opt/parallax/bin/parallax": parallax_exe(),
        "/var/lib/parallax-notary": str(tmp_path / "state"),
        f"127.0.0.1:{CONTAINER_PORT}": f"127.0.0.1:{port}",
    })
    env_vars = env_file(UNIT_ENV)
    argv = systemd_expand(cmd, env_vars)
    env = {**os.environ, **env_vars, **dict(kv.split("=", 1) for kv in s["Environment"].split())}
    log = tmp_path / "unit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_deny_write_execute if mdwe else None)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert status == 200
        status, body = http_get(f"http://127.0.0.1:{port}/v1/notary")  # signs: exercises the crypto
        assert status == 200 and body
        assert stat.S_IMODE((tmp_path / "state" / "notary.key").stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
    if not mdwe:
        pytest.skip("ran the unit's command, but this kernel lacks PR_SET_MDWE (W^X not checked)")
