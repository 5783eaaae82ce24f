"""Reading clips (mp4 and frame folders) and the bad inputs of scripts/track.py (no model is built here)."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from torch_seg.errors import UserError
from torch_seg.video.frames import open_video
from torch_seg.seeders.base import Detections
from torch_seg.video.propagation import TrackingOptions, VideoTracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import track  # noqa: E402  (scripts/track.py)


def _frames(folder: Path, sizes, suffix=".png", names=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        name = names[i] if names else f"{i:05d}{suffix}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _run(capsys, *args):
    code = track.main(["--prompt", "child", "--random-weights", "--device", "cpu", *map(str, args)])
    return code, capsys.readouterr().err


def test_an_mp4_is_decoded_frame_by_frame_up_to_max_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build has no mp4 encoder")
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    (tmp_path / "all").mkdir()
    frames = open_video(path, tmp_path / "all")
    assert (len(frames), frames.height, frames.width, frames.fps) == (5, 48, 64, 12.0)
    assert frames.read(4).shape == (48, 64, 3) and abs(int(frames.read(4).mean()) - 160) <= 3
    (tmp_path / "some").mkdir()
    assert len(open_video(path, tmp_path / "some", max_frames=2)) == 2


def test_a_frame_folder_is_read_in_natural_order_and_jpegs_are_not_reencoded(tmp_path):
    src = _frames(tmp_path / "src", [(32, 24)] * 3, names=["f10.png", "f2.jpg", "f1.png"])
    (tmp_path / "jpg").mkdir()
    frames = open_video(src, tmp_path / "jpg")
    assert frames.names == ["f1.png", "f2.jpg", "f10.png"]
    assert frames.path(1).is_symlink() and not frames.path(0).is_symlink()
    assert (frames.height, frames.width) == (24, 32)


def test_an_unreadable_video_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"this is not a video" * 100)
    code, err = _run(capsys, "--video", video, "--out", tmp_path / "out")
    assert code == 2 and "error: cannot read video" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_video_and_an_empty_frame_folder_are_clear_errors(tmp_path, capsys):
    code, err = _run(capsys, "--video", tmp_path / "nope.mp4", "--out", tmp_path / "out")
    assert code == 2 and "video not found" in err
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "--video", tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 2 and "no frames" in err
    assert not (tmp_path / "out").exists()


def test_frames_of_different_sizes_are_refused(tmp_path, capsys):
    src = _frames(tmp_path / "src", [(32, 24), (32, 24), (40, 24)])
    code, err = _run(capsys, "--video", src, "--out", tmp_path / "out")
    assert code == 2 and "00002.png is 40x24" in err and "same size" in err


def test_a_prompt_frame_past_the_end_fails_and_leaves_a_previous_result_untouched(tmp_path, capsys):
    src = _frames(tmp_path / "src", [(32, 24)] * 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracks.json").write_text("{\"previous\": true}")
    code, err = _run(capsys, "--video", src, "--out", out, "--prompt-frame", 3)
    assert code == 2 and "--prompt-frame 3 is past the end" in err and "0..2" in err
    assert json.loads((out / "tracks.json").read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temporary leftovers
    code, err = _run(capsys, "--video", src, "--out", out, "--max-frames", 2, "--prompt-frame", 2)
    assert code == 2 and "past the end of the clip (2 frames" in err


@pytest.mark.parametrize("args, message", [(["--prompt", " . "], "holds no words"),
                                          (["--redetect-every", "0"], "--redetect-every must be at least 1"),
                                          (["--max-frames", "0"], "--max-frames must be at least 1"),
                                          (["--vos-optimized"], "--vos-optimized compiles SAM 2 for CUDA"),
                                          (["--box-threshold", "1.5"], "--box-threshold 1.5 is outside [0, 1]"),
                                          (["--seeder", "clipseg", "--text-threshold", "-0.1"],
                                           "--text-threshold -0.1 is outside [0, 1]")])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    src = _frames(tmp_path / "src", [(32, 24)] * 2)
    code, err = _run(capsys, "--video", src, "--out", tmp_path / "out", *args)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1]
    assert "reading frames" not in err  # refused before any frame was read


class _NothingSeeder:
    name = "nothing"

    def __init__(self):
        self.frames_seen = []

    def detect(self, image, prompt):
        self.frames_seen.append(image.shape)
        return Detections.empty()


def _never_built():
    raise AssertionError("SAM 2 must not be built when the detector finds nothing")


def test_a_prompt_that_finds_nothing_writes_a_valid_empty_tracks_json(tmp_path, capsys):
    from torch_seg.video.run import summary, track_video

    src = _frames(tmp_path / "src", [(32, 24)] * 3)
    record = track_video(src, "unicorn", tmp_path / "out", random_weights=True, device="cpu",
                         seeder_instance=_NothingSeeder())
    saved = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert saved["num_objects"] == 0 and saved["objects"] == [] and saved["num_frames"] == 3
    assert saved["random_weights"] is True and saved["detection_frames"] == [0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tracks.json"]
    assert "no object matched 'unicorn'" in summary(record, tmp_path / "out")


def test_with_redetection_the_detector_keeps_looking_and_sam2_is_never_built_for_nothing(tmp_path):
    src = _frames(tmp_path / "src", [(32, 24)] * 7)
    (tmp_path / "jpg").mkdir()
    frames = open_video(src, tmp_path / "jpg")
    seeder = _NothingSeeder()
    result = VideoTracker(seeder, _never_built, "cpu", TrackingOptions(prompt_frame=1, redetect_every=2)).track(
        frames, "unicorn")
    assert result.detection_frames == [1, 3, 5] and result.objects == []
    assert all(masks == {} for masks in result.frame_masks)
    with pytest.raises(UserError, match="past the end"):
        VideoTracker(seeder, _never_built, "cpu", TrackingOptions(prompt_frame=7)).track(frames, "unicorn")


def test_a_missing_checkpoint_names_the_fix_before_any_frame_is_read(tmp_path, capsys):
    src = _frames(tmp_path / "src", [(32, 24)] * 2)
    code = track.main(["--video", str(src), "--prompt", "child", "--out", str(tmp_path / "out"), "--device", "cpu",
                       "--sam2-checkpoint", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint not found" in err and "download_checkpoints" in err
    assert "reading frames" not in err and not (tmp_path / "out").exists()


def test_a_missing_clipseg_folder_is_reported_before_frames_are_decoded(tmp_path, capsys):
    src = _frames(tmp_path / "src", [(32, 24)] * 2)
    sam2 = tmp_path / "sam2.pt"
    sam2.write_bytes(b"not read: the run stops earlier")
    code = track.main(["--video", str(src), "--prompt", "child", "--out", str(tmp_path / "out"), "--device", "cpu",
                       "--sam2-checkpoint", str(sam2), "--seeder", "clipseg", "--clipseg-model", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert code == 2 and "CLIPSeg folder not found" in err and "reading frames" not in err


def test_a_missing_groundingdino_checkpoint_is_reported_before_frames_are_decoded(tmp_path, capsys):
    src = _frames(tmp_path / "src", [(32, 24)] * 2)
    sam2 = tmp_path / "sam2.pt"
    sam2.write_bytes(b"not read: the run stops earlier")
    code = track.main(["--video", str(src), "--prompt", "child", "--out", str(tmp_path / "out"), "--device", "cpu",
                       "--sam2-checkpoint", str(sam2), "--gdino-checkpoint", str(tmp_path / "nope.pth")])
    err = capsys.readouterr().err
    assert code == 2 and "GroundingDINO swin_t checkpoint not found" in err and "reading frames" not in err


def test_the_summary_of_a_propagation_too_fast_to_time_says_so_instead_of_failing():
    from torch_seg.video.run import summary

    record = {"num_objects": 1, "num_frames": 1, "device": "cpu", "random_weights": False, "prompt": "child",
              "propagation_frames_per_s": None,
              "objects": [{"id": 1, "label": "child", "first_frame": 0, "num_frames": 1}]}
    text = summary(record, "out")
    assert "1 object(s) tracked over 1 frames (propagation not timed on cpu) -> out" in text
    assert "2.50 frames/s" in summary({**record, "propagation_frames_per_s": 2.5}, "out")
