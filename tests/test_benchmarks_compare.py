"""`benchmarks/compare.py`: two runs' ratios side by side, and whether each reproduced."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from compare import compare, main, ratios  # noqa: E402

RUN = """# Benchmark tables

## sorting

| network | n | groco ms | diffsort ms | speed-up vs diffsort |
|---|---|---|---|---|
| odd_even | 64 | 549.9 (545.7–598.2) | 4850.8 (3064.0–4939.6) | {odd}x (5.6–9.1) |
| bitonic | 64 | 109.4 (105.3–125.9) | 722.1 (694.6–730.3) | 6.6x (5.7–6.9) |

| stem | loss ms | step ms | share (median loss / median step) |
|---|---|---|---|
| imagenet stem | 16.8 | 505 | {share} % |

## app

| clients | API | p50 ms | queries/s |
|---|---|---|---|
| 1 | JSON route | 7 | 128.7 |

Server time per query: p50 {server} ms. Sequential p95, gradio_client / JSON route: 16.5x.
"""


def test_ratios_are_keyed_by_script_row_and_column() -> None:
    found = ratios(RUN.format(odd=8.8, share=3.33, server=5.2))
    by_label = {(section, label, column): value for (section, _, label, column), value
                in found.items()}
    assert by_label == {
        ("sorting", "odd_even | 64", "speed-up vs diffsort"): 8.8,
        ("sorting", "bitonic | 64", "speed-up vs diffsort"): 6.6,
        ("sorting", "imagenet stem", "share (median loss / median step)"): 3.33,
        ("app", "Sequential p95, gradio_client / JSON route", ""): 16.5,
    }


def test_a_ratio_moved_past_the_tolerance_is_flagged_and_the_rest_pass() -> None:
    a = ratios(RUN.format(odd=8.8, share=3.33, server=5.2))
    b = ratios(RUN.format(odd=7.0, share=3.6, server=6.1))  # -20 % and +8 %
    rows, bad = compare(a, b, tolerance=0.15)
    verdicts = {key[2]: verdict for key, _, _, verdict in rows}
    assert bad == 1
    assert verdicts["odd_even | 64"] == "-20% **outside**"
    assert verdicts["imagenet stem"] == "+8%"
    assert verdicts["Sequential p95, gradio_client / JSON route"] == "+0%"


def test_a_ratio_in_one_run_only_fails_the_comparison(tmp_path: Path, capsys) -> None:
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text(RUN.format(odd=8.8, share=3.33, server=5.2))
    second.write_text(RUN.format(odd=8.9, share=3.3, server=5.0).replace(
        "| bitonic | 64 | 109.4 (105.3–125.9) | 722.1 (694.6–730.3) | 6.6x (5.7–6.9) |\n", ""))
    assert main([str(first), str(second)]) == 1
    out = capsys.readouterr().out
    assert "in one run only" in out and "3 of 4 ratios reproduced within 15%" in out
    assert main([str(first), str(first)]) == 0
