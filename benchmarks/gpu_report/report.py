"""The orchestrator behind `scripts/gpu_report.py`: budget, subprocesses, report.json (see the package docstring).

Exit status: 0 when every part is ok or skipped with its reason, 1 when a part failed (its error is in the
report and the next part still ran), 2 for bad options (no GPU without --smoke, an unknown part, an --out
holding another report), 130 when interrupted (the report says which step was cut off).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_report import markdown
from benchmarks.host import cpu_model
from benchmarks.gpu_report.parts import PARTS, REPO, Context, Part, Step
from jax_vit.reporting import write_atomic

SCHEMA = "gpu-report/1"
DEFAULT_BUDGET_MINUTES, SMOKE_BUDGET_MINUTES = 7.0, 3.0
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
LOG_TAIL_LINES = 4


class ReportError(ValueError):
    """Bad options; the message names the fix."""


class Interrupted(Exception):
    """SIGTERM or Ctrl-C: the step in flight is stopped and the report says so."""


def parse_parts(values: list[str] | None) -> list[str]:
    """Part names, space- or comma-separated, in the report's order (the machine's peaks feed later parts)."""
    if not values:
        return list(PARTS)
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ReportError(f"unknown part {', '.join(map(repr, unknown)) or repr(values)}: choose from "
                          f"{', '.join(PARTS)}")
    return [name for name in PARTS if name in names]


def gpu_inventory() -> list[dict[str, Any]]:
    """The NVIDIA GPUs nvidia-smi lists (name, driver, memory, CUDA version the driver supports); [] if none."""
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        listed = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=60)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    gpus = []
    for line in listed.stdout.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        gpus.append({**dict(zip(query.split(","), values)), "driver_cuda_version": cuda.group(1) if cuda else None})
    return gpus




def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder holding another report unless --overwrite; then clear only what a report writes."""
    if (out / "report.json").exists() and not overwrite:
        raise ReportError(f"{out} holds another report (report.json): choose a new --out, or add --overwrite to "
                          f"replace it")
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file: give a folder")
    if (out / "report.json").exists():  # --overwrite: what the last report wrote goes, nothing else
        for name in ("report.json", "report.md", *(f"{p}.json" for p in PARTS)):
            (out / name).unlink(missing_ok=True)
        for name in (*PARTS, "logs"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _tail(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])[-600:]


def run_step(step: Step, seconds: float, ctx: Context, part: str) -> dict[str, Any]:
    """Run one step as its own process group, killed at `seconds`; its record, status and reason."""
    log = ctx.out / "logs" / f"{part}-{step.name.replace(' ', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    step.output.parent.mkdir(parents=True, exist_ok=True)
    argv = step.command(seconds)
    env = {**os.environ, **child_environment(ctx), **step.env}
    entry: dict[str, Any] = {"name": step.name, "command": display_command(argv), "budget_s": round(seconds, 1),
                             "output": ctx_relative(ctx, step.output), "log": ctx_relative(ctx, log)}
    started = time.monotonic()
    with open(log, "w") as sink:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group: DataLoader and compile workers go too
        try:
            returncode = process.wait(timeout=max(seconds, 0.1))
            timed_out = False
            _kill_group(process)  # whatever it left behind (compile workers, loader processes) goes with it
        except (subprocess.TimeoutExpired, Interrupted, KeyboardInterrupt) as stop:
            _kill_group(process)
            if not isinstance(stop, subprocess.TimeoutExpired):
                entry.update(status="failed", reason="interrupted", seconds=round(time.monotonic() - started, 1))
                raise Interrupted(entry) from None
            returncode, timed_out = None, True
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["returncode"] = returncode
    record = None
    if step.output.exists():
        try:
            record = json.loads(step.output.read_text())
        except json.JSONDecodeError:
            record = None
    if timed_out:
        entry.update(status="failed", reason=f"timed out: killed after {entry['seconds']:.0f} s, the end of its "
                                             f"part's share (last output: {_tail(log)})")
    elif returncode != 0:
        entry.update(status="failed", reason=f"exit status {returncode}: {_tail(log)}")
    elif record is None:
        entry.update(status="failed", reason=f"exited 0 but wrote no readable {entry['output']}: {_tail(log)}")
    elif record.get("status") == "skipped":
        entry.update(status="skipped", reason=record.get("reason"))
    else:
        entry.update(status="ok")
    entry["record"] = record if entry["status"] == "ok" else None
    if record is not None and entry["status"] == "failed":
        entry["partial"] = record  # what the step had written when it stopped
    return entry


