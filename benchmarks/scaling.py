"""Where data-parallel scaling stops, on paper: each step's gradient all-reduce against its compute.

    python -m benchmarks.scaling [--out results/scaling.json]

Nothing here is measured. Per model: its real parameter count (the model built abstractly and counted),
the bytes of its float32 gradients (the train step averages float32 gradients: the weights stay float32 under
bfloat16 compute), and its training FLOPs per image (`benchmarks.flops`: 3x the forward matmuls). Per link:
a ring all-reduce sends and receives 2 (n-1)/n x the gradient bytes through every member's link, so at the
link's bandwidth B it takes 2 (n-1)/n x bytes / B. Across nodes the members are the nodes, each with one NIC
(NCCL's hierarchical all-reduce: within each node over NVLink, then across the nodes' NICs); the within-node
part is added. The step's compute is FLOPs x per-device batch at an assumed 40 % MFU of the chip's dense bf16
peak. The step does the all-reduce after the whole backward pass (`train_step.train_step_per_device`), so the
estimate adds the two (no overlap): efficiency compute / (compute + all-reduce), the break-even per-device
batch at which the two are equal, and for two nodes their throughput against one node's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a file from a checkout

from benchmarks.flops import PEAK_BF16_FLOPS, train_flops_per_image  # noqa: E402
from jax_vit.configs import PRESETS, Config  # noqa: E402

ASSUMED_MFU = 0.40  # an assumption, not a measurement: no GPU has run this code yet (README, "Results")
GRADIENT_BYTES_PER_PARAMETER = 4  # float32
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "scaling.json"

# Dense bf16 peaks, FLOP/s: the H100 SXM's from benchmarks.flops (NVIDIA's data sheet), the TPUs' from Google's
# Cloud TPU pages (docs.cloud.google.com/tpu/docs/v4 and /v5e: "Peak compute per chip").
CHIPS = {
    "H100 SXM": dict(PEAK_BF16_FLOPS)["h100"],
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
}

NVLINK = "NVLink 4, one 8-GPU H100 node"
# Bandwidth per ring member and direction, bytes/s, with where it comes from. members: the ring's size (devices,
# or nodes across a network); devices: how many accelerators that is.
LINKS = (
    {"name": NVLINK, "members": 8, "devices": 8, "bytes_per_s": 450e9, "chip": "H100 SXM",
     "source": "NVIDIA H100 data sheet: NVLink 900 GB/s per GPU, both directions together (450 GB/s each way)"},
    {"name": "TPU v4 ICI, v4-32 slice (16 chips)", "members": 16, "devices": 16, "bytes_per_s": 1.1e15 / 4096, "chip": "TPU v4",
     "source": "Cloud TPU v4 page: all-reduce bandwidth 1.1 PB/s per 4096-chip pod, i.e. 269 GB/s per chip"},
    {"name": "TPU v5e ICI, v5e-64 slice (64 chips)", "members": 64, "devices": 64, "bytes_per_s": 51.2e12 / 256, "chip": "TPU v5e",
     "source": "Cloud TPU v5e page: all-reduce bandwidth 51.2 TB/s per 256-chip pod, i.e. 200 GB/s per chip "
               "(= its 1600 Gb/s ICI per chip)"},
    *({"name": f"{gbit} Gb/s Ethernet, 2 nodes x 8 H100", "members": 2, "devices": 16, "bytes_per_s": gbit * 1e9 / 8,
       "chip": "H100 SXM", "within_node": NVLINK,
       "source": f"line rate {gbit} Gb/s = {gbit / 8:g} GB/s each way, one NIC per node (k NICs: divide the "
                 f"network part by k); protocol overhead not taken off"}
      for gbit in (100, 200, 400)),
)


def models() -> list[dict]:
    """The presets' distinct architectures, each with the per-device batch its recipe trains with, and the
    fine-tuning model (ViT-B/16 at 224 px, the ViT authors' batch 512 over one 8-GPU node)."""
    rows = []
    seen = {}
    for name, config in PRESETS.items():
        shape = (config.width, config.depth, config.mlp_dim, config.patch_size)
        if shape in seen:  # best and heavy-aug train seed-384x8's model: one row, named for all
            seen[shape]["presets"].append(name)
            continue
        seen[shape] = {"presets": [name], "config": config, "per_device_batch": config.batch_size}
        rows.append(seen[shape])
    vit_b16 = Config(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, resolution=224)
    rows.append({"presets": ["ViT-B/16 fine-tuning at 224 px"], "config": vit_b16, "per_device_batch": 512 // 8})
    return rows


def parameter_count(config: Config) -> int:
    """The model's parameters, counted from the model itself (built abstractly: no memory, no compute)."""
    from flax import nnx

    from jax_vit.model import VisionTransformer, count_params

    return count_params(nnx.split(nnx.eval_shape(lambda: VisionTransformer(config, rngs=nnx.Rngs(0))))[1].to_pure_dict())


def allreduce_seconds(gradient_bytes: float, members: int, bytes_per_s: float) -> float:
    """A ring all-reduce of `gradient_bytes` over `members`, each link at `bytes_per_s` per direction."""
    return 2 * (members - 1) / members * gradient_bytes / bytes_per_s


def link_seconds(gradient_bytes: float, link: dict) -> float:
    """The all-reduce over `link`, with the within-node stage for links between nodes."""
    seconds = allreduce_seconds(gradient_bytes, link["members"], link["bytes_per_s"])
    if "within_node" in link:
        inner = next(other for other in LINKS if other["name"] == link["within_node"])
        seconds += allreduce_seconds(gradient_bytes, inner["members"], inner["bytes_per_s"])
    return seconds


def compute_seconds(config: Config, batch: int, peak_flops: float, mfu: float = ASSUMED_MFU) -> float:
    return train_flops_per_image(config) * batch / (mfu * peak_flops)


def scaling_table() -> dict:
    report = {
        "what": "paper figures, not measurements: gradient all-reduce time per step against the step's compute",
        "assumptions": {
            "mfu": ASSUMED_MFU,
            "mfu_note": "assumed model-FLOPs utilisation of each chip's dense bf16 peak; not measured",
            "gradient_dtype": "float32",
            "all_reduce": "ring: 2 (n-1)/n x gradient bytes through each member's link, at the link's bandwidth "
                          "per direction; across nodes the members are the nodes (one NIC each) and the "
                          "within-node NVLink stage is added; latency and protocol overhead ignored",
            "overlap": "none: the all-reduce follows the whole backward pass (jax_vit/train_step.py)",
            "chips_bf16_peak_flops": CHIPS,
        },
        "links": [dict(link) for link in LINKS],
        "models": [],
    }
    for row in models():
        config, batch = row["config"], row["per_device_batch"]
        params = parameter_count(config)
        gradient_bytes = params * GRADIENT_BYTES_PER_PARAMETER
        per_image = {chip: compute_seconds(config, 1, peak) for chip, peak in CHIPS.items()}
        entry = {
            "presets": row["presets"],
            "architecture": {k: getattr(config, k) for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size")}
            | {"input_size": config.input_size},
            "parameters": params,
            "gradient_bytes": gradient_bytes,
            "train_flops_per_image": train_flops_per_image(config),
            "per_device_batch": batch,
            "per_link": [],
        }
        for link in LINKS:
            communicate = link_seconds(gradient_bytes, link)
            compute = per_image[link["chip"]] * batch
            cell = {
                "link": link["name"],
                "allreduce_ms": communicate * 1e3,
                "compute_ms": compute * 1e3,
                "efficiency": compute / (compute + communicate),
                "break_even_per_device_batch": communicate / per_image[link["chip"]],
            }
            if "within_node" in link:  # images/s of all the nodes over images/s of one node on NVLink alone
                one_node = compute / (compute + link_seconds(gradient_bytes, next(
                    other for other in LINKS if other["name"] == link["within_node"])))
                cell["throughput_vs_one_node"] = link["members"] * cell["efficiency"] / one_node
            entry["per_link"].append(cell)
        report["models"].append(entry)
    return report


def format_table(report: dict) -> str:
    lines = []
    for model in report["models"]:
        lines.append(f"{', '.join(model['presets'])}: {model['parameters'] / 1e6:.2f} M parameters, "
                     f"{model['gradient_bytes'] / 1e6:.1f} MB of float32 gradients, "
                     f"{model['train_flops_per_image'] / 1e9:.2f} GFLOP per image, batch {model['per_device_batch']} "
                     f"per device")
        for cell in model["per_link"]:
            versus = (f" | {cell['throughput_vs_one_node']:.2f}x one node" if "throughput_vs_one_node" in cell else "")
            lines.append(f"  {cell['link']:<40} all-reduce {cell['allreduce_ms']:8.3f} ms | compute "
                         f"{cell['compute_ms']:8.3f} ms | efficiency {cell['efficiency']:6.1%} | break-even batch "
                         f"{cell['break_even_per_device_batch']:8.1f}{versus}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    report = scaling_table()
    print(format_table(report))
    from jax_vit.reporting import write_json

    write_json(args.out, report)
    print(f"paper figures (assumed {ASSUMED_MFU:.0%} MFU, no measurement) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
