"""The curation step: image-text sources in, a dataset out (Ray Data; the format:
docs/architecture.md, "Sample schema").

    from components.curate import curate
    result = curate(["s3://raw/laion-part", "data/coco/captions.json"], "s3://tipsv2/ds/v1",
                    "curate.yaml", workers=8)
    print(result.summary)

- `plan`: source URIs -> read tasks, every check that can fail before work starts
- `execute`: the per-record work on Ray Data (or one local loop)
- `step`: `curate()`, config files, the S3 upload, `CurateResult`

The rules themselves (pure PIL/numpy) live in `tipsv2_core.data.curation`.
"""

from components.curate.step import CurateResult, curate, load_config
from tipsv2_core.data.curation.config import CurateConfig, CurateConfigError

__all__ = ["CurateConfig", "CurateConfigError", "CurateResult", "curate", "load_config"]
