"""Local paths given as URIs: what every layer does with `file://…` before opening a file.

Steps hand each other URIs (docs/architecture.md, "Storage URIs"): a plain path,
`file:///…` or `s3://bucket/prefix`. Code that opens files directly needs the local path
of the first two; `components.storage` reads and writes all three.
"""

from __future__ import annotations

import os

FILE_SCHEME = "file://"


def strip_file_scheme(uri: str | os.PathLike[str]) -> str:
    """`file:///data/x` -> `/data/x`; a plain path as it is.

    Any other URI (`s3://…`) is returned unchanged, so callers that pass object-store URIs
    on (Ray's storage, a config's data path) can call this on every value.
    """
    return os.fspath(uri).removeprefix(FILE_SCHEME)
