"""The inference graph: each pass keeps the function (checked against the plain graph) and does what it says.

The reference is the same model compiled with ``optimize=False``: its predict runs
every layer of the spec in order. Batchnorm statistics and scales are randomised
first, so a wrong fold cannot hide behind gamma = 1, beta = 0, mean 0, var 1.
"""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netspec
from netspec.ir import graph_of_model, graph_of_spec
from netspec.passes import optimize

from conftest import SPECS_DIR

SHIPPED = sorted(SPECS_DIR.glob("*.yaml"))
# relative to the largest output: near-zero outputs carry the rounding of the large ones
RELATIVE = {"float32": 1e-5, "float64": 1e-12}


def assert_close(got, want, dtype):
    scale = max(float(np.abs(want).max()), 1e-300)
    assert float(np.abs(got - want).max()) <= RELATIVE[dtype] * scale, (np.abs(got - want).max(), scale)


def randomise_norms(model, seed=0):
    """Running statistics and scales far from their initial values (negative gammas included)."""
    rng = np.random.default_rng(seed)
    for k, v in {**model.params, **model.buffers}.items():
        if k.endswith("running_var"):
            v[...] = rng.uniform(0.05, 3.0, v.shape)
        elif k.endswith(("running_mean", "beta", "gamma")):
            v[...] = rng.standard_normal(v.shape)
    return model


def plain_and_optimized(spec, dtype, seed=0):
    plain = randomise_norms(netspec.compile(spec, dtype=dtype, optimize=False), seed)
    fast = netspec.compile(spec, dtype=dtype)
    fast.load_arrays({**plain.params, **plain.buffers})
    return plain, fast


def sample_input(model, n=4, seed=1):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_spec_predicts_the_same_optimized(path, dtype):
    plain, fast = plain_and_optimized(path, dtype)
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), dtype)


def test_resnet_keeps_no_batchnorm_and_fuses_its_relus():
    model = netspec.compile(SPECS_DIR / "resnet_fashion.yaml")
    graph, log = model.inference_graph()
    ops = [n.op for n in graph.nodes]
    assert "batchnorm" not in ops and "relu" not in ops
    changes = dict(log)
    assert len(changes["fold_batchnorm"]) == sum(l.spec.type == "batchnorm" for l in model.layers) == 19
    # every residual add is followed by its ReLU: both go into the conv that feeds the add
    assert "add" not in ops
    fused = [n for n in graph.nodes if n.attrs.get("residual")]
    assert len(fused) == len(changes["fuse_residual_add"]) == 8
    assert all(n.op == "conv2d" and n.activation == "relu" and len(n.inputs) == 2 for n in fused)
    order = [n.name for n in graph.nodes]
    for n in fused:   # the residual is computed before the conv that adds it
        assert n.inputs[1] == "input" or order.index(n.inputs[1]) < order.index(n.name)
    # a down block's add(conv2, projection): the projection comes later, so it takes the add
    down = graph.node("stage2.block1.proj")
    assert down.inputs == ("stage1.block3.conv2", "stage2.block1.conv2") and down.origin[-2:] == (
        "stage2.block1.add", "stage2.block1.out")
    assert graph.output == model.layers[-1].name  # the last layer was not folded away


def test_deep_convnet_drops_its_dropout_and_pools_inside_its_convs():
    model = netspec.compile(SPECS_DIR / "deep_convnet.yaml")
    graph, log = model.inference_graph()
    assert [n.op for n in graph.nodes].count("dropout") == 0
    assert dict(log)["drop_dropout"] == ["dropped dropout1 (identity at inference)", "dropped dropout2 (identity at inference)"]
    # the last layer fed dropout2: the graph's output moved to it
    assert graph.output == "affine2" and graph.node("affine2").activation is None
    # every pool reads a conv (through its ReLU) that nothing else reads: the conv pools its output
    assert dict(log)["fuse_maxpool"] == ["fused pool1 into conv2", "fused pool2 into conv4", "fused pool3 into conv6"]
    assert "maxpool2d" not in [n.op for n in graph.nodes]
    conv2 = graph.node("conv2")
    assert (conv2.shape, conv2.origin, conv2.activation) == ((16, 14, 14), ("conv2", "relu2", "pool1"), "relu")
    assert conv2.attrs["pool"] == {"size": [2, 2], "stride": 2, "pad": 0}
    assert graph.node("conv3").inputs == ("conv2",)


