"""The image chain's glue, tested directly with known inputs: no model is built here."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from torch_seg import _torchvision_compat
from torch_seg.boxes import clip_boxes, cxcywh_normalized_to_xyxy_pixels, mask_to_box
from torch_seg.checkpoints import resolve_gdino_checkpoint, resolve_sam2_checkpoint, sam2_config
from torch_seg.device import autocast, autocast_choice, choose_autocast, mps_available, resolve_device
from torch_seg.errors import UserError
from torch_seg.images import image_stem, list_images, load_image, output_names
from torch_seg.overlay import draw_overlay, palette
from torch_seg.prompts import caption_from_phrases, parse_prompt, phrase_spans
from torch_seg.results import atomic_dir, write_json
from torch_seg.rle import mask_area, mask_to_rle, rle_to_mask
from torch_seg.seeders.base import Detections
from torch_seg.seeders.gdino import label_from_token_scores, token_phrase_index


# --- boxes -------------------------------------------------------------------------------------------------

def test_gdino_normalised_centre_boxes_become_pixel_corners():
    boxes = cxcywh_normalized_to_xyxy_pixels(np.array([[0.5, 0.5, 0.2, 0.4]]), width=200, height=100)
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70]], atol=1e-4)
    assert boxes.dtype == np.float32


def test_boxes_reaching_past_the_border_are_clipped_to_the_image():
    boxes = cxcywh_normalized_to_xyxy_pixels(np.array([[0.05, 0.95, 0.3, 0.3]]), width=100, height=100)
    np.testing.assert_allclose(boxes, [[0, 80, 20, 100]], atol=1e-4)
    np.testing.assert_allclose(clip_boxes(np.array([[-5, -5, 150, 50]]), 100, 40), [[0, 0, 100, 40]])


def test_mask_to_box_is_tight_and_none_for_empty():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:8] = True
    np.testing.assert_array_equal(mask_to_box(mask), [3, 2, 8, 5])
    assert mask_to_box(np.zeros((4, 4), bool)) is None


# --- prompts and phrases -----------------------------------------------------------------------------------

def test_prompt_splits_into_lowercase_phrases():
    assert parse_prompt("Truck. wheel.") == ["truck", "wheel"]
    assert parse_prompt("  paper   bag ") == ["paper bag"]
    assert parse_prompt("car; car. tyre\n") == ["car", "tyre"]
    assert caption_from_phrases(["paper bag", "car"]) == "paper bag . car ."


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", " . . ", None])
def test_empty_prompt_is_a_user_error(prompt):
    with pytest.raises(UserError, match="prompt"):
        parse_prompt(prompt)


def test_phrase_spans_cover_each_phrase_of_the_caption_and_no_separator():
    phrases = ["paper bag", "car"]
    caption = caption_from_phrases(phrases)
    spans = phrase_spans(phrases)
    assert [caption[start:end] for start, end in spans] == phrases
    assert not any(start <= caption.index(".") < end for start, end in spans)


def test_box_label_is_the_phrase_of_its_best_token_never_a_mix():
    # Tokens of "[CLS] paper bag . car . [SEP]" with their character offsets in "paper bag . car ."
    phrases = ["paper bag", "car"]
    offsets = [(0, 0), (0, 5), (6, 9), (10, 11), (12, 15), (16, 17), (0, 0)]
    token_ids = [101, 3259, 4524, 1012, 2482, 1012, 102]
    token_phrase = token_phrase_index(offsets, phrases)
    np.testing.assert_array_equal(token_phrase, [-1, 0, 0, -1, 1, -1, -1])
    words = {3259: "paper", 4524: "bag", 2482: "car"}
    decode = lambda ids: " ".join(words[i] for i in ids)
    # "car" scores highest, "bag" is also above threshold: the label is "car" alone.
    scores = np.array([0.9, 0.1, 0.5, 0.9, 0.7, 0.9, 0.9, 0.0])
    assert label_from_token_scores(scores, token_phrase, token_ids, phrases, 0.25, decode) == "car"
    # Best token "bag": only the tokens of that phrase above the threshold are kept.
    scores = np.array([0.0, 0.1, 0.8, 0.0, 0.3, 0.0, 0.0])
    assert label_from_token_scores(scores, token_phrase, token_ids, phrases, 0.25, decode) == "bag"
    assert label_from_token_scores(scores, token_phrase, token_ids, phrases, 0.05, decode) == "paper bag"
    # Nothing above the text threshold: the whole phrase.
    assert label_from_token_scores(scores, token_phrase, token_ids, phrases, 0.95, decode) == "paper bag"


def test_detections_check_their_lengths_and_sort_by_score():
    d = Detections(np.arange(12).reshape(3, 4), [0.2, 0.9, 0.5], ["a", "b", "c"])
    top = d.top_k(2)
    assert top.labels == ["b", "c"] and top.scores.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_array_equal(top.boxes_xyxy[0], [4, 5, 6, 7])
    assert len(Detections.empty()) == 0 and Detections.empty().boxes_xyxy.shape == (0, 4)
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), [0.1], ["a", "b"])


# --- RLE ---------------------------------------------------------------------------------------------------

def test_rle_round_trips_and_is_json_ready():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = mask_to_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    decoded = rle_to_mask(json.loads(json.dumps(rle)))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)
    assert mask_area(rle) == mask.sum()
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(np.zeros((4, 6), bool))), np.zeros((4, 6), bool))


# --- overlay -----------------------------------------------------------------------------------------------

def test_overlay_colours_masks_and_outlines_boxes_without_touching_the_input():
    image = np.full((120, 160, 3), 100, np.uint8)
    masks = np.zeros((2, 120, 160), bool)
    masks[0, 60:100, 10:50] = True
    masks[1, 60:100, 100:150] = True
    boxes = np.array([[10, 60, 50, 100], [100, 60, 150, 100]], np.float32)
    out = draw_overlay(image, masks, boxes, ["truck", "wheel"], np.array([0.9, 0.8]), np.array([0.7, 0.6]))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 100).all(), "the input image must not be modified"
    colours = palette(2)
    assert not np.array_equal(colours[0], colours[1])
    inside0, inside1 = out[80, 30].astype(int), out[80, 125].astype(int)
    np.testing.assert_allclose(inside0, 100 * 0.55 + colours[0] * 0.45, atol=1.5)
    np.testing.assert_allclose(inside1, 100 * 0.55 + colours[1] * 0.45, atol=1.5)
    np.testing.assert_array_equal(out[115, 80], [100, 100, 100])  # untouched background
    np.testing.assert_array_equal(out[99, 10], colours[0])  # box outline, bottom-left corner
    assert (out[40:60, 10:50] != 100).any(), "a label is drawn above the first box"


def test_overlay_with_no_objects_returns_the_image_and_banner_marks_random_weights():
    image = np.full((60, 200, 3), 30, np.uint8)
    plain = draw_overlay(image, np.zeros((0, 60, 200), bool), np.zeros((0, 4)), [], np.zeros(0))
    np.testing.assert_array_equal(plain, image)
    flagged = draw_overlay(image, np.zeros((0, 60, 200), bool), np.zeros((0, 4)), [], np.zeros(0),
                           banner="RANDOM WEIGHTS")
    np.testing.assert_array_equal(flagged[-2, 1], [200, 0, 0])
    np.testing.assert_array_equal(flagged[1, 1], image[1, 1])


# --- images ------------------------------------------------------------------------------------------------

def test_grayscale_rgba_palette_and_16_bit_images_become_rgb_uint8(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "palette.png")
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")

    for name in ("gray", "rgba", "palette", "deep"):
        image = load_image(tmp_path / f"{name}.png")
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png")[..., 1], gray)
    rgb = load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[7, 7], [255, 255, 255])  # transparent -> white background
    deep_rgb = load_image(tmp_path / "deep.png")
    assert deep_rgb[7, 7, 0] == round(63000 / 65535 * 255) and deep_rgb[0, 0, 0] == 0


def test_unreadable_images_are_user_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    for name in ("notes.txt", "fake.jpg", "truncated.png", "missing.png"):
        with pytest.raises(UserError):
            load_image(tmp_path / name)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header_only(40000, 30000))  # 1.2 GP, a 100-byte file
    with pytest.raises(UserError, match="downscale"):
        load_image(tmp_path / "huge.png")


def test_list_images_sorts_and_rejects_empty_folders(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        list_images(tmp_path / "absent")
    assert image_stem("https://example.com/photos/truck.jpg?size=large") == "truck"


def test_images_sharing_a_stem_get_distinct_output_folders():
    names = output_names(["a/photo.jpg", "b/photo.png", "photo_2.jpg", "https://x.org/photo.webp", "truck.jpg"])
    assert names == ["photo", "photo_2", "photo_2_2", "photo_3", "truck"]
    assert len(set(names)) == len(names)


def test_offline_url_fails_fast_with_a_user_error():
    with pytest.raises(UserError, match="download"):
        load_image("http://127.0.0.1:9/none.jpg")


# --- results folders ---------------------------------------------------------------------------------------

def test_atomic_dir_leaves_nothing_behind_on_failure(tmp_path):
    final = tmp_path / "out" / "truck"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "overlay.png").write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not (tmp_path / "out").exists()
    with atomic_dir(final) as tmp:
        write_json(tmp / "result.json", {"ok": 1})
    with atomic_dir(final) as tmp:  # a re-run replaces the old result as a whole
        write_json(tmp / "result.json", {"ok": 2})
    assert json.loads((final / "result.json").read_text()) == {"ok": 2}
    assert sorted(p.name for p in final.parent.iterdir()) == ["truck"]



_KILLED_MID_WRITE = """
import os, signal, sys
from torch_seg.results import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "overlay.png").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_hard_killed_writer_left_is_tidied_by_the_next_write_and_others_are_left_alone(tmp_path):
    import socket
    import subprocess
    import sys

    final = tmp_path / "out" / "truck"
    with atomic_dir(final) as tmp:
        write_json(tmp / "result.json", {"ok": 1})
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(final)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    left = sorted(p.name for p in final.parent.iterdir() if p.name != "truck")
    assert len(left) == 1 and left[0].startswith(".truck.tmp-"), left
    # A live writer's folder (this process's) and another host's are not touched; nor are other results'.
    host = socket.gethostname().replace("-", "_")
    live = final.parent / f".truck.tmp-{host}-{os.getpid()}-live"
    remote = final.parent / ".truck.tmp-otherhost-1-remote"
    neighbour = final.parent / f".cars.tmp-{host}-{killed_pid(tmp_path)}-x"
    for folder in (live, remote, neighbour):
        folder.mkdir()
    with atomic_dir(final) as tmp:
        write_json(tmp / "result.json", {"ok": 2})
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(
        ["truck", live.name, remote.name, neighbour.name])
    assert json.loads((final / "result.json").read_text()) == {"ok": 2}


