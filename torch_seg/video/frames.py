"""Video input: an mp4 (any file OpenCV can decode) or a folder of frames -> a folder SAM 2 can read.

SAM 2's video predictor (`init_state`) reads a folder of `<index>.jpg` files (mp4 only through decord, which
is not installed here). So every input is turned into such a folder once, up front: JPEG frames that SAM 2
would read exactly as they are become symlinks (no re-encoding), everything else (mp4 frames, PNG, 16-bit,
grayscale, EXIF-rotated JPEG) is decoded and written as high-quality JPEG, the conversion SAM 2's own README
recommends. Decoding every frame up front also means a corrupt frame or a frame of another size is reported
before any model runs and before anything is written to the output folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from torch_seg.errors import UserError
from torch_seg.images import IMAGE_SUFFIXES, load_image

JPEG_QUALITY = 95  # what SAM 2's README asks of ffmpeg (-q:v 2) in JPEG terms: visually lossless
DEFAULT_FOLDER_FPS = 24.0  # a frame folder carries no frame rate; the overlay video plays at this one
# What --video-dir takes as video files; anything else OpenCV decodes can still be named with --video.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_EXIF_ORIENTATION = 0x0112


@dataclass
class VideoFrames:
    """The frames of one clip, ready for SAM 2: `jpeg_dir/<index:05d>.jpg`, all of the same size."""

    source: str
    names: list[str]  # where each frame came from: its file name, or "frame <i>" in a video file
    jpeg_dir: Path
    height: int
    width: int
    fps: float

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.jpeg_dir / frame_file_name(index)

    def read(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8 RGB, exactly the pixels SAM 2 sees."""
        return np.asarray(Image.open(self.path(index)).convert("RGB"))


def frame_file_name(index: int, suffix: str = ".jpg") -> str:
    # SAM 2 sorts its frames by int(stem), so any zero padding works; 5 digits match its examples.
    return f"{index:05d}{suffix}"


def _natural_key(path: Path) -> list:
    """'frame2' before 'frame10': numbered frames are rarely zero-padded consistently."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _sam2_reads_as_is(path: Path) -> bool:
    """True when SAM 2 would see the same pixels as `load_image`: an RGB JPEG without EXIF rotation."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    with Image.open(path) as image:
        return image.mode == "RGB" and image.getexif().get(_EXIF_ORIENTATION, 1) == 1


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be at least 1, got {max_frames}")


def _frames_from_folder(folder: Path, jpeg_dir: Path, max_frames: int | None) -> VideoFrames:
    paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=_natural_key)
    if not paths:
        raise UserError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}: pass a folder of frames or a video file")
    paths = paths[:max_frames]
    size = None
    for index, path in enumerate(tqdm(paths, desc="reading frames", unit="frame")):
        image = load_image(path)  # UserError for corrupt or non-image files
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise UserError(f"frame {path.name} is {image.shape[1]}x{image.shape[0]} but {paths[0].name} is "
                            f"{size[1]}x{size[0]}: all frames of a clip must have the same size (resize them)")
        target = jpeg_dir / frame_file_name(index)
        if _sam2_reads_as_is(path):
            target.symlink_to(path.resolve())
        else:
            Image.fromarray(image).save(target, quality=JPEG_QUALITY)
    return VideoFrames(str(folder), [p.name for p in paths], jpeg_dir, size[0], size[1], DEFAULT_FOLDER_FPS)


def _frames_from_video_file(path: Path, jpeg_dir: Path, max_frames: int | None) -> VideoFrames:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"cannot read video {path}: not a video OpenCV can decode (use an mp4, or a folder of frames)")
        fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FOLDER_FPS
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # a container's hint, not always right
        total = min(expected, max_frames) if expected and max_frames else (expected or max_frames)
        count, size = 0, None
        with tqdm(total=total, desc="decoding video", unit="frame") as bar:
            while max_frames is None or count < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                if size is None:
                    size = bgr.shape[:2]
                elif bgr.shape[:2] != size:
                    raise UserError(f"frame {count} of {path} is {bgr.shape[1]}x{bgr.shape[0]}, not "
                                    f"{size[1]}x{size[0]}: re-encode the video at one size")
                cv2.imwrite(str(jpeg_dir / frame_file_name(count)), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                count += 1
                bar.update()
    finally:
        capture.release()
    if count == 0:
        raise UserError(f"cannot read video {path}: no frame could be decoded (is it empty or corrupt?)")
    return VideoFrames(str(path), [f"frame {i}" for i in range(count)], jpeg_dir, size[0], size[1], float(fps))


def list_videos(directory: str | Path) -> list[Path]:
    """The clips directly inside `directory`, sorted by name: video files (VIDEO_SUFFIXES) and sub-folders (each
    a folder of frames). UserError if there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"video folder not found: {directory} (check --video-dir)")
    clips = sorted(p for p in directory.iterdir() if not p.name.startswith(".")
                   and (p.is_dir() or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)))
    if not clips:
        raise UserError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) or frame folders in {directory}")
    return clips


def open_video(video: str | Path, jpeg_dir: str | Path, max_frames: int | None = None) -> VideoFrames:
    """Check and convert `video` (a video file or a folder of frames) into `jpeg_dir` (an empty folder).

    Keeps at most `max_frames` frames from the start. Raises UserError for a missing, unreadable or empty
    input and for frames of different sizes.
    """
    _check_max_frames(max_frames)
    video, jpeg_dir = Path(video), Path(jpeg_dir)
    if not video.exists():
        raise UserError(f"video not found: {video} (pass --video with an mp4 or a folder of frames)")
    if video.is_dir():
        return _frames_from_folder(video, jpeg_dir, max_frames)
    return _frames_from_video_file(video, jpeg_dir, max_frames)
