"""No code in model files: a `.pt2` archive is inspected before torch sees it, then loaded weights-only.

`torch.export.load` hands parts of an archive to pickle (torch 2.13, `torch/export/pt2_archive/_package.py` and
`torch/_export/serde/serialize.py`):

- the sample inputs (`data/sample_inputs/<model>.pt`) are read with `torch.load(weights_only=True)` and, when
  that fails, again with `weights_only=False`;
- a weight or tensor constant whose payload config says `use_pickle` is read with `torch.load(weights_only=False)`;
- a constant stored as `opaque_obj_*` goes through `pickle.loads`, one stored as `custom_obj_*` through the
  TorchScript unpickler;
- the legacy layouts (`data/weights/<model>.pt`, `data/constants/<model>.pt`, and the old archive with a
  top-level `version` and `serialized_*.pt`) are read with the same weights_only fallback;
- an AOTInductor package (`data/aotinductor/`) is a compiled shared library that is loaded and run.

And the graph itself: a node's target is resolved by walking attributes from `torch`, `math` or `_operator`,
so a graph can call any callable reachable from there, or an aten operator with side effects (`from_file`,
`save`, `_print`); node names are written into the Python code FX generates and executes.

`check_archive` first reads the archive's directory: it refuses compressed entries (torch writes its archives
stored; a deflated entry can unpack to a thousand times its size), entries that overlap (the same bytes read as
several entries: a bomb without compression) and archives that unpack to more than MAX_UNPACKED_BYTES. Then it
reads the archive's own metadata (the payload configs, the model json, the pickle opcodes of
the sample inputs) and refuses, with the reason, anything that would be unpickled, any entry it does not know,
any operator outside a small allow-list, any state the program mutates and any name that is not a plain
identifier: it fails closed. `load_program` then loads with every torch.load forced to weights_only and the
pickle, TorchScript-unpickle and AOTInductor entry points of the loader replaced by refusals, and `check_loaded`
applies the operator policy to the graphs torch built and refuses any write to an input (in-place operators on
a buffer are not visible in the archive's signature). Standard library and torch only.
"""

from __future__ import annotations

import io
import json
import operator
import os
import pickletools
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path

MODEL = "model"  # torch.export.save writes one program under this name
# The largest model the evaluator loads: the training contract's largest model file (docs/evaluator.md,
# "a regular file of at most 4 GiB"). Entries are stored, so an archive unpacks to at most its own size.
MAX_UNPACKED_BYTES = 4 << 30
COMPRESSION = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
FIXED = {  # archive metadata records: name -> required content (None: any short text)
    "archive_format": "pt2",
    "archive_version": "0",
    "byteorder": None,
    ".data/version": None,
    ".data/serialization_id": None,
    ".format_version": None,
    ".storage_alignment": None,
}
MODEL_JSON = f"models/{MODEL}.json"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
KNOWN_DANGEROUS = (  # entry prefix -> why it is refused (checked before the generic "unknown entry")
    ("data/aotinductor/", "an AOTInductor package (a compiled shared library torch would load and run)"),
    ("data/executorch/", "an ExecuTorch payload"),
    ("data/mtia", "an MTIA payload"),
    ("xl_model_weights/", "external weights"),
    (f"data/weights/{MODEL}.pt", "legacy pickled weights (read with torch.load(weights_only=False) on failure)"),
    (f"data/constants/{MODEL}.pt", "legacy pickled constants (read with torch.load(weights_only=False) on failure)"),
    ("serialized_", "a legacy (pre-2.8) archive whose payloads are pickles"),
    ("version", "a legacy (pre-2.8) archive whose payloads are pickles"),
    ("models/", "a second exported program (only models/model.json is allowed)"),
)
PAYLOAD = re.compile(r"(weight|tensor)_[0-9]+")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FQN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
EXTRA = re.compile(r"extra/[A-Za-z0-9_.-]+")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # \r, \f and the like: line breaks in generated code

