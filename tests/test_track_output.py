"""Label images, overlay frames and the tracks.json record, from a synthetic tracking result (no models)."""
import numpy as np

from torch_seg.frames import VideoFrames
from torch_seg.rle import mask_to_rle, rle_to_mask
from torch_seg.video import TrackedObject, TrackingResult
from torch_seg.video_output import draw_tracked_objects, tracks_record

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
