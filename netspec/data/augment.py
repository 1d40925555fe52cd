"""Random image augmentation for (N, C, H, W) batches, pure numpy.

Design: each transform draws its per-image parameters from the caller's
``np.random.Generator`` in a fixed order, so a batch and a generator state
determine the result exactly (resume reproduces it). Transforms run on a copy;
the input batch is never written. Pixels moved in from outside the image are
zero (the background of MNIST-like data). ``shift`` and ``crop`` are the same
translation drawn two ways: ``crop`` is the pad-then-random-crop recipe of
CIFAR training, ``shift`` a translation by up to N pixels; both offsets lie in
[-N, N]. ``cutout`` (DeVries & Taylor, 2017) runs last and sets a square of
side N to zero in every channel, its centre uniform over the image's pixels
and the square clipped at the border (so near an edge less is hidden); it
draws from the generator only when on, so specs without it see the same draws
as before it existed.
"""

import numpy as np

from netspec.data.spec import AugmentSpec
from netspec.errors import DataError


def augment(x, spec, rng):
    """A new (N, C, H, W) array: ``x`` with the random transforms of ``spec`` applied per image."""
    if isinstance(spec, dict):
        spec = AugmentSpec.model_validate(spec)
    x = np.asarray(x)
    if x.ndim != 4:
        raise DataError(f"augment expects image batches of shape (N, C, H, W), found shape {x.shape}; "
                        "turn augmentation off for non-image data or keep flatten off")
    out = np.array(x, dtype=x.dtype if x.dtype.kind == "f" else np.float32, copy=True)
    n = len(out)
    if n == 0:
        return out
    if spec.flip:
        mask = rng.random(n) < 0.5
        out[mask] = out[mask, :, :, ::-1]
    for limit in (spec.crop, spec.shift):
        if limit:
            dy = rng.integers(-limit, limit + 1, size=n)
            dx = rng.integers(-limit, limit + 1, size=n)
            out = translate(out, dy, dx)
    if spec.rotate:
        angles = rng.uniform(-spec.rotate, spec.rotate, size=n)
        out = rotate(out, angles)
    if spec.brightness:
        factors = rng.uniform(1.0 - spec.brightness, 1.0 + spec.brightness, size=n).astype(out.dtype)
        out *= factors[:, None, None, None]
    if spec.cutout:
        H, W = out.shape[2:]
        cy, cx = rng.integers(0, H, size=n), rng.integers(0, W, size=n)
        out = cutout(out, cy, cx, spec.cutout)
    return out


def cutout(x, cy, cx, size):
    """Zero, in place, the size x size square of image i whose centre is (cy[i], cx[i]) (for an
    even size, the centre is the lower right of the middle four pixels), clipped at the border."""
    H, W = x.shape[2:]
    top, left = np.asarray(cy) - size // 2, np.asarray(cx) - size // 2
    rows, cols = np.arange(H), np.arange(W)
    hidden = (((rows >= top[:, None]) & (rows < top[:, None] + size))[:, :, None]
              & ((cols >= left[:, None]) & (cols < left[:, None] + size))[:, None, :])   # (N, H, W)
    np.putmask(x, np.broadcast_to(hidden[:, None], x.shape), 0)
    return x


def translate(x, dy, dx):
    """Shift image i down by dy[i] and right by dx[i] pixels, filling with zeros: (N, C, H, W)."""
    N, C, H, W = x.shape
    pad = int(max(np.abs(dy).max(), np.abs(dx).max(), 0))
    if pad == 0:
        return x.copy()
    padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = x
    rows = (pad - np.asarray(dy))[:, None] + np.arange(H)  # (N, H) source rows in the padded image
    cols = (pad - np.asarray(dx))[:, None] + np.arange(W)  # (N, W)
    n = np.arange(N)[:, None, None]
    # advanced indices on axes 0, 2, 3 move to the front: result (N, H, W, C)
    out = padded.transpose(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def rotate(x, degrees):
    """Rotate image i by degrees[i] counter-clockwise about its centre (bilinear, zeros outside)."""
    N, C, H, W = x.shape
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(H) - cy, np.arange(W) - cx, indexing="ij")
    # inverse map: the output pixel (y, x) samples the input at R(-theta) (y, x);
    # with y pointing down, a counter-clockwise turn on screen is this sign choice
    src_x = cos * xx - sin * yy + cx  # (N, H, W)
    src_y = sin * xx + cos * yy + cy
    return _bilinear(x, src_y, src_x)


def _bilinear(x, src_y, src_x):
    """Sample x (N, C, H, W) at fractional positions (N, H', W'); zero outside the image."""
    N, C, H, W = x.shape
    y0, x0 = np.floor(src_y).astype(np.int64), np.floor(src_x).astype(np.int64)
    wy, wx = (src_y - y0).astype(x.dtype), (src_x - x0).astype(x.dtype)
    n = np.arange(N)[:, None, None]
    xt = x.transpose(0, 2, 3, 1)  # (N, H, W, C) so gathers give (N, H', W', C)
    out = np.zeros(src_y.shape + (C,), dtype=x.dtype)
    for oy, ox, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yi, xi = y0 + oy, x0 + ox
        inside = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        vals = xt[n, np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)]
        out += (w * inside)[..., None] * vals
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