# Operators a graph may call: aten (minus those with effects outside the tensors), getitem, and the two
# higher-order operators export emits for `torch.no_grad()` and `torch.autocast` blocks.
ATEN = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
ATEN_DENIED = frozenset({"from_file", "save", "_print", "warn", "wait", "record_stream"})
OTHER_TARGETS = frozenset({"_operator.getitem", "torch.ops.higher_order.wrap_with_set_grad_enabled",
                           "torch.ops.higher_order.wrap_with_autocast"})

# The sample inputs are a torch.save zip whose data.pkl may only rebuild plain tensors in tuples and dicts.
PICKLE_GLOBALS = frozenset({("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")})
STORAGE = re.compile(r"[A-Za-z0-9]+Storage")
# STACK_GLOBAL takes its names from the stack (memo lookups included): refused rather than traced.
PICKLE_OPS_DENIED = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4", "PERSID",
                               "STACK_GLOBAL"})


class Refused(Exception):
    """The model file holds something that would run code or that this evaluator does not know."""


def check_archive(path: str | os.PathLike) -> None:
    """Refuse (raise Refused with the reason) any archive that torch.export.load would not read as plain data."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise Refused(f"not a .pt2 (zip) archive: {e}") from e
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if not names:
            raise Refused("empty archive")
        _check_entries(infos, "archive")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[0]
            raise Refused(f"archive has two entries named {dup!r} (readers could disagree on which is used)")
        for name in names:  # the legacy archive has its entries at the top level, where torch looks for them
            for prefix, what in KNOWN_DANGEROUS:
                if "/" not in name and name.startswith(prefix):
                    raise Refused(f"archive entry {name!r} is {what}")
        root = names[0].split("/", 1)[0]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", root):
            raise Refused(f"archive root {root!r} is not a plain name")
        records: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if not name.startswith(root + "/") or ".." in name.split("/") or "\\" in name or name.endswith("/"):
                raise Refused(f"archive entry {name!r} is outside the archive root {root!r}")
            records[name[len(root) + 1:]] = info

        def read(rel: str) -> bytes:
            if rel not in records:
                raise Refused(f"archive has no {rel}")
            return zf.read(records[rel])

        def read_json(rel: str):
            try:
                return json.loads(read(rel).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise Refused(f"{rel} is not valid JSON: {e}") from e

        static = set(FIXED) | {MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS}
        for rel in records:
            for prefix, what in KNOWN_DANGEROUS:
                if rel not in static and rel.startswith(prefix):
                    raise Refused(f"archive entry {rel!r} is {what}")
        for rel, value in FIXED.items():
            if rel in records and (len(read(rel)) > 64 or (value is not None and read(rel).decode("latin-1") != value)):
                raise Refused(f"{rel} holds {read(rel)[:64]!r}, expected {value!r}")
        for rel in ("archive_format", "archive_version"):
            read(rel)

        allowed = set(static)
        allowed |= _payloads(read_json(WEIGHTS_CONFIG), WEIGHTS_CONFIG, "data/weights/", weights=True)
        allowed |= _payloads(read_json(CONSTANTS_CONFIG), CONSTANTS_CONFIG, "data/constants/", weights=False)
        for rel in records:
            if rel not in allowed and not EXTRA.fullmatch(rel):
                raise Refused(f"archive entry {rel!r} is not part of a plain exported program")
        _check_sample_inputs(read(SAMPLE_INPUTS))
        _check_program(read_json(MODEL_JSON))


def _check_entries(infos: list[zipfile.ZipInfo], what: str) -> None:
    """Stored entries only, none overlapping another, that together unpack to at most MAX_UNPACKED_BYTES."""
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            method = COMPRESSION.get(info.compress_type, f"method {info.compress_type}")
            raise Refused(f"{what} entry {info.filename!r} is compressed ({method}: {info.compress_size} bytes "
                          f"unpack to {info.file_size}); only stored entries are accepted, as torch.export.save "
                          "writes them")
    spans = sorted((i.header_offset, i.header_offset + 30 + i.compress_size, i.filename) for i in infos)
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):  # a local header is at least 30 bytes
        if start < end:
            raise Refused(f"{what} entries {name!r} and {other!r} overlap (one zip entry's bytes read as another's)")
    total = sum(info.file_size for info in infos)
    if total > MAX_UNPACKED_BYTES:
        raise Refused(f"{what} holds {total} bytes, more than the evaluator loads ({MAX_UNPACKED_BYTES} bytes)")


def _payloads(config, name: str, directory: str, weights: bool) -> set[str]:
    """The payload files a weights or constants config names; refuses any entry that would be unpickled."""
    what = "weight" if weights else "constant"
    if not isinstance(config, dict) or set(config) != {"config"} or not isinstance(config["config"], dict):
        raise Refused(f"{name} is not a payload config")
    files = set()
    for fqn, meta in config["config"].items():
        if not isinstance(meta, dict) or not isinstance(fqn, str) or not FQN.fullmatch(fqn):
            raise Refused(f"{name}: {what} {fqn!r} is not a plain name")
        path = meta.get("path_name")
        if not isinstance(path, str):
            raise Refused(f"{name}: {what} {fqn} has no path_name")
        if path.startswith("opaque_obj_"):
            raise Refused(f"{what} {fqn} is an opaque Python object ({path}), which torch would unpickle with pickle.loads")
        if path.startswith("custom_obj_"):
            raise Refused(f"{what} {fqn} is a custom (TorchScript) object ({path}), which torch would unpickle")
        if meta.get("use_pickle") is not False:
            raise Refused(f"{what} {fqn} is stored pickled (use_pickle), which torch would read with "
                          "torch.load(weights_only=False)")
        if not PAYLOAD.fullmatch(path) or (weights and not path.startswith("weight_")):
            raise Refused(f"{name}: {what} {fqn} has an unknown payload {path!r}")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise Refused(f"{name}: {what} {fqn} has no tensor metadata")
        files.add(directory + path)
    return files


def _check_sample_inputs(blob: bytes) -> None:
    """The sample inputs must be a torch.save zip whose pickle only rebuilds tensors (no other global, no object
    construction): what torch.load(weights_only=True) reads, so the weights_only=False fallback never runs."""
    what = "sample inputs (data/sample_inputs)"
    try:
        inner = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile as e:
        raise Refused(f"{what} are not a torch.save zip (a raw pickle would be unpickled)") from e
    with inner:
        _check_entries(inner.infolist(), what)
        names = inner.namelist()
        pickles = [n for n in names if n.endswith(".pkl")]
        if len(pickles) != 1 or not pickles[0].endswith("/data.pkl") or len(set(names)) != len(names):
            raise Refused(f"{what} hold pickles {pickles}, expected one data.pkl")
        try:
            ops = list(pickletools.genops(inner.read(pickles[0])))
        except Exception as e:  # a malformed pickle: nothing we can vouch for
            raise Refused(f"{what}: unreadable pickle: {e}") from e
    for op, arg, _ in ops:
        if op.name in PICKLE_OPS_DENIED:
            raise Refused(f"{what}: the pickle uses {op.name}, which can reach arbitrary objects")
        if op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            if (module, name) not in PICKLE_GLOBALS and not (module == "torch" and STORAGE.fullmatch(name)):
                raise Refused(f"{what}: the pickle calls {module}.{name}; unpickling it could run code")


def _check_program(program) -> None:
    """The serialized ExportedProgram: allowed operators only, no custom objects, no mutated state, names that
    are plain identifiers, no control characters in any string."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise Refused(f"{MODEL_JSON} is not a serialized exported program")
    graph_module = program["graph_module"]
    for spec in graph_module.get("signature", {}).get("output_specs", []):
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind != "user_output":
            raise Refused(f"the program mutates state between calls ({kind}); a scored model must be a pure function")
    if graph_module.get("graph", {}).get("custom_obj_values"):
        raise Refused("the graph holds custom (TorchScript) objects")

    def walk(value, key=None):
        if isinstance(value, dict):
            if {"target", "inputs", "outputs"} <= set(value):
                _check_target(value["target"])
            for k, v in value.items():
                if not isinstance(k, str) or CONTROL.search(k):
                    raise Refused(f"{MODEL_JSON}: a key holds control characters")
                if k == "as_custom_obj":
                    raise Refused("the graph passes a custom (TorchScript) object")
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str):
            if CONTROL.search(value):
                raise Refused(f"{MODEL_JSON}: {key} {value[:60]!r} holds control characters")
            if key in ("name", "as_name") and not IDENT.fullmatch(value):
                raise Refused(f"{MODEL_JSON}: name {value[:60]!r} is not a plain identifier")
            if key in ("parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn") and value \
                    and not FQN.fullmatch(value):
                raise Refused(f"{MODEL_JSON}: {key} {value[:60]!r} is not a plain dotted name")

    walk(program)


