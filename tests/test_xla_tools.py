"""The XLA tools for the CPU speed work: compiler-option A/B in one process, and the per-kernel step profile."""
import json

import pytest

from benchmarks import step_profile, xla_options
from benchmarks.speed import BenchmarkError

# A one-block, narrow ViT: the tools' machinery is under test here, not the model's speed.
SMALL_MODEL = ["--config", "tiny", "--set", "depth=1", "--set", "width=32", "--set", "num_heads=2",
               "--set", "mlp_dim=64", "--batch-size", "8"]
NO_YNN = "no-ynn:xla_cpu_experimental_ynn_fusion_type="


def test_variants_parse_to_typed_options():
    assert xla_options.parse_variant(NO_YNN) == ("no-ynn", {"xla_cpu_experimental_ynn_fusion_type": ""})
    name, options = xla_options.parse_variant(
        "mix: --xla_cpu_multi_thread_eigen=False; xla_cpu_prefer_vector_width=512;"
        "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE")
    assert name == "mix"
    assert options == {"xla_cpu_multi_thread_eigen": False, "xla_cpu_prefer_vector_width": 512,
                       "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@pytest.mark.parametrize("text", ["no-colon", ":xla_cpu_ftz=true", "default:xla_cpu_ftz=true", "empty:",
                                  "noeq:xla_cpu_ftz"])
def test_malformed_variants_are_refused(text):
    with pytest.raises(BenchmarkError, match="--variant"):
        xla_options.parse_variant(text)


def test_library_fusions_are_counted_from_the_optimised_hlo():
    hlo = ('%a = f32[2]{0} fusion(%p), kind=kCustom, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}\n'
           '%b = f32[2]{0} fusion(%a), kind=kCustom, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}\n'
           '%c = f32[2]{0} fusion(%b), kind=kLoop\n')
    assert xla_options.library_fusions(hlo) == {"ynnpack": 2, "xnnpack": 0, "onednn": 0}


def test_kernels_are_grouped_by_kind_shape_and_op_without_containers_or_runtime_spans():
    hlo = "\n".join([
        '  %ynn_fusion.1 = f32[8,4]{1,0} fusion(%x), kind=kCustom, metadata={op_name="jit(<lambda>)/jvp()/dot_general"}, '
        'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
        '  %ynn_fusion.2 = f32[8,4]{1,0} fusion(%y), kind=kCustom, metadata={op_name="jit(<lambda>)/jvp()/dot_general"}, '
        'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
        '  %copy_fusion.3 = f32[4,8]{1,0} fusion(%ynn_fusion.1), kind=kLoop, metadata={op_name="jit(<lambda>)/transpose(jvp())/reshape"}',
        '  ROOT %while.4 = (f32[2]{0}) while(%t), condition=%c, body=%b',
    ])
    index = step_profile.hlo_index(hlo)
    assert index["ynn_fusion.1"] == {"kind": "ynnpack", "shape": "f32[8,4]{1,0}", "op_name": "jvp()/dot_general"}
    assert index["while.4"]["kind"] == "while"
    trace = {"traceEvents": [
        {"ph": "X", "name": "ynn_fusion.1", "dur": 3000}, {"ph": "X", "name": "ynn_fusion.2", "dur": 1000},
        {"ph": "X", "name": "ynn_fusion.1", "dur": 2000}, {"ph": "X", "name": "copy_fusion.3", "dur": 500},
        {"ph": "X", "name": "while.4", "dur": 9000}, {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 7000},
        {"ph": "i", "name": "copy_fusion.3"}, {"ph": "X", "name": "end: copy_fusion.3", "dur": 0},
    ]}
    rows = step_profile.group_kernels(step_profile.kernel_events(trace, index), index, steps=2)
    assert [(r["kind"], r["ms_per_step"], r["kernels_per_step"]) for r in rows] == [("ynnpack", 3.0, 1.5),
                                                                                    ("fusion", 0.25, 0.5)]
    assert step_profile.by_kind(rows) == {"ynnpack": 3.0, "fusion": 0.2}


