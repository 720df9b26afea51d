"""Reproducing a registered model: its lineage record (`record`), the recorded code
(`source`), the recorded data (`data`), the comparison (`compare`) and the re-run
(`run.reproduce`). Heavy imports happen inside the functions."""
