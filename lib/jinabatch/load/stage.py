"""The load stage: embed output folder → a new, verified Milvus collection → the alias swapped onto it.

One readable pass (``run_load``)::

    read_output (check report + shards, size the schema)     nothing touched yet: bad input fails here
                                                             (a local folder or an s3:// prefix)
    connect (start or reuse the embedded server, on local disk or on milvus.bucket)
    layout  carried columns: typed fields, nullable where the server has nullable fields (Milvus ≥ 2.5, Lite);
            else a column holding nulls is a key of the dynamic field (jinabatch.load.target)
    create  {alias}__{model}_{dims}d_{stamp}                  a new physical collection every load
    fill    bulk import (server) | batched upsert (Lite)      mode = auto picks by what the server has
            the server reads the shards where they are, or copies in its bucket / on its disk
            (jinabatch.load.importfiles); dynamic-field keys: copies with a $meta column (load.staging)
    index + load                                              index built after the data is in
    verify  count(*) == rows_embedded; ids sampled over every shard and row group (seeded: the seed is in
            the report): vectors and carried values == the shard's
    swap    alter_alias / create_alias                        atomic: queries never see a partial load
    tidy    remove the copies made for the import; release the previous collection; keep keep_previous
            verified ones behind it, drop everything else

A collection is *verified* when it is on the chain alias target → its ``jinabatch.previous`` → ... (the
alias only moves onto verified loads, and ``previous`` is written at creation, which Milvus 2.3 keeps
across restarts where it drops later property changes).

Anything failing before the swap drops the new collection, removes the import copies and re-raises: the
alias stays where it was. ``rollback=True`` instead points the alias at the ``previous`` of the
current one. Both write ``{output.path}/_load_report.json`` (a local folder or the s3:// prefix).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import Any

from tqdm import tqdm
from pymilvus.exceptions import MilvusException

from ..config import Config, MilvusSettings
from ..errors import ConfigError, LoadError, StorageError
from ..observe.report import LoadReport
from ..observe.report_html import write_report_html
from ..storage import Storage
from ..embed.chain import read_chain
from ..observe.records import LedgerEntry
from .importfiles import ImportFiles
from .inplace import apply_chain, undo_delta
from .ledger import Ledger
from .milvus import (
    PROP,
    Target,
    alias_target,
    bulk_import,
    check_alias_free,
    connect,
    error_reason,
    physical_name,
    physicals,
    point_alias,
    upsert_shards,
    verified_chain,
)
from .schema import VECTOR_FIELD, LoadInput, build_schema, read_output
from .target import (
    BULK,
    BULK_COPIES,
    Layout,
    ServerInfo,
    choose_layout,
    fill_mode,
    server_info,
)
from .verify import verify

__all__ = ["LoadReport", "run_load"]

log = logging.getLogger(__name__)


def run_load(config: Config, *, rollback: bool = False, progress: bool = True,
             target: Target | None = None, full: bool = False) -> LoadReport:
    """Load ``config.output.path`` into Milvus behind the alias ``config.milvus.collection`` (or roll back).

    A delta (``embed.chain``) is applied in place to the collection behind the alias (``load.inplace``); with
    ``full`` its chain is folded into one output (``embed.compact``, beside it) and loaded into a new collection.
    A rollback undoes the last in-place load, or else points the alias back at the previous collection.

    ``target``: an open ``jinabatch.load.milvus.connect(config.milvus)`` to reuse (e.g. load then search on
    one embedded server); by default the stage connects — and starts the embedded server — itself.
    """
    ms = config.milvus
    out = Storage.open(config.output.path, config.storage)
    t0 = time.monotonic()
    chain = None if rollback else read_chain(out)
    in_place = chain is not None and chain.kind == "delta" and not full
    if chain is not None and chain.kind == "delta" and full:  # the chain folded into one output, loaded whole
        inp = read_output(_compacted(config, out, chain))
    else:
        inp = None if rollback or in_place else read_output(out)
    with contextlib.nullcontext(target) if target is not None else connect(ms, config.storage) as target:
        try:
            if rollback:
                report = undo_delta(target, ms, config.storage) or _rollback(target, ms.collection)
            elif in_place:
                report = apply_chain(target, ms, out, chain, config.storage, progress)
            else:
                report = _load(target, inp, ms, progress)
        except MilvusException as e:  # what Milvus refused, in one line with what to do (not a traceback)
            what = "the rollback" if rollback else f"applying {out.uri} in place" if in_place else f"loading {out.uri}"
            raise LoadError(f"{what} (alias {ms.collection!r} at {target.uri}) failed: {error_reason(e)}; the alias "
                            "serves the last verified state (an in-place write left half-done is marked pending and "
                            "finished by the rerun) — fix the cause and rerun") from e
    report.seconds = round(time.monotonic() - t0, 3)
    report.uri = target.uri
    report.write(out)
    _write_html(out)
    return report


def _compacted(config: Config, out: Storage, chain) -> Storage:
    """The compaction of ``out``'s chain beside it (made now unless one of this very chain is there)."""
    from ..embed.compact import compact

    dest = Storage.open(out.uri.rstrip("/") + "-compacted", config.storage)
    have = read_chain(dest)
    if have is None or have.compacted_from is None or have.compacted_from.id != chain.id:
        if have is not None:
            raise LoadError(f"{dest.uri} holds another output; move it away to load {out.uri} with --full")
        compact(config, dest.uri)
    return dest


