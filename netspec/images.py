"""Predictions from image files: PNG, JPEG and BMP digits into a model's input.

``load_images`` turns files (and folders of them) into a float array shaped
like the model's input; ``predict_images`` runs a model on them and prints one
line (or JSON document, or CSV row) per image (``netspec predict``; its
options are in netspec.cli.train).

Design: each file goes through the same short pipeline, one function per step:
read it with Pillow (imported lazily: it is an optional dependency), flatten
transparency and convert to the model's channels, work in float pixels 0..255
(255 = white), invert it when its border is light (MNIST digits are white ink on
black), fit it into the model's frame, and scale it the way the training data
was scaled. ``fit="center"`` redoes MNIST's own preprocessing: the ink's
bounding box is scaled so its longer side is 20/28 of the frame and pasted so
its centre of mass sits at the frame's centre; a plain ``fit="resize"`` of a
large canvas with a small digit in one corner gives the network a speck it has
never seen. A file that cannot be read is reported with its reason and never
stops the others.
"""
import csv
import json
import math
import os
import stat
import sys
import warnings

import numpy as np

from .errors import DataError, printable
from .numerics import softmax
from .safeio import file_kind, open_regular

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
PIL_FORMATS = ("PNG", "JPEG", "BMP")  # Pillow decoders we allow: no surprises from exotic formats
INVERT_CHOICES = ("auto", "yes", "no")
FIT_CHOICES = ("center", "resize")
# "center" by measurement, with a SimpleConvNet trained 3 epochs (95.8% on the test set):
# 30 mnist-5k test digits put black on white at random places of a 300x240 canvas
# keep the array's class 29/30 times centred, 13/30 resized; 30 pen-drawn digits
# are right 30/30 centred, 7/30 resized; examples/digits 10/10 against 1/10.
# Fashion-MNIST items fill their 28x28 frame instead of a 20x20 box: for those models
# "resize" should suit better (reasoned, not measured).
DEFAULT_FIT = "center"

DIGIT_BOX = 20 / 28     # MNIST: the digit's bounding box fits 20x20 inside the 28x28 frame
INK_THRESHOLD = 64.0    # a pixel is ink for the bounding box above this (0..255, after inversion)
MIN_CONTRAST = 32.0     # weaker than this (0..255) and an image holds no ink worth centring
FRINGE = 2              # output pixels kept around the box: the anti-aliased edge below the threshold
MAX_SIDE = 1024         # larger images are first reduced by an integer factor: a 12 MP photo is 300 MB as floats
TOP_K = 3


class _Unreadable(Exception):
    """One file cannot be used; the message is the reason shown to the user."""


# ------------------------------------------------------------------ Pillow

def _pillow():
    """(Image, ImageOps), imported on first use so netspec works without Pillow."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError('reading image files needs Pillow, which is not installed; '
                        'install it with: pip install "netspec[image]" (or: pip install Pillow)') from None
    return Image, ImageOps


# ------------------------------------------------------------------- paths

def is_image_path(path):
    """True for a folder or a file named .png, .jpg, .jpeg or .bmp (any case)."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.lower().endswith(IMAGE_EXTENSIONS)


def expand_paths(paths):
    """(files, skipped): folders replaced by their image files, sorted.

    ``skipped`` lists (path, reason) for entries of a folder that are not image
    files; they are reported, not errors. A folder without any image file is
    kept in ``files`` so that reading it fails with a reason.
    """
    files, skipped = [], []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = []
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name.startswith("."):
                continue  # .DS_Store, editor swap files: never meant as input
            if os.path.isdir(full):
                skipped.append((full, "a folder inside a folder (not searched)"))
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(full)
            else:
                skipped.append((full, "not an image file (expected .png, .jpg, .jpeg or .bmp)"))
        files.extend(found or [path])
    return files, skipped


# ----------------------------------------------------------------- reading