def spec_with(layers, shape=(3, 6, 6)):
    return {"name": "t", "seed": 2, "input": {"shape": list(shape)}, "layers": layers,
            "loss": "softmax_cross_entropy", "dtype": "float64"}


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_into_conv_with_negative_gamma_tiny_var_and_a_bias(bias):
    spec = spec_with([{"type": "conv2d", "name": "c", "filters": 4, "kernel": 3, "pad": 1, "bias": bias},
                      {"type": "batchnorm", "name": "bn", "eps": 1e-3}, {"type": "dense", "units": 5}])
    plain = netspec.compile(spec, optimize=False)
    rng = np.random.default_rng(5)
    if bias:
        plain.params["c.b"][...] = rng.standard_normal(4)
    plain.params["bn.gamma"][...] = [-2.0, 0.5, -0.1, 3.0]
    plain.params["bn.beta"][...] = rng.standard_normal(4)
    plain.buffers["bn.running_mean"][...] = rng.standard_normal(4)
    plain.buffers["bn.running_var"][...] = [1e-6, 0.5, 2.0, 1e-4]   # tiny variances: eps matters
    fast = netspec.compile(spec)
    fast.load_arrays({**plain.params, **plain.buffers})
    graph, log = fast.inference_graph()
    assert dict(log)["fold_batchnorm"] == ["folded bn into c"] and graph.node("c").params == {"W": "c.W+bn", "b": "c.b+bn"}
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), "float64")
    # the fold made new arrays: the model's own weights are untouched
    np.testing.assert_array_equal(fast.params["c.W"], plain.params["c.W"])


def test_batchnorm_folds_into_dense_per_output_unit():
    spec = spec_with([{"type": "dense", "name": "d", "units": 6}, {"type": "batchnorm", "name": "bn"},
                      {"type": "relu"}, {"type": "dense", "units": 3}], shape=(5,))
    plain, fast = plain_and_optimized(spec, "float64", seed=3)
    graph, log = fast.inference_graph()
    assert [n.op for n in graph.nodes] == ["dense", "dense"] and graph.node("d").activation == "relu"
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), "float64")


def test_nothing_fuses_into_an_output_another_layer_reads():
    """A conv whose output also feeds a second branch keeps its batchnorm and ReLU separate."""
    spec = spec_with([{"type": "conv2d", "name": "c", "filters": 3, "kernel": 3, "pad": 1},
                      {"type": "batchnorm", "name": "bn", "inputs": ["c"]},
                      {"type": "relu", "name": "r", "inputs": ["c"]},
                      {"type": "add", "name": "a", "inputs": ["bn", "r"]},
                      {"type": "dense", "units": 2}])
    plain, fast = plain_and_optimized(spec, "float64")
    graph, log = fast.inference_graph()
    assert dict(log)["fold_batchnorm"] == [] and dict(log)["fuse_relu"] == []
    assert [n.op for n in graph.nodes] == ["conv2d", "batchnorm", "relu", "add", "dense"]
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), "float64")


POOLS = {"fused": {"type": "maxpool2d", "size": 2},
         "3x3": {"type": "maxpool2d", "size": 3},
         "stride 1": {"type": "maxpool2d", "size": 2, "stride": 1},
         "padded": {"type": "maxpool2d", "size": 2, "pad": 1},
         "average": {"type": "avgpool2d", "size": 2}}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("relu", [True, False])
def test_only_a_2x2_stride_2_max_pool_fuses_into_the_conv_before_it(pool, relu, dtype):
    """The pool fuses into a conv (its ReLU fused or not; 7x7 output: the ragged last row and
    column are dropped) and predict is unchanged; other windows, strides, padding and the
    average pool stay nodes of their own."""
    layers = [{"type": "conv2d", "name": "c", "filters": 5, "kernel": 3, "pad": 1}, {"type": "batchnorm", "name": "bn"}]
    layers += [{"type": "relu", "name": "r"}] if relu else []
    layers += [{**POOLS[pool], "name": "p"}, {"type": "dense", "units": 3}]
    spec = {**spec_with(layers, shape=(3, 7, 7)), "dtype": dtype}
    plain, fast = plain_and_optimized(spec, dtype)
    graph, log = fast.inference_graph()
    if pool == "fused":
        assert dict(log)["fuse_maxpool"] == ["fused p into c"]
        assert [n.op for n in graph.nodes] == ["conv2d", "dense"] and graph.node("c").shape == (5, 3, 3)
        assert graph.node("c").origin == ("c", "bn") + (("r",) if relu else ()) + ("p",)
    else:
        assert dict(log)["fuse_maxpool"] == [] and graph.node("p").inputs == ("c",)
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), dtype)


