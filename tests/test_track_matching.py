"""Re-detection id matching and per-pixel ownership, on synthetic masks (no models)."""
import numpy as np

from torch_seg.video.tracking import LastSeenBoxes, resolve_overlaps, select_new_detections


def _box_mask(x0, y0, x1, y1, shape=(100, 200)):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _tracked(*masks):
    seen = LastSeenBoxes()
    seen.update({i + 1: m for i, m in enumerate(masks)})
    return seen.boxes()


def test_a_redetected_box_over_a_tracked_object_is_not_a_new_object():
    tracked = _tracked(_box_mask(10, 10, 50, 60), _box_mask(120, 20, 180, 90))
    detections = np.array([[12, 8, 52, 58], [118, 22, 181, 88]], dtype=np.float32)  # both slightly shifted
    assert select_new_detections(detections, np.array([0.9, 0.8]), tracked).tolist() == []


def test_only_boxes_that_match_no_tracked_object_become_new_objects():
    tracked = _tracked(_box_mask(10, 10, 50, 60))
    detections = np.array([[11, 10, 50, 61], [120, 20, 180, 90], [60, 10, 100, 60]], dtype=np.float32)
    new = select_new_detections(detections, np.array([0.9, 0.5, 0.7]), tracked)
    assert new.tolist() == [2, 1]  # best score first; the box over the tracked object is dropped


def test_the_match_threshold_decides_between_same_object_and_new_object():
    tracked = _tracked(_box_mask(0, 0, 100, 100))
    detection = np.array([[50, 0, 150, 100]], dtype=np.float32)  # IoU = 50*100 / (150*100) = 1/3
    assert select_new_detections(detection, np.array([0.9]), tracked, iou_threshold=0.3).tolist() == []
    assert select_new_detections(detection, np.array([0.9]), tracked, iou_threshold=0.5).tolist() == [0]


def test_two_boxes_on_one_new_object_add_it_once():
    detections = np.array([[100, 10, 150, 80], [102, 12, 151, 79]], dtype=np.float32)
    new = select_new_detections(detections, np.array([0.6, 0.9]), _tracked(_box_mask(0, 0, 20, 20)))
    assert new.tolist() == [1]


def test_with_nothing_tracked_every_distinct_detection_is_new():
    detections = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    new = select_new_detections(detections, np.array([0.5, 0.6]), np.zeros((0, 4), np.float32))
    assert sorted(new.tolist()) == [0, 1]
    assert select_new_detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4))).tolist() == []


def test_an_object_lost_on_this_frame_is_matched_through_its_last_box():
    seen = LastSeenBoxes()
    seen.update({1: _box_mask(10, 10, 50, 60)})
    seen.update({1: np.zeros((100, 200), dtype=bool)})  # SAM 2 lost it: empty mask, last box is kept
    assert seen.boxes().tolist() == [[10, 10, 50, 60]]
    assert select_new_detections(np.array([[10, 10, 50, 60]]), np.array([0.9]), seen.boxes()).tolist() == []


def test_overlapping_masks_give_each_pixel_to_the_most_confident_object():
    logits = np.full((2, 4, 4), -5.0, dtype=np.float32)
    logits[0, :, :3] = 2.0  # object 0 claims columns 0..2
    logits[1, :, 2:] = 3.0  # object 1 claims columns 2..3, more confidently
    owner = resolve_overlaps(logits)
    assert (owner[:, :2] == 0).all() and (owner[:, 2:] == 1).all()


def test_pixels_no_object_claims_and_pixels_already_owned_stay_unassigned():
    logits = np.full((1, 3, 3), -1.0, dtype=np.float32)
    logits[0, 0, :] = 1.0
    claimed = np.zeros((3, 3), dtype=bool)
    claimed[0, 0] = True
    owner = resolve_overlaps(logits, claimed)
    assert owner[0].tolist() == [-1, 0, 0]
    assert (owner[1:] == -1).all()