def _read(path, Image, ImageOps):
    """The decoded image, upright (EXIF orientation applied), or _Unreadable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("a symlink to a missing file" if os.path.islink(path) else "no such file") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission on a folder
        raise _Unreadable(f"cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _Unreadable("folder holds no .png, .jpg, .jpeg or .bmp files")
    if not stat.S_ISREG(st.st_mode):
        raise _Unreadable(f"not a regular file: a {file_kind(st.st_mode)}")
    if st.st_size == 0:
        raise _Unreadable("empty file (0 bytes)")
    try:
        stream, _ = open_regular(path, "image file", error=_Unreadable)
        with stream, warnings.catch_warnings():
            # Pillow warns above 89 Mpixel and refuses above 179: between the two netspec decodes
            # the image and reduces it at once (_shrunk), so the warning is only noise on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=PIL_FORMATS) as img:
                img.load()  # decode now: Image.open reads only the header
                return ImageOps.exif_transpose(img)
    except Image.UnidentifiedImageError:
        raise _Unreadable("not a PNG, JPEG or BMP image") from None
    except PermissionError:
        raise _Unreadable("permission denied") from None
    except Image.DecompressionBombError as exc:
        raise _Unreadable(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a cut-off or damaged file as any of these
        raise _Unreadable(f"corrupt or truncated image ({exc})") from None


def _pixels(img, channels, Image, notes):
    """Float array (channels, H, W) of 0..255 values: grayscale or RGB, no alpha."""
    img = _shrunk(img)
    if img.mode.startswith("I"):
        # 16-bit PNG: Pillow's convert("L") would clip at 255 instead of scaling
        wide = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = _flatten_alpha(img, Image, notes)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # palette, bilevel, CMYK
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.float64)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _shrunk(img):
    """The image reduced by an integer factor to at most MAX_SIDE pixels a side, before anything
    widens it to floats (a 4000x4000 grey+alpha PNG of 31 KB cost 1.9 GB as float64 before)."""
    if max(img.size) <= MAX_SIDE:
        return img
    factor = math.ceil(max(img.size) / MAX_SIDE)
    if img.mode in ("P", "PA", "1"):     # reduce works on pixel values, not palette indices
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")           # reduce has no 16-bit mode; 32-bit integers keep the values
    return img.reduce(factor)


def _flatten_alpha(img, Image, notes):
    """RGB image with transparent pixels shown on a background that contrasts with the opaque ones.

    A digit drawn in black on a transparent canvas must not vanish into black
    (transparent pixels usually store black), nor a white one into white.
    """
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    if alpha.min() == 1.0:
        return img.convert("RGB")
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    opaque_light = (luma * alpha[..., 0]).sum() > 127.5 * alpha.sum()
    background = 0.0 if opaque_light else 255.0
    notes.append(f"transparent pixels shown as {'black' if opaque_light else 'white'}")
    rgb = rgba[..., :3] * alpha + background * (1.0 - alpha)
    return Image.fromarray(np.round(rgb).astype(np.uint8))


# -------------------------------------------------------------- processing

def _border_level(a):
    """Median brightness (0..255) of the outermost ring of pixels: the background."""
    lum = a.mean(axis=0)
    ring = np.concatenate([lum[0], lum[-1], lum[1:-1, 0], lum[1:-1, -1]])
    return float(np.median(ring))


def _maybe_invert(a, invert, notes):
    if invert == "yes":
        return 255.0 - a
    if invert == "auto":
        level = _border_level(a)
        if level > 127.5:
            notes.append(f"inverted: light background ({level / 255:.2f})")
            return 255.0 - a
    return a


def _resize(a, height, width, Image, box=None):
    """Each channel resampled to (height, width); ``box`` picks a source region (left, top, right, bottom).

    Bilinear in Pillow widens its kernel when shrinking, so it averages like
    MNIST's anti-aliasing instead of sampling one pixel in ten.
    """
    return np.stack([np.asarray(Image.fromarray(ch.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR, box=box), dtype=np.float64) for ch in a])


def _ink_levels(a):
    """Background to 0 and the strongest ink to 255, or None when there is no ink.

    A photo of paper is grey, not black, after inversion; MNIST backgrounds are exactly 0.
    """
    a = np.clip(a - _border_level(a), 0.0, None)
    peak = a.mean(axis=0).max()
    if peak < MIN_CONTRAST:
        return None
    return np.clip(a * (255.0 / peak), 0.0, 255.0)


def _fit_center(a, height, width, Image):
    """MNIST-style framing: box scaled to 20/28 of the frame, centre of mass at the centre.

    Returns None when the image holds no ink.
    """
    a = _ink_levels(a)
    if a is None:
        return None
    ys, xs = np.nonzero(a.mean(axis=0) > INK_THRESHOLD)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = min(height * DIGIT_BOX / (y1 - y0), width * DIGIT_BOX / (x1 - x0))  # output px per source px
    ph = math.ceil((y1 - y0) * scale) + 2 * FRINGE
    pw = math.ceil((x1 - x0) * scale) + 2 * FRINGE
    # zero padding, so the source region around the box never leaves the image
    pad = math.ceil((FRINGE + 1) / scale) + 1
    a = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))
    top, left = y0 + pad - FRINGE / scale, x0 + pad - FRINGE / scale
    patch = np.clip(_resize(a, ph, pw, Image, (left, top, left + pw / scale, top + ph / scale)), 0.0, 255.0)
    return _paste_centered(patch, height, width)


def _paste_centered(patch, height, width):
    """A (C, height, width) frame with ``patch`` shifted by whole pixels so its centre of mass is at the centre.

    MNIST's centres of mass sit at pixel (14, 14) of 28 give or take half a pixel:
    a whole-pixel shift, which keeps the strokes sharp.
    """
    lum = patch.mean(axis=0)
    total = lum.sum()
    cy = (lum.sum(axis=1) @ np.arange(lum.shape[0])) / total
    cx = (lum.sum(axis=0) @ np.arange(lum.shape[1])) / total
    oy, ox = int(round(height / 2 - cy)), int(round(width / 2 - cx))
    out = np.zeros((patch.shape[0], height, width))
    ty0, tx0 = max(oy, 0), max(ox, 0)
    ty1, tx1 = min(oy + patch.shape[1], height), min(ox + patch.shape[2], width)
    if ty1 > ty0 and tx1 > tx0:
        out[:, ty0:ty1, tx0:tx1] = patch[:, ty0 - oy:ty1 - oy, tx0 - ox:tx1 - ox]
    return out


def _frame(input_shape):
    """(C, H, W) for a model input: (C, H, W) with C 1 or 3, (H, W), or a flat square (H*W,)."""
    shape = tuple(int(n) for n in input_shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return 1, side, side  # e.g. (784,): an MLP on flattened 28x28 digits
    if len(shape) == 2:
        return (1,) + shape
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape
    raise DataError(f"the model's input shape {list(shape)} is not an image: expected (1, H, W) for grayscale, "
                    "(3, H, W) for RGB, (H, W), or a square number of pixels such as (784,)")


def _check_choice(name, value, choices):
    if value not in choices:
        raise DataError(f"{name} must be one of {', '.join(choices)}; found {value!r}")


def load_images(paths, input_shape, *, normalize=True, invert="auto", fit=DEFAULT_FIT, white=None):
    """Read image files (folders are expanded to their image files) into a model's input.

    Returns ``(x, ok_paths, notes, failures)``: x is float64 (N, C, H, W) for the
    frame of ``input_shape``; ``notes[i]`` says what was done to ``ok_paths[i]``
    beyond the usual ("" when nothing); ``failures`` lists (path, reason) for each
    file that could not be read. Pixels map to [0, 1] with ``normalize`` and to
    raw 0..255 without; ``white`` overrides the value of a white pixel (e.g. 16
    for unnormalized scikit-learn digits). ``invert``: "auto" inverts images
    whose border is light, "yes" always, "no" never.
    """
    _check_choice("invert", invert, INVERT_CHOICES)
    _check_choice("fit", fit, FIT_CHOICES)
    channels, height, width = _frame(input_shape)
    if white is None:
        white = 1.0 if normalize else 255.0
    Image, ImageOps = _pillow()
    files, _ = expand_paths(paths)
    xs, ok, notes, failures = [], [], [], []
    for path in files:
        said = []
        try:
            a = _pixels(_read(path, Image, ImageOps), channels, Image, said)
        except _Unreadable as exc:
            failures.append((path, str(exc)))
            continue
        a = _maybe_invert(a, invert, said)
        framed = _fit_center(a, height, width, Image) if fit == "center" else None
        if framed is None:
            if fit == "center":
                said.append("no ink found: resized the whole image")
            framed = _resize(a, height, width, Image)
        xs.append(np.clip(framed, 0.0, 255.0) * (white / 255.0))
        ok.append(path)
        notes.append("; ".join(said))
    x = np.stack(xs) if xs else np.zeros((0, channels, height, width))
    return x, ok, notes, failures


# -------------------------------------------------------------- predicting

def input_scaling(spec):
    """(normalize, white, note) for images fed to a model trained as ``spec`` says.

    ``note`` is None unless the scaling had to be assumed.
    """
    data = spec.train.data if spec.train is not None else None
    if data is None:
        return True, 1.0, "the checkpoint's spec has no train section; assuming pixels scaled to [0, 1] (normalize: true)"
    normalize = getattr(data, "normalize", None)
    if normalize is None:
        return True, 1.0, (f"the training data ({data.source}) does not say how pixels were scaled; "
                           "assuming [0, 1] (normalize: true)")
    if not normalize:
        white = 16.0 if data.source == "digits" else 255.0  # scikit-learn digits run 0..16
        return False, white, None
    return True, 1.0, None


def _probabilities(model, y):
    """Rows of class probabilities: the output itself after a softmax layer, else its softmax."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    last = getattr(model.spec.layers[-1], "type", None) if model.spec.layers else None
    if last == "softmax":
        return y
    with np.errstate(invalid="ignore", over="ignore"):
        return softmax(y, axis=1)


