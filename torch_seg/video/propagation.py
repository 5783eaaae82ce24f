"""Text-prompted video segmentation: detect on a key frame, let SAM 2 carry every object through the clip.

The order of work, and why:
1. The seeder (GroundingDINO by default) finds the prompted objects on the key frame (`prompt_frame`). If it
   finds nothing and re-detection is on, the later re-detection frames are tried until something appears.
2. Each box becomes one SAM 2 object with a new id (1, 2, ...), prompted on that frame.
3. SAM 2 propagates all objects forward to the end of the clip. Every `redetect_every` frames the detector
   runs again; boxes that match no tracked object (tracking.select_new_detections) become new objects, and
   propagation restarts from that frame with them included. Ids of tracked objects never change.
4. One backward pass from the latest first-prompted frame to frame 0 gives every object its masks on the
   frames before it was prompted (objects prompted on frame 0 need none, so a plain run skips it).

Masks are kept as COCO RLE per frame and object, so a long clip costs little memory; overlapping masks are
resolved to one owner per pixel (highest logit) so that label images and RLEs agree.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from torch_seg.device import autocast
from torch_seg.errors import UserError
from torch_seg.video.frames import VideoFrames
from torch_seg.rle import mask_to_rle, rle_to_mask
from torch_seg.seeders.base import Detections, Seeder
from torch_seg.video.tracking import DEFAULT_MATCH_IOU, LastSeenBoxes, resolve_overlaps, select_new_detections

DEFAULT_MAX_OBJECTS = 20  # a random-weight or over-eager detector can return hundreds of boxes; SAM 2's cost is per object


@dataclass
class TrackingOptions:
    prompt_frame: int = 0
    redetect_every: int | None = None
    match_iou: float = DEFAULT_MATCH_IOU
    max_objects: int = DEFAULT_MAX_OBJECTS
    # SAM 2's own memory savers for long clips: frames (about 12 MB each at 1024x1024 float32) and the
    # per-frame tracking state stay in CPU memory instead of on the GPU, at a small cost in speed.
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False

    def check(self, num_frames: int | None = None) -> None:
        """UserError for options that cannot work (on a clip of `num_frames` frames, when given)."""
        if self.prompt_frame < 0:
            raise UserError(f"--prompt-frame must be 0 or more, got {self.prompt_frame}")
        if self.redetect_every is not None and self.redetect_every < 1:
            raise UserError(f"--redetect-every must be at least 1, got {self.redetect_every}")
        if self.max_objects < 1:
            raise UserError(f"--max-objects must be at least 1, got {self.max_objects}")
        if num_frames is not None and self.prompt_frame >= num_frames:
            raise UserError(f"--prompt-frame {self.prompt_frame} is past the end of the clip ({num_frames} frames): "
                            f"use 0..{num_frames - 1}")


@dataclass
class TrackedObject:
    id: int
    label: str
    score: float  # the detector's score where it was first found
    first_frame: int  # the frame it was prompted on
    prompt_box_xyxy: list[float]


@dataclass
class TrackingResult:
    objects: list[TrackedObject]
    # frame index -> {object id: COCO RLE of its (non-empty) mask}; frames without objects hold {}
    frame_masks: list[dict[int, dict]]
    height: int
    width: int
    detection_frames: list[int] = field(default_factory=list)  # where the detector ran
    frames_propagated: int = 0  # frames SAM 2 processed, both directions (a frame may count twice)
    timings_s: dict[str, float] = field(default_factory=dict)

    def label_image(self, frame_index: int) -> np.ndarray:
        """(H, W) uint16: 0 for background, the object id elsewhere."""
        label = np.zeros((self.height, self.width), dtype=np.uint16)
        for obj_id, rle in self.frame_masks[frame_index].items():
            label[rle_to_mask(rle)] = obj_id
        return label


class VideoTracker:
    """Build once (seeder + a SAM 2 video predictor factory), then `track(frames, prompt)`."""

    def __init__(self, seeder: Seeder, build_predictor: Callable[[], object], device: torch.device | str,
                 options: TrackingOptions | None = None):
        self.seeder = seeder
        self._build_predictor = build_predictor
        self._predictor = None
        self.device = torch.device(device)
        self.options = options or TrackingOptions()

    @property
    def predictor(self):
        # Built on first use: a prompt that finds nothing never pays for SAM 2.
        if self._predictor is None:
            self._predictor = self._build_predictor()
        return self._predictor

    def track(self, frames: VideoFrames, prompt: str) -> TrackingResult:
        options = self.options
        options.check(len(frames))
        run = _Run(self, frames, prompt)
        start = run.find_first_objects()
        if start is None:
            return run.result()
        with autocast(self.device):
            state = run.init_state()
            run.add_objects(state, start, run.first_detections)
            run.propagate_forward(state, start)
            run.propagate_backward(state)
        return run.result()


def _subset(detections: Detections, indices: np.ndarray) -> Detections:
    return Detections(detections.boxes_xyxy[indices], detections.scores[indices],
                      [detections.labels[i] for i in indices],
                      None if detections.points_xy is None else detections.points_xy[indices])


class _Run:
    """The bookkeeping of one `track` call."""

    def __init__(self, tracker: VideoTracker, frames: VideoFrames, prompt: str):
        self.tracker, self.frames, self.prompt = tracker, frames, prompt
        self.options = tracker.options
        self.objects: list[TrackedObject] = []
        self.frame_masks: list[dict[int, dict]] = [{} for _ in range(len(frames))]
        self.last_seen = LastSeenBoxes()
        self.detection_frames: list[int] = []
        self.first_detections = Detections.empty()
        self.frames_propagated = 0
        self.timings = {"detect_s": 0.0, "init_state_s": 0.0, "propagate_s": 0.0}

    # -- detection --------------------------------------------------------------------------------------------
    def detect(self, frame_index: int) -> Detections:
        start = time.perf_counter()
        detections = self.tracker.seeder.detect(self.frames.read(frame_index), self.prompt)
        self.timings["detect_s"] += time.perf_counter() - start
        self.detection_frames.append(frame_index)
        return detections

    def detection_schedule(self) -> range:
        """The frames the detector may run on: the key frame, then every `redetect_every` frames after it."""
        first, step = self.options.prompt_frame, self.options.redetect_every
        return range(first, first + 1) if step is None else range(first, len(self.frames), step)

    def find_first_objects(self) -> int | None:
        """The first scheduled frame where the detector finds something (its detections are kept), or None."""
        for frame_index in self.detection_schedule():
            detections = self.detect(frame_index)
            # Detectors often box one object twice; those duplicates must not become two ids.
            distinct = select_new_detections(detections.boxes_xyxy, detections.scores, np.zeros((0, 4), np.float32),
                                             self.options.match_iou)
            if len(distinct):
                self.first_detections = _subset(detections, distinct[: self.options.max_objects])
                return frame_index
        return None

    # -- SAM 2 ------------------------------------------------------------------------------------------------
    def init_state(self):
        start = time.perf_counter()
        state = self.tracker.predictor.init_state(
            str(self.frames.jpeg_dir), offload_video_to_cpu=self.options.offload_video_to_cpu,
            offload_state_to_cpu=self.options.offload_state_to_cpu)
        self.timings["init_state_s"] += time.perf_counter() - start
        return state

    def add_objects(self, state, frame_index: int, detections: Detections) -> None:
        room = self.options.max_objects - len(self.objects)
        start = time.perf_counter()
        for i in range(min(len(detections), room)):
            obj = TrackedObject(id=len(self.objects) + 1, label=detections.labels[i],
                                score=float(detections.scores[i]), first_frame=frame_index,
                                prompt_box_xyxy=[float(v) for v in detections.boxes_xyxy[i]])
            points = labels = None
            if detections.points_xy is not None:  # heat-map seeders (CLIPSeg) add positive points
                points = detections.points_xy[i]
                labels = np.ones(len(points), dtype=np.int32)
            self.tracker.predictor.add_new_points_or_box(state, frame_idx=frame_index, obj_id=obj.id,
                                                         box=detections.boxes_xyxy[i], points=points, labels=labels)
            self.objects.append(obj)
        self.timings["propagate_s"] += time.perf_counter() - start

    def _steps(self, state, start_frame: int, reverse: bool):
        """SAM 2's propagation as (frame, object ids, logits (N, H, W) float32 on the CPU), timed."""
        steps = self.tracker.predictor.propagate_in_video(state, start_frame_idx=start_frame, reverse=reverse)
        while True:
            begin = time.perf_counter()
            try:
                frame_index, obj_ids, logits = next(steps)
            except StopIteration:
                return
            logits = logits.float().cpu().numpy()[:, 0]  # the copy waits for the GPU, so the timing is honest
            self.timings["propagate_s"] += time.perf_counter() - begin
            self.frames_propagated += 1
            yield frame_index, list(obj_ids), logits

    def _masks_from_logits(self, obj_ids: list[int], logits: np.ndarray, keep: list[int],
                           claimed: np.ndarray | None) -> dict[int, np.ndarray]:
        rows = [obj_ids.index(obj_id) for obj_id in keep]
        owner = resolve_overlaps(logits[rows], claimed)
        return {obj_id: owner == row for row, obj_id in enumerate(keep)}

    def propagate_forward(self, state, start: int) -> None:
        while start is not None:
            start = self._propagate_forward_from(state, start)

    def _propagate_forward_from(self, state, start: int) -> int | None:
        """Propagate from `start` to the end; the frame to restart from if re-detection added objects, else None."""
        for frame_index, obj_ids, logits in self._steps(state, start, reverse=False):
            masks = self._masks_from_logits(obj_ids, logits, obj_ids, None)
            self.frame_masks[frame_index] = {i: mask_to_rle(m) for i, m in masks.items() if m.any()}
            self.last_seen.update(masks)
            if frame_index != start and self._redetect_due(frame_index) and self._redetect(state, frame_index):
                return frame_index  # SAM 2 must see the new objects from this frame on: propagate again from here
        return None

    def _redetect_due(self, frame_index: int) -> bool:
        return (frame_index in self.detection_schedule() and frame_index not in self.detection_frames
                and len(self.objects) < self.options.max_objects)

    def _redetect(self, state, frame_index: int) -> bool:
        """Run the detector on `frame_index`; add the objects that are not tracked yet. True if any was added."""
        detections = self.detect(frame_index)
        new = select_new_detections(detections.boxes_xyxy, detections.scores, self.last_seen.boxes(),
                                    self.options.match_iou)
        if len(new) == 0:
            return False
        self.add_objects(state, frame_index, _subset(detections, new))
        return True

    def propagate_backward(self, state) -> None:
        latest_first = max(obj.first_frame for obj in self.objects)
        if latest_first == 0:
            return
        first_frame = {obj.id: obj.first_frame for obj in self.objects}
        for frame_index, obj_ids, logits in self._steps(state, latest_first, reverse=True):
            # Only objects prompted after this frame need it; earlier ones already have their forward masks.
            keep = [i for i in obj_ids if first_frame[i] > frame_index]
            if not keep:
                continue
            known = self.frame_masks[frame_index]
            claimed = None
            if known:
                claimed = np.logical_or.reduce([rle_to_mask(rle) for rle in known.values()])
            masks = self._masks_from_logits(obj_ids, logits, keep, claimed)
            known.update({i: mask_to_rle(m) for i, m in masks.items() if m.any()})

    def result(self) -> TrackingResult:
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        return TrackingResult(self.objects, self.frame_masks, self.frames.height, self.frames.width,
                              self.detection_frames, self.frames_propagated, timings)
