"""Parsers of the source layouts, from file listings and bytes (no storage access here).

- image folder: `x.jpg` + optional sidecars `x.txt` (first non-empty line = alt-text) and
  `x.json` (`alt_text`, `caption_medium`, `caption_long`, `classes`), grouped by path stem;
- CSV / Parquet manifest: an image path/URI column and caption columns (TableColumns);
- COCO-style caption JSON: `images` [{id, file_name}] + `annotations` [{image_id,
  caption}] (several per image; `category_id` annotations give class labels).

WebDataset tar shards are read in tarsamples.py. What is wrong with the whole source (not a
table, a missing column) raises CurateConfigError; what is wrong with one entry becomes
that entry's reject later on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tipsv2_core.data.curation.config import CurateConfigError, TableColumns

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
SIDECAR_EXTS = frozenset({"txt", "json"})
COLUMN_DEFAULTS = {
    "image": ("image", "image_path", "path", "file_name", "filepath", "file"),
    "alt_text": ("alt_text", "caption", "text"),
    "caption_medium": ("caption_medium",),
    "caption_long": ("caption_long",),
    "classes": ("classes",),
}
REQUIRED_COLUMNS = ("image", "alt_text")


@dataclass(frozen=True)
class FolderItem:
    """Relative paths of one folder sample: its image and sidecars (None: absent)."""

    stem: str
    image: str | None
    txt: str | None
    json: str | None


def group_folder(names: Sequence[str]) -> list[FolderItem]:
    """Folder samples from a recursive listing (posix paths), sorted by stem.

    Files are grouped by their path without the extension. A stem with sidecars but no
    image comes back with `image=None` (it becomes a `missing_image` reject, so a caption
    whose picture went missing is not dropped silently); other files are ignored.
    """
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        path = PurePosixPath(name)
        ext = path.suffix[1:].lower()
        if ext in IMAGE_EXTS or ext in SIDECAR_EXTS:
            stem = str(path.with_suffix(""))
            slot = "image" if ext in IMAGE_EXTS else ext
            # Two images with one stem (x.jpg, x.png): the second gets its own entry.
            if slot in groups.get(stem, {}):
                stem = name
            groups.setdefault(stem, {})[slot] = name
    return [
        FolderItem(stem, g.get("image"), g.get("txt"), g.get("json"))
        for stem, g in sorted(groups.items())
        if g.get("image") or g.get("txt") or g.get("json")
    ]


def read_table(data: bytes, kind: str, where: str) -> pa.Table:
    """A CSV or Parquet manifest from its bytes; every column read as text for CSV."""
    try:
        if kind == "parquet":
            return pq.read_table(io.BytesIO(data))
        # Text columns, no type guessing: an image named "0001" must stay "0001".
        header = pacsv.open_csv(io.BytesIO(data)).schema.names  # the first block only
        return pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=True
            ),
        )
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CurateConfigError(f"{where}: unreadable {kind} manifest ({e})") from None


def resolve_columns(names: Sequence[str], columns: TableColumns, where: str) -> dict[str, str]:
    """field -> column of a table, checking the configured / default names exist."""
    out = {}
    for fld, candidates in COLUMN_DEFAULTS.items():
        chosen = getattr(columns, fld)
        if chosen is not None:
            if chosen not in names:
                raise CurateConfigError(
                    f"{where}: no column {chosen!r} (columns.{fld}); it has {list(names)}"
                )
            out[fld] = chosen
            continue
        found = next((c for c in candidates if c in names), None)
        if found is None and fld in REQUIRED_COLUMNS:
            raise CurateConfigError(
                f"{where}: no {fld} column (looked for {list(candidates)}; set columns.{fld}); "
                f"it has {list(names)}"
            )
        if found is not None:
            out[fld] = found
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def split_classes(value: Any) -> list[str] | None:
    """Class labels from a list, or a "a|b" / "a,b" string; None when there are none."""
    if value is None:
        return None
    if isinstance(value, str):
        sep = "|" if "|" in value else ","
        items = [v.strip() for v in value.split(sep)]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [str(value).strip()]
    items = [v for v in items if v]
    return items or None


@dataclass(frozen=True)
class TableRow:
    index: int
    image: str | None  # path or URI as written in the table
    captions: dict[str, str]
    classes: list[str] | None


def table_rows(table: pa.Table, cols: dict[str, str]) -> Iterator[TableRow]:
    """The rows of a manifest, with captions under their field names."""
    for i, row in enumerate(table.select(list(dict.fromkeys(cols.values()))).to_pylist()):
        captions = {
            f: text
            for f in ("alt_text", "caption_medium", "caption_long")
            if f in cols and (text := _text(row[cols[f]])) is not None
        }
        classes = split_classes(row[cols["classes"]]) if "classes" in cols else None
        yield TableRow(i, (_text(row[cols["image"]]) or "").strip() or None, captions, classes)


@dataclass(frozen=True)
class CocoImage:
    image_id: str
    file_name: str | None
    captions: list[str]
    classes: list[str] | None


def parse_coco(data: bytes, where: str) -> list[CocoImage]:
    """Images of a COCO-style JSON with their captions (in annotation-id order)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CurateConfigError(f"{where}: not JSON ({e})") from None
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("images"), list)
        and isinstance(doc.get("annotations"), list)
    ):
        raise CurateConfigError(
            f"{where}: not a COCO-style caption file (needs 'images' and 'annotations' lists)"
        )
    categories = {
        c.get("id"): str(c.get("name"))
        for c in doc.get("categories") or []
        if isinstance(c, dict) and c.get("name")
    }
    captions: dict[Any, list[tuple[Any, str]]] = {}
    classes: dict[Any, list[str]] = {}
    for n, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            continue
        image_id = ann.get("image_id")
        if isinstance(ann.get("caption"), str):
            order = ann.get("id") if isinstance(ann.get("id"), int) else n
            captions.setdefault(image_id, []).append((order, ann["caption"]))
        name = categories.get(ann.get("category_id"))
        if name and name not in classes.setdefault(image_id, []):
            classes[image_id].append(name)
    out = []
    for n, img in enumerate(doc["images"]):
        img = img if isinstance(img, dict) else {}
        image_id = img.get("id", f"#{n}")
        name = img.get("file_name")
        caps = [c for _, c in sorted(captions.get(image_id, []), key=lambda x: x[0])]
        out.append(
            CocoImage(
                str(image_id),
                name if isinstance(name, str) and name.strip() else None,
                caps,
                classes.get(image_id) or None,
            )
        )
    return out
