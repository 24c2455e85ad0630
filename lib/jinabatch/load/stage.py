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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tqdm import tqdm

from ..config import Config, MilvusSettings
from ..errors import ConfigError, LoadError, StorageError
from ..storage import Storage
from .importfiles import ImportFiles
from .milvus import (
    PROP,
    Target,
    _reason,
    alias_target,
    bulk_import,
    check_alias_free,
    connect,
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


@dataclass
class LoadReport:
    collection: str  # the alias users query
    physical: str  # the collection it now points at
    rows: int
    mode: str  # "bulk" | "insert" | "rollback"
    seconds: float
    previous: str | None  # where the alias pointed before
    dropped: list[str] = field(default_factory=list)
    uri: str = ""
    verified_ids: int = 0
    verify_seed: int | None = None  # the seed of the sampled ids (load.verify), to replay the check
    server: str = ""  # e.g. "Milvus v2.3.5-lite (no nullable fields)"
    carried: dict[str, str] = field(default_factory=dict)  # column -> how it is held ("nullable field", ...)
    phases: list[dict] = field(default_factory=list)  # {"phase", "seconds"} per step, in order (for _report.html)
    imports: list[dict] = field(default_factory=list)  # {"t": s into the fill, "rows"} per finished import/batch
    # bulk import: where the server read the files ("read_from", "placement") and, when copies were made for
    # it, {"files", "how", "seconds", "removed"} under "copies" (jinabatch.load.importfiles)
    import_files: dict[str, Any] = field(default_factory=dict)


def run_load(config: Config, *, rollback: bool = False, progress: bool = True,
             target: Target | None = None) -> LoadReport:
    """Load ``config.output.path`` into Milvus behind the alias ``config.milvus.collection`` (or roll back).

    ``target``: an open ``jinabatch.load.milvus.connect(config.milvus)`` to reuse (e.g. load then search on
    one embedded server); by default the stage connects — and starts the embedded server — itself.
    """
    ms = config.milvus
    out = Storage.open(config.output.path, config.storage)
    t0 = time.monotonic()
    inp = None if rollback else read_output(out)
    with contextlib.nullcontext(target) if target is not None else connect(ms, config.storage) as target:
        if rollback:
            report = _rollback(target, ms.collection)
        else:
            report = _load(target, inp, ms, progress)
    report.seconds = round(time.monotonic() - t0, 3)
    report.uri = target.uri
    out.write_json("_load_report.json", asdict(report))
    _write_html(out)
    return report


def _props(ms: MilvusSettings, inp: LoadInput, alias: str, previous: str, layout: Layout) -> dict[str, str]:
    return {PROP + "alias": alias, PROP + "model": inp.model, PROP + "task": inp.task or "",
            PROP + "dimensions": str(inp.dim), PROP + "id_column": inp.id_field.name,
            PROP + "columns": json.dumps([c.name for c in inp.columns]), PROP + "rows": str(inp.rows),
            PROP + "dynamic": json.dumps(list(layout.dynamic)),
            PROP + "metric": ms.index.metric, PROP + "fingerprint": inp.fingerprint or "",
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


def _load(target: Target, inp: LoadInput, ms: MilvusSettings, progress: bool) -> LoadReport:
    client, alias = target.client, ms.collection
    check_alias_free(client, alias)
    name = physical_name(alias, inp.model, inp.dim)
    while client.has_collection(name):  # two loads in one millisecond
        time.sleep(0.002)
        name = physical_name(alias, inp.model, inp.dim)
    info, before = server_info(target), alias_target(client, alias) or ""
    fill_mode(ms, info, choose_layout({c.name: c.nulls for c in inp.columns}, info), inp.uri)  # refuse now
    phases, imports, mark = _timing()
    files: ImportFiles | None = None
    try:
        layout = _create(client, name, inp, ms, alias, before, info)
        mark("create")
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
                mark("copy files")
        with tqdm(total=inp.rows, unit="rows", desc=f"load ({mode})", disable=not progress) as bar:
            t_fill = time.monotonic()

            def filled(n: int) -> None:
                bar.update(n)
                t = round(time.monotonic() - t_fill, 3)
                if imports and t - imports[-1]["t"] < 1.0 and mode not in (BULK, BULK_COPIES):  # one point a second
                    imports[-1]["rows"] += n
                else:
                    imports.append({"t": t, "rows": n})

            if files is not None:
                bulk_import(target, name, files.files, filled)
            else:
                upsert_shards(target, name, inp.shards, inp.dim, ms.insert_batch_mb, filled, layout.dynamic)
        mark("fill")
        client.flush(name)
        index = client.prepare_index_params()
        index.add_index(VECTOR_FIELD, index_type=ms.index.type, metric_type=ms.index.metric,
                        params=dict(ms.index.params))
        client.create_index(name, index)
        mark("flush + index")
        client.load_collection(name)
        mark("load")
        checked = verify(client, name, inp)
        mark("verify")
        previous = point_alias(client, alias, name)
        mark("alias switch")
    except BaseException as e:
        _drop_quietly(client, name)
        if files is not None:
            files.cleanup()
        if isinstance(e, Exception) and not isinstance(e, (LoadError, ConfigError, StorageError)):
            raise LoadError(f"loading {inp.uri} into {name} failed: {_reason(e)}; the alias {alias!r} was not "
                            "changed — fix the cause and rerun") from e
        raise
    log.info("alias %s -> %s (was %s)", alias, name, previous)
    if files is not None and files.copying:
        files.cleanup()
        mark("remove copies")
    if previous and previous != name:
        _release_quietly(client, previous)
    dropped = _tidy(client, alias, name, ms.keep_previous)
    mark("tidy")
    return LoadReport(alias, name, inp.rows, BULK if mode == BULK_COPIES else mode, 0.0, previous, dropped,
                      verified_ids=checked.ids, verify_seed=checked.seed, server=info.describe(), carried=carried,
                      phases=phases, imports=imports, import_files=files.describe() if files is not None else {})


def _timing():
    """(phases, imports, mark): ``mark(name)`` records the seconds since the previous mark under ``name``."""
    phases: list[dict] = []
    last = [time.monotonic()]

    def mark(name: str) -> None:
        now = time.monotonic()
        phases.append({"phase": name, "seconds": round(now - last[0], 3)})
        last[0] = now

    return phases, [], mark


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
    return LoadReport(alias, back.name, int(back.props.get(PROP + "rows", 0)), "rollback", 0.0, current)


def _drop_quietly(client, name: str) -> None:
    try:
        client.drop_collection(name)
    except Exception as e:  # cleanup must not hide the real error
        log.warning("could not drop %s: %s", name, _reason(e))


def _release_quietly(client, name: str) -> None:
    try:
        client.release_collection(name)
    except Exception as e:
        log.warning("could not release %s: %s", name, _reason(e))


def _write_html(out: Storage) -> None:
    """Redraw ``_report.html`` with the load's part; a failure to draw never fails the load."""
    try:
        from ..embed.report_html import write_report_html

        log.info("report: %s", write_report_html(out))
    except Exception as e:
        log.warning("could not write _report.html: %s: %s", type(e).__name__, e)
