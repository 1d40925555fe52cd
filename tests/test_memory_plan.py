"""The memory plan: known before the first batch, kept by the run, and changing no value.

The measured peak is what tracemalloc sees a predict allocate (numpy's arrays
are traced), from the moment the inference graph exists (its folded weights are
weights, not activations) to the end of the call. The compiled direct
convolution's few kilobytes of per-thread scratch come from C's malloc, which
tracemalloc does not see; the plan counts them, so a plan may exceed the
measurement by that much, never fall short of it.
"""
import threading
import tracemalloc

import numpy as np
import pytest

import netspec
from netspec.memory import plan_memory
from conftest import SPECS_DIR

CONV_SPECS = ["resnet_fashion", "deep_convnet", "simple_convnet", "deep_convnet_fashion_plus", "mnist_mlp"]


def measured_peak(model, x):
    model.inference_graph()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = model.predict(x)
        return tracemalloc.get_traced_memory()[1] - base, y
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("batch", [100, 37])
@pytest.mark.parametrize("name", CONV_SPECS)
@pytest.mark.parametrize("how", ["optimized", "plain", "float16"])
def test_the_planned_peak_is_the_measured_one_within_ten_percent(name, batch, how):
    """Also the plain graph and float16 models, whose batchnorms run through their layers (each
    allocates its xhat beside its output: resnet_fashion's stem batchnorm 10 MB more at batch 100)."""
    model = netspec.compile(SPECS_DIR / f"{name}.yaml", dtype="float16" if how == "float16" else "float32",
                            optimize=how != "plain")
    x = np.random.default_rng(0).random((batch, *model.input_shape)).astype(model.dtype)
    measured, _ = measured_peak(model, x)
    planned = model.memory_plan(batch).peak_bytes
    assert 0.9 * planned <= measured <= 1.1 * planned, (measured, planned)


def test_a_second_predict_allocates_no_activation():
    """The arena is kept: later batches of the same size allocate only what the plan puts beside
    the arena (kernel workspace, the output handed back), not one activation."""
    model = netspec.compile(SPECS_DIR / "deep_convnet.yaml", dtype="float32")
    x = np.random.default_rng(0).random((100, *model.input_shape)).astype(np.float32)
    model.predict(x)
    second, _ = measured_peak(model, x)
    plan = model.memory_plan(100)
    beside = plan.peak_bytes - plan.arena_bytes
    assert second <= 1.1 * beside + 2**16, (second, beside)
    assert second < min(n for _, n in plan.slots.values() if n > 100 * 10 * 4) + beside


def test_the_arena_reuses_dead_activations_and_relu_and_add_work_in_place():
    model = netspec.compile(SPECS_DIR / "resnet_fashion.yaml", dtype="float32")
    graph = model.inference_graph()[0]
    plan = model.memory_plan(100)
    every_output = sum(n for _, n in plan.slots.values())
    assert plan.arena_bytes < every_output / 3          # 22 outputs, a handful alive at once
    # as small as the most ever alive at once (that count includes the caller's input batch)
    assert plan.arena_bytes <= graph.peak_activation_bytes(100)
    # no two outputs alive at once overlap
    last = graph.lifetimes()
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    live = {name: (order[name], max([last.get(name, order[name])] + [last.get(s, 0) for s, o in plan.shares.items()
                                                                      if o == name]))
            for name in plan.slots}
    for a, (sa, ea) in live.items():
        for b, (sb, eb) in live.items():
            if a < b and sa <= eb and sb <= ea:
                (oa, na), (ob, nb) = plan.slots[a], plan.slots[b]
                assert oa + na <= ob or ob + nb <= oa, (a, b)
    # the plain graph: each ReLU and residual add writes over the input that dies there
    plain = netspec.compile(SPECS_DIR / "resnet_fashion.yaml", dtype="float32", optimize=False)
    pgraph, pplan = plain.inference_graph()[0], plain.memory_plan(100)
    inplace = [n.name for n in pgraph.nodes if n.op in ("relu", "add") and n.inputs[0] != "input"]
    assert sorted(pplan.shares) == sorted(inplace) and len(inplace) == 8 + 17   # 8 adds, 17 ReLUs
    for name in pplan.shares:
        assert pplan.shares[name] in (pgraph.node(name).inputs + tuple(pplan.shares.get(i) for i in pgraph.node(name).inputs))


@pytest.mark.parametrize("name", CONV_SPECS + ["two_layer_net", "simple_net"])
def test_planned_execution_gives_the_layers_own_forward_bit_for_bit(name):
    """optimize=False runs the same graph as the layers, through the arena: not one bit differs."""
    for dtype in ("float32", "float64"):
        model = netspec.compile(SPECS_DIR / f"{name}.yaml", dtype=dtype, optimize=False)
        x = np.random.default_rng(1).standard_normal((7, *model.input_shape)).astype(dtype)
        assert np.array_equal(model.predict(x), model.forward(x, False)), (name, dtype)