def _props(ms: MilvusSettings, inp: LoadInput, alias: str, previous: str, layout: Layout) -> dict[str, str]:
    return {PROP + "alias": alias, PROP + "model": inp.model, PROP + "task": inp.task or "",
            PROP + "dimensions": str(inp.dim), PROP + "id_column": inp.id_field.name,
            PROP + "columns": json.dumps([c.name for c in inp.columns]), PROP + "rows": str(inp.rows),
            PROP + "dynamic": json.dumps(list(layout.dynamic)),
            PROP + "metric": ms.index.metric, PROP + "fingerprint": inp.fingerprint or "",
            PROP + "embedding": json.dumps(inp.report.embedding, sort_keys=True),  # model, width, task, fields sent
            PROP + "source": inp.uri, PROP + "previous": previous}


def _create(client, name: str, inp: LoadInput, ms: MilvusSettings, alias: str, previous: str,
            info: ServerInfo) -> Layout:
    """Create the collection for the layout ``info`` allows; if the server silently dropped ``nullable``
    (Milvus 2.3.5 does, and would then import a null as 0 or ""), recreate it without nullable fields."""
    nulls = {c.name: c.nulls for c in inp.columns}

    def create(layout: Layout) -> None:  # all properties at creation: 2.3 loses later changes across a restart
        client.create_collection(name, schema=build_schema(inp, f"jinabatch load of {inp.uri}", layout),
                                 properties=_props(ms, inp, alias, previous, layout))

    layout = choose_layout(nulls, info)
    create(layout)
    if layout.nullable:
        fields = client.describe_collection(name).get("fields", [])
        if not all(f.get("nullable") for f in fields if f["name"] in layout.typed):
            log.warning("%s did not keep nullable fields; carried columns holding nulls go to the dynamic field",
                        info.describe())
            client.drop_collection(name)
            layout = choose_layout(nulls, replace(info, nullable=False))
            create(layout)
    return layout


def _free_name(client, alias: str, inp: LoadInput) -> str:
    """A new physical collection's name for this load (one not taken: two loads in one millisecond)."""
    name = physical_name(alias, inp.model, inp.dim)
    while client.has_collection(name):
        time.sleep(0.002)
        name = physical_name(alias, inp.model, inp.dim)
    return name


class _Phases:
    """Each step's seconds, in order: ``mark(name)`` closes the step that ran since the previous mark."""

    def __init__(self):
        self.phases: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append({"phase": name, "seconds": round(now - self._last, 3)})
        self._last = now


def _load(target: Target, inp: LoadInput, ms: MilvusSettings, progress: bool) -> LoadReport:
    client, alias = target.client, ms.collection
    check_alias_free(client, alias)
    name = _free_name(client, alias, inp)
    info, before = server_info(target), alias_target(client, alias) or ""
    fill_mode(ms, info, choose_layout({c.name: c.nulls for c in inp.columns}, info), inp.uri)  # refuse now
    steps = _Phases()
    files: ImportFiles | None = None
    try:
        layout = _create(client, name, inp, ms, alias, before, info)
        steps.mark("create")
        info = replace(info, nullable=layout.nullable)  # what the created collection has
        carried = {c.name: layout.describe(c.name) for c in inp.columns}
        mode, note = fill_mode(ms, info, layout, inp.uri)
        if note:
            log.warning(note)
        log.info("loading %d rows from %d shard(s) of %s into %s (%s); carried columns: %s", inp.rows,
                 len(inp.shards), inp.uri, name, mode, carried or "none")
        if mode in (BULK, BULK_COPIES):
            files = ImportFiles(inp, ms, name, layout.dynamic if mode == BULK_COPIES else ())
            if files.copying:
                files.remove_stale(alias)
                files.prepare()
                steps.mark("copy files")
        imports = _fill(target, name, inp, ms, mode, layout, files, progress)
        steps.mark("fill")
        _index(client, name, ms)
        steps.mark("flush + index")
        client.load_collection(name)
        steps.mark("load")
        checked = verify(client, name, inp)
        steps.mark("verify")
        state = read_chain(inp.storage)
        Ledger(client, alias).put(LedgerEntry(physical=name, state=state.state if state else "", rows=inp.rows,
                                              source=inp.uri))  # what it holds: deltas of it apply in place
        previous = point_alias(client, alias, name)
        steps.mark("alias switch")
    except BaseException as e:
        _drop_quietly(client, name)
        _forget_quietly(client, alias, [name])
        if files is not None:
            files.cleanup()
        if isinstance(e, Exception) and not isinstance(e, (LoadError, ConfigError, StorageError)):
            raise LoadError(f"loading {inp.uri} into {name} failed: {error_reason(e)}; the alias {alias!r} was not "
                            "changed — fix the cause and rerun") from e
        raise
    log.info("alias %s -> %s (was %s)", alias, name, previous)
    if files is not None and files.copying:
        files.cleanup()
        steps.mark("remove copies")
    if previous and previous != name:
        _release_quietly(client, previous)
    dropped = _tidy(client, alias, name, ms.keep_previous)
    steps.mark("tidy")
    return LoadReport(collection=alias, physical=name, rows=inp.rows, mode=BULK if mode == BULK_COPIES else mode,
                      seconds=0.0, previous=previous, dropped=dropped, rows_sent=inp.rows,
                      state=state.state if state else "", verified_ids=checked.ids,
                      verify_seed=checked.seed, server=info.describe(), carried=carried, phases=steps.phases,
                      imports=imports,
                      import_files=files.describe() if files is not None else {})


