"""Every GPU figure the README promises, measured by one command inside one budget (benchmarks.gpu_report).

    python scripts/gpu_report.py --out results/gpu/h100 --data-dir ../shared/data --budget-minutes 7
    python scripts/gpu_report.py --out /tmp/gpu-smoke --smoke      # every part's code path on a CPU, < 3 min
    python scripts/gpu_report.py --out results/gpu/h100 --parts speed track --budget-minutes 30 --overwrite

Writes OUT/report.json, OUT/report.md (the README's GPU table) and each part's JSON, plots and logs.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from benchmarks.gpu_report.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
