"""evaluator.modelfile: each kind of .pt2 archive that would make torch.export.load run code is refused, with its
reason, before torch reads it; an honest export is accepted and scores as before.

Every dangerous archive is a real `torch.export.save` of a small model with one part replaced, the way a candidate
could write it. The payload, when unpickled, makes a directory (os.mkdir): the test shows that plain
`torch.export.load` runs it, and that the evaluator neither runs it nor loads the file."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from evaluator import data, modelfile, score
from evaluator.modelfile import Refused, check_archive, load_program

ROOT = Path(__file__).resolve().parent.parent


class Small(nn.Module):
    """Parameters, a buffer and a tensor constant: every payload kind a plain export writes."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 8)
        self.out = nn.Linear(8, 256)
        self.register_buffer("bias", torch.zeros(256))
        self.scale = torch.ones(1)  # a tensor attribute: exported as a constant

    def forward(self, idx):
        return self.out(self.emb(idx)) * self.scale + self.bias


class CountsCalls(Small):
    def forward(self, idx):
        self.bias.add_(1.0)
        return super().forward(idx)


class RemembersLastBatch(Small):
    """Could tell a probe (a perturbed copy of the batch before) from a scored batch, and look ahead only then."""

    def __init__(self):
        super().__init__()
        self.register_buffer("last", torch.zeros(2, 4, dtype=torch.long))

    def forward(self, idx):
        seen = (idx == self.last).float().mean()
        self.last.copy_(idx)
        return super().forward(idx) + seen


class WritesThroughAView(Small):
    def forward(self, idx):
        self.bias[:1].add_(1.0)
        return super().forward(idx)


class WritesItsInput(Small):
    def forward(self, idx):
        return super().forward(idx.clamp_(0, 255))


class InPlaceOnItsOwnTensors(Small):
    """In-place operators on tensors the program made itself are fine."""

    def forward(self, idx):
        h = self.emb(idx)
        h.relu_()
        return self.out(h).mul_(2.0) + self.bias


def save(module: nn.Module, path: Path) -> Path:
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(2, 4, dtype=torch.long),)), path)
    return path