def test_xla_options_ab_writes_a_record_that_tells_same_from_different_programs(tmp_path, capsys):
    out = tmp_path / "ab" / "xla_options.json"
    code = xla_options.main(SMALL_MODEL + ["--rounds", "2", "--steps", "1", "--variant", NO_YNN,
                                           "--variant", "same:xla_cpu_enable_fast_math=false", "--out", str(out)])
    assert code == 0
    assert [p.name for p in out.parent.iterdir()] == ["xla_options.json"]  # no temporary file left behind
    report = json.loads(out.read_text())
    assert report["schema"] == xla_options.SCHEMA and report["machine"]["cpu"]
    results = report["results"]
    assert list(results) == ["default", "no-ynn", "same"]
    assert results["default"]["ratio_to_default_median"] == 1.0
    for r in results.values():
        assert len(r["step_ms"]) == 2 and all(ms > 0 for ms in r["step_ms"])
        assert r["ratio_to_default_median"] > 0
    # fast-math off is XLA's default, so that program is the default's; turning YNNPACK off removes its fusions
    assert results["same"]["same_hlo_as"] == "default"
    assert results["same"]["options"] == {"xla_cpu_enable_fast_math": False}
    assert results["default"]["same_hlo_as"] is None
    assert results["no-ynn"]["library_fusions"]["ynnpack"] == 0
    if results["default"]["library_fusions"]["ynnpack"]:  # jaxlib builds without YNNPACK have nothing to remove
        assert results["no-ynn"]["same_hlo_as"] is None
    assert "same HLO as default" in capsys.readouterr().out


def test_a_variant_key_without_the_xla_prefix_is_a_config_override():
    name, spec = xla_options.parse_variant("one-slice:micro_batches=1;xla_cpu_enable_fast_math=false")
    assert xla_options.split_variant(spec) == ({"xla_cpu_enable_fast_math": False}, {"micro_batches": "1"})


def test_config_variants_run_their_own_step_on_the_same_state(tmp_path, capsys):
    out = tmp_path / "configs.json"
    code = xla_options.main(SMALL_MODEL + ["--set", "micro_batches=2", "--rounds", "2", "--steps", "1",
                                           "--variant", "one-slice:micro_batches=1",
                                           "--variant", "one-slice-again:micro_batches=1",
                                           "--variant", "tanh-gelu:gelu_approximation=tanh", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["settings"]["jax_micro_batches"] == 2
    assert [results[n]["micro_batches"] for n in results] == [2, 1, 1, 2]
    assert results["one-slice"]["overrides"] == {"micro_batches": "1"} and results["one-slice"]["options"] == {}
    # a different model function is a different program; the same override twice is the same one
    assert results["one-slice"]["same_hlo_as"] is None and results["tanh-gelu"]["same_hlo_as"] is None
    assert results["one-slice-again"]["same_hlo_as"] == "one-slice"
    assert all(len(r["step_ms"]) == 2 for r in results.values())
    assert "(1 micro-batches)" in capsys.readouterr().out


@pytest.mark.parametrize("variant, message", [("wider:width=64", "change the train state"),
                                              ("typo:no_such_key=1", "unknown config key"),
                                              ("range:micro_batches=-1", "out of range")])
def test_config_variants_that_cannot_share_the_state_or_do_not_parse_are_one_line_and_exit_2(
        tmp_path, capsys, variant, message):
    out = tmp_path / "never.json"
    code = xla_options.main(SMALL_MODEL + ["--rounds", "1", "--variant", variant, "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_an_option_this_jaxlib_does_not_know_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "never.json"
    code = xla_options.main(SMALL_MODEL + ["--rounds", "1", "--variant", "typo:xla_cpu_no_such_option=1",
                                           "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xla_cpu_no_such_option" in err[0] and "XLA_FLAGS=--help" in err[0]


def test_step_profile_accounts_the_traced_steps_kernels(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert step_profile.main(SMALL_MODEL + ["--steps", "2", "--top", "5", "--out", str(out)]) == 0
    profile = json.loads(out.read_text())["profile"]
    rows = profile["rows"]
    assert rows and all(r["ms_per_step"] >= 0 and r["kernels_per_step"] > 0 for r in rows)
    assert sum(r["ms_per_step"] for r in rows) == pytest.approx(profile["kernel_ms_per_step"])
    assert profile["step_ms"] > 0 and 0 < profile["busy"]
    # the backward pass is in the trace, not only the forward
    assert any(r["op_name"].startswith("transpose(") for r in rows)
    printed = capsys.readouterr().out
    assert "by kind (ms/step)" in printed and len([l for l in printed.splitlines() if l[:8].strip()]) >= 4
