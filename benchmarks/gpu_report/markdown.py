"""report.md: one table with a row per figure, as the README's GPU section shows them (figure | value | machine |
results file), then a short section per part with its status, budget, steps and their commands."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.gpu_report.parts import REPO

SMOKE_BANNER = "SMOKE RUN on CPU: not GPU figures"
ROW_KEYS = ("part", "figure", "value", "machine", "versions", "file", "peak_memory_bytes", "compile_s", "warmup_s",
            "numbers")


def machine_label(data: dict[str, Any]) -> str:
    machine = data["machine"]
    device = next((machine[f]["device"] for f in ("jax", "torch") if machine.get(f)), None)
    if data["smoke"] or not machine.get("gpus"):
        return f"CPU: {machine['cpu']} ({machine['cpu_cores']} cores), no GPU"
    gpu = machine["gpus"][0]
    return f"{device or gpu['name']} (driver {gpu['driver_version']})"


def versions(data: dict[str, Any]) -> dict[str, Any]:
    machine = data["machine"]
    out = {}
    if machine.get("jax"):
        v = machine["jax"]["versions"]
        out.update(jax=v.get("jax"), jax_cuda=v.get("cuda_runtime"), jax_cudnn=v.get("cudnn"))
    if machine.get("torch"):
        v = machine["torch"]["versions"]
        out.update(torch=v.get("torch"), cuda=v.get("cuda"), cudnn=v.get("cudnn"))
    return {k: v for k, v in out.items() if v is not None}


def _versions_text(v: dict[str, Any]) -> str:
    names = (("jax", "jax"), ("torch", "torch"), ("sam2", "sam2"), ("cuda", "CUDA"), ("cudnn", "cuDNN"))
    return ", ".join(f"{label} {v[key]}" for key, label in names if v.get(key))


def all_rows(data: dict[str, Any], part_rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every part's rows, in the parts' order, each naming the machine and the versions it was measured with."""
    label, common = machine_label(data), versions(data)
    rows = []
    for part in data["parts"]:
        for row in part_rows.get(part) or []:
            merged = {**common, **{k: v for k, v in (row.get("versions") or {}).items()
                                   if k in ("jax", "torch", "sam2", "cuda", "cudnn")}}
            rows.append({key: row.get(key) for key in ROW_KEYS} | {"part": part, "machine": label, "versions": merged})
    return rows


def _file(data: dict[str, Any], file: str) -> str:
    out = Path(data.get("out") or ".")
    try:
        return str(out.resolve().relative_to(REPO) / file)
    except ValueError:
        return file


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(data: dict[str, Any]) -> str:
    lines = []
    title = "GPU report" + ("" if data["smoke"] else f": {machine_label(data)}")
    lines += [f"# {title}", ""]
    if data["smoke"]:
        lines += [f"**{SMOKE_BANNER}.** Tiny sizes, few steps, random weights: this checks every part's code path "
                  f"and measures nothing worth quoting.", ""]
    finished = "" if data["finished"] else " (unfinished: a part is still running or the run was cut off)"
    lines += [f"`{data['command']}`  ", f"{data['created']}, git {data['git_commit']}, budget "
              f"{data['budget_minutes']:g} min, {data['seconds'] / 60:.1f} min used{finished}.  ",
              f"Machine: {machine_label(data)}; {_versions_text(versions(data)) or 'versions: see the parts'}.", ""]
    lines += ["| figure | value | machine | results file |", "|---|---|---|---|"]
    for row in data["rows"]:
        machine = f"{row['machine']}; {_versions_text(row['versions'])}"
        lines.append(f"| {_cell(row['figure'])} | {_cell(row['value'])} | {_cell(machine)} | "
                     f"`{_file(data, row['file'])}` |")
    if not data["rows"]:
        lines.append("| (no figures yet) | | | |")
    lines.append("")
    for name, entry in data["parts"].items():
        status = entry.get("status", "pending")
        head = f"## {name}: {status}"
        if "seconds" in entry:
            head += f" ({entry['seconds']:.0f} s of a {entry.get('budget_s', 0):.0f} s share)"
        lines += [head, ""]
        if entry.get("reason"):
            lines += [f"Reason: {entry['reason']}", ""]
        for note, why in ((entry.get("figures") or {}).get("not_run") or {}).items():
            lines.append(f"- {note}: not run ({why})")
        for step in entry.get("steps") or []:
            text = f"- {step['name']}: {step['status']}"
            if "seconds" in step:
                text += f" in {step['seconds']:.0f} s"
            if step.get("reason"):
                text += f" ({step['reason']})"
            if step.get("command"):
                text += f"  \n  `{step['command']}`"
            lines.append(text)
        lines.append("")
    return "\n".join(lines)
