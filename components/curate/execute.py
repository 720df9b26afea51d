"""Where the per-record work runs: Ray Data workers, or one plain in-process loop.

Both run `tipsv2_core.data.curation.process.process_record` on the records of each read
task and give back results in task order, so the output is the same either way and
whatever the number of workers. On Ray the tasks travel as Arrow blocks, are read
(local files or S3, through components.storage) and cleaned inside `map_batches` tasks,
and come back as Arrow rows (`RESULT_SCHEMA`) that the driver streams into the writer;
`preserve_order` keeps the order deterministic. `ray.init` starts a local Ray in-process
with `num_cpus=workers`, or connects to a cluster given its address; the same code path
runs on one machine and many (workers then need this package and S3 credentials in
their environment; credentials are never passed as task arguments).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import pyarrow as pa

from components import storage
from components.settings import disable_telemetry
from tipsv2_core.data.curation.captioners import load_captioner
from tipsv2_core.data.curation.config import CurateConfig
from tipsv2_core.data.curation.process import process_record
from tipsv2_core.data.curation.records import Accepted, Rejected
from tipsv2_core.data.curation.tasks import Reader, Task, read_task, tasks_from_table, tasks_table

Result = Accepted | Rejected
# No token prompt for a local cluster (and no usage reporting: settings.TELEMETRY_OFF).
RAY_ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled"}
# Ray Data (2.60) gives each operator a CPU and memory budget out of what its cluster
# autoscaler has reserved for the dataset. On a fixed local Ray nothing is reserved yet
# during a run of seconds, so the budget stayed zero and after the first pair of blocks
# each task waited for the previous one: two workers took turns (checked by
# tests/test_curate_parallel.py; with the budgets on, 2 workers ran 1.08-1.17x slower,
# bench/curate.py). Off: `TaskPoolStrategy(size=workers)` bounds the tasks, and Ray
# Data's downstream-capacity backpressure still bounds the results waiting for the driver.
OPERATOR_BUDGETS = False
ROWS_PER_OUTPUT_BLOCK = 32  # results per Arrow block sent back (bounds block size)

RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("record", pa.string()),
        ("reason", pa.string()),  # null for an accepted sample
        ("detail", pa.string()),
        ("ext", pa.string()),  # image member extension
        ("image", pa.binary()),
        ("meta", pa.binary()),  # the sample's json member
        ("content_hash", pa.string()),
        ("phash", pa.string()),
    ]
)


class _ResultColumns:
    """Results gathered column by column: one list per field, no dict per record (what
    `pa.Table.from_pylist` would need), handed to Arrow in one call per block."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
        self.rows = 0

    def append(self, r: Result) -> None:
        c = self.cols
        c["key"].append(r.key)
        c["source"].append(r.source)
        c["record"].append(r.record)
        if isinstance(r, Rejected):
            values: tuple[Any, ...] = (r.reason, r.detail, None, None, None, None, None)
        else:
            ext = next(e for e in r.files if e != "json")
            values = (None, None, ext, r.files[ext], r.files["json"], r.content_hash, r.phash)
        for name, value in zip(_TAIL, values, strict=True):
            c[name].append(value)
        self.rows += 1

    def table(self) -> pa.Table:
        table = pa.table(self.cols, schema=RESULT_SCHEMA)
        self.cols = {name: [] for name in RESULT_SCHEMA.names}  # the next block starts empty
        self.rows = 0
        return table


_TAIL = RESULT_SCHEMA.names[3:]


def from_table(table: pa.Table) -> Iterator[Result]:
    """The results of one block, in order (the inverse of `_ResultColumns`)."""
    columns = [table.column(name).to_pylist() for name in RESULT_SCHEMA.names]
    for key, source, record, reason, detail, ext, image, meta, chash, phash in zip(
        *columns, strict=True
    ):
        if reason is not None:
            yield Rejected(key, source, record, reason, detail or "")
        else:
            files = {ext: image, "json": meta}
            yield Accepted(key, source, record, files, json.loads(meta), chash, phash)


