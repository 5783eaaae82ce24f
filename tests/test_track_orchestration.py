"""VideoTracker's order of work (key frame, re-detection restarts, backward pass, ids) with a stand-in predictor.

The stand-in has SAM 2's video predictor interface and "tracks" each object as its prompt box on every frame,
so every mask is known in advance; the real predictor runs in test_track_video.py.
"""
import numpy as np
import torch
from PIL import Image

from torch_seg.video.frames import open_video
from torch_seg.rle import rle_to_mask
from torch_seg.seeders.base import Detections
from torch_seg.video.propagation import TrackingOptions, VideoTracker

H, W, NUM_FRAMES = 40, 60, 6


class BoxPredictor:
    """SAM 2's video predictor interface; an object's mask is its prompt box, forward and backward."""

    def __init__(self):
        self.boxes, self.prompt_frames, self.passes = {}, {}, []

    def init_state(self, video_path, offload_video_to_cpu=False, offload_state_to_cpu=False):
        return {"num_frames": len(list(__import__("pathlib").Path(video_path).glob("*.jpg")))}

    def add_new_points_or_box(self, state, frame_idx, obj_id, box=None, points=None, labels=None):
        assert obj_id not in self.boxes, "an object id was prompted twice"
        self.boxes[obj_id], self.prompt_frames[obj_id] = [int(v) for v in box], frame_idx

    def propagate_in_video(self, state, start_frame_idx=None, reverse=False):
        self.passes.append((start_frame_idx, reverse))
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, state["num_frames"])
        for frame in order:
            ids = list(self.boxes)
            logits = torch.full((len(ids), 1, H, W), -10.0)
            for row, obj_id in enumerate(ids):
                x0, y0, x1, y1 = self.boxes[obj_id]
                logits[row, 0, y0:y1, x0:x1] = 5.0
            yield frame, ids, logits


class ScriptedSeeder:
    name = "scripted"

    def __init__(self, by_frame):
        self.by_frame, self.frames_asked = by_frame, []

    def detect(self, image, prompt):
        frame = int(round(image.mean() / 40))  # the test frames are flat, 40 grey levels per frame index
        self.frames_asked.append(frame)
        boxes = self.by_frame.get(frame, [])
        return Detections(boxes, [0.9 - 0.1 * i for i in range(len(boxes))], ["child"] * len(boxes))


def _clip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(NUM_FRAMES):
        Image.fromarray(np.full((H, W, 3), 40 * i, dtype=np.uint8)).save(src / f"{i}.png")
    (tmp_path / "jpg").mkdir()
    return open_video(src, tmp_path / "jpg")


def _track(tmp_path, by_frame, **options):
    predictor, seeder = BoxPredictor(), ScriptedSeeder(by_frame)
    result = VideoTracker(seeder, lambda: predictor, "cpu", TrackingOptions(**options)).track(_clip(tmp_path), "child")
    return result, predictor, seeder


def test_two_boxes_on_one_object_on_the_key_frame_give_one_id(tmp_path):
    result, predictor, _ = _track(tmp_path, {0: [[5, 5, 20, 30], [6, 5, 21, 30], [40, 5, 55, 30]]})
    assert [o.id for o in result.objects] == [1, 2]
    assert [o.prompt_box_xyxy for o in result.objects] == [[5, 5, 20, 30], [40, 5, 55, 30]]
    assert predictor.passes == [(0, False)]  # everything prompted on frame 0: no backward pass


def test_a_later_key_frame_is_propagated_forward_then_backward_to_frame_0(tmp_path):
    result, predictor, _ = _track(tmp_path, {2: [[5, 5, 20, 30]]}, prompt_frame=2)
    assert predictor.passes == [(2, False), (2, True)]
    assert all(set(masks) == {1} for masks in result.frame_masks)
    assert rle_to_mask(result.frame_masks[0][1])[5:30, 5:20].all()


def test_redetection_adds_only_new_objects_restarts_there_and_carries_them_backward(tmp_path):
    by_frame = {0: [[5, 5, 20, 30]],
                2: [[5, 6, 20, 30]],  # the tracked object again: no new id
                4: [[6, 5, 20, 31], [40, 5, 55, 30]]}  # the tracked one and a new one
    result, predictor, seeder = _track(tmp_path, by_frame, redetect_every=2)
    assert seeder.frames_asked == [0, 2, 4]
    assert [(o.id, o.first_frame) for o in result.objects] == [(1, 0), (2, 4)]
    assert predictor.passes == [(0, False), (4, False), (4, True)]
    assert all(set(masks) == {1, 2} for masks in result.frame_masks)  # object 2 reaches back to frame 0
    label = result.label_image(1)
    assert (label[10, 10], label[10, 45], label[35, 58]) == (1, 2, 0)


def test_objects_stop_at_max_objects(tmp_path):
    by_frame = {0: [[5, 5, 20, 30]], 1: [[40, 5, 55, 30]], 2: [[25, 30, 35, 39]]}
    result, _, seeder = _track(tmp_path, by_frame, redetect_every=1, max_objects=2)
    assert [o.id for o in result.objects] == [1, 2]
    assert seeder.frames_asked == [0, 1]  # with the maximum reached, re-detection stops
