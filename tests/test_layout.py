"""Layering rules that the package structure promises (STYLE.md).

- ``notary`` never imports ``client`` (the CLI that composes both lives in ``client/cli/``);
- ``notary.core`` imports no I/O or clock module (asyncio, aiohttp, socket, ssl, time, datetime's now).
Checked on the real source with :mod:`ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("notary"), ids=lambda p: str(p.relative_to(ROOT)))
def test_notary_does_not_import_client(path: Path) -> None:
    bad = {m for m in _imports(path) if m == "client" or m.startswith("client.")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


FORBIDDEN_IN_CORE = ("asyncio", "aiohttp", "socket", "ssl", "time", "selectors", "sqlite3")


@pytest.mark.parametrize("path", _modules("notary/core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_is_pure(path: Path) -> None:
    bad = {m for m in _imports(path) if m.split(".")[0] in FORBIDDEN_IN_CORE}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_checks_see_the_code() -> None:
    # The parametrised tests above would pass vacuously on an empty glob.
    assert len(_modules("notary")) > 10 and len(_modules("notary/core")) > 5
    assert "client" in {m.split(".")[0] for m in _imports(ROOT / "client" / "cli" / "__init__.py")}
