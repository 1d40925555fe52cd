"""The layer cases shared by the gradient check (test_layers_grad) and the PyTorch parity test.

One table, so the two cannot drift: every registered layer type appears, with the
variants that exercise its options (stride, pad, rectangular windows, ragged edges,
train and test mode, several inputs). Each test asserts that it covers the registry.
"""
from dataclasses import dataclass, field


@dataclass
class Case:
    type: str
    in_shapes: list
    fields: dict = field(default_factory=dict)
    train: bool = False
    n: int = 2
    id: str = ""

    def __str__(self):
        return f"{self.type}-{self.id}" if self.id else self.type


LAYER_CASES = [
    # dense flattens N-D input; "affine" is the same layer under the book's name
    Case("dense", [(4,)], {"units": 3}, id="vector"),
    Case("dense", [(2, 3, 2)], {"units": 5}, id="flattens-3d"),
    Case("dense", [(4,)], {"units": 3, "bias": False}, id="no-bias"),
    Case("affine", [(3,)], {"units": 2}),
    Case("flatten", [(2, 3, 2)]),
    # conv: stride, pad, rectangular kernels, several channels, 1x1, no bias
    Case("conv2d", [(1, 5, 5)], {"filters": 2, "kernel": 3}, id="k3"),
    Case("conv2d", [(3, 5, 5)], {"filters": 4, "kernel": 3, "stride": 2, "pad": 1}, id="c3-s2-p1"),
    Case("conv2d", [(2, 4, 5)], {"filters": 3, "kernel": [2, 3], "pad": 1}, id="rect-2x3-p1"),
    Case("conv2d", [(2, 5, 6)], {"filters": 2, "kernel": [3, 2], "stride": 2, "pad": 1}, id="rect-3x2-s2"),
    Case("conv2d", [(3, 3, 4)], {"filters": 2, "kernel": 1, "bias": False}, id="1x1-no-bias"),
    Case("conv2d", [(2, 4, 4)], {"filters": 2, "kernel": 2, "stride": 2, "pad": 2}, id="pad-gt-half"),
    # floor mode: the stride leaves the last padded row/column unread (ResNet's downsampling)
    Case("conv2d", [(2, 6, 7)], {"filters": 3, "kernel": 3, "stride": 2, "pad": 1}, id="floor-s2-p1"),
    Case("conv2d", [(3, 6, 6)], {"filters": 2, "kernel": 1, "stride": 2, "bias": False}, id="floor-1x1-s2"),
    # pools: non-overlapping, overlapping, padded, rectangular, ragged (floor) edge
    Case("maxpool2d", [(2, 4, 4)], {"size": 2}, id="2x2"),
    Case("maxpool2d", [(2, 7, 7)], {"size": 3, "stride": 2}, id="overlap-3s2"),
    Case("maxpool2d", [(1, 4, 6)], {"size": 2, "stride": 2, "pad": 1}, id="pad1"),
    Case("maxpool2d", [(2, 5, 6)], {"size": 3, "stride": 2, "pad": 1}, id="overlap-pad1"),
    Case("maxpool2d", [(2, 4, 6)], {"size": [2, 3], "stride": 2}, id="rect-2x3"),
    Case("maxpool2d", [(1, 5, 5)], {"size": 2, "stride": 2}, id="ragged"),
    Case("avgpool2d", [(2, 4, 4)], {"size": 2}, id="2x2"),
    Case("avgpool2d", [(2, 7, 7)], {"size": 3, "stride": 2}, id="overlap-3s2"),
    Case("avgpool2d", [(1, 4, 6)], {"size": 2, "stride": 2, "pad": 1}, id="pad1"),
    Case("avgpool2d", [(2, 4, 6)], {"size": [2, 3], "stride": 1}, id="rect-2x3"),
    Case("avgpool2d", [(2, 4, 7)], {"size": [2, 3], "stride": 1, "pad": 1}, id="rect-2x3-pad1"),
    Case("avgpool2d", [(1, 5, 5)], {"size": 2, "stride": 2}, id="ragged"),
    Case("globalavgpool2d", [(3, 4, 5)], id="3x4x5"),
    Case("globalavgpool2d", [(2, 1, 1)], id="1x1"),
    # element-wise
    Case("relu", [(7,)], id="vector"),
    Case("relu", [(2, 3, 3)], id="image"),
    Case("sigmoid", [(5,)]),
    Case("tanh", [(2, 2, 3)]),
    Case("softmax", [(6,)], id="vector"),
    Case("softmax", [(2, 4)], id="last-axis"),
    # dropout with a frozen mask (train), identity at test
    Case("dropout", [(10,)], {"ratio": 0.5}, train=True, id="train"),
    Case("dropout", [(2, 3, 3)], {"ratio": 0.2}, train=True, id="train-image"),
    Case("dropout", [(10,)], {"ratio": 0.5}, train=False, id="test"),
    # batchnorm over features (2-D) and over channels (4-D), batch and running statistics
    Case("batchnorm", [(3,)], {"momentum": 0.8}, train=True, n=5, id="2d-train"),
    Case("batchnorm", [(3,)], {}, train=False, n=5, id="2d-test"),
    Case("batchnorm", [(2, 3, 2)], {"momentum": 0.7, "eps": 1e-3}, train=True, n=3, id="4d-train"),
    Case("batchnorm", [(2, 3, 2)], {}, train=False, n=3, id="4d-test"),
    # merges with two and three inputs
    Case("add", [(4,), (4,)], {"inputs": ["a", "b"]}, id="two"),
    Case("add", [(2, 2, 3)] * 3, {"inputs": ["a", "b", "c"]}, id="three-images"),
    Case("concat", [(3,), (2,)], {"inputs": ["a", "b"]}, id="vectors"),
    Case("concat", [(2, 2, 3), (1, 2, 3), (3, 2, 3)], {"inputs": ["a", "b", "c"]}, id="three-channels"),
]
