"""What every benchmark prints: machine, command, date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def header() -> str:
    command = " ".join(["python", *sys.argv])
    today = datetime.date.today().isoformat()
    return f"Machine: {machine()}\nCommand: `{command}`\nDate: {today}\n"


def json_from_child(args: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python SCRIPT ARGS`` (``args[0]`` the script) in a fresh process, with ``env``
    added to this one's environment, and return the JSON object on the last line of its
    standard output; ``SystemExit`` naming ``what``, with the end of its standard error, when
    it fails. Benchmarks run one measurement a process this way, so that its timing and peak
    memory are its own."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; an all-zero row stays zero)."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-12)


def retrieval_figures(bank: np.ndarray, bank_labels: np.ndarray,
                      queries: np.ndarray | None = None,
                      query_labels: np.ndarray | None = None, k: int = 20,
                      temperature: float = 0.07, precision_k: int = 10,
                      chunk: int = 256, exclude_self: bool = False) -> dict[str, float]:
    """k-NN top-1, precision@``precision_k`` and mAP@R of queries against a bank (cosine).

    Rows must be L2-normalised. ``queries=None``: leave-one-out, every bank row is a query
    and never its own neighbour; ``exclude_self``: the queries are one per bank row (e.g. the
    bank's rows transformed) and query ``i`` never has row ``i`` as a neighbour. Per query
    with label ``y`` and its neighbours ranked by cosine similarity (self excluded):

    - **k-NN top-1**: :func:`groco.knn.weighted_knn_predict` (k, T; ``w = exp(s / T)``).
    - **precision@K**: the fraction of the first K neighbours labelled ``y``.
    - **mAP@R** (Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020):
      ``R`` = the number of bank rows labelled ``y`` (self excluded),
      ``rel_i`` = 1 when the i-th neighbour is labelled ``y``,
      ``P(i)`` = precision of the first i neighbours,
      ``MAP@R = (1/R) * sum_{i=1..R} P(i) * rel_i``; averaged over queries.
    """
    from groco.knn import weighted_knn_predict

    loo = queries is None or exclude_self
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    bank_labels = np.asarray(bank_labels, dtype=np.int64)
    q = bank if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    q_labels = bank_labels if loo else np.asarray(query_labels, dtype=np.int64)
    preds = weighted_knn_predict(bank, bank_labels, q, k=k, temperature=temperature,
                                 exclude_self=loo)
    counts = np.bincount(bank_labels, minlength=int(max(bank_labels.max(), q_labels.max())) + 1)
    r_all = counts[q_labels] - int(loo)
    depth = int(max(r_all.max(), precision_k))
    precision, average = [], []
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ bank.T
        rows = np.arange(len(sims))
        if loo:
            sims[rows, start + rows] = -np.inf
        top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, axis=1)
        rel = bank_labels[ranked] == q_labels[start:start + chunk, None]
        precision.append(rel[:, :precision_k].mean(axis=1))
        r = r_all[start:start + chunk]
        hits = np.cumsum(rel, axis=1)
        ranks = np.arange(1, depth + 1)
        within = ranks[None, :] <= r[:, None]
        average.append((rel * within * hits / ranks).sum(axis=1) / np.maximum(r, 1))
    return {"knn_top1": float(np.mean(preds == q_labels)),
            "precision_at_10": float(np.concatenate(precision).mean()),
            "map_at_r": float(np.concatenate(average).mean())}


def memory_status(field: str) -> int:
    """Bytes of ``field`` (``VmHWM``: this process's peak RSS; ``VmRSS``: its RSS now) from
    ``/proc/self/status``. Unlike ``ru_maxrss``, which Linux carries across ``exec`` (a
    child started by a parent holding 3 GB reports at least 3 GB), these belong to the
    process's own address space. Falls back to ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def index_of(images: Path, encoder: Path, out: Path) -> Path:
    """``out``: an index of ``images`` built with ``encoder`` (kept when already built)."""
    from groco.index.build import build_index_dir

    if not (out / "manifest.json").exists():
        build_index_dir(images, encoder, out, progress=False)
    return out


def run_limited(argv: list[str], timeout: float | None, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> tuple[int, str, str]:
    """``(exit code, standard output, standard error)`` of ``argv`` run to its end or
    stopped after ``timeout`` seconds: then the code is -1 and the output what it printed
    so far."""
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as error:
        partial = error.stdout or ""
        return -1, partial.decode(errors="replace") if isinstance(partial, bytes) else partial, ""
    return done.returncode, done.stdout, done.stderr
