"""The ablation runner's records and reports: `runs.jsonl` (one record per finished run), and rewritten from it
after every run, `results.csv`, `results.md` (a table per grid, mean ± std over seeds, the setting chosen on
validation in bold) and `accuracy.png` (validation accuracy per setting, one panel per grid). Every file is
written to a temporary sibling and renamed, so a reader never sees half of one.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from jax_vit.reporting import read_jsonl, write_atomic, write_jsonl

RESULT_FIELDS = ("grid", "setting", "seed", "epochs", "params", "train_seconds", "val_accuracy",
                 "val_accuracy_ema", "test_accuracy", "test_accuracy_ema", "changes")


def load_runs(out_dir: Path) -> list[dict]:
    return read_jsonl(Path(out_dir) / "runs.jsonl")


def append_run(out_dir: Path, run: dict) -> None:
    write_jsonl(Path(out_dir) / "runs.jsonl", load_runs(out_dir) + [run])


def results_csv(runs: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        row = {key: run.get(key) for key in RESULT_FIELDS}
        row["changes"] = json.dumps(run.get("changes", {}), sort_keys=True)
        writer.writerow(row)
    return buffer.getvalue()


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


def summarise(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs grouped by (grid, setting), in the order they were first run."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["grid"], run["setting"]), []).append(run)
    return groups


# Runs written before each run kept its command's header.
UNRECORDED_HEADER = "A command not recorded here (its runs predate runs.jsonl keeping each run's command)."


def command_headers(runs: list[dict], header: str = "") -> list[str]:
    """The headers (machine, command, load) of the commands that trained `runs`, in order, once each.

    A folder filled by several commands (more seeds, more settings) names all of them; an empty folder
    names the current command's `header`.
    """
    if not runs:
        return [header] if header else []
    return list(dict.fromkeys(run.get("header") or UNRECORDED_HEADER for run in runs))


def results_markdown(runs: list[dict], header: str = "") -> str:
    """One table per grid; accuracies in %, mean ± std over seeds; the row chosen on validation in bold."""
    headers = command_headers(runs, header)
    if len(headers) > 1:
        lines = [f"Filled by {len(headers)} commands, in order:", ""] + [f"{i}. {h.rstrip()}"
                                                                     for i, h in enumerate(headers, 1)] + [""]
    else:
        lines = [headers[0].rstrip(), ""] if headers else []
    groups = summarise(runs)
    for grid in dict.fromkeys(g for g, _ in groups):
        rows = [(s, rs) for (g, s), rs in groups.items() if g == grid]
        # Chosen as the table reads: the mean over seeds (of each run's better of raw and EMA weights).
        best = max(rows, key=lambda item: np.mean([_best_val(r) for r in item[1]]))[0]
        lines += [f"### Grid `{grid}`", "",
                  "| setting | seeds | epochs | params | val acc | val acc (EMA) | test acc | test acc (EMA) "
                  "| train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for setting, rs in rows:
            name = f"**{setting}**" if setting == best else setting
            lines.append(
                f"| {name} | {len(rs)} | {' / '.join(str(e) for e in dict.fromkeys(r['epochs'] for r in rs))} "
                f"| {rs[0]['params']:,} "
                f"| {_mean_std([r['val_accuracy'] for r in rs])} | {_mean_std([r['val_accuracy_ema'] for r in rs])} "
                f"| {_mean_std([r['test_accuracy'] for r in rs])} | {_mean_std([r['test_accuracy_ema'] for r in rs])} "
                f"| {np.mean([r['train_seconds'] for r in rs]):.0f} |")
        lines += ["", "Bold: the setting chosen on the validation split (mean over seeds of the better of raw and EMA "
                  "weights).", ""]
    return "\n".join(lines)


def _best_val(run: dict) -> float:
    return max(v for v in (run["val_accuracy"], run["val_accuracy_ema"]) if v is not None)


def accuracy_plot(runs: list[dict]) -> bytes:
    """PNG: validation accuracy against epoch, one line per setting (mean over seeds), one panel per grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summarise(runs)
    grids = list(dict.fromkeys(g for g, _ in groups))
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        members = {k: rs for k, rs in groups.items() if k[0] == grid}
        # An epoch budget plots against epochs; a time budget (epochs differ) against training minutes.
        by_epoch = len({r["epochs"] for rs in members.values() for r in rs}) == 1
        for (_, setting), rs in members.items():
            # Seeds added later under a time budget may have got other epoch counts: plot what they share.
            shared = min(len(r["history"]) for r in rs)
            curves = np.array([[e["val_accuracy"] for e in r["history"][:shared]] for r in rs], dtype=float)
            if by_epoch:
                xs = [e["epoch"] for e in rs[0]["history"][:shared]]
            else:
                xs = [e["train_seconds"] / 60 for e in rs[0]["history"][:shared]]
            # Markers only where they can be told apart (a 150-epoch curve is a line).
            ax.plot(xs, 100 * curves.mean(0), marker="o" if len(xs) <= 40 else None, label=setting)
        ax.set(title=f"grid: {grid}", xlabel="epoch" if by_epoch else "training minutes",
               ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(out_dir: Path, runs: list[dict], header: str = "") -> None:
    out_dir = Path(out_dir)
    write_atomic(out_dir / "results.csv", results_csv(runs))
    write_atomic(out_dir / "results.md", results_markdown(runs, header))
    if runs:
        write_atomic(out_dir / "accuracy.png", accuracy_plot(runs))
