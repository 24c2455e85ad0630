"""Watch a process tree while a command runs: peak memory per process, CPU seconds of the whole tree.

``run_watched(cmd, env)`` starts ``cmd`` and samples it and every descendant (Ray's raylet, workers, the
object store...) every ``interval`` seconds with psutil. It reports the command's own peak RSS (the
driver), the largest peak of any other process (e.g. a Ray worker) with its name, and the CPU seconds of
every process seen (last sample of each: a process that exits between samples loses at most one interval).
Memory is RSS and *private* memory (RSS minus shared pages): a Ray worker that reads objects maps the shared
object store into its address space, which RSS counts although the memory belongs to the store.
"""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil

__all__ = ["Watched", "run_watched"]


@dataclass
class Watched:
    returncode: int
    seconds: float
    driver_peak_mb: float
    other_peak_mb: float
    other_peak_name: str
    cpu_seconds: float
    stdout: str = ""
    stderr: str = ""
    peaks: dict[str, float] = field(default_factory=dict)  # process name -> peak MB
    driver_private_mb: float = 0.0
    other_private_mb: float = 0.0  # the largest private memory of any other process
    other_private_name: str = ""


def _name(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
        title = cmd[0] if cmd else p.name()
        return title if title.startswith("ray::") else p.name()
    except psutil.Error:
        return "?"


def run_watched(cmd: list[str], env: dict | None = None, interval: float = 0.2, timeout: float = 3600,
                exclude: set[int] | None = None) -> Watched:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_rss: dict[int, float] = {}
    peak_private: dict[int, float] = {}
    names: dict[int, str] = {}
    cpu: dict[int, float] = {}
    stop = threading.Event()
    exclude = exclude or set()

    def sample() -> None:
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                if p.pid in exclude:
                    continue
                try:
                    with p.oneshot():
                        mem = p.memory_info()
                        rss = mem.rss / 2**20
                        peak_private[p.pid] = max(peak_private.get(p.pid, 0.0), (mem.rss - mem.shared) / 2**20)
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                        peak_rss[p.pid] = max(peak_rss.get(p.pid, 0.0), rss)
                        names.setdefault(p.pid, _name(p))
                except psutil.Error:
                    pass
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        th.join(5)
    others = {pid: mb for pid, mb in peak_rss.items() if pid != proc.pid}
    top = max(others, key=others.get) if others else None
    by_name: dict[str, float] = {}
    for pid, mb in peak_rss.items():
        by_name[names.get(pid, "?")] = max(by_name.get(names.get(pid, "?"), 0.0), mb)
    priv = {pid: mb for pid, mb in peak_private.items() if pid != proc.pid}
    top_p = max(priv, key=priv.get) if priv else None
    return Watched(proc.returncode, time.monotonic() - t0, peak_rss.get(proc.pid, 0.0),
                   others[top] if top else 0.0, names.get(top, "") if top else "", sum(cpu.values()), out, err,
                   by_name, peak_private.get(proc.pid, 0.0), priv[top_p] if top_p else 0.0,
                   names.get(top_p, "") if top_p else "")
