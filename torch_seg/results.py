"""Result folders: written atomically (a temporary sibling renamed into place), and the result.json schema."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import socket
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from torch_seg.rle import mask_area, mask_to_rle, rle_to_mask

RESULT_SCHEMA_VERSION = 1
# result.json and tracks.json carry it, so output made with random weights says so wherever it goes.
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: boxes, labels and masks are meaningless; this run only exercises the plumbing"


def _host() -> str:
    return socket.gethostname().replace("-", "_")  # "-" separates the parts of a temporary folder's name


def _owner_tag() -> str:
    """This process's part of a temporary folder's name: host and pid, so a later run can tell whether the
    writer of a left-over folder is still alive (only on the same host; another host's are never touched)."""
    return f"{_host()}-{os.getpid()}"


def _owner_alive(name: str, kind: str, final_name: str) -> bool:
    """False only when `name` (".FINAL.tmp-HOST-PID-XXXX") was written on this host by a process now gone."""
    rest = name[len(f".{final_name}.{kind}-"):]
    host, _, rest = rest.partition("-")
    pid, _, _ = rest.partition("-")
    if host != _host() or not pid.isdigit():
        return True  # another host's (a shared file system), or an older name: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def sweep_leftovers(final_path: str | Path) -> None:
    """Tidy what a writer killed hard (SIGKILL, power loss) left beside `final_path`: its unfinished `.tmp-`
    folders are removed, and a previous result it had moved aside (`.old-`) is put back if the new one never
    took its place, else removed. Folders of writers still running, or of other hosts, are left alone."""
    final = Path(final_path)
    if not final.parent.is_dir():
        return
    for kind in ("old", "tmp"):  # "old" first: a restored result must not be swept as a stale tmp
        for path in sorted(final.parent.glob(f".{glob.escape(final.name)}.{kind}-*")):
            if _owner_alive(path.name, kind, final.name):
                continue
            if kind == "old" and not final.exists():
                with contextlib.suppress(OSError):  # if it cannot be put back, it stays: never delete it
                    path.rename(final)
                continue
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `final_path`, on failure it is removed.

    A crash or an error mid-way therefore never leaves a half-written result folder, and a re-run replaces the
    previous result only once the new one is complete. A parent folder created here is removed again on failure
    if it is still empty. What a writer killed hard left beside `final_path` is tidied first (`sweep_leftovers`).
    """
    final = Path(final_path)
    sweep_leftovers(final)
    created = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{owner}-", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # innermost first
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{owner}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temporary file + rename), so readers never see half a file.

    The data is serialised before the file is opened and flushed to disk before the rename; on any failure the
    temporary file is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def detection_records(labels, box_scores, boxes_xyxy, masks, mask_scores, phrases=None) -> list[dict]:
    """One JSON record per detected object (the `detections` list of result.json). `phrases` is the prompt
    phrase each object matched (default: its label); `label` may be part of it ("bag" for "paper bag")."""
    records = []
    phrases = labels if phrases is None else phrases
    for i, (label, phrase, box_score, box, mask, mask_score) in enumerate(
            zip(labels, phrases, box_scores, boxes_xyxy, masks, mask_scores)):
        rle = mask_to_rle(mask)
        records.append({
            "index": i,
            "label": label,
            "phrase": phrase,
            "box_score": round(float(box_score), 6),
            "box_xyxy": [round(float(v), 2) for v in box],
            "mask_score": round(float(mask_score), 6),
            "mask_area": mask_area(rle),
            "mask_rle": rle,
            "mask_file": f"masks/{i}.png",
        })
    return records


def result_record(*, image_path: str, width: int, height: int, prompt: str, phrases: list[str],
                  box_threshold: float, text_threshold: float, models: dict, random_weights: bool,
                  detections: list[dict], timings_ms: dict[str, float], device: str,
                  autocast: dict | None = None) -> dict:
    """The result.json schema, defined once."""
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "image": image_path,
        "width": int(width),
        "height": int(height),
        "prompt": prompt,
        "phrases": phrases,
        "box_threshold": box_threshold,
        "text_threshold": text_threshold,
        "models": models,
        "random_weights": bool(random_weights),
        "note": RANDOM_WEIGHTS_NOTE if random_weights else None,
        "device": device,
        "autocast": autocast,  # {"dtype": "bfloat16" | "float16" | None (float32), "reason": ...}
        "num_detections": len(detections),
        "detections": detections,
        "timings_ms": {k: round(float(v), 2) for k, v in timings_ms.items()},
    }


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG file contents."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> np.ndarray:
    """A bool mask as the 0/255 uint8 image saved in masks/<i>.png."""
    return np.asarray(mask, dtype=np.uint8) * 255


def write_image_result(final_dir: str | Path, *, record: dict, masks: np.ndarray, overlay: np.ndarray) -> Path:
    """Write overlay.png, masks/<i>.png (0/255 binary) and result.json into `final_dir`, atomically."""
    final_dir = Path(final_dir)
    with atomic_dir(final_dir) as tmp:
        Image.fromarray(overlay).save(tmp / "overlay.png")
        (tmp / "masks").mkdir()
        for i, mask in enumerate(masks):
            Image.fromarray(mask_png(mask)).save(tmp / "masks" / f"{i}.png")
        write_json(tmp / "result.json", record)
    return final_dir


def result_zip(*, record: dict, overlay_png: bytes | None) -> bytes:
    """The files `write_image_result` writes (overlay.png where given, masks/<i>.png, result.json) as a zip
    archive, the masks decoded from the record's RLE (the server's download of one result)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if overlay_png is not None:
            archive.writestr("overlay.png", overlay_png)
        for det in record["detections"]:
            archive.writestr(det["mask_file"], png_bytes(mask_png(rle_to_mask(det["mask_rle"]))))
        archive.writestr("result.json", json.dumps(record, indent=2) + "\n")
    return buffer.getvalue()
