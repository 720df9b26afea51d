"""Serving TIPSv2 models over the Open Inference Protocol (KServe v2), the library part:
the protocol's tensors (`protocol`), client images (`images`), a model ready to serve and
its checks (`servable`), the served tasks (`tasks`) and dynamic batching (`batching`).
The HTTP server, metrics and the registry-following swap live in `components.serving`.
"""
