"""Facts about the host that every benchmark record names, with no framework imported (the GPU report's
orchestrator imports neither JAX nor PyTorch)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s), since speed ratios differ between CPU kinds."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# The vector and matrix extensions that decide which kernels the frameworks pick on an x86 CPU: the same
# "AMD EPYC" name covers Zen 3 (AVX2 only) and Zen 4 (AVX-512), and speed ratios differ between them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_kind(cpuinfo: str | None = None) -> dict:
    """Vendor, family/model numbers and ISA extensions from /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    kind = {"vendor": fields.get("vendor_id"), "family": fields.get("cpu family"), "model": fields.get("model"),
            "isa": [flag for flag in ISA_FLAGS if flag in flags]}
    return {key: value for key, value in kind.items() if value not in (None, "")}