def test_a_pool_stays_after_a_conv_another_node_reads_or_that_took_a_residual():
    spec = spec_with([{"type": "conv2d", "name": "c", "filters": 3, "kernel": 3, "pad": 1},
                      {"type": "maxpool2d", "name": "p1", "size": 2, "inputs": ["c"]},
                      {"type": "maxpool2d", "name": "p2", "size": 2, "inputs": ["c"]},
                      {"type": "conv2d", "name": "d", "filters": 3, "kernel": 3, "pad": 1, "inputs": ["p1"]},
                      {"type": "add", "name": "a", "inputs": ["d", "p2"]},
                      {"type": "maxpool2d", "name": "p3", "size": 2},
                      {"type": "dense", "units": 2}])
    plain, fast = plain_and_optimized(spec, "float64")
    graph, log = fast.inference_graph()
    assert dict(log)["fuse_residual_add"] == ["fused a into d"] and dict(log)["fuse_maxpool"] == []
    assert [n.op for n in graph.nodes] == ["conv2d", "maxpool2d", "maxpool2d", "conv2d", "maxpool2d", "dense"]
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), "float64")


def test_a_relu_on_the_network_input_or_a_pool_stays():
    spec = spec_with([{"type": "relu", "name": "r0"}, {"type": "maxpool2d", "size": 2},
                      {"type": "relu", "name": "r1"}, {"type": "dense", "units": 2}])
    graph, log = optimize(graph_of_spec(netspec.load_spec(spec)))
    assert dict(log)["fuse_relu"] == [] and [n.op for n in graph.nodes].count("relu") == 2


def test_float16_models_only_drop_dropout_and_keep_their_rounding():
    spec = SPECS_DIR / "deep_convnet.yaml"
    half = netspec.compile(spec, dtype="float16")
    graph, log = half.inference_graph()
    assert [name for name, _ in log] == ["drop_dropout"]
    plain = netspec.compile(spec, dtype="float16", optimize=False)
    x = sample_input(half)
    np.testing.assert_array_equal(half.predict(x), plain.predict(x))


def test_a_spec_graph_plans_the_same_passes_without_weights():
    spec = netspec.load_spec(SPECS_DIR / "resnet_fashion.yaml")
    from_spec, spec_log = optimize(graph_of_spec(spec))
    from_model, model_log = optimize(graph_of_model(netspec.compile(spec)))
    assert spec_log == model_log
    assert [(n.name, n.op, n.inputs, n.activation) for n in from_spec.nodes] == \
        [(n.name, n.op, n.inputs, n.activation) for n in from_model.nodes]


def test_predict_leaves_the_layers_state_alone_and_runs_beside_training():
    """Inference runs private copies of the layers: a gradient computed while predict runs
    on the same model in another thread is the gradient computed alone."""
    model = netspec.compile(SPECS_DIR / "resnet_fashion.yaml", dtype="float64")
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 1, 28, 28)), np.array([1, 2, 3, 4])
    alone = {k: v.copy() for k, v in model.gradient(x, t)[1].items()}
    caches = {l.name: dict(vars(l)) for l in model.layers}
    stop = threading.Event()

    def predicting():
        while not stop.is_set():
            model.predict(rng.standard_normal((8, 1, 28, 28)))

    worker = threading.Thread(target=predicting)
    worker.start()
    try:
        for _ in range(3):
            grads = model.gradient(x, t)[1]
            for k in alone:
                np.testing.assert_array_equal(grads[k], alone[k])
    finally:
        stop.set()
        worker.join()
    model.predict(x)
    for l in model.layers:
        assert vars(l).keys() == caches[l.name].keys()


