"""Run benchmark scripts in processes forked from one that has already imported the heavy
libraries, so that each script skips their import (torch and timm alone take about 4 s on
2 cores, longer than most scripts' quick run).

Each script still gets a process of its own (its memory, ``sys.argv``, environment, working
folder, standard output and exit status, as ``python benchmarks/NAME.py ARGS`` would give
it); what it shares is the imported code, by fork, from a single-threaded server process
(:mod:`multiprocessing`'s ``forkserver``). The server imports the libraries only, it never
runs an operation, so no thread pool exists when it forks.

``python -m benchmarks --quick`` uses this; a full run starts every script in a fresh
interpreter, so no timing runs in a process that another's imports shaped.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
from pathlib import Path

PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "timm", "onnx", "onnxruntime",
           "faiss", "safetensors.torch")


def _run_script(path: str, args: list[str], env: dict[str, str], cwd: str, stdout: str,
                stderr: str) -> None:
    """The forked child: become ``python PATH ARGS`` and run it. The exit status is the
    script's (``SystemExit``), 1 on an uncaught exception, whose traceback goes to
    ``stderr``."""
    for fd, name in ((1, stdout), (2, stderr)):
        file = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [path, *args]
    sys.path.insert(0, str(Path(path).parent))
    runpy.run_path(path, run_name="__main__")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class PreloadedRunner:
    """Starts the fork server (importing :data:`PRELOAD`) on the first :meth:`run`."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))

    def run(self, argv: list[str], env: dict[str, str], cwd: Path, log_dir: Path,
            timeout: float | None) -> tuple[int, str, str]:
        """Run ``argv`` (``[python, script, *args]``; the interpreter is the server's) and
        return ``(exit status, stdout, stderr)``; -1 when it ran past ``timeout`` seconds
        and was killed."""
        log_dir.mkdir(parents=True, exist_ok=True)
        out, err = log_dir / "stdout.txt", log_dir / "stderr.txt"
        child = self._context.Process(target=_run_script,
                                      args=(argv[1], argv[2:], env, str(cwd), str(out),
                                            str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            code = -1
        else:
            code = child.exitcode if child.exitcode is not None else -1
        return code, _read(out), _read(err)
