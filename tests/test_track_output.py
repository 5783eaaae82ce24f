"""Label images, overlay frames and the tracks.json record, from a synthetic tracking result (no models)."""
import json

import numpy as np
from PIL import Image

from torch_seg.video import output as video_output
from torch_seg.video.frames import VideoFrames
from torch_seg.rle import mask_to_rle, rle_to_mask
from torch_seg.video.propagation import TrackedObject, TrackingResult
from torch_seg.video.output import draw_tracked_objects, tracks_record, write_tracking_output

H, W = 60, 80


def _mask(x0, y0, x1, y1):
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _result():
    objects = [TrackedObject(1, "child", 0.9, 0, [0, 0, 30, 30]), TrackedObject(2, "dog", 0.7, 1, [40, 10, 70, 50])]
    frame_masks = [{1: mask_to_rle(_mask(5, 5, 30, 30))},
                   {1: mask_to_rle(_mask(6, 5, 31, 30)), 2: mask_to_rle(_mask(40, 10, 70, 50))},
                   {2: mask_to_rle(_mask(41, 10, 71, 50))}]
    return TrackingResult(objects, frame_masks, H, W, detection_frames=[0, 1], frames_propagated=4,
                          timings_s={"detect_s": 0.5, "init_state_s": 1.0, "propagate_s": 2.0})


def test_label_images_carry_object_ids_and_zero_background():
    result = _result()
    label = result.label_image(1)
    assert label.dtype == np.uint16 and label.shape == (H, W)
    assert label[10, 10] == 1 and label[20, 50] == 2 and label[55, 75] == 0
    assert set(np.unique(result.label_image(2)).tolist()) == {0, 2}


def test_an_object_keeps_its_colour_whether_or_not_other_objects_are_visible():
    result = _result()
    frame = np.full((H, W, 3), 128, dtype=np.uint8)
    both = draw_tracked_objects(frame, result.label_image(1), result)
    alone = draw_tracked_objects(frame, result.label_image(2), result)
    assert np.array_equal(both[30, 55], alone[30, 56])  # object 2's mask interior on both frames
    assert not np.array_equal(both[20, 15], both[30, 55])  # objects 1 and 2 differ
    assert np.array_equal(alone[55, 5], frame[55, 5])  # background untouched


def test_tracks_record_lists_each_object_per_frame_with_box_area_and_rle(tmp_path):
    frames = VideoFrames("clip", ["a.jpg", "b.jpg", "c.jpg"], tmp_path, H, W, 24.0)
    record = tracks_record(_result(), frames, prompt="child. dog.", phrases=["child", "dog"], models={},
                           random_weights=True, device="cpu", options={}, overlay=None, timings_s={"read_frames_s": 0.1})
    assert record["random_weights"] is True and record["note"].startswith("RANDOM WEIGHTS")
    assert record["propagation_frames_per_s"] == 2.0 and record["timings_s"]["read_frames_s"] == 0.1
    by_id = {o["id"]: o for o in record["objects"]}
    assert [f["frame"] for f in by_id[1]["frames"]] == [0, 1] and by_id[2]["first_frame"] == 1
    entry = by_id[2]["frames"][1]
    assert entry["box_xyxy"] == [41, 10, 71, 50] and entry["area"] == 30 * 40
    assert np.array_equal(rle_to_mask(entry["rle"]), _mask(41, 10, 71, 50))


def _frames_on_disk(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    return VideoFrames("clip", ["a", "b", "c"], tmp_path, H, W, 24.0)


def _record(frames):
    return tracks_record(_result(), frames, prompt="child", phrases=["child"], models={}, random_weights=False,
                         device="cpu", options={}, overlay=None, timings_s={})


def test_the_writer_puts_label_images_overlay_video_and_tracks_json_in_place(tmp_path):
    frames = _frames_on_disk(tmp_path)
    out = write_tracking_output(tmp_path / "out", frames, _result(), _record(frames), run_started=0.0)
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "tracks.json"]
    saved = json.loads((out / "tracks.json").read_text())
    assert saved["overlay"] == "overlay.mp4" and saved["timings_s"]["write_s"] >= 0
    assert np.array_equal(np.asarray(Image.open(out / "masks" / "00001.png")), _result().label_image(1))


def test_without_an_mp4_encoder_the_overlay_is_written_as_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(video_output, "_open_overlay_writer", lambda *args: None)
    frames = _frames_on_disk(tmp_path)
    out = write_tracking_output(tmp_path / "out", frames, _result(), _record(frames))
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert json.loads((out / "tracks.json").read_text())["overlay"] == "overlay/<frame>.jpg"
    assert not (out / "overlay.mp4").exists()