def read_bytes(uri: str) -> bytes:
    """`storage.read_bytes`, with absolute local paths opened directly: a folder source
    reads up to three files a record, and parsing each URI into a Location and looking up
    the environment's Storage cost about as much as reading a small sidecar."""
    if uri.startswith("/"):
        try:
            with open(uri, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise storage.NotFound(uri, "no such file") from None
    return storage.read_bytes(uri)


def process_tasks(tasks: Sequence[Task], cfg: CurateConfig, read: Reader) -> Iterator[Result]:
    """Results of the records of `tasks`, in order (the work of one worker call)."""
    captioner = load_captioner(cfg.captioner.name, cfg.captioner.options)
    for task in tasks:
        for raw in read_task(task, read, cfg.images.max_file_bytes):
            yield process_record(raw, cfg, captioner)


@lru_cache(maxsize=4)
def _config(doc: str) -> CurateConfig:
    return CurateConfig.from_dict(json.loads(doc))


def ray_batch(batch: pa.Table, config: str) -> Iterator[pa.Table]:
    """The Ray Data UDF: a block of tasks in, blocks of results out."""
    out = _ResultColumns()
    for result in process_tasks(tasks_from_table(batch), _config(config), read_bytes):
        out.append(result)
        if out.rows >= ROWS_PER_OUTPUT_BLOCK:
            yield out.table()
    if out.rows:
        yield out.table()


def run_local(tasks: Sequence[Task], cfg: CurateConfig) -> Iterator[Result]:
    """The per-record work in this process: no Ray start-up, one core."""
    yield from process_tasks(tasks, cfg, read_bytes)


def _blocks(tasks: Sequence[Task], workers: int) -> list[pa.Table]:
    """Task blocks: a tar shard alone (it expands to many records), loose records in
    chunks small enough to spread over the workers, large enough to amortise a call."""
    loose = [t for t in tasks if t.kind != "tar"]
    size = max(4, min(128, len(loose) // (workers * 8) or 1))
    blocks, chunk = [], []
    for t in tasks:
        if t.kind == "tar" or len(chunk) >= size:
            if chunk:  # close the open chunk first: blocks keep the order of the tasks
                blocks.append(tasks_table(chunk))
            chunk = []
        if t.kind == "tar":
            blocks.append(tasks_table([t]))
        else:
            chunk.append(t)
    if chunk:
        blocks.append(tasks_table(chunk))
    return blocks


@contextlib.contextmanager
def ray_session(workers: int, address: str | None = None) -> Iterator[None]:
    """Ray for the duration: the running one, a cluster at `address`, or a local one with
    `num_cpus=workers` (shut down again on exit; a running one is left alone)."""
    import ray

    disable_telemetry(extra=RAY_ENV_DEFAULTS)
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_ray(tasks: Sequence[Task], cfg: CurateConfig, workers: int) -> Iterator[Result]:
    """The per-record work as Ray Data tasks, at most `workers` at a time; needs Ray up
    (`ray_session`)."""
    import ray

    if not tasks:
        return
    quiet = {  # Ray Data logs each run's plan and a note that its bars are off: noise here
        logging.getLogger("ray.data"): logging.WARNING,
        logging.getLogger("ray.data._internal.progress"): logging.ERROR,
    }
    levels = {log: log.level for log in quiet}
    for log, level in quiet.items():
        log.setLevel(level)
    try:
        ds = ray.data.from_arrow(_blocks(tasks, workers))
        ds = ds.map_batches(
            ray_batch,
            batch_size=None,  # one task block per call
            batch_format="pyarrow",
            zero_copy_batch=True,
            fn_kwargs={"config": json.dumps(cfg.to_dict())},
            compute=ray.data.TaskPoolStrategy(size=workers),
            num_cpus=1,
            **({"num_gpus": cfg.captioner.num_gpus} if cfg.captioner.num_gpus else {}),
        )
        ctx = ds.context
        ctx.execution_options.preserve_order = True  # deterministic dedup and shard order
        ctx.op_resource_reservation_enabled = OPERATOR_BUDGETS
        ctx.enable_progress_bars = False  # the driver shows one bar over records instead
        ctx.print_on_execution_start = False
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from from_table(batch)
    finally:
        for log, level in levels.items():
            log.setLevel(level)
