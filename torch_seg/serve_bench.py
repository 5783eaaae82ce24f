"""Speed of the HTTP service (`torch_seg/server.py`) against `TextSegmenter.segment` in the same process.

One `TextSegmenter` serves both paths. The server runs in this process on a free loopback port (uvicorn in a
background thread, as `scripts/serve.py` runs it) and clients post the same photo with `requests`:
- direct vs served, alternated so that load from other processes hits both alike: `segment(image, prompt)`
  on the decoded image, then one POST /segment of the file. The server's overhead is each answer's client
  latency minus the model time it reports (detect + SAM encode + SAM decode, measured inside `segment`):
  HTTP, multipart parsing, image decoding, RLE encoding and JSON, paired request by request.
- one client in turn, then `clients` concurrent clients: requests/s and median / 95th-percentile latency.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

MODEL_STAGES = ("detect", "sam_encode", "sam_decode")


def _percentiles(latencies_s: list[float]) -> dict:
    return {"n": len(latencies_s), "median_s": round(float(np.median(latencies_s)), 3),
            "p95_s": round(float(np.percentile(latencies_s, 95)), 3),
            "min_s": round(min(latencies_s), 3), "max_s": round(max(latencies_s), 3)}


def machine() -> dict:
    model = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     model)
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    return {"platform": platform.platform(), "cpu_model": model, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": None if not torch.cuda.is_available()
            else torch.cuda.get_device_name(0)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "sam2", "groundingdino-py", "transformers", "starlette", "uvicorn", "python-multipart",
                    "requests"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def measure_service(segmenter, image_path: str | Path, prompt: str, *, paired: int = 4, concurrent_requests: int = 8,
                    clients: int = 4, log=print) -> dict:
    """The figures described above; `paired` direct/served pairs, then `concurrent_requests` over `clients`."""
    import requests

    from torch_seg.images import load_image
    from torch_seg.server import create_app, running_server, wait_until_ready

    image_path = Path(image_path)
    data, image = image_path.read_bytes(), load_image(image_path)
    app = create_app(lambda: segmenter, random_weights=segmenter.random_weights)

    def post(url: str) -> tuple[float, dict]:
        start = time.perf_counter()
        response = requests.post(f"{url}/segment", files={"image": (image_path.name, data)},
                                 data={"prompt": prompt}, timeout=600)
        latency = time.perf_counter() - start
        response.raise_for_status()
        return latency, response.json()

    with running_server(app) as url:
        wait_until_ready(app.state.service)
        log("warm-up: one direct call and one request")
        segmenter.segment(image, prompt)
        post(url)

        direct_s, served_s, overhead_ms, model_ms = [], [], [], []
        for i in range(paired):
            start = time.perf_counter()
            segmenter.segment(image, prompt)
            direct_s.append(time.perf_counter() - start)
            latency, record = post(url)
            served_s.append(latency)
            inside = sum(record["timings_ms"][stage] for stage in MODEL_STAGES)
            model_ms.append(inside)
            overhead_ms.append(latency * 1e3 - inside)
            log(f"pair {i + 1}/{paired}: direct {direct_s[-1]:.2f} s, served {latency:.2f} s "
                f"(overhead {overhead_ms[-1]:.0f} ms)")
        one_client_wall = sum(served_s)

        latencies, lock = [], threading.Lock()
        per_client = [concurrent_requests // clients + (c < concurrent_requests % clients) for c in range(clients)]

        def client(n: int) -> None:
            for _ in range(n):
                latency, _ = post(url)
                with lock:
                    latencies.append(latency)

        log(f"{clients} concurrent clients, {concurrent_requests} requests")
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent_wall = time.perf_counter() - start
        counts = app.state.service.counts

    median_direct = statistics.median(direct_s)
    return {
        "direct_segment": {**_percentiles(direct_s), "images_per_s": round(len(direct_s) / sum(direct_s), 4)},
        "one_client": {**_percentiles(served_s), "requests_per_s": round(len(served_s) / one_client_wall, 4)},
        f"{clients}_clients": {**_percentiles(latencies),
                               "requests_per_s": round(len(latencies) / concurrent_wall, 4),
                               "wall_s": round(concurrent_wall, 2)},
        "overhead": {
            "per_request_ms": [round(x, 1) for x in overhead_ms],
            "median_ms": round(statistics.median(overhead_ms), 1),
            "median_percent_of_model_time": round(100 * statistics.median(
                [o / m for o, m in zip(overhead_ms, model_ms)]), 2),
            "median_latency_vs_direct_percent": round(100 * (statistics.median(served_s) / median_direct - 1), 2),
        },
        "server_counts": dict(counts),
    }
