"""The extension's badge for the statuses besides consistent and mitm_suspected (background.js under Node).

A seam like tests/test_extension_logic.py: ``tests/extension_js/harness.js`` mocks the
WebExtension APIs; the script records the badge text and colour each verdict paints.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.test_extension_logic import run

pytestmark = pytest.mark.skipif(shutil.which("node") is None and os.environ.get("PARALLAX_REQUIRE_BROWSERS") != "1",
                                reason="node is not installed (the python machine image ships Node.js)")


def test_badges_for_declared_interception_and_memory_alarms() -> None:
    r = run("t_badges.js")
    assert r["intercepted_as_expected"] == {"badge": ["i", "#9a6700"], "redirects": 0}  # shown, never blocked
    assert r["key_changed"]["badge"] == r["pin_mismatch"]["badge"] == ["!", "#cf222e"]
    assert r["insufficient"]["badge"] == ["?", "#6e7781"]
