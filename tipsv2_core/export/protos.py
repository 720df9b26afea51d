"""Small edits of ONNX graphs after export: names, dimension labels, node order, metadata.

They touch the graph structure only, so a model whose weights live in external data can
be loaded with `load_external_data=False`, edited and saved next to its data unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import onnx

from tipsv2_core.export.graphs import GraphSpec


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Renames value `old` to `new` everywhere in `graph` (nodes, I/O, value_info)."""
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for info in itertools.chain(graph.input, graph.output, graph.value_info):
        if info.name == old:
            info.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def value_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name the graph defines or mentions."""
    names = {v.name for v in itertools.chain(graph.input, graph.output, graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def rename_io(graph: onnx.GraphProto, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """Gives the graph's inputs and outputs these names, in order.

    torch 2.13's exporter names values after the aten ops that make them, so asking it
    for an output called `embedding` yields a graph where the token-embedding Gather
    is also called `embedding` (onnx.checker: "not in SSA form"). An internal value
    holding a wanted name is renamed out of the way first.
    """
    wanted = list(zip([v.name for v in graph.input], inputs, strict=True))
    wanted += list(zip([v.name for v in graph.output], outputs, strict=True))
    taken = value_names(graph)
    for old, new in wanted:
        if old == new:
            continue
        if new in taken:
            spare = next(f"{new}_{k}" for k in itertools.count() if f"{new}_{k}" not in taken)
            _rename_value(graph, new, spare)
            taken.add(spare)
        _rename_value(graph, old, new)
        taken.add(new)


def label_dims(graph: onnx.GraphProto, spec: GraphSpec) -> None:
    """Writes the spec's axis names (batch, height, …) on the graph's inputs and outputs."""
    shapes = {**spec.inputs, **spec.outputs}
    for info in itertools.chain(graph.input, graph.output):
        dims = info.type.tensor_type.shape.dim
        shape = shapes[info.name]
        if len(dims) != len(shape):
            raise ValueError(f"{info.name}: graph has rank {len(dims)}, spec {shape}")
        for dim, want in zip(dims, shape, strict=True):
            if isinstance(want, str):
                dim.dim_param = want  # also clears dim_value (a oneof)
            elif dim.HasField("dim_value") and dim.dim_value != want:
                raise ValueError(f"{info.name}: axis of size {dim.dim_value}, spec says {want}")


def toposort(graph: onnx.GraphProto) -> None:
    """Orders the nodes so each comes after the producers of its inputs.

    onnxruntime's float16 converter appends the casts it inserts for `keep_io_types` at
    the end of the node list; ONNX Runtime sorts on load, but onnx.checker rejects it.
    Stable: nodes already in order keep their relative order.
    """
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(v in ready for v in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({v for n in rest for v in n.input if v not in ready})[:5]
            raise ValueError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def strip_unused_opsets(model: onnx.ModelProto) -> None:
    """Drops opset imports no node uses.

    ONNX Runtime's offline optimiser declares every domain it knows (com.microsoft,
    ai.onnx.training, …) even when no node of the saved graph belongs to one.
    """
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def set_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Adds key/value metadata (shown by Netron, readable from any ONNX Runtime session)."""
    onnx.helper.set_model_props(model, {p.key: p.value for p in model.metadata_props} | props)
