"""Custom policy values: validation, and the `parallax check` flags that set them."""

from __future__ import annotations

import math

import pytest

from client.policy import PRESETS, get_policy
from client.cli import main
from notary.errors import InputError


def test_override_changes_only_what_is_given() -> None:
    p = PRESETS["perspectives"].with_overrides(quorum_duration=86400, max_age=None)
    assert p.quorum_duration == 86400
    assert p.max_age == PRESETS["perspectives"].max_age
    assert p.required(8) == 6  # still 0.75 of 8


@pytest.mark.parametrize("changes", [
    {"quorum_fraction": 0}, {"quorum_fraction": 1.5}, {"quorum_fraction": math.nan},
    {"min_regions": 0}, {"max_age": -1}, {"quorum_duration": -5}, {"rule": "vibes"},
])
def test_bad_custom_values_are_refused(changes: dict) -> None:
    with pytest.raises(InputError):
        PRESETS["mpic"].with_overrides(**changes)


def test_fraction_rule_rounds_up_and_never_below_one() -> None:
    p = get_policy("mpic").with_overrides(rule="fraction", quorum_fraction=0.5)
    assert [p.required(n) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]


@pytest.mark.parametrize("flag", [["--quorum-fraction", "2"], ["--quorum-fraction", "nan"], ["--min-regions", "0"],
                                  ["--quorum-duration", "-1"]])
def test_cli_refuses_bad_custom_values_with_a_usage_error(flag: list[str], tmp_path, capsys) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text('{"version": 1, "notaries": []}')
    code = main(["check", "localhost:443", "--bundle", str(bundle), *flag])
    err = capsys.readouterr().err
    assert code == 64 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
