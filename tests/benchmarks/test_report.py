"""The report prints a results file's table, and refuses what is not one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.report import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_results_print_as_a_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main([str(ROOT / "benchmarks" / "RESULTS.json")])
    out = capsys.readouterr().out
    assert out.startswith("| database | figure | measured | target |")
    assert "| postgres | corrupted poll -> started, 100/100 runs |" in out


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read"),
        ("not json", "is not JSON"),
        (json.dumps({}), "is not a results file"),
        (json.dumps({"databases": {"sqlite": {"lag": {}}}}), "is not a results file"),
    ],
)
def test_what_is_not_a_results_file_is_refused_clearly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    said: str,
) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit:
        main([str(path)])
    assert exit.value.code == 2
    assert said in capsys.readouterr().err
