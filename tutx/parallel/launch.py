"""Launch a small multi-process ``torchrun`` job from Python and collect each rank's JSON report.

A notebook cell or a test cannot *be* a distributed job, but it can start one:
``run_torchrun("tutx.parallel.tp_demo", nproc=2)`` runs ``torchrun --nproc-per-node 2
--master-addr 127.0.0.1 --master-port <free port> -m tutx.parallel.tp_demo`` in its own process
group, waits at most ``timeout`` seconds, kills the whole group if it hangs (no process is left
behind), and returns the reports the ranks wrote with :func:`write_report`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tutx._validate import check_int, check_positive, check_str

__all__ = ["run_torchrun", "write_report", "REPORT_DIR_ENV"]

REPORT_DIR_ENV = "TUTX_REPORT_DIR"
"""Environment variable naming the folder where each rank writes ``rank<N>.json``."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_report(report: dict) -> Path | None:
    """Write this rank's ``report`` as ``rank<RANK>.json`` into ``$TUTX_REPORT_DIR`` (set by
    :func:`run_torchrun`); print it instead when the variable is not set. Returns the path."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        print(json.dumps(report))
        return None
    path = Path(folder) / f"rank{os.environ.get('RANK', '0')}.json"
    path.write_text(json.dumps(report, indent=1))
    return path


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the job's whole process group (torchrun's agent and its workers)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_torchrun(module: str, args: list[str] | tuple[str, ...] = (), nproc: int = 2, timeout: float = 120,
                 threads: int = 1) -> list[dict]:
    """Run ``python -m module *args`` as ``nproc`` ranks under torchrun; return the ranks' reports.

    ``module`` is a module name (``"tutx.parallel.tp_demo"``) or a path to a ``.py`` script;
    ``threads`` sets ``OMP_NUM_THREADS`` per rank. ``TimeoutError`` after ``timeout`` seconds and
    ``RuntimeError`` on a non-zero exit or a missing report, both with the tail of the job's output.
    """
    check_str("module", module)
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise TypeError(f"args: expected a list of str, got {args!r}")
    check_int("nproc", nproc, minimum=1)
    check_positive("timeout", timeout)
    check_int("threads", threads, minimum=1)
    target = [module] if module.endswith(".py") else ["-m", module]
    with tempfile.TemporaryDirectory(prefix="tutx-torchrun-") as folder:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **{REPORT_DIR_ENV: folder})
        source = Path(__file__).resolve().parents[2]
        if (source / "pyproject.toml").is_file():  # a source checkout: the ranks import this same tutx
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *target, *args]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: killable as a whole
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            output = proc.communicate()[0] if proc.stdout else ""
            raise TimeoutError(f"timeout: torchrun {module} still running after {timeout} s; stopped it.\n"
                               f"{output[-3000:]}") from None
        finally:
            if proc.poll() is None:  # KeyboardInterrupt or any other exit: leave nothing behind
                _stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun {module} exited with {proc.returncode}:\n{output[-3000:]}")
        reports = []
        for rank in range(nproc):
            path = Path(folder) / f"rank{rank}.json"
            if not path.is_file():
                raise RuntimeError(f"torchrun {module}: rank {rank} wrote no report:\n{output[-3000:]}")
            reports.append(json.loads(path.read_text()))
    return reports
