"""From source URIs to read tasks, with every check that can fail before any work starts.

A source is recognised from its URI and listing: `*.csv` / `*.parquet` (manifest),
`*.json` (COCO captions), `*.tar` / `*.tar.gz` (one WebDataset shard), or a folder /
prefix holding either image files with sidecars or `.tar` shards (not both). An
unreadable URI, an unknown layout, a missing column or a COCO file whose images cannot be
found is a `CurateConfigError` naming the URI; problems of single entries are left to the
workers, which turn them into rejects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from components.storage import Storage, StorageError, parse
from tipsv2_core.data.curation.config import CurateConfig, CurateConfigError
from tipsv2_core.data.curation.records import slug
from tipsv2_core.data.curation.sources import (
    group_folder,
    parse_coco,
    read_table,
    resolve_columns,
    table_rows,
)
from tipsv2_core.data.curation.tasks import Task
from tipsv2_core.data.curation.writer import SourceInfo

TABLE_KINDS = {".csv": "csv", ".parquet": "parquet"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
REMOTE_SCHEMES = ("http://", "https://", "gs://", "ftp://")


@dataclass
class SourcePlan:
    info: SourceInfo
    tasks: list[Task]


def _join(base: str, rel: str) -> str:
    """`rel` below the folder URI `base` (plain path, file:// or s3://)."""
    return parse(base).child(rel).uri


def _joiner(base: str) -> Callable[[str], str]:
    """`_join` for many names below one folder: the base is parsed once (10k+ files)."""
    loc = parse(base)
    if loc.path is not None:
        prefix = str(loc.path).rstrip("/")
    else:
        prefix = f"s3://{loc.bucket}" + (f"/{loc.key}" if loc.key else "")
    return lambda rel: f"{prefix}/{rel}"


def _parent(uri: str) -> str:
    loc = parse(uri)
    if loc.path is not None:
        return str(loc.path.parent)
    parent = str(PurePosixPath(loc.key).parent)
    return f"s3://{loc.bucket}/{'' if parent == '.' else parent}".rstrip("/")


def _name(uri: str) -> str:
    loc = parse(uri)
    return loc.path.name if loc.path is not None else PurePosixPath(loc.key).name or loc.bucket


def _read(store: Storage, uri: str) -> bytes:
    try:
        return store.read_bytes(uri)
    except (StorageError, OSError) as e:
        raise CurateConfigError(f"cannot read source {uri}: {e}") from None


def _resolve(base: str, value: str) -> tuple[str | None, str | None]:
    """(image URI, None) for a path/URI as a table or COCO file writes it, or (None, why)."""
    if value.startswith(REMOTE_SCHEMES):
        return None, f"{value}: only paths, file:// and s3:// URIs are read (no downloads)"
    if "://" in value or value.startswith("/"):
        return value, None
    return _join(base, value), None


def _folder_tasks(uri: str, label: str, names: list[str]) -> list[Task]:
    tasks = []
    join = _joiner(uri)
    for item in group_folder(names):
        rel = item.image or item.txt or item.json
        assert rel is not None
        tasks.append(
            Task(
                "file",
                label,
                record=item.stem,
                location=join(rel),
                image=join(item.image) if item.image else None,
                txt=join(item.txt) if item.txt else None,
                json=join(item.json) if item.json else None,
                detail=None if item.image else f"sidecar {rel} has no image next to it",
            )
        )
    return tasks


def _table_tasks(uri: str, label: str, kind: str, data: bytes, cfg: CurateConfig) -> list[Task]:
    table = read_table(data, kind, uri)
    cols = resolve_columns(table.column_names, cfg.columns, uri)
    base = _parent(uri)
    tasks = []
    for row in table_rows(table, cols):
        task = Task(
            "row",
            label,
            record=row.image or f"row{row.index}",
            location=f"{uri}#row={row.index}",
            classes=row.classes,
            **row.captions,
        )
        if row.image is None:
            task.error, task.detail = "bad_row", f"empty {cols['image']!r} column"
        else:
            task.image, why = _resolve(base, row.image)
            if why:
                task.error, task.detail = "unsupported_uri", why
        tasks.append(task)
    return tasks


def _coco_root(uri: str, names: list[str], cfg: CurateConfig, store: Storage) -> str:
    """The folder the COCO file names are relative to: configured, or found next to it."""
    if cfg.coco_image_root:
        return cfg.coco_image_root
    here = _parent(uri)
    candidates = [here, _join(here, "images"), _parent(here), _join(_parent(here), "images")]
    for root in candidates:
        if any(store.exists(_join(root, n)) for n in names[:5]):
            return root
    raise CurateConfigError(
        f"{uri}: its images ({names[0]!r}, …) are in none of {candidates}; set coco_image_root"
    )


def _coco_tasks(uri: str, label: str, data: bytes, cfg: CurateConfig, store: Storage) -> list[Task]:
    images = parse_coco(data, uri)
    names = [im.file_name for im in images if im.file_name]
    if not names:
        raise CurateConfigError(f"{uri}: no images with a file_name")
    root = _coco_root(uri, names, cfg, store)
    tasks = []
    for im in images:
        caps = im.captions
        task = Task(
            "row",
            label,
            record=im.image_id,
            location=f"{uri}#image_id={im.image_id}",
            alt_text=caps[0] if caps else None,
            caption_medium=caps[1] if len(caps) > 1 else None,
            classes=im.classes,
            extra=json.dumps({"coco_captions": caps, "image_id": im.image_id}),
        )
        if im.file_name is None:
            task.error, task.detail = "bad_row", "image entry without a file_name"
        else:
            task.image, why = _resolve(root, im.file_name)
            if why:
                task.error, task.detail = "unsupported_uri", why
        tasks.append(task)
    return tasks


def _plan_one(uri: str, label: str, cfg: CurateConfig, store: Storage) -> SourcePlan:
    lower = uri.lower().rstrip("/")
    suffix = PurePosixPath(lower).suffix
    if suffix in TABLE_KINDS:
        kind = TABLE_KINDS[suffix]
        tasks = _table_tasks(uri, label, kind, _read(store, uri), cfg)
    elif suffix == ".json":
        kind, tasks = "coco", _coco_tasks(uri, label, _read(store, uri), cfg, store)
    elif lower.endswith(TAR_SUFFIXES):
        if not store.exists(uri):
            raise CurateConfigError(f"cannot read source {uri}: no such tar shard")
        kind = "webdataset"
        tasks = [Task("tar", label, record=_name(uri).split(".")[0], location=uri, image=uri)]
    else:
        try:
            names = store.list_files(uri)
        except (StorageError, OSError) as e:
            raise CurateConfigError(f"cannot read source {uri}: {e}") from None
        if not names:
            what = "unknown source type (not a folder, .csv, .parquet, .json or .tar)"
            raise CurateConfigError(
                f"{uri}: {what if store.exists(uri) else 'no such folder, prefix or file'}"
            )
        tars = [n for n in names if n.lower().endswith(TAR_SUFFIXES)]
        folder = _folder_tasks(uri, label, names)
        if tars and folder:
            raise CurateConfigError(
                f"{uri}: holds both .tar shards and image files; pass them as separate sources"
            )
        if tars:
            kind = "webdataset"
            tasks = [
                Task("tar", label, t.split(".")[0], location=_join(uri, t), image=_join(uri, t))
                for t in tars
            ]
        elif folder:
            kind, tasks = "folder", folder
        else:
            raise CurateConfigError(f"{uri}: no image files or .tar shards in it")
    return SourcePlan(SourceInfo(label, uri, kind), tasks)


def labels(uris: Sequence[str]) -> list[str]:
    """A short unique label per source, from its name: `data/coco.json` -> "coco"."""
    out: list[str] = []
    for uri in uris:
        base = slug(_name(uri).split(".")[0] or "source", 40)
        label, n = base, 2
        while label in out:
            label, n = f"{base}-{n}", n + 1
        out.append(label)
    return out


def plan_sources(uris: Sequence[str], cfg: CurateConfig, store: Storage) -> list[SourcePlan]:
    """Checks every source and lists its read tasks; raises CurateConfigError before work."""
    if not uris:
        raise CurateConfigError("no sources given")
    for uri in uris:
        try:
            parse(uri)
        except ValueError as e:
            raise CurateConfigError(f"source {e}") from None
    return [
        _plan_one(uri, label, cfg, store) for uri, label in zip(uris, labels(uris), strict=True)
    ]
