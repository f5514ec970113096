"""The container tier: the repository's real Dockerfile and docker-compose.yml, run by a real engine.

``pytest -m containers``.  Needs root, a running Docker engine and Compose v2 (for ``up --wait``);
``.ci/install-container-engine.sh start`` provides all three on a Debian machine.  Without them the
tier skips with the reason, unless ``PARALLAX_REQUIRE_CONTAINERS=1`` (CI), where it fails.

One compose project (a unique ``-p`` name, so a user's own ``docker compose`` project is never
touched) is brought up once for the module and torn down with ``down -v`` at the end, also on
failure.  The host talks only to the ports the compose file publishes on 127.0.0.1; the
containers' own networks are the engine's.

Checks, in file order (they share the project):
* ``up -d --build --wait`` exits 0; three notaries and the bundle service are healthy;
* each notary's signed identity, fetched from its published port, verifies under its key in the
  merged bundle, which the host fetches with the command README.md documents;
* ``down`` is prompt (PID 1 handles SIGTERM: well under the 10 s stop timeout, after which the
  engine would SIGKILL) and the keys survive ``down`` + ``up`` (named volumes);
* the ``lab`` profile (deploy/lab.compose.yml): consistent_with_outliers naming ap-south (exit 0),
  and mitm_suspected (exit 1) for a client behind the interceptor;
* ``down -v`` leaves no container, network or volume of the project.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from client.bundle import Bundle, parse_bundle
from notary.core import verify_identity
from notary.errors import VerificationError

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
LAB = REPO / "deploy" / "lab.compose.yml"
PROJECT = f"parallax-ct{os.getpid()}"
HOST_PORTS = {"eu-west": 8441, "us-east": 8442, "ap-south": 8443}
BUNDLE_URL = "http://127.0.0.1:8440/bundle.json"
STOP_TIMEOUT = 10.0  # the compose file's stop_grace_period: after it the engine sends SIGKILL
NOTARIES = [f"notary-{n}" for n in HOST_PORTS]


def _run(argv: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def engine_unsupported_reason() -> str | None:
    if os.geteuid() != 0:
        return "the container tier needs root (it drives the Docker engine)"
    if not shutil.which("docker"):
        return "no docker CLI (bash .ci/install-container-engine.sh start)"
    if _run(["docker", "info"], timeout=30).returncode != 0:
        return "no running Docker engine (bash .ci/install-container-engine.sh start)"
    if _run(["docker", "compose", "version"], timeout=30).returncode != 0:
        return "no Compose v2 plugin (`docker compose`; needed for up --wait): bash .ci/install-container-engine.sh start"
    return None


def compose(*args: str, lab: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    files = ["-f", str(COMPOSE), *(["-f", str(LAB)] if lab else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return _run(["docker", "compose", "-p", PROJECT, *files, *args], timeout=timeout, env=env, cwd=str(REPO))


def must(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def health(service: str) -> str:
    cid = must(compose("ps", "-q", service, timeout=60)).stdout.strip()
    assert cid, f"no container for {service}"
    return must(_run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid])).stdout.strip()


def http_get(url: str) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), "the host side talks to loopback only"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def bundle_from_host() -> Bundle:
    status, body = http_get(BUNDLE_URL)
    assert status == 200, body
    return parse_bundle(body)


def _all_volumes() -> list[str]:
    return must(_run(["docker", "volume", "ls", "-q"])).stdout.split()


def project_objects() -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    return {
        "containers": must(_run(["docker", "ps", "-aq", "--filter", label])).stdout.split(),
        "networks": must(_run(["docker", "network", "ls", "-q", "--filter", label])).stdout.split(),
        "volumes": must(_run(["docker", "volume", "ls", "-q", "--filter", label])).stdout.split(),
    }


@pytest.fixture(scope="module")
def project() -> Iterator[dict[str, Any]]:
    reason = engine_unsupported_reason()
    if reason:
        if os.environ.get("PARALLAX_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"PARALLAX_REQUIRE_CONTAINERS=1 but the container tier cannot run: {reason}")
        pytest.skip(reason)
    state: dict[str, Any] = {"volumes_before": set(_all_volumes())}
    try:
        start = time.monotonic()
        state["up"] = compose("up", "-d", "--build", "--wait", timeout=900)
        state["up_seconds"] = time.monotonic() - start
        print(f"up -d --build --wait: exit {state['up'].returncode} in {state['up_seconds']:.1f} s")
        yield state
    finally:
        compose("--profile", "lab", "--profile", "tools", "down", "-v", "--remove-orphans", "-t", "10", lab=True)


def test_up_wait_exits_0_and_everything_is_healthy(project: dict[str, Any]) -> None:
    must(project["up"])
    for service in [*NOTARIES, "bundle"]:
        assert health(service) == "healthy", service


def test_each_notary_identity_verifies_under_the_bundle_key(project: dict[str, Any]) -> None:
    bundle = bundle_from_host()
    entries = {e.name: e for e in bundle.notaries}
    assert set(entries) == set(HOST_PORTS)
    assert len({e.key_id for e in entries.values()}) == 3, "three different keys"
    for name, port in HOST_PORTS.items():
        status, body = http_get(f"http://127.0.0.1:{port}/v1/notary")
        assert status == 200, body
        envelope = json.loads(body)
        ident = verify_identity(envelope, entries[name].verify_key)
        assert ident.name == name and ident.key_id == entries[name].key_id
        # ...and not under another notary's key (the check can fail).
        other = next(e for n, e in entries.items() if n != name)
        with pytest.raises(VerificationError):
            verify_identity(envelope, other.verify_key)


def readme_bundle_command() -> str:
    """The one command README.md gives for fetching the merged bundle on the host."""
    lines = [ln.strip() for ln in (REPO / "README.md").read_text().splitlines() if BUNDLE_URL in ln]
    assert lines, f"README.md documents no command fetching {BUNDLE_URL}"
    return lines[0]


def test_readme_command_prints_the_bundle_on_the_host(project: dict[str, Any]) -> None:
    cmd = readme_bundle_command()
    argv = shlex.split(cmd)
    if not shutil.which(argv[0]):
        if os.environ.get("PARALLAX_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"{argv[0]} is not installed")
        pytest.skip(f"{argv[0]} is not installed")
    out = must(_run(["sh", "-c", cmd]))
    bundle = parse_bundle(out.stdout.encode())
    assert {e.name for e in bundle.notaries} == set(HOST_PORTS)
    assert out.stdout.encode() == http_get(BUNDLE_URL)[1]
    assert http_get("http://127.0.0.1:8440/entries/eu-west.json")[0] == 404, "only the bundle is served"


def test_down_is_prompt_and_keys_survive_down_and_up(project: dict[str, Any]) -> None:
    old_bundle = bundle_from_host()
    before = {e.name: e.key_id for e in old_bundle.notaries}
    start = time.monotonic()
    must(compose("down", "-t", str(int(STOP_TIMEOUT))))
    took = time.monotonic() - start
    print(f"docker compose down: {took:.1f} s")
    # PID 1 of every service exits on SIGTERM; a container that ignored it would be SIGKILLed
    # only after the stop timeout.  A correctness check of signal handling, not a benchmark.
    assert took < STOP_TIMEOUT * 0.6, f"down took {took:.1f} s: some PID 1 ignores SIGTERM"
    assert not project_objects()["containers"], "down removes the containers"
    assert project_objects()["volumes"], "down (without -v) keeps the volumes"
    must(compose("up", "-d", "--wait", timeout=300))
    after = {e.name: e.key_id for e in bundle_from_host().notaries}
    assert after == before, "the keys live in the named volumes"
    old_keys = {e.name: e.verify_key for e in old_bundle.notaries}
    for name, port in HOST_PORTS.items():
        status, body = http_get(f"http://127.0.0.1:{port}/v1/notary")
        assert status == 200, body
        assert verify_identity(json.loads(body), old_keys[name]).key_id == before[name]


def _lab_check(service: str) -> tuple[int, dict[str, Any], str]:
    proc = compose("--profile", "lab", "run", "--rm", service, "check", "--wait-all", "--json", "site.lab",
                   lab=True, timeout=300)
    try:
        verdict = json.loads(proc.stdout)
    except ValueError:
        verdict = {}
    return proc.returncode, verdict, proc.stdout + proc.stderr


def test_lab_profile_gives_outlier_and_mitm_verdicts(project: dict[str, Any]) -> None:
    must(compose("--profile", "lab", "up", "-d", "--wait", lab=True, timeout=300))
    code, verdict, text = _lab_check("client")
    assert (code, verdict.get("status")) == (0, "consistent_with_outliers"), text
    assert verdict.get("outliers") == ["ap-south"], text
    assert "ap-south" in verdict.get("summary", ""), text

    code, verdict, text = _lab_check("client-intercepted")
    assert (code, verdict.get("status")) == (1, "mitm_suspected"), text


def test_down_v_leaves_no_container_network_or_volume(project: dict[str, Any]) -> None:
    assert any(project_objects().values())
    must(compose("--profile", "lab", "--profile", "tools", "down", "-v", "--remove-orphans", lab=True))
    left = project_objects()
    assert left == {"containers": [], "networks": [], "volumes": []}, left
    # Anonymous volumes carry no project label (an image VOLUME mounted by `run --rm` would stay):
    # compare the engine's whole list with the one before `up`.
    new = set(_all_volumes()) - project["volumes_before"]
    assert not new, f"volumes left behind: {sorted(new)}"