def _fill(target: Target, name: str, inp: LoadInput, ms: MilvusSettings, mode: str, layout: Layout,
          files: ImportFiles | None, progress: bool) -> list[dict[str, Any]]:
    """Fill collection ``name``: a bulk import of ``files`` or, without them, batched upserts of the shards.
    Returns the rows loaded over time: a point per finished import task, or per second of upserts."""
    imports: list[dict[str, Any]] = []
    with tqdm(total=inp.rows, unit="rows", desc=f"load ({mode})", disable=not progress) as bar:
        t_fill = time.monotonic()

        def filled(n: int) -> None:
            bar.update(n)
            t = round(time.monotonic() - t_fill, 3)
            if imports and t - imports[-1]["t"] < 1.0 and files is None:  # one point a second
                imports[-1]["rows"] += n
            else:
                imports.append({"t": t, "rows": n})

        if files is not None:
            bulk_import(target, name, files.files, filled)
        else:
            upsert_shards(target, name, inp.shards, inp.dim, ms.insert_batch_mb, filled, layout.dynamic)
    return imports


def _index(client, name: str, ms: MilvusSettings) -> None:
    """Flush what was filled and build the vector index of ``milvus.index``."""
    client.flush(name)
    index = client.prepare_index_params()
    index.add_index(VECTOR_FIELD, index_type=ms.index.type, metric_type=ms.index.metric, params=dict(ms.index.params))
    client.create_index(name, index)


def _tidy(client, alias: str, current: str, keep_previous: int) -> list[str]:
    """Keep the live collection and keep_previous verified ones behind it; drop the rest (older verified
    loads, leftovers of killed loads, collections rolled back from)."""
    family = physicals(client, alias)
    keep = set(verified_chain(client, alias, family)[: 1 + keep_previous]) | {current}
    drop = [p for p in family if p.name not in keep]
    dropped = []
    for p in drop:
        if alias_target(client, alias) == p.name:  # never drop what queries use
            continue
        _drop_quietly(client, p.name)
        dropped.append(p.name)
    if dropped:
        log.info("dropped %s (keep_previous = %d)", ", ".join(dropped), keep_previous)
        _forget_quietly(client, alias, dropped)
    return dropped


def _rollback(target: Target, alias: str) -> LoadReport:
    client = target.client
    current = alias_target(client, alias)
    if current is None:
        raise LoadError(f"alias {alias!r} does not exist in Milvus at {target.uri}; nothing to roll back — "
                        "run the load first")
    fam = {p.name: p for p in physicals(client, alias)}
    chain = verified_chain(client, alias, list(fam.values()))
    if len(chain) < 2:
        raise LoadError(f"alias {alias!r} points at {current} and no older verified collection is kept to roll back "
                        "to (milvus.keep_previous controls how many are kept)")
    back = fam[chain[1]]
    client.load_collection(back.name)
    point_alias(client, alias, back.name)
    _release_quietly(client, current)
    log.info("rolled back alias %s: %s -> %s", alias, current, back.name)
    return LoadReport(collection=alias, physical=back.name, rows=int(back.props.get(PROP + "rows", 0)), mode="rollback",
                      seconds=0.0, previous=current, how="alias moved back")


def _drop_quietly(client, name: str) -> None:
    try:
        client.drop_collection(name)
    except Exception as e:  # cleanup must not hide the real error
        log.warning("could not drop %s: %s", name, error_reason(e))


def _forget_quietly(client, alias: str, names: list[str]) -> None:
    """Drop the ledger entries of dropped collections (a leftover entry is harmless: never worth a failed load)."""
    try:
        Ledger(client, alias).forget(names)
    except Exception as e:
        log.warning("could not remove %s from the ledger of %s: %s", ", ".join(names), alias, error_reason(e))


def _release_quietly(client, name: str) -> None:
    try:
        client.release_collection(name)
    except Exception as e:
        log.warning("could not release %s: %s", name, error_reason(e))


def _write_html(out: Storage) -> None:
    """Redraw ``_report.html`` with the load's part; a failure to draw never fails the load."""
    try:
        log.info("report: %s", write_report_html(out))
    except Exception as e:
        log.warning("could not write _report.html: %s: %s", type(e).__name__, e)