def display_command(argv: list[str]) -> str:
    """The command as a user would type it in the checkout."""
    shown = ["python" if arg == sys.executable else arg.removeprefix(f"{REPO}{os.sep}") for arg in argv]
    return shlex.join(shown)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def child_environment(ctx: Context) -> dict[str, str]:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "USE_TF": "0"}
    if ctx.smoke:  # the CPU path on any machine, a GPU one too
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def ctx_relative(ctx: Context, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.out))
    except ValueError:
        return str(path)


class Report:
    """report.json, report.md and each part's JSON, rewritten atomically as results come in."""

    def __init__(self, ctx: Context, command: str, parts: list[str]):
        self.ctx = ctx
        self.started = time.monotonic()
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.data = {
            "schema": SCHEMA, "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "smoke": ctx.smoke, "budget_minutes": ctx.budget_s / 60, "data_dir": str(ctx.data_dir),
            "out": str(ctx.out),
            "git_commit": git_commit(),
            "machine": {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpus": ctx.gpus,
                        "python": platform.python_version(), "platform": platform.platform()},
            "parts_asked": parts, "finished": False, "seconds": 0.0,
            "parts": {name: {"status": "pending"} for name in parts}, "rows": [],
        }

    def update_part(self, name: str, entry: dict[str, Any]) -> None:
        part_json = {"part": name, **entry}
        write_atomic(self.ctx.out / f"{name}.json", json.dumps(part_json, indent=2) + "\n")
        self.rows[name] = entry.get("rows") or []
        summary = {k: v for k, v in entry.items() if k not in ("steps", "rows")}
        summary["steps"] = [{k: v for k, v in s.items() if k != "record"} for s in entry.get("steps", [])]
        summary["json"] = f"{name}.json"
        self.data["parts"][name] = summary
        self._machine_from(name, entry)
        self.write()

    def _machine_from(self, name: str, entry: dict[str, Any]) -> None:
        if name != "machine":
            return
        figures = entry.get("figures") or {}
        for framework in ("jax", "torch"):
            record = figures.get(framework)
            if record:
                self.data["machine"][framework] = {k: record.get(k) for k in (
                    "platform", "device", "devices", "versions", "memory_bytes", "measured_peak_flops",
                    "datasheet_peak_flops")}

    def write(self, finished: bool = False) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        self.data["finished"] = finished
        self.data["rows"] = markdown.all_rows(self.data, self.rows)
        write_atomic(self.ctx.out / "report.json", json.dumps(self.data, indent=2) + "\n")
        write_atomic(self.ctx.out / "report.md", markdown.render(self.data))


def part_status(steps: list[dict[str, Any]]) -> tuple[str, str | None]:
    failed = [s for s in steps if s["status"] == "failed"]
    if failed:
        return "failed", "; ".join(f"{s['name']}: {s['reason']}" for s in failed)
    if steps and all(s["status"] == "skipped" for s in steps):
        return "skipped", "; ".join(f"{s['name']}: {s['reason']}" for s in steps)
    return "ok", None


def run_part(part: Part, ctx: Context, deadline: float, report: Report) -> dict[str, Any]:
    allowance = deadline - time.monotonic()
    entry: dict[str, Any] = {"status": "running", "share": part.share, "budget_s": round(allowance, 1), "steps": []}
    started = time.monotonic()
    missing = part.inputs(ctx)
    if missing:
        entry.update(status="skipped", reason=missing, seconds=0.0, figures={}, rows=[])
        report.update_part(part.name, entry)
        return entry
    for step in part.steps(ctx, allowance):
        left = deadline - time.monotonic()
        if step.skip:
            result = {"name": step.name, "status": "skipped", "reason": step.skip}
        elif left < step.min_s:
            result = {"name": step.name, "status": "skipped",
                      "reason": f"needs at least {step.min_s:.0f} s, and {max(left, 0):.0f} s are left of this "
                                f"part's share of the {ctx.budget_s / 60:g}-minute budget (a larger "
                                f"--budget-minutes runs it)"}
        else:
            print(f"[{part.name}] {step.name}: up to {left:.0f} s", flush=True)
            try:
                result = run_step(step, left, ctx, part.name)
            except Interrupted as stop:
                entry["steps"].append(stop.args[0])
                entry.update(status="failed", reason=f"{step.name}: interrupted",
                             seconds=round(time.monotonic() - started, 1))
                report.update_part(part.name, entry)
                raise
        print(f"[{part.name}] {step.name}: {result['status']}"
              + (f" in {result['seconds']:.0f} s" if "seconds" in result else "")
              + (f" ({result['reason']})" if result.get("reason") else ""), flush=True)
        entry["steps"].append(result)
        _summarise(part, ctx, entry)
        report.update_part(part.name, entry)
    status, reason = part_status(entry["steps"])
    entry.update(status=status, reason=reason, seconds=round(time.monotonic() - started, 1))
    _summarise(part, ctx, entry)
    report.update_part(part.name, entry)
    return entry


