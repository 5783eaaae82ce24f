"""The image chain end to end: real sam2 and GroundingDINO code with random weights, on the real photos.

Random weights give meaningless boxes, but the real compute and the real plumbing: files written, shapes,
RLE, JSON schema. GroundingDINO gets a small BERT config and a 256-pixel input (instead of 800) for speed.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_seg.errors import UserError
from torch_seg.images import load_image
from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
from torch_seg.rle import rle_to_mask
from torch_seg.text_encoder import SMALL_BERT, write_text_encoder_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import segment as segment_cli  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

RESULT_KEYS = {"schema_version", "image", "width", "height", "prompt", "phrases", "box_threshold", "text_threshold",
               "models", "random_weights", "note", "device", "autocast", "num_detections", "detections",
               "timings_ms"}
DETECTION_KEYS = {"index", "label", "phrase", "box_score", "box_xyxy", "mask_score", "mask_area", "mask_rle",
                  "mask_file"}


@pytest.fixture(scope="module")
def small_text_encoder(tmp_path_factory) -> Path:
    return write_text_encoder_folder(tmp_path_factory.mktemp("bert"), **SMALL_BERT)


@pytest.fixture(scope="module")
def segmenter(small_text_encoder) -> TextSegmenter:
    quiet_library_warnings()
    return TextSegmenter(seeder="gdino", sam2_model="tiny", text_encoder=small_text_encoder, device="cpu",
                         random_weights=True, max_detections=3, seeder_options={"resize_shortest": 256})


def check_result_folder(folder: Path, image_path: Path) -> dict:
    """Everything a user relies on in one result folder; returns result.json."""
    record = json.loads((folder / "result.json").read_text())
    assert set(record) == RESULT_KEYS
    width, height = Image.open(image_path).size
    assert (record["width"], record["height"]) == (width, height)
    assert record["random_weights"] is True and "RANDOM WEIGHTS" in record["note"]
    assert record["autocast"]["dtype"] is None and record["autocast"]["reason"].startswith("CPU")  # float32 here
    assert record["models"]["sam2"]["name"] == "sam2.1_hiera_tiny"
    assert {"load", "detect", "sam_encode", "sam_decode", "overlay", "total"} <= set(record["timings_ms"])
    assert Image.open(folder / "overlay.png").size == (width, height)
    assert record["num_detections"] == len(record["detections"]) == len(list((folder / "masks").glob("*.png")))
    for det in record["detections"]:
        assert set(det) == DETECTION_KEYS
        assert det["phrase"] in record["phrases"] and det["label"] in det["phrase"]
        x0, y0, x1, y1 = det["box_xyxy"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        mask_png = np.asarray(Image.open(folder / det["mask_file"]))
        assert mask_png.shape == (height, width) and set(np.unique(mask_png)) <= {0, 255}
        decoded = rle_to_mask(det["mask_rle"])
        np.testing.assert_array_equal(decoded, mask_png > 0)
        assert det["mask_area"] == int(decoded.sum())
    return record


def test_real_photo_gets_overlay_masks_and_result_json(segmenter, seg_dir, tmp_path):
    photo = seg_dir / "groceries.jpg"
    record = segmenter.process_file(photo, "paper bag. car", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groceries"], "no temporary folders left behind"
    record_on_disk = check_result_folder(tmp_path / "groceries", photo)
    assert record_on_disk == json.loads(json.dumps(record))
    assert 1 <= record["num_detections"] <= 3, "the test needs detections to check masks (max_detections=3)"
    assert record["phrases"] == ["paper bag", "car"]


def test_no_detection_above_threshold_still_writes_a_valid_empty_result(segmenter, seg_dir, tmp_path):
    # Sigmoid scores never exceed 1.0, so nothing passes a threshold of 1.0.
    seeder = segmenter.seeder
    seeder.box_threshold = 1.0
    try:
        record = segmenter.process_file(seg_dir / "groceries.jpg", "truck", tmp_path)
    finally:
        seeder.box_threshold = segmenter.box_threshold
    assert record["num_detections"] == 0 and record["detections"] == []
    check_result_folder(tmp_path / "groceries", seg_dir / "groceries.jpg")


def test_grayscale_16_bit_image_flows_through_the_chain(segmenter, tmp_path):
    deep = (np.linspace(0, 65535, 96 * 128).reshape(96, 128)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    result = segmenter.segment(image, "cat")
    assert result.masks.shape == (len(result.detections), 96, 128) and result.masks.dtype == bool
    assert result.mask_scores.shape == (len(result.detections),)


def test_clipseg_seeder_gives_box_and_point_prompts_to_sam(seg_dir):
    quiet_library_warnings()
    segmenter = TextSegmenter(seeder="clipseg", device="cpu", random_weights=True, box_threshold=0.45,
                              max_detections=2)
    image = load_image(seg_dir / "groceries.jpg")
    result = segmenter.segment(image, "paper bag")
    d = result.detections
    assert len(d) >= 1, "random CLIPSeg heat maps sit around 0.4-0.5; 0.45 should leave some regions"
    assert d.points_xy is not None and d.points_xy.shape == (len(d), 1, 2)
    h, w = image.shape[:2]
    assert (d.boxes_xyxy[:, [0, 2]] <= w).all() and (d.boxes_xyxy[:, [1, 3]] <= h).all()
    assert result.masks.shape == (len(d), h, w)
    assert segmenter.models_record()["seeder"]["name"] == "clipseg_rd64_refined"


# --- the command line ----------------------------------------------------------------------------------------

def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = segment_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_batch_writes_good_images_and_reports_bad_ones(capsys, seg_dir, small_text_encoder, tmp_path,
                                                           monkeypatch):
    monkeypatch.setattr("torch_seg.seeders.gdino.RESIZE_SHORTEST", 256)
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a photo")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "--image", seg_dir / "groceries.jpg", bad, "--prompt", "paper bag",
                                   "--out", out, "--random-weights", "--text-encoder", small_text_encoder,
                                   "--box-threshold", "1.0", "--device", "cpu")
    assert code == 2
    assert "random weights" in stderr.lower() and "notes.jpg" in stderr and "Traceback" not in stderr
    assert "no object scored above --box-threshold 1.0" in stdout and "RANDOM WEIGHTS" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["groceries"], "the unreadable file leaves no folder"
    record = check_result_folder(out / "groceries", seg_dir / "groceries.jpg")
    assert record["num_detections"] == 0 and record["box_threshold"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["--prompt", "  "], "prompt is empty"),
    (["--image", "missing.jpg"], "image not found"),
    (["--image-dir", "absent_dir"], "image folder not found"),
    (["--sam2-checkpoint", "nope.pt"], "download_checkpoints"),
    (["--box-threshold", "1.5", "--random-weights"], "outside [0, 1]"),
])
def test_cli_user_errors_are_one_line_and_write_nothing(capsys, seg_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    defaults = {"--prompt": "truck", "--image": str(seg_dir / "truck.jpg")}
    if "--image-dir" in args:
        defaults.pop("--image")
    for flag, value in defaults.items():
        if flag not in args:
            args = [flag, value, *args]
    code, _, stderr = run_cli(capsys, *args, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: ") and message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_cli_cuda_without_a_gpu_is_a_user_error(capsys, seg_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, stderr = run_cli(capsys, "--image", seg_dir / "truck.jpg", "--prompt", "truck", "--out",
                              tmp_path / "out", "--device", "cuda", "--random-weights")
    assert code == 2 and "no CUDA GPU" in stderr and not (tmp_path / "out").exists()


def test_cli_mps_without_it_is_one_line_naming_the_fix(capsys, seg_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # as on every machine but a Mac
    code, _, stderr = run_cli(capsys, "--image", seg_dir / "truck.jpg", "--prompt", "truck", "--out",
                              tmp_path / "out", "--device", "mps", "--random-weights")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--device mps" in errors[0]
    assert errors[0].endswith("use --device cpu or auto")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_never_a_silent_random_fallback(tmp_path):
    with pytest.raises(UserError, match="download_checkpoints"):
        TextSegmenter(sam2_checkpoint=tmp_path / "absent.pt", device="cpu")


@pytest.mark.parametrize("content", ["html", "other model", "truncated"])
def test_a_file_that_is_not_a_sam2_checkpoint_is_one_line_naming_the_fix(tmp_path, content):
    import torch

    from torch_seg.sam import build_sam2_model
    from torch_seg.video.predictor import build_video_predictor

    path = tmp_path / "sam2.1_hiera_tiny.pt"
    if content == "html":  # what a failed download through a proxy saves
        path.write_text("<html><body>404 Not Found</body></html>")
    elif content == "other model":  # e.g. the GroundingDINO checkpoint given to --sam2-checkpoint
        torch.save({"model": {"backbone.weight": torch.zeros(2)}}, path)
    else:
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    for build in (build_sam2_model, build_video_predictor):
        with pytest.raises(UserError, match="is not a SAM 2.1 tiny checkpoint.*re-download it") as error:
            build("tiny", checkpoint=path)
        assert "\n" not in str(error.value)


def test_swin_b_backbone_runs_the_chain(small_text_encoder, seg_dir, tmp_path):
    # The README offers --gdino-model swin_b: its real architecture (233M parameters) must build and segment.
    swin_b = TextSegmenter(seeder="gdino", gdino_model="swin_b", sam2_model="tiny", text_encoder=small_text_encoder,
                           device="cpu", random_weights=True, max_detections=2,
                           seeder_options={"resize_shortest": 256})
    photo = seg_dir / "groceries.jpg"
    record = swin_b.process_file(photo, "paper bag", tmp_path)
    check_result_folder(tmp_path / "groceries", photo)
    assert "swin_b" in record["models"]["seeder"]["name"]
    assert 1 <= record["num_detections"] <= 2
