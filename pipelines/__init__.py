"""Orchestration: the `tipsv2` CLI (and, later, the Kubeflow DAG and its local runner)."""
