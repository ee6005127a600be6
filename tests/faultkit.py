"""Fault injection for groco's commands: ``kill -9`` at a chosen write, from a fork server.

:class:`ForkServer` starts ``python tests/faultkit.py`` once: a process that imports
groco's CLI (and so torch, ONNX Runtime, FAISS) and then forks one child per command, so
killing a command ten times costs ten forks, not ten interpreter starts. A child runs
``groco ARGV`` exactly as the ``groco`` command does (same Typer app, same exit codes,
stdout and stderr to files).

**Kill points.** In a child, every write-side call its main thread makes is a *point*,
numbered in program order from 1: ``os.replace``/``rename``/``fsync``/``unlink``/
``truncate``/``mkdir``/``open``, ``open()``, a file object's ``write``/``truncate``/
``flush`` (stdout and stderr excepted), SQLite ``execute``/``executemany``/
``executescript``/``commit``, ``ndarray.tofile`` and FAISS ``write_index``. With
``kill_at=N`` the child sends itself ``SIGKILL`` just before point ``N`` runs: a real
``kill -9`` (no ``finally``, no flush, nothing of Python's cleanup), at a moment that is
the same on every run, so a seeded random choice of ``N`` makes CI reproducible. Without
``kill_at`` the child counts its points (a *census*); :func:`spread` then draws kill
points over ``1..count``. The point a child died at is reported by name
(``Outcome.killed_at``, e.g. ``"412 posix.replace"``).

Writes by decoding threads are not points (none of groco's writes happen there), and a
kill from outside at a random time (:meth:`ForkServer.kill`) is there for what points
cannot see (a kill inside a long C call).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_OS_WRITES = {"replace", "rename", "fsync", "fdatasync", "unlink", "remove", "rmdir",
              "mkdir", "truncate", "ftruncate", "write", "pwrite", "open", "link",
              "symlink"}
_FILE_WRITES = {"write", "writelines", "truncate", "flush"}
_SQL_WRITES = {"execute", "executemany", "executescript", "commit"}


def point_name(func: object) -> str | None:
    """``"posix.replace"``-like name of a builtin call that writes, else ``None``."""
    name = getattr(func, "__name__", "")
    owner = getattr(func, "__self__", None)
    if owner is None:
        return None
    if getattr(owner, "__name__", None) in ("posix", "nt", "os"):
        return f"os.{name}" if name in _OS_WRITES else None
    if getattr(owner, "__name__", None) == "_io" and name == "open":
        return "open"
    kind = type(owner).__name__
    if kind in ("BufferedWriter", "BufferedRandom", "FileIO", "TextIOWrapper"):
        if name in _FILE_WRITES and owner not in (sys.stdout, sys.stderr, sys.__stdout__,
                                                   sys.__stderr__):
            return f"file.{name}"
        return None
    if kind in ("Connection", "Cursor") and type(owner).__module__ == "sqlite3":
        return f"sqlite3.{name}" if name in _SQL_WRITES else None
    if kind == "ndarray" and name == "tofile":
        return "ndarray.tofile"
    if name.startswith("write_index"):
        return f"faiss.{name}"
    return None


def _install_points(kill_at: int | None, report: Path) -> callable:
    """Profile the main thread's builtin calls; returns a function giving the count."""
    count = [0]

    def profile(frame, event, arg):
        if event != "c_call":
            return
        name = point_name(arg)
        if name is None:
            return
        count[0] += 1
        if count[0] == kill_at:
            report.write_text(f"{count[0]} {name}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(profile)
    return lambda: count[0]


def _child(argv: list[str], kill_at: int | None, where: Path) -> None:
    """In the forked child: run ``groco ARGV``, maybe with kill points; never returns."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
        import traceback

        from groco.cli import app

        report = where / "points"
        points = _install_points(kill_at, report)
        try:
            app(args=argv, prog_name="groco", standalone_mode=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None
                                                                 else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.setprofile(None)
        if kill_at is None:
            report.write_text(f"{points()}\n")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve() -> None:
    """The fork server's loop: one JSON request per stdin line, one JSON reply per line."""
    import groco.cli  # noqa: F401  (everything a child needs, imported once)
    import groco.index.build  # noqa: F401
    import groco.index.repair  # noqa: F401
    import groco.index.search  # noqa: F401

    children: dict[int, float] = {}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            where = Path(request["where"])
            where.mkdir(parents=True, exist_ok=True)
            pid = os.fork()
            if pid == 0:
                _child(request["argv"], request.get("kill_at"), where)
            children[pid] = time.monotonic()
            reply = {"pid": pid}
        elif request["op"] == "wait":
            pid, deadline = request["pid"], time.monotonic() + request["timeout"]
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status = None
                    break
                time.sleep(0.005)
            children.pop(pid, None)
            reply = {"pid": pid, "status": None if status is None
                     else os.waitstatus_to_exitcode(status)}
        else:
            break
        print(json.dumps(reply), flush=True)


@dataclass
class Outcome:
    """How a child ended: ``status`` (exit code, ``-9`` when killed, ``None`` if it timed
    out), its output, its point count (a census) or the point it was killed at."""

    status: int | None
    stdout: str
    stderr: str
    points: int | None
    killed_at: str | None

    @property
    def killed(self) -> bool:
        return self.status == -signal.SIGKILL

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def clean_failure(self) -> bool:
        """Exit 1 with exactly one ``error:`` line and no traceback."""
        return (self.status == 1 and len(self.error_lines()) == 1
                and "Traceback" not in self.stderr)

    def usage_error(self) -> bool:
        """Exit 2 with one line naming the option's invalid value, and no traceback."""
        lines = [line for line in self.stderr.splitlines() if "Invalid value for" in line]
        return self.status == 2 and len(lines) == 1 and "Traceback" not in self.stderr


@dataclass
class Child:
    pid: int
    where: Path
    kill_at: int | None


class ForkServer:
    """A preloaded process that forks ``groco`` commands (see the module docstring)."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._runs = 0
        environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError("the fork server did not start")

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def spawn(self, argv: list[str | Path], kill_at: int | None = None) -> Child:
        """Start ``groco ARGV`` in a fresh fork (killed before point ``kill_at``)."""
        self._runs += 1
        where = self.workdir / f"run-{self._runs:04d}"
        reply = self._ask({"op": "spawn", "argv": [str(a) for a in argv], "kill_at": kill_at,
                           "where": str(where)})
        return Child(reply["pid"], where, kill_at)

    def kill(self, child: Child) -> None:
        """``kill -9`` from outside, now (the child may have ended already)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def wait(self, child: Child, timeout: float = 600) -> Outcome:
        status = self._ask({"op": "wait", "pid": child.pid, "timeout": timeout})["status"]

        def read(name: str) -> str:
            path = child.where / name
            return path.read_text(errors="replace") if path.exists() else ""

        points = read("points").split()
        counted = int(points[0]) if points and child.kill_at is None else None
        return Outcome(status, read("stdout"), read("stderr"), counted,
                       " ".join(points) if points and child.kill_at is not None else None)

    def run(self, argv: list[str | Path], kill_at: int | None = None,
            timeout: float = 600) -> Outcome:
        return self.wait(self.spawn(argv, kill_at), timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spread(count: int, kills: int, seed: int) -> list[int]:
    """``kills`` distinct kill points in ``1..count``, one drawn in each of ``kills`` equal
    strata (seeded: the same points on every run), so early, middle and late are all hit."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(1, count + 1, min(kills, count) + 1)
    return [int(rng.integers(int(lo), max(int(lo) + 1, int(hi))))
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


# ----------------------------------------------------------------------------- checks

QUERIES = ("class0/img001.png", "class1/img003.png")
"""Images searched for by :func:`assert_recovered` (where they are indexed)."""


def answers(index: Path, queries: list[bytes]) -> list[list[tuple[str, float]]]:
    """The top 5 (relpath, score to 4 places) of each query: the index's state, compared."""
    from groco.index.search import Searcher

    with Searcher(index) as searcher:
        return [[(r.relpath, round(r.score, 4)) for r in searcher.search_image(q, k=5)]
                for q in queries]


def assert_recovered(index: Path, images: Path, reference: Path, same_ids: bool = True) -> None:
    """Every image under ``images`` recorded once, with the status, vector (and id) it has
    in ``reference`` (a run never interrupted); the index consistent and searchable.
    Raises ``AssertionError`` saying what is wrong."""
    from conftest import assert_consistent, embeddings_by_path

    from groco.images import find_images
    from groco.index.manifest import read_manifest
    from groco.index.search import Searcher
    from groco.index.store import DB_NAME, Store

    assert_consistent(index)
    with Store(index / DB_NAME, readonly=True) as store:
        rows = [(r.path, r.status, r.id) for r in store.iter_rows()]
    with Store(reference / DB_NAME, readonly=True) as store:
        expected = [(r.path, r.status, r.id) for r in store.iter_rows()]
    paths = [p for p, _, _ in rows]
    assert len(paths) == len(set(paths)), "a file is recorded twice"
    on_disk = {p.relative_to(images).as_posix() for p in find_images(images)}
    assert set(paths) == on_disk, f"recorded != on disk: {sorted(set(paths) ^ on_disk)}"
    if same_ids:
        assert sorted(rows) == sorted(expected), "ids or statuses differ"
    else:
        assert sorted(r[:2] for r in rows) == sorted(r[:2] for r in expected), "statuses differ"
    got, want = embeddings_by_path(index), embeddings_by_path(reference)
    assert got.keys() == want.keys(), "embedded files differ"
    for path, vector in want.items():
        np.testing.assert_allclose(got[path], vector, atol=1e-5, err_msg=path)
    assert read_manifest(index)["count"] == len(want), "manifest count"
    with Searcher(index) as searcher:
        for rel in QUERIES:
            if rel in want:
                first = searcher.search_image(images / rel, k=1)[0]
                assert first.relpath == rel and abs(first.score - 1) < 1e-4, (rel, first)


TIMING_COLUMNS = ("images_per_s", "seconds")
"""Columns of a run's metrics.csv that measure the machine, not the run."""


def assert_same_run(run: Path, reference: Path, what: str = "") -> None:
    """``run`` (resumed after a kill) ends bit-identical to ``reference`` (never
    interrupted): every tensor and the metadata of the last weights, the kept weights and
    the optimiser state; the resume state; every metrics row but its timing columns.
    Raises ``AssertionError`` saying what differs."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from groco.training import checkpoint

    def metadata(path: Path) -> dict:
        with safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}

    for name in (checkpoint.WEIGHTS, checkpoint.BEST, checkpoint.STATE_TENSORS):
        left, right = load_file(str(run / name)), load_file(str(reference / name))
        assert left.keys() == right.keys(), f"{what}: {name} keys differ"
        for key in left:
            assert torch.equal(left[key], right[key]), f"{what}: {name} {key} differs"
        assert metadata(run / name) == metadata(reference / name), f"{what}: {name} metadata"
    state, expected = (json.loads((r / checkpoint.STATE).read_text()) for r in (run, reference))
    state.pop("files")  # checksums: metadata order and timing columns vary between writes
    expected.pop("files")
    assert state == expected, f"{what}: {checkpoint.STATE} differs"

    def curve(folder: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                for row in checkpoint.read_metrics(folder / checkpoint.METRICS)]

    assert curve(run) == curve(reference), f"{what}: {checkpoint.METRICS} differs"


def change(images: Path, tmp: Path) -> None:
    """What an update has to do: 2 new files, 1 new broken, 1 deleted, 1 changed, 1 touched
    (``images`` made by ``conftest.make_collection``, 2+ classes of 4+ images)."""
    import shutil

    from conftest import make_collection

    make_collection(tmp, classes=2, per_class=2, seed=9)
    shutil.copy(tmp / "class0/img000.png", images / "class0/new0.png")
    shutil.copy(tmp / "class1/img000.png", images / "class1/new1.png")
    (images / "class1/bad.png").write_bytes(b"not an image")
    (images / "class0/img002.png").unlink()
    shutil.copy(tmp / "class1/img001.png", images / "class1/img001.png")
    touched = images / "class0/img003.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))


# ----------------------------------------------------------------------------- damage

KINDS = ("meta.sqlite", "index", "manifest", "emb", "ids")
"""Files of an index directory :func:`damage_target` finds."""
HOWS = ("truncated", "header", "empty", "deleted")
"""Damage every reader must notice (``flipped``, bytes changed anywhere, is not among them:
nothing in a shard or an index file can tell a changed float from the right one)."""


def damage(path: Path, how: str, rng: np.random.Generator) -> None:
    """Damage ``path``: ``truncated`` (to 5-90 %), ``header`` (first 100 bytes random),
    ``empty``, ``deleted`` or ``flipped`` (8 random bytes anywhere set to random values)."""
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, int(size * rng.uniform(0.05, 0.9)))
    elif how in ("header", "flipped"):
        with open(path, "r+b") as f:
            if how == "header":
                f.write(rng.integers(0, 256, min(size, 100), dtype=np.uint8).tobytes())
                return
            for offset in rng.integers(0, size, 8):
                f.seek(int(offset))
                f.write(bytes([int(rng.integers(0, 256))]))
    elif how == "empty":
        os.truncate(path, 0)
    else:
        path.unlink()


def damage_target(index: Path, kind: str) -> Path:
    """The file of ``kind`` (one of :data:`KINDS`; shards: the lowest-numbered one)."""
    from groco.index.manifest import read_manifest
    from groco.index.store import DB_NAME, Store

    manifest = read_manifest(index)
    with Store(index / DB_NAME, readonly=True) as store:
        shard = min(store.referenced_shards())
    return {"meta.sqlite": index / DB_NAME, "index": index / manifest["index_file"],
            "manifest": index / "manifest.json",
            "emb": index / "shards" / f"emb-{shard:05d}.npy",
            "ids": index / "shards" / f"ids-{shard:05d}.npy"}[kind]


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
