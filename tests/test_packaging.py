"""Packaging facts that must not drift: one version, one licence, real lower bounds.

The version is defined once, in ``notary/__init__.py`` (pyproject reads it with
setuptools' ``attr:``); these tests check that every other place that repeats it
(the installed metadata, the browser extension's manifest, the deploy image tags)
agrees, and that the LICENSE file is the licence pyproject declares.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import notary

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_takes_the_version_from_notary_init() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "notary.__version__"}


def test_installed_metadata_has_the_same_version() -> None:
    # An editable install's metadata is written at install time: reinstall after a bump.
    assert importlib.metadata.version("parallax-notary") == notary.__version__


def test_extension_manifest_has_the_same_version() -> None:
    manifest = json.loads((ROOT / "client/helper/extension/manifest.json").read_text())
    assert manifest["version"] == notary.__version__


def test_deploy_image_tags_have_the_same_version() -> None:
    tags = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        tags += re.findall(r"image:\s*\S*parallax-notary:(\S+)", path.read_text())
    assert tags, "no parallax-notary image in deploy/"
    assert set(tags) == {notary.__version__}


def test_version_is_pep440_release() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", notary.__version__)


def test_license_file_is_the_declared_apache_2_0() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    assert "License :: OSI Approved :: Apache Software License" in PYPROJECT["project"]["classifiers"]


def test_python_classifiers_match_requires_python() -> None:
    low = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert low
    minors = sorted(int(m) for c in PYPROJECT["project"]["classifiers"]
                    for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$", c))
    assert minors and minors[0] == int(low.group(1))
    assert minors == list(range(minors[0], minors[-1] + 1))


def _lower_bounds() -> dict[str, str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for name, extra in PYPROJECT["project"]["optional-dependencies"].items():
        if name != "lint":  # linters are pinned exactly (==), on purpose
            reqs += extra
    out = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][0-9.]*)(,<[^;]*)?(; .+)?", req)
        assert m, f"{req!r}: every dependency needs a '>=' lower bound"
        out[m.group(1).lower()] = m.group(3)
    return out


def test_every_dependency_has_a_lower_bound() -> None:
    bounds = _lower_bounds()
    # Known floors (issue 12): ClientConnectionResetError appeared in aiohttp 3.10.6;
    # asyncio_default_fixture_loop_scope needs pytest-asyncio 0.24.
    assert tuple(int(x) for x in bounds["aiohttp"].split(".")) >= (3, 10, 6)
    assert tuple(int(x) for x in bounds["pytest-asyncio"].split(".")) >= (0, 24)


def test_linters_are_pinned() -> None:
    assert all("==" in req for req in PYPROJECT["project"]["optional-dependencies"]["lint"])
