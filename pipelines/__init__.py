"""Orchestration: the Kubeflow DAG (`dag.py`; compiled, submitted, or run locally on
kfp.local) and the `tipsv2` CLI (`cli/`)."""
