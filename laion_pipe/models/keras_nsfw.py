"""LAION's autokeras NSFW classifiers, read straight from the zips LAION publishes, without TensorFlow.

LAION-AI/CLIP-based-NSFW-Detector's main branch ships the models LAION-5B's `punsafe` came from as
zipped Keras SavedModels (`clip_autokeras_binary_nsfw.zip` for OpenAI ViT-L/14 embeddings,
`clip_autokeras_nsfw_b32.zip` for ViT-B/32); clip-retrieval downloaded the L/14 one and ran it with
Keras. This module reads such a zip with the standard library and numpy and builds the same
network in torch:

    MultiCategoryEncoding -> Normalization -> Dense (-> ReLU [-> Dropout]) ... -> Dense -> sigmoid

Two details make it LAION's model rather than an approximation of it:

- autokeras decided that a few embedding dimensions (L/14: 180, 316, 413, 440, 644; B/32: 92, 133,
  312) were *categorical*: Keras formats the value as text (`tf.strings.as_string`, printf "%f"),
  looks the text up in a vocabulary learnt from the training embeddings (a `StringLookup`: index
  1..N by frequency, 0 when unseen) and feeds the index, not the value, to the normalisation. The
  vocabularies live as constants in `saved_model.pb`; `KerasNsfwHead` applies the same lookup.
  (LAION's later PyTorch ports, `clip_*_binary_nsfw_head.pth`, drop this step.)
- Keras' Normalization divides by max(sqrt(variance), 1e-7).

What is read (TensorFlow's file formats, decoded here by hand):
- `variables/variables.index`: a LevelDB table (uncompressed blocks) of tensor names ->
  `BundleEntryProto` (dtype, shape, offset, size); `variables.data-00000-of-00001` holds the bytes.
- `keras_metadata.pb`: the Keras model config (layer classes, units, activations) as JSON.
- `saved_model.pb`: the object graph (which checkpoint key belongs to which layer, which constant
  initialises which lookup table) and the graph's constants.

`python -m laion_pipe.models.keras_nsfw ZIP OUT.safetensors` converts a zip into one safetensors
file (tensors + the vocabularies in its metadata) that `laion_pipe.models.nsfw` loads too.
"""
from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), Normalization's floor on the standard deviation
LOOKUP_META_KEY = "keras_nsfw"  # safetensors metadata key of a converted file

_TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8"}  # DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64
_DT_STRING = 7
_TABLE_MAGIC = 0xDB4775248B80FB57


class KerasFormatError(ValueError):
    """The file is not a Keras SavedModel of the kind LAION published."""