def _summarise(part: Part, ctx: Context, entry: dict[str, Any]) -> None:
    """Figures and table rows from the steps so far; a summary that breaks is a failure of the part, not a crash."""
    try:
        entry["figures"] = part.figures(ctx, [s for s in entry["steps"] if s["status"] == "ok"])
        entry["rows"] = part.rows(ctx, entry["figures"])
    except Exception as error:  # noqa: BLE001 - recorded in the report, and the run goes on
        entry["figures"], entry["rows"] = {}, []
        entry["steps"].append({"name": "summary", "status": "failed", "reason": f"{type(error).__name__}: {error}"})


def run_report(ctx: Context, parts: list[str], command: str) -> int:
    report = Report(ctx, command, parts)
    report.write()
    total_share = sum(PARTS[name].share for name in parts)
    start = time.monotonic()
    planned_end = start
    failed = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        for name in parts:
            part = PARTS[name]
            planned_end += ctx.budget_s * part.share / total_share  # what earlier parts left unused carries on
            entry = run_part(part, ctx, min(planned_end, start + ctx.budget_s), report)
            ctx.parts[name] = entry
            failed |= entry["status"] == "failed"
    except (Interrupted, KeyboardInterrupt):
        report.write(finished=False)
        print(f"interrupted; the parts finished so far are in {ctx.out / 'report.json'}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.write(finished=True)
    print(f"wrote {ctx.out / 'report.json'} and report.md in {report.data['seconds']:.0f} s"
          + ("; a part failed (see its reason there)" if failed else ""))
    return 1 if failed else 0


def _raise_interrupted(signum, frame):
    raise Interrupted({"status": "failed", "reason": "interrupted"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_report.py", description="Every GPU figure the README promises, in one budget.",
        epilog=f"parts: {', '.join(f'{n} ({100 * p.share:.0f}%)' for n, p in PARTS.items())}")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md and each part")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="laid out as ../shared/data: cifar-10-batches-py/, seg/*.jpg, seg/bedroom/, "
                             "fashion-mnist/ (or /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help=f"all parts together (default {DEFAULT_BUDGET_MINUTES:g}; {SMOKE_BUDGET_MINUTES:g} "
                             f"with --smoke)")
    parser.add_argument("--parts", nargs="+", default=None, metavar="PART", help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true",
                        help="every part's real code path on the CPU with tiny sizes: checks the code, measures nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parts = parse_parts(args.parts)
        budget = args.budget_minutes if args.budget_minutes is not None else (
            SMOKE_BUDGET_MINUTES if args.smoke else DEFAULT_BUDGET_MINUTES)
        if not budget > 0:
            raise ReportError(f"--budget-minutes {args.budget_minutes:g} must be positive, for example 7")
        gpus = gpu_inventory()
        if not gpus and not args.smoke:
            raise ReportError("no GPU found (nvidia-smi lists none): run this on a GPU machine, or add --smoke to "
                              "check every part's code on the CPU")
        prepare_out(args.out, args.overwrite)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ctx = Context(out=args.out.resolve(), data_dir=args.data_dir.resolve(), smoke=args.smoke, budget_s=60 * budget,
                  gpus=gpus)
    command = shlex.join(["python", "scripts/gpu_report.py", *(sys.argv[1:] if argv is None else argv)])
    return run_report(ctx, parts, command)
