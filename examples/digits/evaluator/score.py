"""Score a digits classifier: accuracy on the fixed splits, from the weights alone.

The model artifact is an `.npz` archive of plain float arrays, never code: `w0, b0, w1, b1, ..., w{L-1}, b{L-1}`
(1 <= L <= MAX_LAYERS), `w<i>` of shape [in_i, out_i] and `b<i>` of shape [out_i], with in_0 = 64 pixels,
in_{i+1} = out_i and out_{L-1} = 10 classes. This evaluator computes the forward pass itself:

    h = pixels / 16;  h = relu(h @ w<i> + b<i>) for every layer but the last;  logits = h @ w<L-1> + b<L-1>

and the prediction is the argmax of the logits (float64). Before any array is read the file is checked from
its directory and headers alone: a regular file of at most MAX_MODEL_BYTES; a zip holding exactly those
members, together at most MAX_MODEL_BYTES unpacked; each an `.npy` whose header declares a float dtype (so
nothing pickled is ever loaded), the shapes above, and a size that matches; at most MAX_PARAMS values. Then the
arrays are read with numpy.load(allow_pickle=False) and every weight and every logit must be finite.
"""

from __future__ import annotations

import re
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from . import METRIC
from .data import CLASSES, MAX_PIXEL, PIXELS, Prepared

MAX_MODEL_BYTES = 64 << 20  # the archive, and everything in it unpacked
MAX_LAYERS = 8
MAX_PARAMS = 4_000_000
MEMBER = re.compile(r"^[wb][0-9]\.npy$")
READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}  # header parsers (never unpickle)

Layers = list[tuple[np.ndarray, np.ndarray]]


class Invalid(Exception):
    """The model breaks the artifact contract; the message says how."""


def read_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of the archive at `path`, from its zip directory and .npy headers only."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise Invalid(f"{path.name} is not a regular file")
    if st.st_size > MAX_MODEL_BYTES:
        raise Invalid(f"{path.name} is {st.st_size} bytes, over the limit of {MAX_MODEL_BYTES}")
    if not zipfile.is_zipfile(path):
        raise Invalid(f"{path.name} is not an .npz archive (a zip of .npy arrays: write it with numpy.savez)")
    headers = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        layers = len(names) // 2
        if sorted(names) != sorted(f"{kind}{i}.npy" for i in range(layers) for kind in "wb") \
                or not 1 <= layers <= MAX_LAYERS or not all(MEMBER.match(n) for n in names):
            raise Invalid(f"the archive must hold exactly w0.npy, b0.npy, ..., w<L-1>.npy, b<L-1>.npy with "
                          f"1 <= L <= {MAX_LAYERS}, got {sorted(names)}")
        if sum(i.file_size for i in infos) > MAX_MODEL_BYTES:
            raise Invalid(f"the archive unpacks to more than {MAX_MODEL_BYTES} bytes")
        for info in infos:
            with archive.open(info) as member:
                version = npy.read_magic(member)
                if version not in READERS:
                    raise Invalid(f"{info.filename}: .npy format version {version} is not supported (1.0 or 2.0)")
                shape, _, dtype = READERS[version](member)
                header_bytes = member.tell() if member.seekable() else None
            if dtype.kind != "f" or dtype.fields is not None:
                raise Invalid(f"{info.filename[:-4]} must be a float array, got dtype {dtype}")
            if header_bytes is not None and header_bytes + int(np.prod(shape)) * dtype.itemsize != info.file_size:
                raise Invalid(f"{info.filename}: its header declares {list(shape)} {dtype}, which does not match its size")
            headers[info.filename[:-4]] = (tuple(shape), dtype)
    return headers


def check_shapes(headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """The number of layers, once every w<i>, b<i> chains 64 pixels -> ... -> 10 classes within MAX_PARAMS."""
    layers, width, params = len(headers) // 2, PIXELS, 0
    for i in range(layers):
        (w, _), (b, _) = headers[f"w{i}"], headers[f"b{i}"]
        out = CLASSES if i == layers - 1 else "n >= 1"
        if len(w) != 2 or w[0] != width or w[1] < 1 or (i == layers - 1 and w[1] != CLASSES) or b != w[1:]:
            raise Invalid(f"layer {i}: w{i} must be [{width}, {out}] and b{i} [{out}], got w{i} {list(w)} and "
                          f"b{i} {list(b)}")
        width = w[1]
        params += w[0] * w[1] + b[0]
    if params > MAX_PARAMS:
        raise Invalid(f"the model has {params} parameters, over the limit of {MAX_PARAMS}")
    return layers


def load_layers(path: Path) -> Layers:
    """The checked (weights, bias) pairs of the model at `path`, as float64."""
    try:
        layers = check_shapes(read_headers(path))
        out = []
        with np.load(path, allow_pickle=False) as arrays:
            for i in range(layers):
                w, b = (arrays[f"{kind}{i}"].astype(np.float64) for kind in "wb")
                if not (np.isfinite(w).all() and np.isfinite(b).all()):
                    raise Invalid(f"layer {i} has NaN or infinite weights")
                out.append((w, b))
    except (ValueError, SyntaxError) as e:  # numpy's answer to a malformed .npy header or an object array
        raise Invalid(f"the archive cannot be read as plain arrays: {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise Invalid(f"the archive is damaged: {type(e).__name__}: {e}") from e
    return out


def predict(layers: Layers, pixels: np.ndarray) -> np.ndarray:
    """The class of each sample: argmax of the MLP's logits; Invalid when a logit is not finite."""
    h = pixels.astype(np.float64) / MAX_PIXEL
    with np.errstate(over="ignore", invalid="ignore"):
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0.0)
    if not np.isfinite(h).all():
        raise Invalid("the model produced NaN or infinite logits")
    return h.argmax(axis=1)


def score(model_path, splits: Prepared, split_names=("val",)) -> dict:
    """Score the model on the named splits. Returns {"status", "metrics", "reason", ...}."""
    started = time.perf_counter()
    result = {"status": "ok", "metrics": {}, "reason": "", "fingerprint": splits.fingerprint, "samples_evaluated": 0}
    try:
        layers = load_layers(Path(model_path))
        for name in split_names:
            pixels, labels = splits.load(name)
            result["metrics"][f"{name}_{METRIC}"] = float(np.mean(predict(layers, pixels) == labels))
            result["samples_evaluated"] += len(labels)
    except Invalid as e:
        result.update(status="invalid", metrics={}, reason=str(e), samples_evaluated=0)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
