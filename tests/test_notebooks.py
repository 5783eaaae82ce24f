"""The Colab notebooks (notebooks/*.ipynb): committed clean, linked from the README, and run top to bottom.

Each notebook runs headless with nbclient on a kernel of this Python (a kernelspec written into a temporary
folder), its CI parameters in a cell inserted after the one tagged "parameters" (papermill's convention, with
nbformat alone): the real CIFAR-10 sample, the real photos and bedroom frames, no install, and downloads that
fail at once (a proxy that refuses every connection), so the segmentation notebook takes its offline path:
random weights in the small setting, said in its output and in every result file.
"""
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
import notebook_runtime as rt  # noqa: E402

CPU_LINE = f"CPU-only runtime: continuing in the small setting; for a GPU: {rt.GPU_FIX}"
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/(notebooks/[\w.-]+\.ipynb)")
REFUSING_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every download fails in milliseconds


def read_notebook(path: Path) -> dict:
    """The notebook as its JSON, each cell's source joined into one string (no nbformat needed)."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return nb


def parameters_cell(nb):
    tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    return tagged[0]


def run_notebook(name: str, parameters: dict, cwd: Path) -> tuple[object, str]:
    """Execute notebooks/`name` with `parameters` injected; returns the executed notebook and all its text output."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install nbformat")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: pip install ipykernel")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()),
                                         metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    kernels = cwd / "kernels"
    (kernels / "notebook-test").mkdir(parents=True)
    env = {"XLA_FLAGS": "", "PYTHONPATH": str(ROOT), "TORCH_SEG_CHECKPOINTS": str(cwd / "checkpoints"),
           "HF_HUB_OFFLINE": "1", "http_proxy": REFUSING_PROXY, "https_proxy": REFUSING_PROXY,
           "HTTP_PROXY": REFUSING_PROXY, "HTTPS_PROXY": REFUSING_PROXY, "no_proxy": "", "NO_PROXY": ""}
    (kernels / "notebook-test" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "this Python", "language": "python", "env": env}))
    manager = KernelManager(kernel_name="notebook-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = nbclient.NotebookClient(nb, km=manager, timeout=300, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name} stopped: {str(error)[-3000:]}\n--- output before ---\n{output_text(nb)[-3000:]}")
    return nb, output_text(nb)


def output_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                parts.append(output["text"])
            elif output["output_type"] == "error":
                parts.extend(output["traceback"])
            elif "text/plain" in output.get("data", {}):
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def images_shown(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the committed files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_is_clean_valid_and_parametrised(path):
    nb = read_notebook(path)
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "clear the outputs before committing"
    assert code[0] is parameters_cell(nb), "the parameters cell is the first code cell"
    names = set(re.findall(r"^([A-Z_]+) = ", code[0]["source"], flags=re.M))
    assert {"REPO_URL", "REPO_DIR", "INSTALL", "SMALL"} <= names
    compile(code[0]["source"], "parameters", "exec")  # plain assignments: papermill and the test can replace them
    try:
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.read(path, as_version=4))


def test_the_readme_opens_every_notebook_in_colab_from_the_repository_the_notebooks_clone():
    links = COLAB_LINK.findall((ROOT / "README.md").read_text())
    linked = {path for _, path in links}
    assert linked == {f"notebooks/{p.name}" for p in NOTEBOOKS.glob("*.ipynb")}, "one Open in Colab link per notebook"
    for repo, path in links:
        nb = read_notebook(ROOT / path)
        repo_url = re.search(r'^REPO_URL = "https://github\.com/([^"]+)"', parameters_cell(nb)["source"], re.M).group(1)
        assert repo == repo_url, f"{path}: the README's link and REPO_URL name different repositories"
        badge_links = COLAB_LINK.findall(nb["cells"][0]["source"])
        assert badge_links == [(repo, path)], f"{path}: its own badge must open itself from {repo}"


# --- notebook_runtime, the notebooks' shared helpers ---------------------------------------------------------

def fake_run(returncode: int, stdout: str):
    return lambda *args, **kwargs: subprocess.CompletedProcess(args, returncode, stdout, "")


def test_the_runtime_is_a_gpu_with_a_working_nvidia_smi_a_tpu_by_its_variables_else_the_cpu(tmp_path):
    missing = tmp_path / "no-accel"
    gpu = rt.detect_accelerator(env={}, which=lambda _: "/usr/bin/nvidia-smi",
                                run=fake_run(0, "GPU 0: Tesla T4 (UUID: GPU-1)\n"), tpu_device=missing)
    assert gpu == ("gpu", "GPU 0: Tesla T4 (UUID: GPU-1)")
    # nvidia-smi without a driver (exit 9) is no GPU; a TPU runtime's variable then decides.
    tpu = rt.detect_accelerator(env={"TPU_ACCELERATOR_TYPE": "v2-8"}, which=lambda _: "/usr/bin/nvidia-smi",
                                run=fake_run(9, ""), tpu_device=missing)
    assert tpu == ("tpu", "TPU_ACCELERATOR_TYPE=v2-8")
    assert rt.detect_accelerator(env={}, which=lambda _: None, tpu_device=missing)[0] == "cpu"
    (tmp_path / "accel0").touch()
    assert rt.detect_accelerator(env={}, which=lambda _: None, tpu_device=tmp_path / "accel0")[0] == "tpu"


def test_a_cpu_only_runtime_says_so_in_one_line_naming_the_fix():
    assert rt.runtime_lines("cpu", "seen", None)[1] == CPU_LINE
    assert "SMALL = False" in rt.runtime_lines("cpu", "seen", False)[1]
    assert len(rt.runtime_lines("gpu", "GPU 0: Tesla T4", None)) == 1