# --- random DAGs: residual blocks of conv / batchnorm / relu / add / dropout ---------------

@st.composite
def residual_specs(draw):
    C = draw(st.integers(1, 4))
    layers = [{"type": "conv2d", "name": "stem", "filters": C, "kernel": 3, "pad": 1,
               "bias": draw(st.booleans())}]
    prev = "stem"
    for b in range(draw(st.integers(1, 3))):
        body = []
        for k in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["conv", "bn", "relu", "dropout"]))
            name = f"b{b}_{k}"
            entry = {"conv": {"type": "conv2d", "filters": C, "kernel": 3, "pad": 1, "bias": draw(st.booleans())},
                     "bn": {"type": "batchnorm", "eps": draw(st.sampled_from([1e-5, 1e-2]))},
                     "relu": {"type": "relu"}, "dropout": {"type": "dropout", "ratio": 0.5}}[kind]
            body.append({**entry, "name": name, "inputs": [body[-1]["name"] if body else prev]})
        add = {"type": "add", "name": f"add{b}", "inputs": [prev, body[-1]["name"]]}
        layers += body + [add]
        prev = add["name"]
        if draw(st.booleans()):
            layers.append({"type": "relu", "name": f"out{b}", "inputs": [prev]})
            prev = f"out{b}"
    # a head that may end in a 2x2 max pool, after a conv (and its batchnorm and ReLU) or not
    head = draw(st.sampled_from(["none", "pool", "conv-pool", "conv-relu-pool", "conv-bn-relu-pool"]))
    for k, kind in enumerate(head.split("-") if head != "none" else []):
        entry = {"pool": {"type": "maxpool2d", "size": 2},
                 "conv": {"type": "conv2d", "filters": C, "kernel": 3, "pad": 1, "bias": draw(st.booleans())},
                 "bn": {"type": "batchnorm"}, "relu": {"type": "relu"}}[kind]
        layers.append({**entry, "name": f"head{k}", "inputs": [prev]})
        prev = f"head{k}"
    layers.append({"type": "dense", "units": 3, "inputs": [prev]})
    return spec_with(layers, shape=(C, 5, 5))


@settings(max_examples=40, deadline=None)
@given(spec=residual_specs(), seed=st.integers(0, 2**16))
def test_random_residual_graphs_predict_the_same_optimized(spec, seed):
    plain, fast = plain_and_optimized(spec, "float64", seed)
    x = sample_input(plain, seed=seed)
    assert_close(fast.predict(x), plain.predict(x), "float64")
    graph = fast.inference_graph()[0]
    readers = graph.consumers()
    names = {n.name: n for n in graph.nodes}
    assert not [n.name for n in graph.nodes if n.op == "dropout"]
    # nothing foldable is left: every batchnorm reads the input, a non-conv/dense node, or a shared one
    assert not [n.name for n in graph.nodes if n.op == "batchnorm" and n.inputs[0] in names
                and names[n.inputs[0]].op in ("conv2d", "dense") and not names[n.inputs[0]].activation
                and readers[n.inputs[0]] == [n.name]]


def test_chains_of_the_same_op_rewrite_one_after_another():
    """Found by the random graphs: the second of two batchnorms (or dropouts) in a row reads
    a node the first rewrite removed; each pass looks its node up again, and a folded conv
    takes the second batchnorm too."""
    spec = spec_with([{"type": "conv2d", "name": "c", "filters": 2, "kernel": 3},
                      {"type": "batchnorm", "name": "bn1"}, {"type": "batchnorm", "name": "bn2"},
                      {"type": "dropout", "name": "d1", "ratio": 0.5}, {"type": "dropout", "name": "d2", "ratio": 0.5},
                      {"type": "dense", "units": 2}])
    plain, fast = plain_and_optimized(spec, "float64")
    graph, log = fast.inference_graph()
    assert [n.name for n in graph.nodes] == ["c", "dense1"] and graph.node("dense1").inputs == ("c",)
    assert dict(log)["fold_batchnorm"] == ["folded bn1 into c", "folded bn2 into c"]
    assert graph.node("c").params == {"W": "c.W+bn1+bn2", "b": "c.b+bn1+bn2"}
    x = sample_input(plain)
    assert_close(fast.predict(x), plain.predict(x), "float64")