def _top(p, k=TOP_K):
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


def predict_images(model, paths, *, invert="auto", fit=DEFAULT_FIT, fmt="text", out=None, err=None):
    """Print the predicted class of each image; 0 when every image got one, 2 otherwise.

    ``fmt``: "text" (a line per image), "json" (one strict JSON document) or
    "csv" (a header and a row per image). Unreadable files, and images whose
    model output is NaN or infinite, go to ``err`` as ``error: <path>: <reason>``.
    """
    _check_choice("format", fmt, ("text", "json", "csv"))
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if not paths:
        raise DataError("no image files given")
    normalize, white, scaling_note = input_scaling(model.spec)
    files, skipped = expand_paths(paths)
    x, ok, notes, failures = load_images(files, model.input_shape, normalize=normalize,
                                         invert=invert, fit=fit, white=white)
    rows = []
    if len(x):
        probs = _probabilities(model, model.predict(x, batch_size=1000))
        for path, note, p in zip(ok, notes, probs):
            if not np.all(np.isfinite(p)):
                failures.append((path, "the model's output is NaN or infinite"))
                continue
            top = _top(p)
            rows.append({"path": path, "label": top[0][0], "probability": top[0][1],
                         "top": [{"label": c, "probability": q} for c, q in top], "notes": note})
    for path, reason in skipped:
        print(f"skipped: {printable(path)}: {reason}", file=err)
    for path, reason in failures:
        print(f"error: {printable(path)}: {reason}", file=err)
    if scaling_note and fmt != "json":
        print(f"note: {scaling_note}", file=err)
    _WRITERS[fmt](out, rows, model, scaling_note, invert, fit, failures, skipped)
    return 2 if failures else 0


