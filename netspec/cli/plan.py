"""``netspec plan``: what the compiler does to a network before it runs."""
import math

import numpy as np

from .. import jsonout, kernels
from ..checkpoint import load_model
from ..executor import Executor
from ..ir import graph_of_model, graph_of_spec
from ..memory import plan_memory
from ..passes import optimize
from ..spec import load_spec
from ..specs_dir import resolve_spec_path
from .args import positive_int


def _graph(path):
    """(graph, where it came from): a checkpoint's model (with weights) or a spec (shapes only)."""
    if str(path).endswith(".npz"):
        return graph_of_model(load_model(path)), "checkpoint"
    return graph_of_spec(load_spec(resolve_spec_path(path))), "spec"


def plan(path, mode="predict", batch=100):
    """The plan of ``path`` as plain data: passes and their changes, nodes, memory."""
    graph, source = _graph(path)
    pipeline = f"{mode}-float16" if graph.dtype == "float16" else mode
    optimized, log = optimize(graph, pipeline)
    sizes = optimized.activation_bytes(batch)
    nodes = [{"name": n.name, "op": n.op + ("+add" if n.attrs.get("residual") else "")
              + (f"+{n.activation}" if n.activation else "") + ("+maxpool2d" if "pool" in n.attrs else ""),
              "inputs": list(n.inputs),
              "output_shape": list(n.shape), "flops": n.flops * batch, "output_bytes": sizes[n.name],
              "layers": list(n.origin)} for n in optimized.nodes]
    weights = sum(math.prod(a.shape) * a.itemsize for a in graph.arrays.values()) if graph.arrays else None
    folded = (sum(math.prod(a.shape) * a.itemsize for k, a in optimized.arrays.items() if k not in graph.arrays)
              if graph.arrays else None)
    if mode == "train":   # training keeps every activation for the backward pass: nothing to plan yet
        return {"source": source, "mode": mode, "batch": batch, "dtype": graph.dtype,
                "passes": [{"pass": name, "changes": changes} for name, changes in log],
                "nodes": nodes, "layers_in_spec": len(graph.nodes), "nodes_after": len(optimized.nodes),
                "flops": sum(n["flops"] for n in nodes), "weight_bytes": weights, "memory": None}
    # convolutions with a folded batchnorm get their filters packed once, as predict does
    # (netspec.executor): a checkpoint's are packed here; a spec has no weights, so its folded
    # convolutions are packed as zeros of their shapes, which lays them out the same way
    made = set(optimized.arrays) - set(graph.arrays)
    pack_graph = optimized
    if not graph.arrays:
        made = {k for n in optimized.nodes for k in n.params.values()} - {
            k for n in graph.nodes for k in n.params.values()}
        pack_graph = optimized.replace(arrays=_zero_filters(optimized, made))
    packed = Executor(pack_graph, [], kernels.load(), fixed=made).packed if made else {}
    memory = plan_memory(optimized, batch, kernels.load(), packed=packed)
    for n in nodes:
        name = n["name"]
        n["memory"] = ("arena" if name in memory.slots else "own" if name in memory.own
                       else f"shares {memory.shares[name]}")
        n["workspace_bytes"] = memory.workspace[name]
    return {"source": source, "mode": mode, "batch": batch, "dtype": graph.dtype,
            "passes": [{"pass": name, "changes": changes} for name, changes in log],
            "nodes": nodes, "layers_in_spec": len(graph.nodes), "nodes_after": len(optimized.nodes),
            "flops": sum(n["flops"] for n in nodes), "weight_bytes": weights, "folded_weight_bytes": folded,
            "memory": {"arena_bytes": memory.arena_bytes, "peak_bytes": memory.peak_bytes,
                       "workspace_bytes": max(memory.workspace.values(), default=0),
                       "shared": sorted(memory.shares), "own": list(memory.own),
                       "kernels": kernels.BACKEND, "packed": sorted(packed)},
            "peak_bytes_unoptimized": plan_memory(graph, batch, kernels).peak_bytes}


def _zero_filters(graph, made):
    """Zero arrays shaped like the pass-made filters and biases of ``graph``'s convolutions."""
    shapes = {"input": tuple(graph.input_shape), **{n.name: tuple(n.shape) for n in graph.nodes}}
    arrays = {}
    for n in graph.nodes:
        if n.op != "conv2d" or not set(n.params.values()) <= made:
            continue
        filters, channels = n.attrs["filters"], shapes[n.inputs[0]][0]
        arrays[n.params["W"]] = np.zeros((filters, channels, *n.attrs["kernel"]), dtype=graph.compute_dtype)
        if "b" in n.params:
            arrays[n.params["b"]] = np.zeros(filters, dtype=graph.compute_dtype)
    return arrays


def _mb(n):
    return f"{n / 2**20:.2f} MB"


def cmd_plan(args):
    p = plan(args.model, args.mode, args.batch)
    if args.json:
        print(jsonout.dumps(p, indent=2))
        return 0
    print(f"plan of {args.model} ({p['source']}, {p['dtype']}), mode {p['mode']}, batch {p['batch']}")
    for step in p["passes"]:
        print(f"  {step['pass']}: {len(step['changes'])} change{'s' if len(step['changes']) != 1 else ''}")
        for change in step["changes"]:
            print(f"    {change}")
    w = max(len(n["name"]) for n in p["nodes"])
    o = max(len(n["op"]) for n in p["nodes"])
    planned = p["memory"] is not None
    m = max(len(n.get("memory", "")) for n in p["nodes"])
    column = f"{'memory':<{m}}  " if planned else ""
    print(f"{'node':<{w}}  {'op':<{o}}  {'output shape':<14} {'MFLOP':>10} {'output':>10}  {column}layers")
    for n in p["nodes"]:
        shape = "x".join(map(str, n["output_shape"]))
        where = f"{n['memory']:<{m}}  " if planned else ""
        print(f"{n['name']:<{w}}  {n['op']:<{o}}  {shape:<14} {n['flops'] / 1e6:>10.1f} {_mb(n['output_bytes']):>10}  "
              f"{where}{', '.join(n['layers'])}")
    print(f"{p['layers_in_spec']} layers -> {p['nodes_after']} nodes; {p['flops'] / 1e9:.3f} GFLOP per batch")
    if p["weight_bytes"] is not None:
        folded = p.get("folded_weight_bytes")
        print(f"weights: {_mb(p['weight_bytes'])}" + ("" if folded is None else
                                                      f" (new arrays made by the passes: {_mb(folded)})"))
    mem = p["memory"]
    if mem is None:
        print("memory: not planned in train mode (every activation is kept for the backward pass)")
        return 0
    print(f"memory plan ({mem['kernels']} kernels): arena {_mb(mem['arena_bytes'])}, largest kernel workspace "
          f"{_mb(mem['workspace_bytes'])}, {len(mem['shared'])} outputs sharing an input's memory")
    print(f"planned peak: {_mb(mem['peak_bytes'])} (unoptimized graph: {_mb(p['peak_bytes_unoptimized'])})")
    return 0


def add_plan_arguments(s):
    s.add_argument("model", metavar="SPEC|MODEL.npz", help="a spec (shapes only) or a checkpoint")
    s.add_argument("--mode", choices=["predict", "train"], default="predict")
    s.add_argument("--batch", type=positive_int, default=100, help="samples per batch (default 100)")
    s.add_argument("--json", action="store_true")


COMMANDS = {"plan": (add_plan_arguments, cmd_plan)}
