"""The paper scaling table (benchmarks/scaling.py): its formulas, its parameter counts, and that the committed
results/scaling.json (the numbers in docs/distributed.md) is what the code computes."""
import json
from pathlib import Path

import pytest

from benchmarks import scaling

RESULTS = Path(__file__).resolve().parents[1] / "results" / "scaling.json"


def test_a_ring_all_reduce_moves_twice_the_gradients_less_one_share():
    # Two members: each sends half and receives half, twice (reduce-scatter, then all-gather): the bytes once.
    assert scaling.allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)
    assert scaling.allreduce_seconds(1e9, 8, 1e9) == pytest.approx(2 * 7 / 8)
    ethernet = next(link for link in scaling.LINKS if link["name"].startswith("100 Gb/s"))
    # Across two nodes: the NIC stage (12.5 GB/s, the bytes once) plus the NVLink stage inside each node.
    assert scaling.link_seconds(1e9, ethernet) == pytest.approx(1e9 / 12.5e9 + 2 * 7 / 8 * 1e9 / 450e9)


def test_parameter_counts_are_the_models_own():
    counts = {model["presets"][0]: scaling.parameter_count(model["config"]) for model in scaling.models()}
    assert counts["seed-256x6"] == 3_195_146  # hand-counted in tests/test_jax_vit_model.py
    # timm's vit_base_patch16_224: 86,567,656 with ImageNet's 1000-class head; here a 10-class head.
    assert counts["ViT-B/16 fine-tuning at 224 px"] == 86_567_656 - (768 * 1000 + 1000) + (768 * 10 + 10)


def test_the_committed_table_is_what_the_code_computes():
    committed = json.loads(RESULTS.read_text())
    assert "not measurements" in committed["what"] and committed["assumptions"]["mfu"] == scaling.ASSUMED_MFU
    # The same arithmetic in the same order: equal to the last bit (JSON round trip: tuples become lists).
    assert committed == json.loads(json.dumps(scaling.scaling_table())), "rerun python -m benchmarks.scaling"