def _write_text(out, rows, *_):
    for r in rows:
        top = " ".join(f"{t['label']}:{t['probability']:.3f}" for t in r["top"])
        tail = f"  ({r['notes']})" if r["notes"] else ""
        print(f"{printable(r['path'])}: {r['label']}  p={r['probability']:.3f}  top{len(r['top'])} {top}{tail}", file=out)


def _write_json(out, rows, model, scaling_note, invert, fit, failures, skipped):
    doc = {"model": model.name, "input_shape": list(model.input_shape), "invert": invert, "fit": fit,
           "notes": [scaling_note] if scaling_note else [],
           "predictions": rows,
           "errors": [{"path": p, "reason": r} for p, r in failures],
           "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    print(json.dumps(doc, indent=2, allow_nan=False), file=out)


def _write_csv(out, rows, *_):
    writer = csv.writer(out, lineterminator="\n")
    header = ["path", "label", "probability"]
    for k in range(2, TOP_K + 1):
        header += [f"label{k}", f"probability{k}"]
    writer.writerow(header + ["notes"])
    for r in rows:
        cells = [r["path"], r["label"], f"{r['probability']:.6g}"]
        for k in range(1, TOP_K):
            t = r["top"][k] if k < len(r["top"]) else None
            cells += [t["label"], f"{t['probability']:.6g}"] if t else ["", ""]
        writer.writerow(cells + [r["notes"]])


_WRITERS = {"text": _write_text, "json": _write_json, "csv": _write_csv}