class Payload:
    """Unpickled, it makes the directory `marker`: code of the archive's choosing, run by whoever loads it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rewrite(src: Path, dst: Path, edit) -> Path:
    """dst: the archive src with its entries (name relative to the archive root -> bytes) changed by edit."""
    with zipfile.ZipFile(src) as zf:
        root = zf.namelist()[0].split("/", 1)[0]
        entries = {n[len(root) + 1:]: zf.read(n) for n in zf.namelist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name[1:] if name.startswith("/") else f"{root}/{name}", blob)  # "/x": at the top level
    return dst


def config(entries: dict, which: str) -> dict:
    return json.loads(entries[f"data/{which}/model_{which}_config.json"])


def set_config(entries: dict, which: str, cfg: dict) -> None:
    entries[f"data/{which}/model_{which}_config.json"] = json.dumps(cfg).encode()


def pickled_weight(marker):
    def edit(entries):
        cfg = config(entries, "weights")
        meta = cfg["config"]["emb.weight"]
        meta["use_pickle"] = True
        entries["data/weights/" + meta["path_name"]] = torch_save(Payload(marker))
        set_config(entries, "weights", cfg)
    return edit


def pickled_constant(marker):
    def edit(entries):
        cfg = config(entries, "constants")
        meta = next(iter(cfg["config"].values()))
        meta["use_pickle"] = True
        entries["data/constants/" + meta["path_name"]] = torch_save(Payload(marker))
        set_config(entries, "constants", cfg)
    return edit


def object_constant(prefix: str, blob):
    def edit(entries):
        cfg = config(entries, "constants")
        cfg["config"]["scale"] = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}
        entries[f"data/constants/{prefix}0"] = blob
        set_config(entries, "constants", cfg)
    return edit


def sample_inputs(blob):
    def edit(entries):
        entries["data/sample_inputs/model.pt"] = blob
    return edit


def add(name: str, blob: bytes = b"\0" * 16):
    def edit(entries):
        entries[name] = blob
    return edit


def graph(change):
    """An edit of the serialized program (models/model.json)."""
    def edit(entries):
        program = json.loads(entries["models/model.json"])
        change(program["graph_module"]["graph"])
        entries["models/model.json"] = json.dumps(program).encode()
    return edit


def retarget(target: str):
    def change(g):
        g["nodes"][0]["target"] = target
    return change


def rename(name: str):
    def change(g):
        g["nodes"][0]["outputs"][0]["as_tensor"]["name"] = name
    return change


def legacy(entries: dict) -> None:
    """The pre-2.8 layout: the program and pickled payloads at the top level of the zip."""
    entries.clear()
    entries.update({"/version": b"8.0", "/serialized_exported_program.json": b"{}",
                    "/serialized_state_dict.pt": b"", "/serialized_constants.pt": b"",
                    "/serialized_example_inputs.pt": b""})


def attacks(marker: Path) -> dict:
    """name -> (edit of an honest archive, the reason modelfile gives, whether plain torch.export.load runs it)."""
    evil = torch_save(Payload(marker))
    return {
        "sample inputs that need weights_only=False": (
            sample_inputs(torch_save(((Payload(marker),), {}))), "sample inputs (data/sample_inputs): the pickle "
            "calls posix.mkdir; unpickling it could run code", True),
        "sample inputs as a raw pickle": (
            sample_inputs(pickle.dumps(((Payload(marker),), {}), protocol=2)),
            "sample inputs (data/sample_inputs) are not a torch.save zip", False),
        "a use_pickle weight": (
            pickled_weight(marker), "weight emb.weight is stored pickled (use_pickle), which torch would read with "
            "torch.load(weights_only=False)", True),
        "a use_pickle tensor constant": (
            pickled_constant(marker), "constant scale is stored pickled (use_pickle)", True),
        "an opaque_obj_ constant": (
            object_constant("opaque_obj_", pickle.dumps(Payload(marker))),
            "constant scale is an opaque Python object (opaque_obj_0), which torch would unpickle with pickle.loads",
            True),
        "a custom_obj_ constant": (
            object_constant("custom_obj_", evil), "constant scale is a custom (TorchScript) object (custom_obj_0)",
            False),
        "legacy pickled weights data/weights/model.pt": (
            add("data/weights/model.pt", evil), "archive entry 'data/weights/model.pt' is legacy pickled weights",
            False),
        "legacy pickled constants data/constants/model.pt": (
            add("data/constants/model.pt", evil), "archive entry 'data/constants/model.pt' is legacy pickled "
            "constants", False),
        "a legacy archive with serialized_*.pt": (
            legacy, "archive entry 'version' is a legacy (pre-2.8) archive whose payloads are pickles", False),
        "an AOTInductor package": (
            add("data/aotinductor/model/model.so", b"\x7fELF"), "archive entry 'data/aotinductor/model/model.so' is "
            "an AOTInductor package", False),
        "an unknown entry": (
            add("data/notes/readme.txt"), "archive entry 'data/notes/readme.txt' is not part of a plain exported "
            "program", False),
        "a second program": (
            add("models/other.json", b"{}"), "archive entry 'models/other.json' is a second exported program", False),
        "an operator with effects (aten.from_file)": (
            graph(retarget("torch.ops.aten.from_file.default")),
            "the graph calls torch.ops.aten.from_file.default, an operator with effects outside its tensors", False),
        "a Python callable as operator": (
            graph(retarget("os.system")), "the graph calls os.system, which is not an allowed operator", False),
        "a node name that is code": (
            graph(rename("x; import os")), "name 'x; import os' is not a plain identifier", False),
        "an entry outside the archive root": (
            add("/elsewhere/weight_9"), "archive entry 'elsewhere/weight_9' is outside the archive root", False),
    }


ATTACKS = list(attacks(Path("unused")))


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    return save(Small(), tmp_path_factory.mktemp("honest") / "model.pt2")


@pytest.mark.parametrize("name", ATTACKS)
def test_each_dangerous_archive_is_refused_with_its_reason(honest, tmp_path, name):
    marker = tmp_path / "ran"
    edit, reason, runs_in_torch = attacks(marker)[name]
    path = rewrite(honest, tmp_path / "m.pt2", edit)
    with pytest.raises(Refused) as refused:
        check_archive(path)
    assert reason in str(refused.value)
    with pytest.raises(Refused):
        load_program(path)
    assert not marker.exists()
    if runs_in_torch:  # the archive is a real attack: plain torch.export.load runs its payload
        try:
            torch.export.load(path)
        except Exception:  # noqa: BLE001 - whatever torch makes of what the payload returned
            pass
        assert marker.is_dir()


@pytest.mark.parametrize("name", ["sample inputs that need weights_only=False", "a use_pickle weight",
                                  "a use_pickle tensor constant", "an opaque_obj_ constant"])
def test_the_loader_refuses_to_unpickle_even_past_the_archive_check(honest, tmp_path, monkeypatch, name):
    """Defence in depth: with check_archive bypassed, the weights-only load still runs nothing."""
    marker = tmp_path / "ran"
    edit, _, _ = attacks(marker)[name]
    path = rewrite(honest, tmp_path / "m.pt2", edit)
    monkeypatch.setattr(modelfile, "check_archive", lambda p: None)
    with pytest.raises(Exception):  # noqa: B017 - Refused or torch's weights-only UnpicklingError
        load_program(path)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after loading


@pytest.mark.parametrize("module, writes", [
    (CountsCalls(), "'self' with aten.add_.Tensor"), (RemembersLastBatch(), "'self' with aten.copy_.default"),
    (WritesThroughAView(), "'self' with aten.add_.Tensor"), (WritesItsInput(), "'self' with aten.clamp_.default"),
])
def test_a_program_that_keeps_state_between_calls_is_refused(tmp_path, module, writes):
    """torch.export keeps in-place operators on buffers and inputs in the graph (no buffer mutation in the
    signature): the loaded graphs are checked for writes to anything that is, or is a view of, an input."""
    path = save(module, tmp_path / "m.pt2")
    check_archive(path)  # nothing in the archive's own metadata shows it
    with pytest.raises(Refused, match=f"writes to its input {writes}: a scored model must be a pure function"):
        load_program(path)


def test_in_place_operators_on_its_own_tensors_are_accepted(tmp_path):
    load_program(save(InPlaceOnItsOwnTensors(), tmp_path / "m.pt2"))


def test_an_honest_archive_is_accepted_and_the_rewrite_changes_nothing(honest, tmp_path):
    load_program(honest)
    copy = rewrite(honest, tmp_path / "m.pt2", lambda entries: None)
    program = load_program(copy)
    x = torch.randint(0, 256, (2, 4))
    assert torch.equal(program.module()(x), torch.export.load(honest).module()(x))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, data.Prepared]:
    """A model as target/train.py exports it (under torch.no_grad), trained for one second."""
    prepared = data.prepare(os.environ["ARBOT_CACHE"])
    out = tmp_path_factory.mktemp("run")
    cmd = [sys.executable, str(ROOT / "target" / "train.py"), "--data", str(prepared.train), "--out", str(out),
           "--budget", "1", "--seed", "0", "--device", "cpu"]
    for item in ("DEPTH=1", "N_EMBD=32", "N_HEAD=2", "SEQ_LEN=64", "BATCH_SIZE=8", "EVAL_BATCH=16"):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / "model.pt2", prepared


def test_the_target_export_is_accepted_and_scores_as_with_a_plain_load(trained, monkeypatch):
    model, prepared = trained
    check_archive(model)
    guarded = score.score(model, prepared, ("val",))
    assert guarded["status"] == "ok", guarded["reason"]
    monkeypatch.setattr(score, "load_program", lambda path: torch.export.load(str(path)))
    plain = score.score(model, prepared, ("val",))
    assert plain["metrics"] == guarded["metrics"] and 2 < guarded["metrics"]["val_bpb"] < 8


# --- compressed and overlapping entries (zip bombs) -----------------------------------------------------------


def recompress(src: Path, dst: Path, method: int, only: str | None = None) -> Path:
    """dst: src with its entries (or only the one whose name ends with `only`) compressed with method."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            compress = method if only is None or info.filename.endswith(only) else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=compress)
    return dst


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_DEFLATED, "deflate"), (zipfile.ZIP_BZIP2, "bzip2"),
                                          (zipfile.ZIP_LZMA, "lzma")])
