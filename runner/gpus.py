"""Which GPU device nodes a run's sandbox gets: the driver's control nodes and the nodes of its worker's GPUs only.

A worker's GPUs are named as in CUDA_VISIBLE_DEVICES (indices in nvidia-smi's order, or GPU UUIDs). The NVIDIA
driver lists its GPUs in /proc/driver/nvidia/gpus/<PCI bus id>/information (minor number, UUID); nvidia-smi numbers
them in PCI bus order. Inside the sandbox the selection is passed as UUIDs: CUDA numbers only the devices it can
open, so an index would name another GPU there (or none)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
DEV = Path("/dev")
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")


@dataclass(frozen=True)
class Gpu:
    index: int  # nvidia-smi's (PCI bus order)
    minor: int  # /dev/nvidia<minor>
    uuid: str


def nvidia_gpus(proc: Path = NVIDIA_PROC) -> list[Gpu]:
    """The GPUs the driver reports, in nvidia-smi's order; none without the driver."""
    found = []
    for index, bus in enumerate(sorted(p for p in proc.glob("*") if p.is_dir()) if proc.is_dir() else []):
        info: dict[str, str] = {}
        try:
            for line in (bus / "information").read_text().splitlines():
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
            found.append(Gpu(index, int(info["Device Minor"]), info.get("GPU UUID", "")))
        except (OSError, KeyError, ValueError):
            continue
    return found


def selected(selection: str | None, gpus: list[Gpu]) -> list[Gpu] | None:
    """The GPUs `selection` names (None: all); None when one of its names is not a GPU the driver reports."""
    if selection is None:
        return list(gpus)
    out = []
    for name in (n.strip() for n in selection.split(",") if n.strip()):
        match = [g for g in gpus if name == g.uuid or (name.isdigit() and int(name) == g.index)]
        if not match:
            return None
        out += match
    return out


def device_nodes(selection: str | None, dev: Path = DEV, proc: Path = NVIDIA_PROC) -> list[str]:
    """The device nodes to bind into a sandbox for `selection`: with a selection the driver can resolve, its
    GPUs' /dev/nvidia<minor> and the control nodes; otherwise (no selection, no driver listing, an unknown
    name) every GPU node there is, /dev/dri included, as before a worker had a share."""
    chosen = selected(selection, nvidia_gpus(proc)) if selection is not None else None
    if chosen is None:
        return sorted(glob.glob(str(dev / "nvidia*")) + glob.glob(str(dev / "dri")))
    names = [*CONTROL_NODES, *(f"nvidia{g.minor}" for g in chosen)]
    return sorted(str(dev / n) for n in names if os.path.exists(dev / n))


def visible_devices(selection: str, proc: Path = NVIDIA_PROC) -> str:
    """CUDA_VISIBLE_DEVICES for a sandbox that holds only `selection`'s GPUs: their UUIDs where the driver
    reports them, else the selection as given."""
    chosen = selected(selection, nvidia_gpus(proc))
    if not chosen or not all(g.uuid for g in chosen):
        return selection
    return ",".join(g.uuid for g in chosen)
