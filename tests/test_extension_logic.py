"""The extension's background logic, run unmodified under Node with mocked WebExtension APIs.

A seam: there is no Firefox in this tier, so ``tests/extension_js/harness.js``
mocks ``browser.*``; the Chromium tier (tests/browser) runs the real browser.
These cover the blocking option's "Proceed anyway" rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "extension_js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None and os.environ.get("PARALLAX_REQUIRE_BROWSERS") != "1",
                                reason="node is not installed (the python machine image ships Node.js)")


def run(script: str) -> dict:
    assert NODE is not None, "node is required here (PARALLAX_REQUIRE_BROWSERS=1)"
    p = subprocess.run([NODE, str(HERE / script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_firefox_blocking_cancels_then_honours_proceed() -> None:
    r = run("t_firefox_bypass.js")
    assert r["first"] == {"cancel": True}
    assert r["proceed"] == {"ok": True}
    assert r["second"] == {}  # the user chose to proceed: not cancelled again


def test_a_page_cannot_pre_approve_a_site() -> None:
    r = run("t_preemptive.js")
    assert r["proceed"]["ok"] is False
    assert r["status"] == "mitm_suspected"
    assert r["redirects"] == 1 and r["rules"] == 1  # the later interception is still blocked
