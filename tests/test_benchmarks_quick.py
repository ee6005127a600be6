"""`python -m benchmarks --quick`: every benchmark script runs on tiny inputs and prints its
table, so none rots between the runs that fill BENCHMARKS.md. Nothing about speed: two
scripts run at once (each on one thread)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.__main__ import SCRIPTS, has_table  # noqa: E402


def test_has_table_needs_a_header_and_a_separator() -> None:
    assert has_table("text\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert not has_table("| a | b |\n")
    assert not has_table("a | b\n---\n")


@pytest.mark.slow
def test_quick_mode_runs_every_script_and_writes_their_tables(tmp_path: Path) -> None:
    out = tmp_path / "tables.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--jobs", "2",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmark tables") and "Machine: " in text and "Date: " in text
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## \w+\n|\Z)", text, re.M | re.S))
    assert list(sections) == [s.name for s in SCRIPTS]
    for script in SCRIPTS:
        body = sections[script.name]
        if script.quick is None:
            assert body.strip().startswith("Skipped: not in the quick mode"), body
        else:
            assert "(ok, " in body and has_table(body), f"{script.name}:\n{body[:2000]}"


def test_timed_runs_refuse_to_share_the_cpu() -> None:
    from benchmarks.__main__ import main

    try:
        main(["--jobs", "2", "--only", "sorting"])
    except SystemExit as refused:
        assert refused.code == 2
    else:
        raise AssertionError("--jobs 2 without --quick ran")


def test_a_preloaded_fork_runs_a_script_as_its_own_process(tmp_path: Path) -> None:
    from benchmarks.preloaded import PreloadedRunner

    script = tmp_path / "echo.py"
    script.write_text("import os, sys\n"
                      "print(sys.argv[1:], os.environ['GROCO_X'], os.getcwd())\n"
                      "print('bad input', file=sys.stderr)\n"
                      "sys.exit(3)\n")
    runner = PreloadedRunner(preload=("json",))
    code, out, err = runner.run([sys.executable, str(script), "--n", "2"],
                                {"GROCO_X": "seen"}, tmp_path, tmp_path / "logs", timeout=60)
    assert (code, out.strip(), err.strip()) == (3, f"['--n', '2'] seen {tmp_path}",
                                               "bad input")

    crash = tmp_path / "crash.py"
    crash.write_text("raise ValueError('corrupt table')\n")
    code, _, err = runner.run([sys.executable, str(crash)], {}, tmp_path, tmp_path / "c", 60)
    assert code == 1 and err.strip().endswith("ValueError: corrupt table")

    hang = tmp_path / "hang.py"
    hang.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    code, out, _ = runner.run([sys.executable, str(hang)], {}, tmp_path, tmp_path / "h", 1.0)
    assert code == -1 and out.strip() == "started"
