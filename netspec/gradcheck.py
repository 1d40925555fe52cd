"""Numerical gradients by central differences, and the check of back-propagation against them.

Non-smooth layers (ReLU, max pooling) return an array from ``kink_state()``. An element whose
+h or -h evaluation switches any of them (a ReLU input crossing 0, another
element winning a pooling window) straddles a kink, where a central difference
is not a derivative; such elements are skipped and counted, never passed.

The error reported per parameter array is normwise relative:
``max|analytic - numeric|`` over the checked elements, divided by the largest
analytic gradient of the whole array (or the largest checked value, if larger).
It is scale-free, and a wrong backward (a missing term, a wrong factor, a
transposed index) gives O(1), far above the float64 tolerance; a sample of
near-zero elements is not judged against its own round-off.
"""
import numpy as np


def numerical_gradient(f, x, h=1e-4, indices=None, smooth=None):
    """Central difference (f(x+h) - f(x-h)) / 2h for each element of x (or each flat index given).

    x is perturbed in place and restored exactly; f takes no arguments. If ``smooth``
    is given, it is called after each evaluation and returns False when that
    evaluation crossed a kink; such elements get NaN.
    """
    flat = x.reshape(-1)  # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient needs a contiguous array")
    idx = np.arange(flat.size) if indices is None else np.asarray(indices)
    grad = np.zeros(len(idx), dtype=np.float64)
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        ok = smooth is None or smooth()
        flat[i] = old - h
        fm = f()
        ok = ok and (smooth is None or smooth())
        flat[i] = old
        grad[k] = (fp - fm) / (2 * h) if ok else np.nan
    if indices is None:
        return grad.reshape(x.shape)
    return grad


def relative_error(analytic, numeric, scale=0.0):
    """max|a - n| / max(max|a|, max|n|, scale) over the elements where n is not NaN.

    ``scale`` is the size of the whole gradient array when only a sample is
    checked: a sample of near-zero elements (a ReLU-dead unit) must not be
    judged relative to its own round-off.
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    keep = ~np.isnan(n)
    a, n = a[keep], n[keep]
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0), float(scale))
    if scale == 0.0 or a.size == 0:  # nothing to compare: callers see checked == 0
        return 0.0
    return float(np.abs(a - n).max() / scale)


def sample_indices(size, max_elements, rng):
    """All indices for small arrays, else a seeded sample of ``max_elements`` distinct ones."""
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_elements, replace=False))


def check_model(model, x, t, *, h=1e-5, max_elements=40, seed=0):
    """Compare model.gradient with central differences for every parameter array.

    Returns {name: {"error": float, "checked": int, "skipped": int, "size": int, "zero": bool}},
    where ``skipped`` counts elements whose perturbation crossed a kink and ``zero`` marks an
    array whose analytic and numeric gradients are both below the resolution of central
    differences (error 0: there is nothing to be relative to). The model should be
    float64. Dropout masks are frozen by reseeding the model's generator before every
    evaluation, so numeric and analytic gradients see the same network.
    """
    def loss():
        model.set_rng(np.random.default_rng(seed))
        return model.loss(x, t, train=True)

    def smooth():
        return all(np.array_equal(a, b) for a, b in zip(base, kink_states(model)))

    model.set_rng(np.random.default_rng(seed))
    loss0, grads = model.gradient(x, t)
    analytic = {k: v.copy() for k, v in grads.items()}
    base = [s.copy() for s in kink_states(model)]
    # Below this, a central difference is round-off of the loss divided by 2h, not a slope.
    resolution = 100 * np.finfo(np.float64).eps * max(abs(loss0), 1.0) / h
    rng = np.random.default_rng(seed + 1)
    report = {}
    for name, p in model.params.items():
        idx = sample_indices(p.size, max_elements, rng)
        num = numerical_gradient(loss, p, h=h, indices=idx, smooth=smooth)
        skipped = int(np.isnan(num).sum())
        scale = np.abs(analytic[name]).max()
        zero = bool(max(scale, np.nanmax(np.abs(num), initial=0.0)) <= resolution)
        # A gradient that is zero at this point (a conv bias before batchnorm) agrees with any
        # round-off; a wrong non-zero gradient there still has scale > resolution and is compared.
        error = 0.0 if zero else relative_error(analytic[name].reshape(-1)[idx], num, scale=scale)
        report[name] = {"error": error, "checked": int(len(idx)) - skipped, "skipped": skipped,
                        "size": int(p.size), "zero": zero}
    return report


def kink_states(model):
    """Current switch state of every non-smooth layer, in order."""
    states = (l.kink_state() for l in model.layers)
    return [s for s in states if s is not None]


def random_batch(model, n=3, seed=0):
    """A float64 input batch and matching targets for checking a model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + model.input_shape)
    if model.loss_fn.classification:
        t = rng.integers(0, model.output_shape[0], size=n)
    else:
        t = rng.standard_normal((n,) + model.output_shape)
    return x, t
