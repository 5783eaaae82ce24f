"""What the two Colab notebooks share: the runtime they run on, shell steps that stop on failure, and display.

The notebooks import this file from the checkout they clone (`sys.path` gets `notebooks/`), so it uses only
the standard library at import time; IPython, pandas, OpenCV and matplotlib are imported where they are used.
It is not part of the installed packages: `jax_vit` and `torch_seg` never import it.
"""
from __future__ import annotations

import contextlib
import html
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

# The one line a CPU-only runtime prints (and the notebooks' tests look for): where the fix is in Colab's menus.
GPU_FIX = "Runtime > Change runtime type > GPU"
# Set on Colab's and Cloud TPU VMs' TPU runtimes (the older Colab TPU node, a TPU VM, a Kaggle TPU VM).
TPU_ENV_VARS = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
DOWNLOAD_TIMEOUT_S = 30


class NotebookError(Exception):
    """A problem the notebook can name the fix for: shown as one line (no traceback), and the run stops there."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of the traceback
        return [f"error: {self}"]


def on_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def detect_accelerator(env=os.environ, which=shutil.which, run=subprocess.run,
                       tpu_device: Path = Path("/dev/accel0")) -> tuple[str, str]:
    """("gpu" | "tpu" | "cpu", what was seen), from the machine alone: nothing needs to be installed yet."""
    if which("nvidia-smi"):
        listed = run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if listed.returncode == 0 and listed.stdout.strip():
            return "gpu", listed.stdout.strip().splitlines()[0]
    for name in TPU_ENV_VARS:
        if env.get(name):
            return "tpu", f"{name}={env[name]}"
    if tpu_device.exists():
        return "tpu", f"{tpu_device} present"
    return "cpu", f"no GPU (no working nvidia-smi) and no TPU ({', '.join(TPU_ENV_VARS)} unset)"


def runtime_lines(accelerator: str, seen: str, small: bool | None) -> list[str]:
    """What was found, and on a CPU-only runtime the one line naming the fix (`small`: the SMALL parameter)."""
    lines = [f"runtime: {accelerator} ({seen}){', on Colab' if on_colab() else ''}"]
    if accelerator == "cpu":
        lines.append(("CPU-only runtime: continuing in the small setting" if small in (None, True) else
                      "CPU-only runtime: SMALL = False, so the full setting runs on the CPU (slow)")
                     + f"; for a GPU: {GPU_FIX}")
    return lines


@contextlib.contextmanager
def stop_on(*errors: type[BaseException]) -> Iterator[None]:
    """Inside the block, the project's own user errors (their messages name the fix) stop the notebook with one
    line, as the command lines print them, instead of a traceback."""
    try:
        yield
    except errors as error:
        raise NotebookError(str(error)) from None


def sh(command: str) -> None:
    """Run `command` in the notebook's shell, its output (progress bars too) streamed into the cell; a non-zero
    exit status stops the notebook with one line."""
    from IPython import get_ipython

    shell = get_ipython()
    shell.system(command)
    status = shell.user_ns.get("_exit_code", 0)
    if status:
        raise NotebookError(f"exit status {status} from: {command}  (its message is just above)")


def quote(path) -> str:
    return shlex.quote(str(path))


def jax_backend(python: str = sys.executable) -> str:
    """What JAX runs on, asked in a separate process: a TPU admits one process only, and the training script
    that follows must be the one that holds it."""
    probe = ("import jax; d = jax.devices(); "
             "print(f'{jax.default_backend()} {len(d)} {d[0].device_kind}')")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise NotebookError(f"JAX does not import here ({last}): run the install cell with INSTALL = True")
    return done.stdout.strip().splitlines()[-1]


def fetch(url: str, target: Path) -> Path:
    """Download `url` to `target` (a temporary sibling renamed when complete: never a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise NotebookError(f"cannot download {url} ({error}): check the URL and the network, or give a local "
                            f"path instead") from None
    partial.replace(target)
    return target


def fetch_frames(pattern: str, count: int, folder: Path) -> Path:
    """Frames `pattern.format(0)`, `pattern.format(1)`, ... (up to `count`, fewer where the clip ends) into
    `folder`: a frame folder scripts/track.py and `track_video` read."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        url = pattern.format(index)
        target = folder / f"{index:05d}{Path(url.split('?')[0]).suffix or '.jpg'}"
        if target.is_file():
            continue
        try:
            fetch(url, target)
        except NotebookError:
            if index == 0:
                raise
            break  # the clip is shorter than `count` frames
    return folder


def upload(kind: str) -> list[Path]:
    """Files the user picks in Colab's upload widget, saved in ./uploads; elsewhere, one line naming the fix."""
    if not on_colab():
        raise NotebookError(f"no {kind} given and there is no upload widget outside Colab: set it in the "
                            f"parameters cell to a path or a URL")
    from google.colab import files

    folder = Path("uploads")
    folder.mkdir(exist_ok=True)
    saved = []
    for name, data in files.upload().items():
        path = folder / Path(name).name
        path.write_bytes(data)
        saved.append(path)
    if not saved:
        raise NotebookError(f"no {kind} was uploaded: run the cell again and pick a file")
    return saved


def resolve_video(video, max_frames: int | None, folder: Path = Path("inputs")) -> Path:
    """The VIDEO parameter as a local mp4 or frame folder: a path as it is, a URL downloaded, a URL pattern
    with `{}` (a frame URL per index) fetched frame by frame up to `max_frames`, None uploaded (Colab)."""
    if video is None:
        return upload("video")[0]
    video = str(video)
    if "://" in video:  # http(s), or file:// (how the tests serve a clip)
        if "{" in video:
            if max_frames is None:
                raise NotebookError("a frame-URL pattern needs MAX_FRAMES (how many frames to fetch): set it")
            return fetch_frames(video, max_frames, folder / "frames")
        return fetch(video, folder / Path(video.split("?")[0]).name)
    if not Path(video).exists():
        raise NotebookError(f"VIDEO {video} does not exist: give an mp4, a folder of frames or a URL")
    return Path(video)


def show_table(rows: list[dict], columns: list[str]) -> None:
    """`rows` as a table: a pandas DataFrame where pandas is installed (Colab), else plain HTML."""
    from IPython.display import HTML, display

    try:
        import pandas
    except ImportError:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                       for row in rows)
        display(HTML(f"<table><tr>{head}</tr>{body}</table>"))
        return
    display(pandas.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns))


