"""Units of read work, and turning one into raw records with a given byte reader.

The driver plans `Task`s from the sources (cheap: listings and small tables); workers
read them. A task is one folder sample, one manifest/COCO row, or one whole tar shard
(which expands to many records). Tasks are flat rows of text (`TASK_SCHEMA`) so that they
travel between processes as Arrow tables. Reading goes through a `read(uri) -> bytes`
callable supplied by the caller (local files, S3, …), which keeps this module free of any
storage client; a failed read becomes an `unreadable_file` / `missing_image` record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from tipsv2_core.data.curation.records import RawRecord, make_key
from tipsv2_core.data.curation.sources import IMAGE_EXTS
from tipsv2_core.data.curation.tarsamples import iter_tar
from tipsv2_core.data.layout import DatasetError, local_path

Reader = Callable[[str], bytes]
IMAGE_SLOT = "image"  # where a loose file's image bytes go in RawRecord.files

TASK_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "file" (an image + sidecars), "row", "tar"
        ("label", pa.string()),  # the source's label (key prefix, `source` column)
        ("record", pa.string()),  # id within the source: relative path, row, image id
        ("location", pa.string()),  # where to find it, for humans (the reject table)
        ("image", pa.string()),  # URI of the image (or of the tar shard)
        ("txt", pa.string()),  # URI of a .txt sidecar
        ("json", pa.string()),  # URI of a .json sidecar
        ("alt_text", pa.string()),
        ("caption_medium", pa.string()),
        ("caption_long", pa.string()),
        ("classes", pa.list_(pa.string())),
        ("extra", pa.string()),  # JSON object kept in the sample's json
        ("error", pa.string()),  # a reject reason known when planning (bad row, …)
        ("detail", pa.string()),
    ]
)


@dataclass
class Task:
    kind: str
    label: str
    record: str
    location: str
    image: str | None = None
    txt: str | None = None
    json: str | None = None
    alt_text: str | None = None
    caption_medium: str | None = None
    caption_long: str | None = None
    classes: list[str] | None = None
    extra: str | None = None
    error: str | None = None
    detail: str | None = None


def tasks_table(tasks: Sequence[Task]) -> pa.Table:
    # Column by column: dataclasses.asdict per task costs more than the rest of planning.
    columns = {name: [getattr(t, name) for t in tasks] for name in TASK_SCHEMA.names}
    return pa.table(columns, schema=TASK_SCHEMA)


def tasks_from_table(table: pa.Table) -> list[Task]:
    return [Task(**row) for row in table.to_pylist()]


def _read_into(read: Reader, uri: str | None, rec: RawRecord, slot: str, missing: str) -> bool:
    """Reads `uri` into rec.files[slot]; on failure sets rec.error and returns False."""
    if not uri:
        return True
    try:
        rec.files[slot] = read(uri)
        return True
    except FileNotFoundError as e:
        rec.error, rec.detail = missing, str(e)
    except (OSError, ValueError) as e:
        rec.error, rec.detail = "unreadable_file", f"{uri}: {type(e).__name__}: {e}"
    return False


def _open_tar(uri: str, read: Reader) -> IO[bytes]:
    """A local shard streams from disk; a remote one is read into memory first."""
    import io

    try:
        path: Path | None = local_path(uri)
    except DatasetError:
        path = None
    if path is not None:
        return open(path, "rb")  # closed by the caller's `with`
    return io.BytesIO(read(uri))


def _from_tar(task: Task, read: Reader, max_member_bytes: int) -> Iterator[RawRecord]:
    assert task.image is not None
    try:
        stream = _open_tar(task.image, read)
    except (OSError, ValueError) as e:
        yield RawRecord(
            make_key(task.label, task.record),
            task.label,
            task.location,
            error="unreadable_file",
            detail=f"{task.image}: {type(e).__name__}: {e}",
        )
        return
    with stream:
        for sample in iter_tar(stream, max_member_bytes):
            rec = RawRecord(
                make_key(task.label, f"{task.record}/{sample.key}"),
                task.label,
                f"{task.location}#{sample.key}",
                files=sample.files,
                error=sample.error,
                detail=sample.detail,
            )
            rec.image_ext = next((e for e in sample.files if e in IMAGE_EXTS), None)
            if rec.image_ext is None and rec.error is None:
                rec.error = "missing_image"
                rec.detail = f"members {sorted(sample.files)} hold no image"
            yield rec


def read_task(task: Task, read: Reader, max_member_bytes: int) -> Iterator[RawRecord]:
    """The raw record(s) of one task; problems become records with `error` set."""
    if task.kind == "tar":
        yield from _from_tar(task, read, max_member_bytes)
        return
    rec = RawRecord(make_key(task.label, task.record), task.label, task.location)
    rec.captions = {
        f: v
        for f in ("alt_text", "caption_medium", "caption_long")
        if (v := getattr(task, f)) is not None
    }
    rec.classes = task.classes
    extra: dict[str, Any] = json.loads(task.extra) if task.extra else {}
    rec.extra = extra
    if task.error or not task.image:
        rec.error = task.error or "missing_image"
        rec.detail = task.detail or "no image for this entry"
        yield rec
        return
    # Any extension: the decoder tells the format from the bytes, not from the name.
    rec.image_ext = IMAGE_SLOT
    if _read_into(read, task.image, rec, IMAGE_SLOT, "missing_image"):
        for slot in ("txt", "json"):
            if not _read_into(read, getattr(task, slot), rec, slot, "unreadable_file"):
                break
    yield rec
