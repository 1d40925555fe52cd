"""What each augmentation does to an image, exactly (netspec.data.augment).

The images have every pixel distinct and non-zero, so an output identifies the
transform applied to it: which images were flipped, by how many pixels each
was moved, by which factor each was scaled.
"""
import itertools

import numpy as np
import pytest

from netspec.data import AugmentSpec, augment
from netspec.data.augment import rotate


def images(n, c=2, h=5, w=6, dtype=np.float32):
    """n images (n, c, h, w), every pixel a different positive integer (no image is symmetric)."""
    return (1 + np.arange(n * c * h * w)).reshape(n, c, h, w).astype(dtype)


def moved(img, dy, dx):
    """img (C, H, W) moved down dy and right dx pixels; what comes in from outside is zero."""
    _, H, W = img.shape
    out = np.zeros_like(img)
    if abs(dy) < H and abs(dx) < W:
        out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            img[:, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


def test_moved_is_a_window_of_the_zero_padded_image():
    """The reference above is the pad-then-crop recipe: the window at (p - dy, p - dx) of the image padded by p."""
    img = images(1)[0]
    p = 2
    padded = np.pad(img, ((0, 0), (p, p), (p, p)))
    for dy, dx in itertools.product(range(-p, p + 1), repeat=2):
        np.testing.assert_array_equal(moved(img, dy, dx), padded[:, p - dy:p - dy + 5, p - dx:p - dx + 6])


def test_flip_reverses_the_last_axis_of_about_half_the_images_and_leaves_the_others():
    x = images(400)
    before = x.copy()
    out = augment(x, AugmentSpec(flip=True), np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert out.dtype == np.float32 and out.shape == x.shape
    flipped = np.array([np.array_equal(o, xi[:, :, ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ kept)  # every image is exactly one of the two, all channels alike
    assert 160 <= flipped.sum() <= 240  # each with probability 1/2

    again = augment(x, {"flip": True}, np.random.default_rng(0))
    np.testing.assert_array_equal(again, out)
    other = augment(x, {"flip": True}, np.random.default_rng(1))
    other_flipped = np.array([np.array_equal(o, xi[:, :, ::-1]) for o, xi in zip(other, x)])
    assert not np.array_equal(other_flipped, flipped)


@pytest.mark.parametrize("option", ["crop", "shift"])
@pytest.mark.parametrize("limit", [1, 2])
def test_crop_and_shift_move_each_image_by_offsets_within_the_limit(option, limit):
    """Each image is moved as a whole (all channels alike) by (dy, dx) in [-limit, limit]^2, zeros
    filling in; every offset in that square occurs, none outside it."""
    x = images(500)
    out = augment(x, AugmentSpec(**{option: limit}), np.random.default_rng(3))
    search = range(-limit - 2, limit + 3)
    offsets = []
    for o, xi in zip(out, x):
        matches = [(dy, dx) for dy, dx in itertools.product(search, repeat=2) if np.array_equal(o, moved(xi, dy, dx))]
        assert len(matches) == 1, matches
        offsets.append(matches[0])
    assert set(offsets) == set(itertools.product(range(-limit, limit + 1), repeat=2))
    np.testing.assert_array_equal(augment(x, {option: limit}, np.random.default_rng(3)), out)


def test_crop_larger_than_the_image_can_move_it_out_entirely():
    x = images(300, c=1, h=2, w=3)
    out = augment(x, AugmentSpec(crop=4), np.random.default_rng(5))
    for o, xi in zip(out, x):
        assert any(np.array_equal(o, moved(xi, dy, dx)) for dy, dx in itertools.product(range(-4, 5), repeat=2))
    assert any(not o.any() for o in out)  # moved by 2+ rows or 3+ columns: nothing of the image is left


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b", [0.3, 1.0])
def test_brightness_scales_each_image_by_one_factor_in_the_range(dtype, b):
    x = (0.5 + 0.5 * np.random.default_rng(0).random((500, 2, 4, 4))).astype(dtype)
    out = augment(x, AugmentSpec(brightness=b), np.random.default_rng(4))
    assert out.dtype == dtype
    ratio = (out / x).reshape(len(x), -1)
    factor = ratio.mean(axis=1)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(ratio - factor[:, None]) <= 2 * eps * factor[:, None])  # one factor per image
    assert np.all((factor >= 1 - b) & (factor <= 1 + b))
    assert factor.min() < 1 - b + 0.02 and factor.max() > 1 + b - 0.02  # the whole range is drawn
    assert out.max() > 1.0  # scaled, not clipped to the pixel range


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotate_by_quarter_turns_is_rot90(k):
    """rotate() turns counter-clockwise as displayed (row 0 at the top), about the image centre."""
    x = images(3, c=2, h=6, w=6)
    np.testing.assert_allclose(rotate(x, np.full(3, 90.0 * k)), np.rot90(x, k, axes=(2, 3)), atol=1e-4)


def test_all_transforms_in_their_fixed_order():
    """A batch and a generator state give exactly: flip, then crop, shift, rotate and brightness, each
    drawing its per-image parameters from the generator in that order (what a resumed run replays);
    the generator ends in the same state."""
    x = images(64, c=1, h=7, w=7)
    spec = AugmentSpec(flip=True, crop=1, shift=2, rotate=10.0, brightness=0.2)
    rng = np.random.default_rng(11)
    out = augment(x, spec, rng)

    draws = np.random.default_rng(11)
    n = len(x)
    want = np.where((draws.random(n) < 0.5)[:, None, None, None], x[:, :, :, ::-1], x)
    for limit in (1, 2):
        dy, dx = draws.integers(-limit, limit + 1, n), draws.integers(-limit, limit + 1, n)
        want = np.stack([moved(img, a, c) for img, a, c in zip(want, dy, dx)])
    want = rotate(want, draws.uniform(-10.0, 10.0, n))
    want = want * draws.uniform(0.8, 1.2, n).astype(np.float32)[:, None, None, None]
    np.testing.assert_array_equal(out, want)
    assert rng.random() == draws.random()


def hidden_by_cutout(h, w, cy, cx, size):
    """The (h, w) mask of pixels a size x size square centred on (cy, cx) covers, written out pixel by pixel."""
    mask = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            mask[y, x] = cy - size // 2 <= y < cy - size // 2 + size and cx - size // 2 <= x < cx - size // 2 + size
    return mask


@pytest.mark.parametrize("size", [1, 2, 3, 4, 9])
def test_cutout_zeroes_one_square_per_image_in_every_channel(size):
    """Each image loses exactly the pixels of one size x size square (clipped at the border) in every
    channel, centred on a pixel drawn uniformly: rows then columns, one draw per image each; the rest
    is untouched."""
    x = images(40, c=2, h=7, w=8)
    out = augment(x, AugmentSpec(cutout=size), np.random.default_rng(5))
    draws = np.random.default_rng(5)
    cy, cx = draws.integers(0, 7, 40), draws.integers(0, 8, 40)
    clipped = 0
    for img, o, y, c in zip(x, out, cy, cx):
        mask = hidden_by_cutout(7, 8, y, c, size)
        clipped += mask.sum() < size * size
        np.testing.assert_array_equal(o, np.where(mask, 0, img))
    assert clipped > 0 or size == 1   # some squares met the border and were cut there


def test_cutout_runs_after_the_other_transforms_and_only_draws_when_on():
    """With cutout on, the other transforms see the same draws as without it (it draws last), and a
    spec without cutout draws nothing for it."""
    x = images(32, c=1, h=6, w=6)
    base = AugmentSpec(flip=True, crop=1, brightness=0.1)
    plain_rng, cut_rng = np.random.default_rng(8), np.random.default_rng(8)
    plain = augment(x, base, plain_rng)
    cut = augment(x, AugmentSpec(flip=True, crop=1, brightness=0.1, cutout=3), cut_rng)
    assert ((cut == 0) | (cut == plain)).all() and (cut != plain).any()
    cy, cx = plain_rng.integers(0, 6, 32), plain_rng.integers(0, 6, 32)   # the draws cutout made next
    for p, c, y, xx in zip(plain, cut, cy, cx):
        np.testing.assert_array_equal(c, np.where(hidden_by_cutout(6, 6, y, xx, 3), 0, p))
    assert plain_rng.random() == cut_rng.random()


def test_integer_images_become_float32_and_the_input_is_never_written():
    x = np.random.default_rng(2).integers(0, 256, (8, 1, 4, 5)).astype(np.uint8)
    before = x.copy()
    out = augment(x, AugmentSpec(flip=True), np.random.default_rng(0))
    assert out.dtype == np.float32
    for o, xi in zip(out, x):
        assert np.array_equal(o, xi) or np.array_equal(o, xi[:, :, ::-1])
    np.testing.assert_array_equal(x, before)


def test_an_empty_batch_draws_nothing():
    rng = np.random.default_rng(6)
    out = augment(np.zeros((0, 1, 4, 4), np.float32), AugmentSpec(flip=True, shift=1), rng)
    assert out.shape == (0, 1, 4, 4)
    assert rng.random() == np.random.default_rng(6).random()