def test_threads_predicting_at_once_each_get_their_own_arena():
    model = netspec.compile(SPECS_DIR / "resnet_fashion.yaml", dtype="float32")
    rng = np.random.default_rng(2)
    xs = [rng.random((20, *model.input_shape)).astype(np.float32) for _ in range(4)]
    want = [model.predict(x) for x in xs]
    got, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(5):
                got[k] = model.predict(xs[k])
                if not np.array_equal(got[k], want[k]):
                    errors.append(k)
        except Exception as exc:   # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_predicted_array_is_the_callers_not_a_view_of_the_arena():
    model = netspec.compile(SPECS_DIR / "simple_convnet.yaml", dtype="float32")
    rng = np.random.default_rng(3)
    a, b = (rng.random((5, *model.input_shape)).astype(np.float32) for _ in range(2))
    ya = model.predict(a)
    keep = ya.copy()
    model.predict(b)
    assert np.array_equal(ya, keep) and ya.base is None


def test_a_spec_plans_without_weights_and_agrees_with_its_model():
    spec = netspec.load_spec(SPECS_DIR / "deep_convnet.yaml")
    from netspec import kernels
    from netspec.ir import graph_of_spec
    from netspec.passes import optimize
    graph, _ = optimize(graph_of_spec(spec, "float32"))
    from_spec = plan_memory(graph, 64, kernels.load())
    from_model = netspec.compile(spec, dtype="float32").memory_plan(64)
    assert (from_spec.arena_bytes, from_spec.peak_bytes, from_spec.slots) == (
        from_model.arena_bytes, from_model.peak_bytes, from_model.slots)


def test_folded_convolutions_are_packed_once_with_the_same_values():
    """Convolutions whose weights a pass made (batchnorm folded in) get their filters laid out for
    the compiled kernel when the inference graph is made, not on every call: the outputs equal
    those of laying them out per call bit for bit, and the plan's per-call workspace of each
    such node no longer holds the filters."""
    from netspec import kernels
    from netspec.executor import Executor
    model = netspec.compile(SPECS_DIR / "resnet_fashion.yaml", dtype="float32")
    graph, _, ex = model._inference_state()
    convs = [n for n in graph.nodes if n.op == "conv2d"]
    assert len(convs) == 19 and all("+" in n.params["W"] for n in convs)   # every conv has its batchnorm folded
    per_call = Executor(graph, model.layers, kernels)                      # nothing fixed: nothing packed
    assert per_call.packed == {}
    if kernels.BACKEND == "numpy":
        assert ex.packed == {}
        return
    assert sorted(ex.packed) == sorted(n.name for n in convs)
    x = np.random.default_rng(3).random((37, *model.input_shape)).astype(np.float32)
    with kernels.blas_scope():
        np.testing.assert_array_equal(model.predict(x), per_call.run(x))
    with_packing, without = ex.plan(37), per_call.plan(37)
    winograd = kernels.backend_info()["winograd"]
    for n in convs:
        F, C, kh, kw = graph.arrays[n.params["W"]].shape
        lanes = -(-F // 16) * 16
        # stride-1 3x3 layers of 16+ channels run Winograd's algorithm where the build has it:
        # their filters are held as U, 16 values per (input channel, filter)
        wino = winograd and (kh, kw) == (3, 3) and n.attrs["stride"] == 1 and C >= 16
        assert ex.packed[n.name][3] == wino, n.name
        per_filter = 16 if wino else kh * kw
        assert without.workspace[n.name] - with_packing.workspace[n.name] == 4 * (C * per_filter * lanes + lanes)
    if winograd:
        assert sum(p[3] for p in ex.packed.values()) == 14   # resnet_fashion's stride-1 3x3 convs after the stem


def test_the_models_own_conv_weights_are_read_live_not_packed():
    """deep_convnet's convolutions keep the model's own weights (no batchnorm to fold): they may
    change between predicts (training beside them), so nothing is packed and a change shows."""
    model = netspec.compile(SPECS_DIR / "deep_convnet.yaml", dtype="float32")
    x = np.random.default_rng(4).random((5, *model.input_shape)).astype(np.float32)
    before = model.predict(x)
    assert model._inference_state()[2].packed == {}
    first = next(l for l in model.layers if l.spec.type == "conv2d")
    first.params["W"] *= 2
    assert not np.array_equal(model.predict(x), before)