# --- protobuf wire format ---------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def _fields(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field number: [raw values]} (ints for varints, bytes
    for length-delimited fields and fixed32/64)."""
    out: dict[int, list] = {}
    i, n = 0, len(buf)
    while i < n:
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i : i + ln], i + ln
        elif wire == 5:
            v, i = buf[i : i + 4], i + 4
        elif wire == 1:
            v, i = buf[i : i + 8], i + 8
        else:
            raise KerasFormatError(f"unsupported protobuf wire type {wire}")
        out.setdefault(num, []).append(v)
    return out


def _first(msg: dict, num: int, default=None):
    vals = msg.get(num)
    return vals[0] if vals else default


def _packed_ints(vals: list) -> list[int]:
    """A repeated integer field, packed (bytes) or not (ints)."""
    out: list[int] = []
    for v in vals:
        if isinstance(v, int):
            out.append(v)
        else:
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x)
    return out


# --- TensorFlow checkpoint (tensor bundle) ----------------------------------------------------------


def _table_block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    if data[offset + size] != 0:
        raise KerasFormatError("compressed checkpoint index blocks are not supported")
    block = data[offset : offset + size]
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    entries, key, i = [], b"", 0
    while i < end:
        shared, i = _varint(block, i)
        unshared, i = _varint(block, i)
        vlen, i = _varint(block, i)
        key = key[:shared] + block[i : i + unshared]
        i += unshared
        entries.append((key, block[i : i + vlen]))
        i += vlen
    return entries


def _read_table(data: bytes) -> dict[bytes, bytes]:
    """A LevelDB table file (TensorFlow's checkpoint index) as a dict."""
    if len(data) < 48 or struct.unpack("<Q", data[-8:])[0] != _TABLE_MAGIC:
        raise KerasFormatError("variables.index is not a TensorFlow checkpoint index")
    footer, i = data[-48:-8], 0
    _, i = _varint(footer, i)  # metaindex handle: unused
    _, i = _varint(footer, i)
    idx_off, i = _varint(footer, i)
    idx_size, i = _varint(footer, i)
    out: dict[bytes, bytes] = {}
    for _, handle in _table_block(data, idx_off, idx_size):
        off, j = _varint(handle, 0)
        size, _ = _varint(handle, j)
        out.update(_table_block(data, off, size))
    return out


def read_checkpoint(index: bytes, data: bytes) -> dict[str, np.ndarray]:
    """The numeric tensors of a single-shard TensorFlow checkpoint, by checkpoint key."""
    tensors: dict[str, np.ndarray] = {}
    for key, value in _read_table(index).items():
        if not key:
            continue  # the bundle header
        entry = _fields(value)
        dtype = _first(entry, 1, 0)
        if dtype not in _TF_DTYPES or _first(entry, 3, 0) != 0 or 7 in entry:
            continue  # strings (object graph, empty tables), other shards, slices: not needed
        shape_msg = _fields(_first(entry, 2, b""))
        shape = [_first(_fields(d), 1, 0) for d in shape_msg.get(2, [])]
        off, size = _first(entry, 4, 0), _first(entry, 5, 0)
        arr = np.frombuffer(data[off : off + size], dtype=_TF_DTYPES[dtype])
        tensors[key.decode()] = arr.reshape(shape).copy()
    return tensors


# --- SavedModel graph: constants and the object graph -----------------------------------------------


def _tensor_proto(buf: bytes):
    """A TensorProto's value: a list of str for strings, else a numpy array."""
    t = _fields(buf)
    dtype = _first(t, 1, 0)
    shape = [_first(_fields(d), 1, 0) for d in _fields(_first(t, 2, b"")).get(2, [])]
    if dtype == _DT_STRING:
        return [s.decode("utf-8", "surrogateescape") for s in t.get(8, [])]
    if dtype not in _TF_DTYPES:
        return None
    content = _first(t, 4)
    if content is not None:
        return np.frombuffer(content, dtype=_TF_DTYPES[dtype]).reshape(shape)
    if dtype in (3, 9):  # int_val = 7, int64_val = 10
        vals = _packed_ints(t.get(7 if dtype == 3 else 10, []))
        return np.array(vals, dtype=np.int64)
    return None


@dataclass
class _SavedModel:
    constants: dict[str, object]  # graph Const node name -> value
    children: list[dict[str, int]]  # object graph: node id -> {child name: node id}; node 0 is the root
    node_const: dict[int, str]  # constant node id -> Const op name
    node_function: dict[int, str]  # function node id -> concrete function name
    bound_inputs: dict[str, list[int]]  # concrete function name -> captured node ids

    def node(self, path: str) -> int | None:
        """The node id at a dotted path from the root ("layer-1.encoding_layers.180"), or None."""
        nid = 0
        for part in path.split("."):
            if nid >= len(self.children) or part not in self.children[nid]:
                return None
            nid = self.children[nid][part]
        return nid


def _read_saved_model(buf: bytes) -> _SavedModel:
    meta_graph = _fields(_first(_fields(buf), 2, b""))
    graph = _fields(_first(meta_graph, 2, b""))
    constants: dict[str, object] = {}
    for node_buf in graph.get(1, []):
        node = _fields(node_buf)
        if _first(node, 2, b"") != b"Const":
            continue
        for attr_buf in node.get(5, []):
            attr = _fields(attr_buf)
            if _first(attr, 1) == b"value":
                tensor = _first(_fields(_first(attr, 2, b"")), 8)  # AttrValue.tensor = 8
                if tensor is not None:
                    constants[_first(node, 1).decode()] = _tensor_proto(tensor)
    object_graph = _fields(_first(meta_graph, 7, b""))
    nodes = [_fields(n) for n in object_graph.get(1, [])]
    children = []
    for node in nodes:
        refs = [_fields(r) for r in node.get(1, [])]  # ObjectReference: node_id = 1, local_name = 2
        children.append({_first(r, 2, b"").decode(): _first(r, 1, 0) for r in refs})
    node_const, node_function = {}, {}
    for nid, node in enumerate(nodes):
        if 9 in node:  # SavedConstant
            node_const[nid] = _first(_fields(node[9][0]), 1, b"").decode()
        if 6 in node:  # SavedFunction: concrete_functions = 1
            fns = _fields(node[6][0]).get(1, [])
            if fns:
                node_function[nid] = fns[0].decode()
    bound_inputs = {}
    for entry_buf in object_graph.get(2, []):  # map<string, SavedConcreteFunction>
        entry = _fields(entry_buf)
        fn = _fields(_first(entry, 2, b""))
        bound_inputs[_first(entry, 1, b"").decode()] = _packed_ints(fn.get(2, []))
    return _SavedModel(constants, children, node_const, node_function, bound_inputs)



def _keras_model_config(buf: bytes) -> dict:
    """The root model's config from keras_metadata.pb (SavedMetadata: nodes = 1; SavedObject:
    node_path = 3, metadata = 5)."""
    for node_buf in _fields(buf).get(1, []):
        node = _fields(node_buf)
        if _first(node, 3, b"") == b"root":
            meta = json.loads(_first(node, 5, b"{}"))
            if "config" in meta and "layers" in meta["config"]:
                return meta["config"]
    raise KerasFormatError("keras_metadata.pb has no root model config")


# --- the network ------------------------------------------------------------------------------------


@dataclass
class KerasNsfwSpec:
    """What a LAION autokeras NSFW model computes, in plain arrays: the categorical columns'
    vocabularies, the normalisation, and the dense layers with the activation after each."""

    lookups: dict[int, list[str]]  # column -> vocabulary (index 1..N), unseen -> 0
    mean: np.ndarray
    variance: np.ndarray
    kernels: list[np.ndarray]  # Keras layout [in, out]
    biases: list[np.ndarray]
    activations: list[str] = field(default_factory=list)  # after each dense: relu | linear | sigmoid

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {"norm.mean": torch.from_numpy(self.mean.astype(np.float32)),
              "norm.variance": torch.from_numpy(self.variance.astype(np.float32))}
        for i, (k, b) in enumerate(zip(self.kernels, self.biases), start=1):
            sd[f"linear_{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k.T.astype(np.float32)))
            sd[f"linear_{i}.bias"] = torch.from_numpy(b.astype(np.float32))
        return sd

    def metadata(self) -> dict[str, str]:
        """What a converted safetensors file carries besides its tensors."""
        return {LOOKUP_META_KEY: json.dumps(
            {"lookups": {str(c): v for c, v in self.lookups.items()}, "activations": self.activations})}


_HIDDEN_ACTIVATIONS = {"relu", "linear"}


def _dense_structure(layers: list[dict]) -> tuple[list[int], list[str]]:
    """Indices of the Dense layers and the activation after each, checked against the shape LAION's
    models have (anything else is refused rather than guessed)."""
    names = [lay["class_name"] for lay in layers]
    dense_idx, acts = [], []
    for i, lay in enumerate(layers):
        cls, cfg = lay["class_name"], lay.get("config", {})
        if cls in ("InputLayer", "Custom>MultiCategoryEncoding", "MultiCategoryEncoding", "Normalization", "Dropout"):
            continue
        if cls == "Dense":
            dense_idx.append(i)
            acts.append(cfg.get("activation", "linear"))
        elif cls == "ReLU" and not cfg.get("max_value") and not cfg.get("negative_slope") and not cfg.get("threshold"):
            if not dense_idx or acts[-1] != "linear":
                raise KerasFormatError(f"unexpected ReLU at layer {i} of {names}")
            acts[-1] = "relu"
        elif cls == "Activation" and cfg.get("activation") in ("relu", "sigmoid"):
            if not dense_idx or acts[-1] != "linear":
                raise KerasFormatError(f"unexpected activation at layer {i} of {names}")
            acts[-1] = cfg["activation"]
        else:
            raise KerasFormatError(f"layer {i} ({cls}) is not part of LAION's NSFW model structure {names}")
    if not dense_idx or acts[-1] != "sigmoid" or any(a not in _HIDDEN_ACTIVATIONS for a in acts[:-1]):
        raise KerasFormatError(f"expected Dense layers ending in a sigmoid, got {list(zip(dense_idx, acts))}")
    return dense_idx, acts


def read_keras_nsfw_zip(data: bytes, name: str = "model") -> KerasNsfwSpec:
    """Parse a zipped Keras SavedModel of LAION's NSFW detector into a `KerasNsfwSpec`."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise KerasFormatError(f"{name}: not a zip file") from e
    members = {m.split("/", 1)[1] if "/" in m else m: m for m in zf.namelist()}
    needed = ["keras_metadata.pb", "saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"]
    missing = [m for m in needed if m not in members]
    if missing:
        raise KerasFormatError(f"{name}: not a Keras SavedModel zip (missing {', '.join(missing)})")
    read = lambda m: zf.read(members[m])  # noqa: E731
    ckpt = read_checkpoint(read("variables/variables.index"), read("variables/variables.data-00000-of-00001"))
    sm = _read_saved_model(read("saved_model.pb"))
    layers = _keras_model_config(read("keras_metadata.pb"))["layers"]

    def ckpt_prefix(layer_index: int) -> str:
        """The checkpoint key prefix of a layer: its `layer_with_weights-K` alias in the object graph."""
        nid = sm.node(f"layer-{layer_index}")
        for alias, other in sm.children[0].items():
            if nid is not None and other == nid and re.fullmatch(r"layer_with_weights-\d+", alias):
                return alias
        raise KerasFormatError(f"{name}: layer {layer_index} has no weights in the checkpoint")

    def var(prefix: str, what: str) -> np.ndarray:
        key = f"{prefix}/{what}/.ATTRIBUTES/VARIABLE_VALUE"
        if key not in ckpt:
            raise KerasFormatError(f"{name}: checkpoint has no {key}")
        return ckpt[key]

    norm = [i for i, lay in enumerate(layers) if lay["class_name"] == "Normalization"]
    if len(norm) != 1:
        raise KerasFormatError(f"{name}: expected one Normalization layer, found {len(norm)}")
    norm_prefix = ckpt_prefix(norm[0])
    dense_idx, acts = _dense_structure(layers)
    kernels = [var(ckpt_prefix(i), "kernel") for i in dense_idx]
    biases = [var(ckpt_prefix(i), "bias") for i in dense_idx]
    lookups = _lookups(layers, sm, name)
    mean, variance = var(norm_prefix, "mean").reshape(-1), var(norm_prefix, "variance").reshape(-1)
    if kernels[0].shape[0] != mean.shape[0]:
        raise KerasFormatError(f"{name}: normalisation has {mean.shape[0]} values, first Dense expects {kernels[0].shape[0]}")
    return KerasNsfwSpec(lookups, mean, variance, kernels, biases, acts)


def _lookups(layers: list[dict], sm: _SavedModel, name: str) -> dict[int, list[str]]:
    """The vocabularies of the categorical columns of autokeras' MultiCategoryEncoding."""
    enc = [(i, lay) for i, lay in enumerate(layers) if "MultiCategoryEncoding" in lay["class_name"]]
    if not enc:
        return {}
    i, lay = enc[0]
    encoding = lay["config"]["encoding"]
    if set(encoding) - {"none", "int"}:
        raise KerasFormatError(f"{name}: unsupported column encodings {sorted(set(encoding))}")
    layer_path = f"layer-{i}"
    lookups: dict[int, list[str]] = {}
    for col, kind in enumerate(encoding):
        if kind != "int":
            continue
        init = sm.node(f"{layer_path}.encoding_layers.{col}.lookup_table._initialize")
        fn = sm.node_function.get(init) if init is not None else None
        bound = sm.bound_inputs.get(fn or "", [])
        consts = [sm.constants.get(sm.node_const[n]) for n in bound if n in sm.node_const]
        keys = [c for c in consts if isinstance(c, list)]
        values = [c for c in consts if isinstance(c, np.ndarray)]
        if len(keys) != 1 or len(values) != 1 or len(keys[0]) != len(values[0]):
            raise KerasFormatError(f"{name}: cannot find the vocabulary of categorical column {col}")
        if not np.array_equal(values[0].astype(np.int64), np.arange(1, len(keys[0]) + 1)):
            raise KerasFormatError(f"{name}: column {col}'s lookup is not the index 1..N StringLookup builds")
        lookups[col] = keys[0]
    return lookups


class KerasNsfwHead(nn.Module):
    """LAION's autokeras NSFW model in torch. Parameter names are those of LAION's PyTorch ports
    (`norm.mean`, `norm.variance`, `linear_1..n`), plus the categorical lookups the ports drop."""

    def __init__(self, spec: KerasNsfwSpec):
        super().__init__()
        dim = spec.mean.shape[0]
        self.register_buffer("norm_mean", torch.zeros(dim))
        self.register_buffer("norm_variance", torch.ones(dim))
        sizes = [spec.kernels[0].shape[0]] + [k.shape[1] for k in spec.kernels]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activations = list(spec.activations)
        self.lookups = {c: {tok: i for i, tok in enumerate(vocab, start=1)} for c, vocab in spec.lookups.items()}
        with torch.no_grad():
            sd = spec.state_dict()
            self.norm_mean.copy_(sd["norm.mean"])
            self.norm_variance.copy_(sd["norm.variance"])
            for i, lin in enumerate(self.linears, start=1):
                lin.weight.copy_(sd[f"linear_{i}.weight"])
                lin.bias.copy_(sd[f"linear_{i}.bias"])

    @property
    def in_features(self) -> int:
        return self.linears[0].in_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """autokeras' MultiCategoryEncoding: NaN -> 0; a categorical column's value -> the index
        of its "%f" text in the vocabulary (0 if unseen)."""
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x.float())
        if self.lookups:
            x = x.clone()
            for col, vocab in self.lookups.items():
                vals = x[:, col].double().cpu().tolist()
                idx = [vocab.get("%f" % v, 0) for v in vals]
                x[:, col] = torch.tensor(idx, dtype=torch.float32, device=x.device)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(x)
        x = (x - self.norm_mean) / torch.clamp(self.norm_variance.sqrt(), min=KERAS_EPSILON)
        for lin, act in zip(self.linears, self.activations):
            x = lin(x)
            if act == "relu":
                x = torch.relu(x)
            elif act == "sigmoid":
                x = torch.sigmoid(x)
        return x.squeeze(-1)


def head_from_spec(spec: KerasNsfwSpec) -> KerasNsfwHead:
    return KerasNsfwHead(spec).eval()


def spec_from_converted(sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> KerasNsfwSpec:
    """The spec back from a file `convert` wrote (tensors + metadata)."""
    meta = json.loads(metadata[LOOKUP_META_KEY])
    n = len(meta["activations"])
    return KerasNsfwSpec(
        lookups={int(c): v for c, v in meta["lookups"].items()},
        mean=sd["norm.mean"].numpy(),
        variance=sd["norm.variance"].numpy(),
        kernels=[sd[f"linear_{i}.weight"].numpy().T for i in range(1, n + 1)],
        biases=[sd[f"linear_{i}.bias"].numpy() for i in range(1, n + 1)],
        activations=meta["activations"],
    )


def convert(zip_path: str, out_path: str) -> KerasNsfwSpec:
    """Convert LAION's zip into a safetensors file (tensors in LAION's port names + the lookups)."""
    from safetensors.torch import save_file

    with open(zip_path, "rb") as f:
        spec = read_keras_nsfw_zip(f.read(), zip_path)
    save_file(spec.state_dict(), out_path, metadata=spec.metadata())
    return spec


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m laion_pipe.models.keras_nsfw",
        description="Convert LAION's autokeras NSFW zip (CLIP-based-NSFW-Detector) into a safetensors file "
        "that models.nsfw.weights accepts (the zip itself is accepted too; this only saves reading it each time).",
    )
    p.add_argument("zip", help="clip_autokeras_binary_nsfw.zip or clip_autokeras_nsfw_b32.zip")
    p.add_argument("out", help="output .safetensors")
    args = p.parse_args(argv)
    spec = convert(args.zip, args.out)
    sizes = [spec.kernels[0].shape[0]] + [k.shape[1] for k in spec.kernels]
    print(f"{args.out}: layers {sizes}, activations {spec.activations}, categorical columns {sorted(spec.lookups)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