def test_a_compressed_entry_is_refused_though_torch_would_unpack_it(honest, tmp_path, method, name):
    path = recompress(honest, tmp_path / "m.pt2", method, only="weight_0")
    with pytest.raises(Refused, match=rf"archive entry '[^']*/data/weights/weight_0' is compressed \({name}: \d+ "
                                      r"bytes unpack to \d+\); only stored entries are accepted"):
        check_archive(path)
    if method == zipfile.ZIP_DEFLATED:  # torch reads deflated entries: a small file can unpack to a huge weight
        x = torch.randint(0, 256, (2, 4))
        assert torch.equal(torch.export.load(path).module()(x), torch.export.load(honest).module()(x))


def test_compressed_sample_inputs_inside_the_archive_are_refused(honest, tmp_path):
    def deflate_inner(entries):
        inner = tmp_path / "inner.pt"
        inner.write_bytes(entries["data/sample_inputs/model.pt"])
        deflated = recompress(inner, tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)
        entries["data/sample_inputs/model.pt"] = deflated.read_bytes()

    with pytest.raises(Refused, match=r"sample inputs \(data/sample_inputs\) entry '[^']*data.pkl' is compressed "
                                      r"\(deflate"):
        check_archive(rewrite(honest, tmp_path / "m.pt2", deflate_inner))


def test_entries_that_overlap_are_refused(tmp_path):
    """Two directory entries pointing at the same stored bytes: a zip bomb needs no compression when many entries
    read the same bytes."""
    class TwoWeights(Small):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(256))

        def forward(self, idx):
            return super().forward(idx) + self.extra

    path = save(TwoWeights(), tmp_path / "m.pt2")
    with zipfile.ZipFile(path) as zf:
        weights = sorted((i for i in zf.infolist() if "/data/weights/weight_" in i.filename), key=lambda i: i.filename)
    first, last = weights[0], weights[-1]
    blob = bytearray(path.read_bytes())
    at = blob.index(b"PK\x01\x02")  # the central directory: 46 fixed bytes, then the name, per entry
    while bytes(blob[at + 46:at + 46 + int.from_bytes(blob[at + 28:at + 30], "little")]) != last.filename.encode():
        at = blob.index(b"PK\x01\x02", at + 46)
    blob[at + 16:at + 28] = b"".join(v.to_bytes(4, "little") for v in (first.CRC, first.compress_size, first.file_size))
    blob[at + 42:at + 46] = first.header_offset.to_bytes(4, "little")  # the last weight's entry: the first's bytes
    path.write_bytes(bytes(blob))
    with pytest.raises(Refused, match=rf"archive entries '{first.filename}' and '{last.filename}' overlap"):
        check_archive(path)