def show_picture(path: Path, width: int | None = None) -> None:
    from IPython.display import Image, display

    if not Path(path).is_file():
        raise NotebookError(f"{path} was not written: see the messages of the step above")
    display(Image(filename=str(path), width=width))


def overlay_frames(track_dir: Path, count: int = 3) -> list[tuple]:
    """`count` evenly spaced (frame index, RGB array) pairs of a tracking run's overlay: overlay.mp4, or the overlay/
    folder written where OpenCV has no mp4 encoder."""
    import cv2

    frames = []
    video = track_dir / "overlay.mp4"
    if video.is_file():
        capture = cv2.VideoCapture(str(video))
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
    else:
        frames = [cv2.imread(str(p)) for p in sorted((track_dir / "overlay").glob("*.*"))]
    if not frames:
        raise NotebookError(f"no overlay frames in {track_dir}: see the messages of the tracking step")
    step = max(1, (len(frames) - 1) // max(1, count - 1))
    return [(index, cv2.cvtColor(frames[index], cv2.COLOR_BGR2RGB)) for index in range(0, len(frames), step)][:count]


def save_folder(folder: Path) -> Path:
    """`folder` zipped beside itself; on Colab the browser downloads it (the runtime's disk is lost)."""
    archive = Path(shutil.make_archive(str(folder), "zip", root_dir=folder))
    print(f"saved {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    if on_colab():
        from google.colab import files

        files.download(str(archive))
    return archive