def _check_target(target) -> None:
    if not isinstance(target, str):
        raise Refused(f"the graph calls {target!r}, which is not an operator name")
    if target in OTHER_TARGETS:
        return
    aten = ATEN.fullmatch(target)
    if aten is None:
        raise Refused(f"the graph calls {target}, which is not an allowed operator (aten operators only)")
    if aten.group(1) in ATEN_DENIED:
        raise Refused(f"the graph calls {target}, an operator with effects outside its tensors (files, output)")


def check_loaded(program) -> None:
    """The same operator policy on the graphs torch built (every submodule), by object rather than by name; and no
    operator may write to the program's inputs (parameters, buffers, constants, the tokens) or a view of them.

    torch.export keeps in-place operators as they are (`self.buf.copy_(idx)` is an `aten.copy_` on the buffer's
    placeholder), so a program can keep state between calls (remember the last batch, count calls) and behave
    differently when probed; its output specs do not show it."""
    import torch

    allowed_hops = {getattr(torch.ops.higher_order, n.rsplit(".", 1)[1], None) for n in OTHER_TARGETS if "higher" in n}
    for name, module in program.graph_module.named_modules():
        graph = getattr(module, "graph", None)
        state: set = set()  # the nodes that are, or may alias, an input of this graph
        for node in graph.nodes if graph is not None else ():
            if node.op in ("placeholder", "get_attr"):
                state.add(node)
                continue
            if node.op == "output":
                continue
            target = node.target
            ok = node.op == "call_function" and (
                target is operator.getitem or target in allowed_hops
                or (isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
                    and target._schema.name.split("::", 1)[1] not in ATEN_DENIED))
            if not ok:
                raise Refused(f"the loaded graph {name or 'root'} calls {node.op} {target!r}, which is not allowed")
            inputs = set(node.all_input_nodes)
            schema = getattr(target, "_schema", None)
            if schema is None:  # getitem, higher-order operators: an output may alias any input
                state |= {node} if inputs & state else set()
                continue
            for i, arg in enumerate(schema.arguments):
                value = node.args[i] if i < len(node.args) and not arg.kwarg_only else node.kwargs.get(arg.name)
                values = value if isinstance(value, (list, tuple)) else [value]
                if arg.alias_info is not None and arg.alias_info.is_write and state.intersection(values):
                    raise Refused(f"the loaded graph {name or 'root'} writes to its input {arg.name!r} with "
                                  f"{target}: a scored model must be a pure function, with no state between calls")
            if any(r.alias_info is not None for r in schema.returns) and inputs & state:
                state.add(node)


@contextmanager
def weights_only():
    """While loading: every torch.load is forced to weights_only (TORCH_FORCE_WEIGHTS_ONLY_LOAD), and the
    loader's pickle.loads, TorchScript unpickler and AOTInductor loader refuse."""
    import torch
    from torch.export.pt2_archive import _package

    def refuse(*_args, **_kwargs):
        raise Refused("the archive asked torch to unpickle an object or load compiled code")

    class NoPickle:
        loads = load = staticmethod(refuse)

    saved_env = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    saved = (_package.pickle, torch._C._pickle_load_obj, _package._load_aoti)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    _package.pickle, torch._C._pickle_load_obj, _package._load_aoti = NoPickle, refuse, refuse
    try:
        yield
    finally:
        _package.pickle, torch._C._pickle_load_obj, _package._load_aoti = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_program(path: str | os.PathLike):
    """The checked archive's ExportedProgram, loaded weights-only. Raises Refused (with the reason) for a file
    that could run code; other exceptions mean the file is not a loadable program."""
    check_archive(path)
    import torch

    with weights_only():
        program = torch.export.load(os.fspath(Path(path)))
    check_loaded(program)
    return program
