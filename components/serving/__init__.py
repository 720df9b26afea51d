"""The model server: Open Inference Protocol (KServe v2) REST routes over Starlette and
uvicorn, dynamic batching, Prometheus metrics, and a live swap that follows a registry
alias. The protocol, tasks and batching themselves are in `tipsv2_core.serving`."""