def test_a_previous_result_moved_aside_by_a_killed_writer_is_put_back_before_anything_else(tmp_path):
    import socket

    final = tmp_path / "out" / "truck"
    with atomic_dir(final) as tmp:
        write_json(tmp / "result.json", {"ok": 1})
    # Killed between moving the old result aside and renaming the new one in: the old one alone is whole.
    host, dead = socket.gethostname().replace("-", "_"), killed_pid(tmp_path)
    aside = final.with_name(f".truck.old-{host}-{dead}-abcd1234")
    final.rename(aside)
    (final.parent / f".truck.tmp-{host}-{dead}-x").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            raise RuntimeError("this write fails too")
    assert sorted(p.name for p in final.parent.iterdir()) == ["truck"]
    assert json.loads((final / "result.json").read_text()) == {"ok": 1}


def killed_pid(tmp_path) -> int:
    """The pid of a process that has exited (and been reaped), so no live process owns it for a while."""
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid

# --- device, checkpoints, torchvision shim -----------------------------------------------------------------

def test_cuda_asked_for_but_absent_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(UserError, match="no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu") or mps_available()
    with autocast("cpu"):
        assert not torch.is_autocast_enabled()


def _machine(monkeypatch, *, cuda: bool, mps: bool, capability=(8, 0), name="a GPU"):
    """Pretend this torch sees a CUDA GPU of `capability` and/or an MPS device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                                 (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)


def test_mps_asked_for_but_absent_is_one_line_naming_the_fix(monkeypatch):
    _machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(UserError) as error:
        resolve_device("mps")
    assert "--device mps" in str(error.value) and "use --device cpu or auto" in str(error.value)
    assert "\n" not in str(error.value)
    _machine(monkeypatch, cuda=False, mps=True)
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("name, capability, dtype", [
    ("Tesla P100-PCIE-16GB", (6, 0), torch.float16), ("Tesla P40", (6, 1), None),
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16), ("Tesla T4", (7, 5), torch.float16),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16), ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
])
def test_autocast_per_gpu_generation_with_its_reason(monkeypatch, name, capability, dtype):
    _machine(monkeypatch, cuda=True, mps=False, capability=capability, name=name)
    choice = autocast_choice("cuda")
    assert choice.dtype == dtype and name in choice.reason and f"sm_{capability[0]}{capability[1]}" in choice.reason
    assert choice.to_dict() == {"dtype": None if dtype is None else str(dtype).removeprefix("torch."),
                                "reason": choice.reason}


def test_no_autocast_on_mps_and_the_cpu():
    for device in ("mps", "cpu"):
        choice = choose_autocast(device)
        assert choice.dtype is None and choice.to_dict()["dtype"] is None
    assert "SAM 2" in choose_autocast("mps").reason and choose_autocast("cpu").reason.startswith("CPU")
    assert autocast_choice("cpu").describe().startswith("float32, no autocast: CPU")


def test_float16_autocast_runs_on_this_cpu_as_on_a_t4(monkeypatch):
    # torch 2.13 autocasts to float16 on the CPU too: the context the chains enter on a T4, on a real matmul.
    monkeypatch.setattr("torch_seg.device.autocast_choice", lambda device: choose_autocast("cuda", (7, 5)))
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and layer(torch.ones(2, 4)).dtype == torch.float16


def test_missing_checkpoints_name_the_download_command(tmp_path):
    with pytest.raises(UserError, match="download_checkpoints"):
        resolve_sam2_checkpoint("tiny", tmp_path / "nope.pt")
    with pytest.raises(UserError, match="download_checkpoints"):
        resolve_gdino_checkpoint("swin_t", tmp_path / "nope.pth")
    with pytest.raises(UserError, match="tiny"):
        sam2_config("huge")
    assert sam2_config("base_plus") == "configs/sam2.1/sam2.1_hiera_b+.yaml"


def test_nms_fallback_matches_torchvision_semantics():
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = torchvision.ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]
    assert _torchvision_compat.nms_reference(boxes, scores, 0.5).tolist() == [3, 2]


def test_nms_works_when_torchvision_was_imported_first_by_the_benchmark_shim():
    # One pytest session imports both halves' shims; whichever comes first, torch_seg's nms must run.
    import subprocess
    import sys

    code = ("from benchmarks.torchvision_compat import import_torchvision; import_torchvision()\n"
            "import torch, torch_seg\n"
            "from torchvision.ops import nms\n"
            "print(nms(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.]]), torch.tensor([0.9, 0.8]), 0.5).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0]"


# --- CLIPSeg heat map -> prompts ---------------------------------------------------------------------------

def test_heat_map_regions_become_boxes_points_and_peak_scores():
    from torch_seg.seeders.clipseg import heatmap_to_regions

    heat = np.zeros((100, 200), np.float32)
    heat[10:30, 20:60] = 0.6
    heat[15, 40] = 0.9  # the peak of the first region
    heat[50:90, 120:180] = 0.7
    heat[0, 199] = 0.95  # a single hot pixel: speckle below the minimum area
    regions = heatmap_to_regions(heat, threshold=0.5, min_area_fraction=0.001)
    assert len(regions) == 2
    (box_a, score_a, point_a), (box_b, score_b, point_b) = regions
    assert score_a == pytest.approx(0.9) and score_b == pytest.approx(0.7)
    np.testing.assert_array_equal(box_a, [20, 10, 60, 30])
    np.testing.assert_array_equal(point_a, [40.5, 15.5])
    np.testing.assert_array_equal(box_b, [120, 50, 180, 90])
    assert heatmap_to_regions(heat, threshold=0.99) == []


def test_sam2_video_memory_is_kept_in_float32_under_float16_autocast():
    from torch_seg.video.predictor import _with_float32_memory_under_float16_autocast

    memory = torch.ones(1, 4, dtype=torch.bfloat16)  # what sam2's video predictor stores per frame
    with torch.autocast("cpu", dtype=torch.float16):
        pointer = torch.nn.Linear(4, 4)(torch.ones(1, 4))  # an object pointer computed under autocast
        with pytest.raises(RuntimeError, match="prioritize"):  # the mix sam2 would concatenate on a T4
            torch.cat([memory, pointer])

    class Stored:  # sam2's two methods that store memory, as the predictor returns it
        device = torch.device("cpu")

        def _run_single_frame_inference(self, **kwargs):
            return {"maskmem_features": memory, "pred_masks": None}, None

        def _run_memory_encoder(self, **kwargs):
            return memory, None

    predictor = _with_float32_memory_under_float16_autocast(Stored())
    with torch.autocast("cpu", dtype=torch.float16):
        out, _ = predictor._run_single_frame_inference()
        features, _ = predictor._run_memory_encoder()
        assert out["maskmem_features"].dtype == features.dtype == torch.float32
        assert torch.cat([features, pointer]).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast (Ampere+) mixes bf16 as it is
        assert predictor._run_memory_encoder()[0].dtype == torch.bfloat16
    assert predictor._run_memory_encoder()[0].dtype == torch.bfloat16  # no autocast: the other hook's case