def test_notebook_errors_are_one_line_and_download_failures_leave_no_partial_file(tmp_path):
    with pytest.raises(rt.NotebookError) as caught, rt.stop_on(ValueError):
        raise ValueError("bad --box-threshold 2: use a value in [0, 1]")
    assert caught.value._render_traceback_() == ["error: bad --box-threshold 2: use a value in [0, 1]"]
    with pytest.raises(rt.NotebookError, match="cannot download .*give a local path"):
        rt.fetch((tmp_path / "absent.mp4").as_uri(), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(rt.NotebookError, match="does not exist: give an mp4"):
        rt.resolve_video(tmp_path / "absent.mp4", 3)
    with pytest.raises(rt.NotebookError, match="outside Colab: set it"):
        rt.resolve_video(None, 3)


def test_a_frame_url_pattern_fetches_frames_until_the_clip_ends(tmp_path, seg_dir):
    source = tmp_path / "served"
    source.mkdir()
    for index in range(2):
        (source / f"{index:05d}.jpg").write_bytes((seg_dir / "bedroom" / f"{index:05d}.jpg").read_bytes())
    folder = rt.resolve_video(source.as_uri() + "/{:05d}.jpg", 5, tmp_path / "in")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.jpg", "00001.jpg"]


# --- the notebooks, top to bottom ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.once
def test_train_notebook_on_the_cpu_trains_the_small_setting_evaluates_and_saves_the_run(tmp_path, cifar10_sample_dir):
    workdir = tmp_path / "runs" / "notebook"
    nb, text = run_notebook("train_vit.ipynb", {"REPO_DIR": str(ROOT), "INSTALL": False,
                                                "DATA_DIR": str(cifar10_sample_dir), "WORKDIR": str(workdir)}, tmp_path)
    assert CPU_LINE in text and "jax: cpu 1 cpu" in text
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["epochs"], summary["config"]["width"], summary["train_size"]) == (3, 96, 5085)  # tiny, 3 epochs
    assert summary["best_test_acc"] > 0.2, "chance is 0.10; 3 epochs measured 0.286-0.297 over four seeds"
    report = json.loads((workdir / "eval.json").read_text())
    matrix = np.asarray(report["by_weights"][report["weights"]]["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == report["num_test_images"] == 1017
    assert abs(report["test_acc"] - summary["best_test_acc"]) < 1e-6, "evaluate.py scores the best checkpoint"
    assert is_png(workdir / "curves.png") and is_png(workdir / "confusion_matrix.png")
    assert images_shown(nb) == 2, "the curves and the confusion matrix are shown"
    with zipfile.ZipFile(workdir.with_suffix(".zip")) as archive:
        names = set(archive.namelist())
    assert {"summary.json", "curves.png", "eval.json", "metrics.jsonl"} <= names
    assert any(n.startswith("checkpoints/") for n in names)


@pytest.mark.slow
@pytest.mark.once
def test_segment_notebook_offline_on_the_cpu_falls_back_to_random_weights_and_writes_valid_results(tmp_path, seg_dir):
    out = tmp_path / "out"
    photo = seg_dir / "groceries.jpg"
    nb, text = run_notebook("segment.ipynb", {
        "REPO_DIR": str(ROOT), "INSTALL": False, "IMAGE": [str(photo)], "PROMPT": "paper bag. car",
        "VIDEO": str(seg_dir / "bedroom"), "OUT": str(out)}, tmp_path)
    assert CPU_LINE in text
    assert "cannot download" in text and "the small setting continues with random weights" in text
    assert "RANDOM WEIGHTS: the boxes, labels and masks below are meaningless" in text
    assert not any((tmp_path / "checkpoints").glob("*.part")), "a failed download leaves no partial file"

    folder = out / "images" / "groceries"
    record = json.loads((folder / "result.json").read_text())
    width, height = Image.open(photo).size
    assert (record["width"], record["height"], record["prompt"]) == (width, height, "paper bag. car")
    assert record["random_weights"] is True and "RANDOM WEIGHTS" in record["note"]
    assert record["models"]["seeder"]["random_weights"] and record["models"]["sam2"]["name"] == "sam2.1_hiera_tiny"
    assert 1 <= record["num_detections"] == len(record["detections"]) <= 5  # SMALL_MAX_DETECTIONS
    for detection in record["detections"]:
        mask = np.asarray(Image.open(folder / detection["mask_file"]))
        assert mask.shape == (height, width) and int((mask > 0).sum()) == detection["mask_area"]
        x0, y0, x1, y1 = detection["box_xyxy"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    assert Image.open(folder / "overlay.png").size == (width, height)

    track = out / "track"
    tracks = json.loads((track / "tracks.json").read_text())
    assert (tracks["num_frames"], tracks["width"], tracks["height"]) == (3, 960, 540)  # SMALL_MAX_FRAMES
    assert tracks["random_weights"] is True and "RANDOM WEIGHTS" in tracks["note"]
    assert tracks["num_objects"] == len(tracks["objects"]) == 1  # SMALL_MAX_OBJECTS
    for obj in tracks["objects"]:
        assert obj["num_frames"] == len(obj["frames"]) and all(0 <= f["frame"] < 3 for f in obj["frames"])
    labels = [np.asarray(Image.open(track / "masks" / f"{i:05d}.png")) for i in range(3)]
    assert all(m.shape == (540, 960) for m in labels)
    assert set(np.unique(np.stack(labels))) <= {0} | {o["id"] for o in tracks["objects"]}
    assert images_shown(nb) == 2, "the overlay and the tracked frames are shown"
