"""Helpers for tests that run the jobs as real processes: a config dict as TOML, the job's environment, and
killing a job's whole process tree (driver, its Ray, its workers) the way a node failure would."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from fixtures_ray import KEY_ENV

__all__ = ["toml_of", "job_env", "kill_when", "embed_killed_after", "shard_workers", "run_killing_one_worker"]


def toml_of(data: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in vals.items()) + "\n"
                     for s, vals in data.items())


def job_env(key: str) -> dict:
    env = dict(os.environ, **{KEY_ENV: key, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    env.pop("RAY_ADDRESS", None)  # the job must start its own Ray, not join the test session's
    return env


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log_text: Callable[[], str],
              timeout: float = 120) -> None:
    """SIGKILL ``proc`` once ``ready()``; wait until its Ray processes are gone too (agents are killed: they
    were seen to outlive the driver by >30 s, holding no shard and sending nothing)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log_text()[-2000:]
        assert time.monotonic() < deadline, "the job did not get far enough in time"
        time.sleep(0.05)
    tree = psutil.Process(proc.pid).children(recursive=True)
    names = {}
    for p in tree:
        try:
            names[p.pid] = p.name()
        except psutil.Error:
            names[p.pid] = "?"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    agents = [p for p in tree if "Agent" in names[p.pid]]
    _, alive = psutil.wait_procs([p for p in tree if p not in agents], timeout=30)
    for p in alive + agents:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not alive, f"processes of the killed run outlived it by 30 s: {[names[p.pid] for p in alive]}"


def embed_killed_after(data: dict, tmp_path: Path, key: str, shards: int = 2) -> tuple[list[str], set[str]]:
    """``jobs/embed.py`` on config ``data`` (written to tmp_path/cfg.toml), SIGKILLed with its Ray once ``shards``
    shard files exist under the output; (the command, to rerun it; the names of the shards it finished)."""
    import sys

    out = Path(data["output"]["path"])
    (tmp_path / "cfg.toml").write_text(toml_of(data))
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "embed.py"), str(tmp_path / "cfg.toml"),
           "--no-progress"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=job_env(key), stdout=log, stderr=subprocess.STDOUT)
        try:
            kill_when(proc, lambda: len(list((out / "shards").glob("shard-*.parquet"))) >= shards,
                      lambda: (tmp_path / "first.log").read_text())
        finally:
            if proc.poll() is None:
                proc.kill()
    return cmd, {f.stem for f in (out / "shards").glob("shard-*.parquet")}


def _my_ray_processes() -> list[psutil.Process]:
    """Processes of this session's Ray (children of its raylet), never another test run's."""
    import ray

    node = ray._private.worker._global_node
    raylet = node.all_processes["raylet"][0].process.pid
    return psutil.Process(raylet).children(recursive=True)


def shard_workers() -> list[psutil.Process]:
    """The session's Ray worker processes currently running a shard task."""
    found = []
    for p in _my_ray_processes():
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "embed shard" in cmd or "shard_task" in cmd:
            found.append(p)
    return found


def run_killing_one_worker(run: Callable[[], object], going: Callable[[], bool]) -> tuple[object, list[str]]:
    """``run()`` while a thread SIGKILLs one shard worker once ``going()`` (e.g. the server has answered enough
    requests); returns run's result and the killed worker's command line (empty if none was found in time)."""
    killed: list[str] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not going():
            time.sleep(0.05)
        while not stop.is_set() and not killed:
            for p in shard_workers():
                try:
                    title = " ".join(p.cmdline()).strip()
                    p.send_signal(signal.SIGKILL)
                    killed.append(title)
                    return
                except psutil.Error:
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        result = run()
    finally:
        stop.set()
        t.join(10)
    return result, killed
