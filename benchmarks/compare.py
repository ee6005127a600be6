"""Do two runs of ``python -m benchmarks`` agree? Every ratio of one tables file beside the
same ratio of another, with the relative change.

    python -m benchmarks --only sorting encoder --out .bench/run-1.md
    python -m benchmarks --only sorting encoder --out .bench/run-2.md
    python benchmarks/compare.py .bench/run-1.md .bench/run-2.md            # ±15 %
    python benchmarks/compare.py .bench/run-1.md .bench/run-2.md --tolerance 0.1

A ratio is a table cell whose figure is followed by ``x`` (``8.8x (5.6–9.1)`` reads 8.8),
a cell of a column named ``share`` (``3.33 %``), or a sentence of the form
``...: 16.5x.``. Cells are matched by the script's section (``## name`` of the runner),
the table's header, the row's label (its cells up to the first measured figure, one with a
decimal point) and the column's header. The change is ``b / a − 1``; a ratio is
reproduced when ``|b / a − 1| ≤ tolerance``. Exits 1 when a ratio is not reproduced or is
missing from either file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

RATIO = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)x\b")
PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
SENTENCE = re.compile(r"(?:^|\.\s)\s*(?P<label>[^.:|]+?):\s*(?P<value>\d+(?:\.\d+)?)x\.?\s*$")
MEASURED = re.compile(r"^\d+\.\d+")
Key = tuple[str, str, str, str]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def ratios(text: str) -> dict[Key, float]:
    """Every ratio in a tables file: ``(section, table header, row label, column) → value``."""
    found: dict[Key, float] = {}
    section, header = "", ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("## "):
            section, header = line[3:].strip(), ""
            continue
        if stripped.startswith("|"):
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if following.startswith("|-"):
                header = stripped
                continue
            if stripped.startswith("|-") or not header:
                continue
            columns, cells = _cells(header), _cells(stripped)
            first_measured = next((j for j, c in enumerate(cells) if j > 0 and (
                MEASURED.match(c) or RATIO.search(c))), len(cells))
            label = " | ".join(cells[:first_measured])
            for column, cell in zip(columns, cells, strict=False):
                match = RATIO.search(cell)
                if match is None and "share" in column.lower():
                    match = PERCENT.search(cell)
                if match:
                    found[section, header, label, column] = float(match.group(1))
            continue
        sentence = SENTENCE.search(stripped)
        if sentence:
            found[section, "", sentence["label"], ""] = float(sentence["value"])
    return found


def compare(a: dict[Key, float], b: dict[Key, float], tolerance: float
            ) -> tuple[list[tuple[Key, float | None, float | None, str]], int]:
    """Rows ``(key, a, b, verdict)`` in ``a``'s order then ``b``'s extras, and the number of
    ratios not reproduced (outside ``tolerance``, or in one file only). A ratio of 1.00 in
    both files (a table's baseline) is left out."""
    rows, bad = [], 0
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        if x is not None and y is not None and x == y == 1.0:
            continue
        if x is None or y is None:
            rows.append((key, x, y, "in one run only"))
            bad += 1
            continue
        change = y / x - 1 if x else float("inf")
        ok = abs(change) <= tolerance
        bad += not ok
        rows.append((key, x, y, f"{change:+.0%}" + ("" if ok else " **outside**")))
    return rows, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="tables file of one run")
    parser.add_argument("second", type=Path, help="tables file of the rerun")
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="largest relative change that counts as reproduced [0.15]")
    args = parser.parse_args(argv)
    for path in (args.first, args.second):
        if not path.is_file():
            parser.error(f"{path}: no such file")
    rows, bad = compare(ratios(args.first.read_text()), ratios(args.second.read_text()),
                        args.tolerance)
    if not rows:
        parser.error("no ratios found in either file")
    print(f"Ratios of {args.first} (a) and {args.second} (b); reproduced when |b/a - 1| <= "
          f"{args.tolerance:.0%}.\n")
    print("| script | row | column | a | b | change |")
    print("|---|---|---|---|---|---|")
    for (section, _, label, column), x, y, verdict in rows:
        shown = [f"{v:g}" if v is not None else "-" for v in (x, y)]
        print(f"| {section} | {label} | {column} | {shown[0]} | {shown[1]} | {verdict} |")
    print(f"\n{len(rows) - bad} of {len(rows)} ratios reproduced within {args.tolerance:.0%}.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
