"""The memory plan of a graph for one batch size: where every activation lives, before anything runs.

Design: nodes run in the graph's order, and an activation is dead after its last
reader (``Graph.lifetimes``). Walking the nodes once, each output gets:

- no memory when its op only views its input (``ops.OPS[...].sharing == "alias"``:
  flatten, test-mode dropout); the viewed buffer then lives as long as either;
- its input's buffer when the op may work in place (ReLU, add) and that input
  dies at this node, is not the network input and is of the same size;
- otherwise a block of one arena: the smallest free block that fits (best fit),
  or new space at the arena's end. A block is free again when every name using
  it is dead; neighbouring free blocks merge.

Ops that ``netspec.ops`` cannot run into a given buffer allocate their own
output (the plan counts it while it lives) and, while they run, the temporaries
of ``ops.LAYER_TEMPORARIES`` (batchnorm's xhat). The planned peak is the arena, plus
the most that is allocated beside it at any one step: the outputs of those ops
alive then and the workspace of the kernel running (``ops.Op.workspace``, which
depends on the backend), plus a copy of the network output handed to the caller
(and, for a float16 model, the float32 copy of its input that predict computes on).
Offsets are multiples of 64 bytes.
"""
import dataclasses
import math

from .ops import LAYER_TEMPORARIES, OPS, output_bytes

ALIGN = 64


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    batch: int
    itemsize: int
    slots: dict          # node name -> (offset, bytes) in the arena
    shares: dict         # node name -> the node (or "input") whose memory its output is, when not its own
    own: tuple           # nodes whose layer allocates its own output
    workspace: dict      # node name -> bytes its kernel allocates while it runs
    arena_bytes: int
    peak_bytes: int      # arena + the most allocated beside it at one step (see the module doc)

    def to_dict(self):
        return {"batch": self.batch, "arena_bytes": self.arena_bytes, "peak_bytes": self.peak_bytes,
                "slots": {k: list(v) for k, v in self.slots.items()}, "shares": dict(self.shares),
                "own": list(self.own), "workspace": dict(self.workspace)}


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Arena:
    """Free-list allocator over offsets: best fit, growth at the end, merging on free."""

    def __init__(self):
        self.free = []   # sorted [(offset, size)]
        self.size = 0

    def alloc(self, n):
        n = _align(max(n, 1))
        fits = [(size, off) for off, size in self.free if size >= n]
        if fits:
            size, off = min(fits)
            self.free.remove((off, size))
            if size > n:
                self.free.append((off + n, size - n))
                self.free.sort()
            return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.size:   # extend the last free block
            off, size = self.free.pop()
            self.size = off + n
            return off
        off, self.size = self.size, self.size + n
        return off

    def release(self, off, n):
        n = _align(max(n, 1))
        self.free.append((off, n))
        self.free.sort()
        merged = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan_memory(graph, batch, kernels, packed=()):
    """The MemoryPlan of ``graph`` at ``batch`` samples, for the kernels of ``kernels`` (workspaces);
    ``packed``: the conv nodes whose filters the executor laid out beforehand (no per-call copy)."""
    itemsize = graph.compute_dtype.itemsize
    shapes = {"input": tuple(graph.input_shape), **{n.name: tuple(n.shape) for n in graph.nodes}}
    last = graph.lifetimes()
    arena = _Arena()
    owner = {"input": "input"}        # name -> the name that owns its memory
    users = {"input": {"input"}}      # owner -> names alive that use its memory
    slots, shares, own, workspace = {}, {}, [], {}
    own_live, beside = {}, 0          # own outputs alive -> bytes; the most beside the arena
    for k, node in enumerate(graph.nodes):
        op = OPS.get(node.op)
        nbytes = output_bytes(node, batch, itemsize)
        more = {"packed": True} if node.name in packed else {}
        workspace[node.name] = ws = LAYER_TEMPORARIES.get(node.op, 0) * nbytes if op is None else int(
            op.workspace(kernels, node, [shapes[i] for i in node.inputs], batch, itemsize, **more))
        if op is None:
            own.append(node.name)
            owner[node.name] = node.name
            own_live[node.name] = nbytes
        elif op.sharing == "alias":
            owner[node.name] = owner[node.inputs[0]]
            shares[node.name] = owner[node.inputs[0]]
        else:
            reuse = None
            if op.sharing == "inplace":
                for i in dict.fromkeys(node.inputs):
                    o = owner[i]
                    if (o != "input" and last.get(i) == k and users[o] <= {i} | _dead_at(users[o], last, k)
                            and _bytes_of(o, slots, own_live) == nbytes and i != graph.output):
                        reuse = o
                        break
            if reuse is not None:
                owner[node.name] = reuse
                shares[node.name] = reuse
            else:
                owner[node.name] = node.name
                slots[node.name] = (arena.alloc(nbytes), nbytes)
        users.setdefault(owner[node.name], set()).add(node.name)
        beside = max(beside, ws + sum(own_live.values()))
        # names read for the last time here are dead: free what nobody uses any more
        for i in dict.fromkeys(node.inputs):
            if last.get(i) == k and i != graph.output:
                o = owner[i]
                users[o].discard(i)
                _free_if_unused(o, users, slots, own_live, arena)
        if node.name != graph.output and last.get(node.name, -1) <= k:   # an output nobody reads
            users[owner[node.name]].discard(node.name)
            _free_if_unused(owner[node.name], users, slots, own_live, arena)
    out_bytes = batch * itemsize * math.prod(shapes[graph.output])   # the copy handed to the caller
    peak = arena.size + max(beside, out_bytes)
    if graph.dtype == "float16":   # predict computes on a float32 copy of a float16 model's input
        peak += batch * itemsize * math.prod(graph.input_shape)
    return MemoryPlan(batch=batch, itemsize=itemsize, slots=slots, shares=shares, own=tuple(own),
                      workspace=workspace, arena_bytes=arena.size, peak_bytes=peak)


def _dead_at(names, last, k):
    return {n for n in names if last.get(n, -1) <= k}


def _bytes_of(o, slots, own_live):
    if o in slots:
        return slots[o][1]
    return own_live.get(o)


def _free_if_unused(o, users, slots, own_live, arena):
    if o == "input" or users[o]:
        return
    if o in slots:
        arena.release(*slots[o])
    own_live.pop(o, None)
