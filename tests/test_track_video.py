"""The real SAM 2.1 tiny video predictor, random weights, on real bedroom frames: files, schema and stable ids.

One SAM 2 run (3 frames) is shared by the tests of this module: key frame 1, re-detection on frame 2 that
finds one new object, and the backward pass that carries both objects to frame 0. Detections are injected
at the seeder interface (random-weight GroundingDINO boxes are arbitrary); one further test runs the real
random-weight GroundingDINO with a small BERT on 2 frames.
"""
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from torch_seg.rle import rle_to_mask
from torch_seg.seeders.base import Detections

NUM_FRAMES = 3
FIRST_BOX = [300.0, 20.0, 520.0, 500.0]  # roughly the standing child on the bedroom frames
NEW_BOX = [700.0, 380.0, 760.0, 440.0]  # small and far from the first: cannot match the tracked object


class ScriptedSeeder:
    """Returns FIRST_BOX on the first call and NEW_BOX on every later one; records the frames it saw."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    def detect(self, image, prompt):
        self.calls += 1
        box = FIRST_BOX if self.calls == 1 else NEW_BOX
        return Detections([box], [0.9 if self.calls == 1 else 0.6], ["child"])

    def describe(self):
        return {"name": self.name, "random_weights": True}


@pytest.fixture(scope="module")
def bedroom_clip(tmp_path_factory, seg_dir):
    src = seg_dir / "bedroom"
    if not src.is_dir():
        pytest.skip(f"bedroom frames not found at {src}")
    clip = tmp_path_factory.mktemp("clip")
    for name in sorted(p.name for p in src.glob("*.jpg"))[:NUM_FRAMES + 1]:
        shutil.copy(src / name, clip / name)
    return clip


@pytest.fixture(scope="module")
def tracked(bedroom_clip, tmp_path_factory):
    from torch_seg.video.run import track_video

    out = tmp_path_factory.mktemp("run") / "out"
    record = track_video(bedroom_clip, "child", out, prompt_frame=1, redetect_every=1, max_frames=NUM_FRAMES,
                         device="cpu", random_weights=True, seeder_instance=ScriptedSeeder())
    return out, record, json.loads((out / "tracks.json").read_text())


def test_the_output_folder_holds_one_label_image_per_frame_an_overlay_video_and_tracks_json(tracked):
    out, _, _ = tracked
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "tracks.json"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(NUM_FRAMES)]
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == NUM_FRAMES and frames[0].shape == (540, 960, 3)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_tracks_json_says_random_weights_and_reports_timings(tracked):
    _, _, saved = tracked
    assert saved["random_weights"] is True and "RANDOM WEIGHTS" in saved["note"]
    assert (saved["num_frames"], saved["width"], saved["height"]) == (NUM_FRAMES, 960, 540)
    assert saved["frame_names"] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert saved["detection_frames"] == [1, 2]
    assert saved["frames_propagated"] >= NUM_FRAMES and saved["propagation_frames_per_s"] > 0
    assert {"detect_s", "init_state_s", "propagate_s", "write_s", "total_s"} <= set(saved["timings_s"])


def test_the_key_frame_object_and_the_redetected_new_object_get_ids_1_and_2(tracked):
    _, _, saved = tracked
    objects = {o["id"]: o for o in saved["objects"]}
    assert sorted(objects) == [1, 2]
    assert (objects[1]["first_frame"], objects[1]["prompt_box_xyxy"]) == (1, FIRST_BOX)
    assert (objects[2]["first_frame"], objects[2]["prompt_box_xyxy"]) == (2, NEW_BOX)
    assert objects[1]["label"] == objects[2]["label"] == "child"


def test_ids_are_stable_and_label_images_agree_with_the_rles(tracked):
    out, _, saved = tracked
    ids = {o["id"] for o in saved["objects"]}
    present = set()
    for index in range(NUM_FRAMES):
        label = np.asarray(Image.open(out / "masks" / f"{index:05d}.png"))
        assert label.dtype == np.uint16 and label.shape == (540, 960)
        assert set(np.unique(label).tolist()) - {0} <= ids
        for obj in saved["objects"]:
            entry = next((f for f in obj["frames"] if f["frame"] == index), None)
            mask = rle_to_mask(entry["rle"]) if entry else np.zeros(label.shape, bool)
            assert np.array_equal(mask, label == obj["id"])  # RLE round trip == the label image
            if entry:
                present.add(obj["id"])
                assert entry["area"] == int(mask.sum()) > 0
                ys, xs = np.nonzero(mask)
                assert entry["box_xyxy"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert present == ids  # both objects have masks somewhere: the propagation path really ran


def test_the_backward_pass_gives_frames_before_the_key_frame_their_masks(tracked):
    _, _, saved = tracked
    objects = {o["id"]: o for o in saved["objects"]}
    # Object 1 was prompted on frame 1 and object 2 on frame 2; random weights still give SAM 2 masks
    # everywhere on these frames, so each object must have a mask on every frame, the earlier ones included.
    assert [f["frame"] for f in objects[1]["frames"]] == [0, 1, 2]
    assert [f["frame"] for f in objects[2]["frames"]] == [0, 1, 2]


def test_random_weight_groundingdino_seeds_the_tracker_end_to_end(bedroom_clip, tmp_path):
    from torch_seg.text_encoder import SMALL_BERT, write_text_encoder_folder
    from torch_seg.video.run import track_video

    text_encoder = write_text_encoder_folder(tmp_path / "bert", **SMALL_BERT)
    # box_threshold 0: random weights score every query low, and this test is about the plumbing
    record = track_video(bedroom_clip, "child. bed.", tmp_path / "out", max_frames=2, device="cpu",
                         random_weights=True, text_encoder=text_encoder, box_threshold=0.0, max_objects=1,
                         offload_video_to_cpu=True, offload_state_to_cpu=True,
                         seeder_options={"resize_shortest": 384, "resize_max": 640})
    saved = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert saved == {**record, "timings_s": saved["timings_s"]}
    assert saved["models"]["seeder"]["name"] == "groundingdino_swin_t" and saved["random_weights"] is True
    assert saved["num_objects"] == 1 and saved["objects"][0]["label"] in ("child", "bed")
    assert len(list((tmp_path / "out" / "masks").iterdir())) == 2


def test_the_propagation_benchmark_reports_frames_per_second_over_the_tracked_frames(bedroom_clip):
    from torch_seg.video.bench import machine_record, measure_propagation

    run = measure_propagation(bedroom_clip, "tiny", num_frames=2, device="cpu")
    assert (run["frames"], run["tracked_frames"], run["frame_size"]) == (2, 1, [960, 540])
    assert run["frames_per_s"] > 0 and len(run["per_frame_ms"]) == 2 and run["dtype"] == "float32"
    machine = machine_record(__import__("torch").device("cpu"))
    assert machine["torch"].startswith("2.13") and machine["sam2"] and machine["cpu_cores"] >= 1


@pytest.mark.parametrize("args", [["--num-frames", "1"], ["--objects", "0"]])
def test_the_propagation_benchmark_refuses_what_it_cannot_time_in_one_line(bedroom_clip, tmp_path, capsys, args):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_track  # scripts/bench_track.py

    code = bench_track.main(["--video", str(bedroom_clip), "--out", str(tmp_path / "bench.json"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "at least 2 frames" in err
    assert not (tmp_path / "bench.json").exists()
