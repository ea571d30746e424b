"""The machine a run ran on: what tells why two runs of the same code, data and seed differ in their last digits.

TensorFlow (oneDNN) and the BLAS libraries pick their kernels by what the CPU offers: AVX2, AVX-512 and its
bfloat16 and VNNI extensions, Intel's AMX tiles. Two machines of one kind may carry different CPUs (this
project's 2-core machines have had a CPU with AMX on one day and an AMD EPYC without it on another),
so the same seeded run sums its floats in another order on each, and a trained model, and every number
downstream of it, can move in its last digits. The run manifest records each notebook's CPU
(`label`), and `run_all.py` says so when one run's notebooks ran on different ones.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# the instruction sets that change which kernels TensorFlow and BLAS run, in the order a label lists them
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def read_cpuinfo(path: Path = CPUINFO) -> str:
    """The text of /proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name from cpuinfo text (its first processor), else what `platform` knows, else "unknown"."""
    return _field(cpuinfo, "model name") or platform.processor() or platform.machine() or "unknown"


def cpu_isa(cpuinfo: str) -> list[str]:
    """The `ISA_FLAGS` the CPU has (its first processor's flags), in `ISA_FLAGS` order; [] without cpuinfo."""
    flags = set((_field(cpuinfo, "flags") or "").split())
    return [flag for flag in ISA_FLAGS if flag in flags]


def label(cpuinfo: str | None = None) -> str:
    """One line naming the CPU and its kernel-relevant instruction sets, e.g. "AMD EPYC (avx2 fma avx512f ...)"."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    isa = cpu_isa(text)
    return f"{cpu_model(text)} ({' '.join(isa)})" if isa else cpu_model(text)


def describe(cpuinfo: str | None = None) -> dict:
    """The run manifest's machine fields: platform, logical CPUs, CPU model and its kernel-relevant instruction sets."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(text),
        "cpu_isa": cpu_isa(text),
    }


def mixed_cpus(entries: list[dict]) -> dict[str, list[str]]:
    """The notebooks of a run grouped by the CPU they ran on (entries' `cpu`), when more than one CPU ran them;
    {} when every recorded entry ran on one CPU. Entries recorded before CPUs were recorded are left out."""
    by_cpu: dict[str, list[str]] = {}
    for entry in entries:
        if entry.get("cpu"):
            by_cpu.setdefault(entry["cpu"], []).append(entry["name"])
    return by_cpu if len(by_cpu) > 1 else {}


def run_cpus(manifest: dict) -> str:
    """A run's CPU as its index page names it: the manifest's CPU model, or, when its notebooks ran on more than one
    CPU (`mixed_cpus`), each CPU with the notebooks it ran, e.g. "AMD EPYC (avx2 ...): <notebook>; Intel ...: <notebook>, <notebook>"."""
    by_cpu = mixed_cpus(manifest.get("notebooks", []))
    if not by_cpu:
        return str(manifest.get("cpu_model", "not recorded"))
    return "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in sorted(by_cpu.items()))