def test_netspec_plan_of_a_spec_and_of_a_checkpoint(capsys, tmp_path):
    from netspec.cli import main
    assert main(["plan", str(SPECS_DIR / "resnet_fashion.yaml"), "--json", "--batch", "10"]) == 0
    p = __import__("json").loads(capsys.readouterr().out)
    assert [s["pass"] for s in p["passes"]] == ["drop_dropout", "fold_batchnorm", "fuse_relu", "fuse_residual_add",
                                                "fuse_maxpool"]
    assert (len(p["passes"][1]["changes"]), p["layers_in_spec"], p["nodes_after"]) == (19, 66, 21)
    assert p["passes"][4]["changes"] == ["fused stem_pool into stem"]
    assert len(p["passes"][3]["changes"]) == 8 and sum(n["op"] == "conv2d+add+relu" for n in p["nodes"]) == 8
    assert p["source"] == "spec" and p["weight_bytes"] is None
    spec_graph = graph_of_spec(netspec.load_spec(SPECS_DIR / "resnet_fashion.yaml"))
    assert p["flops"] == sum(n["flops"] for n in p["nodes"]) == 10 * (
        sum(n.flops for n in spec_graph.nodes if n.op != "batchnorm"))  # folding removes exactly the bn work
    mem = p["memory"]
    assert mem["peak_bytes"] < p["peak_bytes_unoptimized"]
    # the arena holds at least what is alive at once (the network input is the caller's, not in it)
    optimized = netspec.compile(SPECS_DIR / "resnet_fashion.yaml").inference_graph()[0]
    assert mem["arena_bytes"] >= optimized.peak_activation_bytes(10) - 10 * 28 * 28 * 4
    assert mem["shared"] == []   # the adds went into their convs (which never write over their inputs)
    stem = p["nodes"][0]
    assert (stem["op"], stem["layers"], stem["output_bytes"]) == (
        "conv2d+relu+maxpool2d", ["stem", "stem_bn", "stem_relu", "stem_pool"], 10 * 32 * 14 * 14 * 4)
    # a checkpoint: the same passes, with the weights counted
    spec = spec_with([{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "batchnorm"}, {"type": "relu"},
                      {"type": "dense", "units": 2}])
    spec["train"] = {"data": {"source": "inline", "x": np.zeros((4, 3, 6, 6)).tolist(), "t": [0, 1, 0, 1]},
                     "epochs": 1, "batch_size": 2}
    netspec.train(spec, out=tmp_path / "run")
    assert main(["plan", str(tmp_path / "run" / "model.npz")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"plan of {tmp_path / 'run' / 'model.npz'} (checkpoint, float64), mode predict, batch 100"
    assert "    folded bn1 into conv1" in out and "    fused relu1 into conv1" in out
    weights = next(l for l in out if l.startswith("weights: "))
    assert weights == (f"weights: {(2 * 3 * 9 + 2 + 2 + 2 + 2 + 2 + 2 * 16 * 2 + 2) * 8 / 2**20:.2f} MB "
                       f"(new arrays made by the passes: {(2 * 3 * 9 + 2) * 8 / 2**20:.2f} MB)")
    assert out[-1].startswith("planned peak: ") and out[-2].startswith("memory plan (")


def test_the_inference_graph_is_kept_until_a_folded_weight_changes():
    plain, fast = plain_and_optimized(SPECS_DIR / "resnet_fashion.yaml", "float64")
    first, _ = fast.inference_graph()
    assert fast.inference_graph()[0] is first            # nothing changed: the same graph
    x = sample_input(plain)
    fast.params["stem_bn.gamma"][0] *= -3.0              # in place, as an optimizer step does
    plain.params["stem_bn.gamma"][0] *= -3.0
    assert fast.inference_graph()[0] is not first
    assert_close(fast.predict(x), plain.predict(x), "float64")
    fast.params["fc.W"][...] += 1.0                      # a weight used as it is: read in place
    plain.params["fc.W"][...] += 1.0
    assert_close(fast.predict(x), plain.predict(x), "float64")


# --- the train pipeline: batchnorm + ReLU in one layer ----------------------------------

def _gradients_both_ways(spec, dtype, n=6, seed=0):
    fast = netspec.compile(spec, dtype=dtype)
    plain = netspec.compile(spec, dtype=dtype, optimize=False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *fast.input_shape)).astype(dtype)
    t = rng.integers(0, fast.output_shape[0], n)
    return fast, fast.gradient(x, t), plain.gradient(x, t)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["resnet_fashion", "deep_convnet_fashion_plus"])
