"""Progress output: live redraws on a terminal; in a log (not a terminal) one line per
interval with count, rate and ETA, and never a carriage return."""

import io
import subprocess
import sys

from groco import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, monkeypatch, total=40):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    bar = progress.progress_bar(total=total, desc="embedding", unit="img", file=stream)
    for _ in range(40):
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_lines_with_rate_and_eta_and_no_carriage_return(monkeypatch):
    text = _run(io.StringIO(), monkeypatch)
    lines = text.splitlines()
    assert "\r" not in text and len(lines) >= 2
    assert all(line.startswith("embedding: ") and "img/s" in line and "left" in line
               for line in lines[1:]), lines
    assert lines[-1].startswith("embedding: 40/40 img (100%)")
    assert len(lines) == len(set(lines))  # the close does not repeat the last line


def test_without_a_total_the_line_has_no_eta(monkeypatch):
    lines = _run(io.StringIO(), monkeypatch, total=None).splitlines()
    assert lines[-1].startswith("embedding: 40 img [") and "left" not in lines[-1]


def test_a_terminal_gets_a_live_bar(monkeypatch):
    text = _run(Terminal(), monkeypatch)
    assert "\r" in text


def test_the_default_interval_writes_few_lines_to_a_file(tmp_path):
    """A second of work at the default interval: the first and the last line only."""
    log = tmp_path / "log.txt"
    code = ("import time; from groco.progress import progress_bar\n"
            "bar = progress_bar(total=50, desc='work', unit='img')\n"
            "for _ in range(50):\n    time.sleep(0.02); bar.update(1)\nbar.close()\n")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", code], stderr=out, check=True, timeout=60)
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()
    assert len(lines) == 2 and lines[-1].startswith("work: 50/50 img (100%)"), lines


def test_an_index_build_logged_to_a_file_has_lines_not_frames(encoder_file, tmp_path):
    from conftest import make_collection

    images = make_collection(tmp_path / "images", classes=2, per_class=6)
    log = tmp_path / "build.log"
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, "-m", "groco.cli", "index", "build",
                                 str(images), "--encoder", str(encoder_file), "--out",
                                 str(tmp_path / "index"), "--batch-size", "4"],
                                stderr=out, stdout=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text
    bar = [line for line in text.splitlines() if line.startswith("embedding")]
    assert bar and bar[-1].startswith("embedding: 12/12 img (100%)"), text
    assert "img/s" in bar[-1] and "left" in bar[-1]
