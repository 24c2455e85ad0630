"""One scheduled refresh (what a cron job or a KubeRay RayCronJob runs each night): embed a delta of the last
finished night into a new folder under ROOT and apply it in place to the collection behind the alias.

    jinabatch refresh CONFIG --root ROOT [--night NAME] [--no-progress]

ROOT (a folder or s3:// prefix) holds one output per night (NAME defaults to the UTC date, YYYYMMDD) and
``_latest.json``, which names the last night whose embed finished. Each run:

    1. loads that last night again — a no-op when the collection holds it already, the catch-up when its load
       failed (a delta is only applied onto the state it was made against);
    2. embeds the corpus into ROOT/NAME with output.previous = that night (the first run: a full output);
    3. points _latest.json at ROOT/NAME; loads it (in place for a delta, a new collection for the first).

A night that fails anywhere leaves the alias on a verified state; rerunning the same command finishes it (the
embed resumes, the load finishes a killed in-place apply). Prints one JSON line: the night, its chain record and
its load report. Exit code 0, or 1 with a one-line reason.

One refresh of a ROOT at a time (two would race on ``_latest.json`` and on the collection): a run holds a lease,
``ROOT/_refresh.lock.json`` (who, which night, when), renewed every ``RENEW_S`` seconds and deleted at the end. A
run that finds a lease renewed less than ``LEASE_S`` seconds ago stops at once, naming it; an older one is a dead
run's and is taken over. Both runs write the lease through the same storage, and the winner is the one whose write
is read back after ``SETTLE_S`` seconds, so this works on ``s3://`` too (best effort: two starts within a fraction
of a second of each other could both read back their own write only if the store reordered them).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from .common import add_config, config_of, parser, run_main, setup_logging

__all__ = ["main", "LATEST", "LOCK", "lease"]

LATEST = "_latest.json"
LOCK = "_refresh.lock.json"
LEASE_S = 600.0  # a lease not renewed for this long is a dead run's
RENEW_S = 60.0
SETTLE_S = 2.0  # between writing the lease and reading it back
log = logging.getLogger("jinabatch.refresh")


@contextlib.contextmanager
def lease(root, night: str, *, lease_s: float = LEASE_S, renew_s: float = RENEW_S,
          settle_s: float = SETTLE_S) -> Iterator[dict]:
    """Hold ``root``'s refresh lease (``LOCK``) while the block runs; JinaBatchError if another run holds it."""
    from ..errors import JinaBatchError

    def refuse(held: dict, why: str) -> JinaBatchError:
        age = time.time() - float(held.get("renewed", 0))
        return JinaBatchError(f"{root.uri_of(LOCK)}: {why} (night {held.get('night')!r}, {held.get('owner')}, renewed "
                              f"{age:.0f}s ago); two refreshes of one root would race on {LATEST} — wait for it to "
                              f"end, or delete that file if that run is dead (a lease not renewed for {lease_s:g}s is "
                              "taken over)")

    held = root.read_json(LOCK)
    if held and time.time() - float(held.get("renewed", 0)) < lease_s:
        raise refuse(held, "another refresh of this root is running")
    if held:
        log.warning("%s: taking over the lease of a refresh not heard of for %.0fs (%s)", root.uri_of(LOCK),
                    time.time() - float(held.get("renewed", 0)), held.get("owner"))
    now = time.time()
    me = {"owner": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", "night": night, "started": now,
          "renewed": now}
    root.write_json(LOCK, me)
    time.sleep(settle_s)
    back = root.read_json(LOCK) or {}
    if back.get("owner") != me["owner"]:
        raise refuse(back, "another refresh of this root started at the same time")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_s):
            try:
                root.write_json(LOCK, {**me, "renewed": time.time()})
            except Exception as e:  # a missed renewal only shortens the lease
                log.warning("could not renew %s: %s", root.uri_of(LOCK), e)

    t = threading.Thread(target=renew, name="refresh-lease", daemon=True)
    t.start()
    try:
        yield me
    finally:
        stop.set()
        t.join()
        if (root.read_json(LOCK) or {}).get("owner") == me["owner"]:
            root.delete(LOCK)


def _previous(latest: str | None, out_uri: str, settings) -> str | None:
    """The output tonight's is a delta of: the last finished night (``latest``), or — rerunning a night that
    finished — its own previous."""
    from ..embed.chain import read_chain
    from ..storage import Storage

    if latest != out_uri:
        return latest
    rec = read_chain(Storage.open(out_uri, settings))
    return rec.of_output.uri if rec is not None and rec.of_output is not None else None


def _catch_up(cfg, progress: bool) -> None:
    """Load ``cfg``'s output (the last finished night) unless the alias holds it: a delta in place (a no-op when
    held), a full output only when the alias serves something else (a rerun would build a new collection)."""
    from ..embed.chain import read_chain
    from ..load.inplace import held_state
    from ..load.milvus import connect
    from ..load.stage import run_load
    from ..storage import Storage

    rec = read_chain(Storage.open(cfg.output.path, cfg.storage))
    with connect(cfg.milvus, cfg.storage) as target:
        if rec is not None and rec.kind == "full" and held_state(target, cfg.milvus.collection) == rec.state:
            return
        caught = run_load(cfg, progress=progress, target=target)
    log.info("catch-up load of %s: %s", cfg.output.path, caught.how)


def refresh(cfg, root_uri: str, night: str, progress: bool) -> dict:
    """One night under ``root_uri`` (see the module docstring), holding the root's lease; what it did."""
    from ..storage import Storage

    root = Storage.open(root_uri, cfg.storage)
    with lease(root, night):
        return _night(cfg, root, night, progress)


def _night(cfg, root, night: str, progress: bool) -> dict:
    from ..embed.driver import run_embed
    from ..errors import JinaBatchError
    from ..load.stage import run_load

    out_uri = root.uri_of(night)
    latest = (root.read_json(LATEST) or {}).get("uri")
    prev = _previous(latest, out_uri, cfg.storage)
    rerun = latest == out_uri  # tonight's embed finished before: no catch-up
    bars = progress and sys.stderr.isatty()  # the loads' tqdm bars: on a terminal only (cron logs get lines)
    if prev is not None and not rerun:  # catch up: a night whose load failed is applied before tonight's delta of it
        _catch_up(cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": prev})}), bars)
    tonight = cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": out_uri, "previous": prev})})
    rep = run_embed(tonight, progress=progress)
    if not rep.finished:
        raise JinaBatchError(f"{out_uri}: the embed did not finish ({rep.shards_failed} shard(s) failed); the alias "
                             "still serves the last verified state — rerun the same command to finish the night")
    root.write_json(LATEST, {"uri": out_uri, "id": rep.chain.id if rep.chain else ""})
    load = run_load(tonight, progress=bars)
    return {"night": out_uri, "previous": prev, "chain": rep.chain.to_json() if rep.chain else None,
            "load": load.to_json()}


def main(argv: list[str] | None = None) -> int:
    """``jinabatch refresh ARGS``; returns the exit code."""
    ap = parser("refresh", __doc__)
    add_config(ap)
    ap.add_argument("--root", required=True, help="folder or s3:// prefix holding one output per night")
    ap.add_argument("--night", help="this night's folder name under ROOT (default: the UTC date, YYYYMMDD)")
    ap.add_argument("--no-progress", action="store_true", help="log lines instead of bars")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        cfg = config_of(args)
        night = args.night or time.strftime("%Y%m%d", time.gmtime())
        print(json.dumps(refresh(cfg, args.root, night, progress=not args.no_progress)))
        return 0

    return run_main(go)