def test_training_runs_each_relu_inside_its_batchnorm_and_changes_no_gradient_bit(name, dtype):
    fast, (loss_f, grads_f), (loss_p, grads_p) = _gradients_both_ways(SPECS_DIR / f"{name}.yaml", dtype)
    graph, log = fast.training_graph()
    fused = dict(log)["fuse_batchnorm_relu"]
    bns = [l for l in fast.layers if l.spec.type == "batchnorm"]
    assert len(fused) == sum(l.fused_relu for l in bns) == {"resnet_fashion": 9, "deep_convnet_fashion_plus": 7}[name]
    assert not [n for n in graph.nodes if n.op == "relu" and graph.node(n.inputs[0]).op == "batchnorm"
                and graph.consumers()[n.inputs[0]] == [n.name]]
    assert loss_f == loss_p and sorted(grads_f) == sorted(grads_p)
    for k in grads_f:
        assert np.array_equal(grads_f[k], grads_p[k]), k


def test_a_shared_or_float16_batchnorm_keeps_its_relu_separate():
    spec = spec_with([{"type": "conv2d", "name": "c", "filters": 2, "kernel": 3},
                      {"type": "batchnorm", "name": "bn"}, {"type": "relu", "name": "r"},
                      {"type": "add", "name": "a", "inputs": ["bn", "r"]}, {"type": "dense", "units": 2}])
    model = netspec.compile(spec)
    assert dict(model.training_graph()[1])["fuse_batchnorm_relu"] == []   # bn is read by the add too
    spec["layers"][3] = {"type": "dense", "name": "a", "units": 2}
    del spec["layers"][4]
    assert dict(netspec.compile(spec).training_graph()[1])["fuse_batchnorm_relu"] == ["fused r into bn"]
    half = netspec.compile({**spec, "dtype": "float32"}, dtype="float16")
    assert half.training_graph()[1] == [] and not any(l.spec.type == "relu" and l.absorbed for l in half.layers)


def test_fused_batchnorm_relu_passes_the_gradient_check():
    from netspec.gradcheck import check_model, random_batch
    spec = spec_with([{"type": "conv2d", "filters": 3, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
                      {"type": "relu"}, {"type": "dense", "units": 4}])
    model = netspec.compile(spec)
    x, t = random_batch(model, n=4)
    report = check_model(model, x, t)
    assert [l.fused_relu for l in model.layers if l.spec.type == "batchnorm"] == [True]
    assert all(r["error"] < 1e-6 for r in report.values()), report


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_kernels_with_relu_equal_the_two_kernels_in_a_row(train):
    from netspec import kernels
    K = kernels.load()
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((5, 3, 13)).astype(dtype)
        gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
        mean, var = K.batchnorm_stats(x)
        inv = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        out, xhat = K.batchnorm_forward(x, gamma, beta, mean, inv)
        fused, xhat2 = K.batchnorm_forward(x, gamma, beta, mean, inv, True)
        relu = K.relu_forward(out)
        assert np.array_equal(fused, relu) and np.array_equal(xhat, xhat2)
        dout = rng.standard_normal(x.shape).astype(dtype)
        want = K.batchnorm_backward(K.relu_backward(dout, relu), xhat, gamma, inv, train)
        got = K.batchnorm_backward(dout, xhat, gamma, inv, train, fused)
        for g, w in zip(got, want):
            assert np.array_equal(g, w)


@settings(max_examples=25, deadline=None)
@given(spec=residual_specs(), seed=st.integers(0, 2**16))
def test_random_residual_graphs_train_the_same_with_the_train_pipeline(spec, seed):
    """Both models draw the same dropout masks (same seed): every gradient bit must agree."""
    _, (loss_f, grads_f), (loss_p, grads_p) = _gradients_both_ways(spec, "float64", n=3, seed=seed)
    assert loss_f == loss_p
    for k in grads_f:
        assert np.array_equal(grads_f[k], grads_p[k]), k
