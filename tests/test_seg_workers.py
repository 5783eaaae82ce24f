"""Segmentation and tracking over several workers (torch_seg/workers.py, resume.py, coco.py's merge, the CLIs).

The share from flags, torchrun and SLURM; two segment.py workers over the real photos with the shared
random-weight models (every image done once, the merged COCO file loads in pycocotools, a rerun skips what is
done); two track.py workers over clips cut from the real bedroom frames, with stand-ins at SAM 2's video
predictor and the seeder's interfaces (the real predictor runs in test_track_video.py).
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_support import shared_segmenter
from torch_seg.coco import coco_instances, merge_coco_files, worker_coco_path
from torch_seg.errors import UserError
from torch_seg.resume import finished_image_result, seeder_record_name
from torch_seg.seeders.base import Detections
from torch_seg.workers import WorkerShare, worker_device, worker_share

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import merge_coco as merge_cli  # noqa: E402
import segment as segment_cli  # noqa: E402
import track as track_cli  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

PHOTOS = ["cars", "groceries", "truck"]  # the real photos in seg_dir, sorted as --image-dir lists them


# --- the share ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [1, 2, 3, 7, 12])
def test_round_robin_shares_are_disjoint_and_cover_every_item_once(num_workers):
    items = [f"img{i:02d}" for i in range(10)]
    shares = [WorkerShare(num_workers, k).take(items) for k in range(num_workers)]
    assert sorted(i for share in shares for i in share) == items, "every item in exactly one share"
    assert max(map(len, shares)) - min(map(len, shares)) <= 1, "balanced"
    assert shares == [WorkerShare(num_workers, k).take(items) for k in range(num_workers)], "no timing, no state"


def test_the_share_is_every_nth_item_of_the_list():
    assert WorkerShare(3, 1).take(list(range(10))) == [1, 4, 7]
    assert WorkerShare(4, 3).take(["a", "b"]) == []


@pytest.mark.parametrize("environ, expected", [
    ({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}, (8, 5, 1, "torchrun")),
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}, (4, 3, 1, "SLURM")),
    # An srun step smaller than the job: the step's count, not the job's.
    ({"SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, (2, 1, 0, "SLURM")),
    # torchrun inside an srun step: torchrun is the inner launcher, its numbers count every process.
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "WORLD_SIZE": "16", "RANK": "9",
      "LOCAL_RANK": "1"}, (16, 9, 1, "torchrun")),
    ({}, (1, 0, None, "one worker")),
])
def test_the_share_comes_from_torchrun_or_slurm(environ, expected):
    share = worker_share(environ=environ)
    assert (share.num_workers, share.worker_index, share.local_rank) == expected[:3]
    assert expected[3] in share.describe()


def test_flags_win_over_the_environment_but_the_gpu_still_follows_the_launcher():
    share = worker_share(3, 2, environ={"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "4"})
    assert (share.num_workers, share.worker_index, share.local_rank) == (3, 2, 4)
    assert worker_share(3, 0, environ={"SLURM_LOCALID": "2"}).local_rank == 2
    # A broken launcher environment does not matter once the flags say everything.
    assert worker_share(2, 1, environ={"RANK": "1"}).worker_index == 1


@pytest.mark.parametrize("flags, environ, message", [
    ((2, None), {}, "--num-workers needs --worker-index too"),
    ((None, 1), {}, "--worker-index needs --num-workers too"),
    ((2, 2), {}, "worker index 2 (--num-workers/--worker-index) is out of range for 2 worker(s): use 0..1"),
    ((0, 0), {}, "must be at least 1, got 0"),
    ((None, None), {"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
    ((None, None), {"SLURM_NTASKS": "4"}, "SLURM_NTASKS is set but SLURM_PROCID is not"),
    ((None, None), {"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not a whole number"),
    ((None, None), {"WORLD_SIZE": "4", "RANK": "4"}, "worker index 4 (torchrun's WORLD_SIZE/RANK) is out of range"),
    ((None, None), {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "-1"}, "local rank -1"),
])
def test_inconsistent_worker_numbers_are_one_line_errors_naming_the_fix(flags, environ, message):
    with pytest.raises(UserError) as error:
        worker_share(*flags, environ=environ)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_segment_cli_refuses_half_given_worker_flags_before_writing_anything(seg_dir, tmp_path, capsys):
    code = segment_cli.main(["--image-dir", str(seg_dir), "--prompt", "car", "--out", str(tmp_path / "out"),
                             "--num-workers", "2", "--random-weights", "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.strip().splitlines() == ["error: --num-workers needs --worker-index too: pass both, "
                                                         "or neither to take them from torchrun or SLURM"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("visible, local_rank, expected", [(8, 3, "cuda:3"), (1, 3, "cuda:0"), (2, 3, None),
                                                           (4, None, "cuda")])
def test_each_worker_takes_the_gpu_of_its_local_rank(monkeypatch, visible, local_rank, expected):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    if expected is None:
        with pytest.raises(UserError, match="only 2 visible GPUs: start at most 2 workers per host"):
            worker_device("cuda", local_rank)
        return
    assert worker_device("auto", local_rank) == torch.device(expected)
    assert current == ([] if local_rank is None else [torch.device(expected).index])
    assert worker_device("cpu", local_rank) == torch.device("cpu")


# --- two segment.py workers over the real photos --------------------------------------------------------------

def _segment(seg_dir, out, *extra) -> int:
    return segment_cli.main(["--image-dir", str(seg_dir), "--prompt", "paper bag. truck. wheel", "--out", str(out),
                             "--coco", str(out / "instances.json"), "--random-weights", "--device", "cpu",
                             *map(str, extra)])


class Recorder:
    """Stands the shared random-weight models in for the ones segment.py would build, and records each build
    and each image segmented; `crash_at` raises KeyboardInterrupt there, as a worker killed mid-run."""

    def __init__(self, monkeypatch):
        self.segmenter = shared_segmenter()
        self.builds, self.done, self.crash_at = [], [], None
        real_process_file = self.segmenter.process_file

        def process_file(source, prompt, out_root, name=None):
            if name == self.crash_at:
                raise KeyboardInterrupt
            record = real_process_file(source, prompt, out_root, name=name)
            self.done.append(name)
            return record

        monkeypatch.setattr("torch_seg.pipeline.TextSegmenter", lambda **options: self.builds.append(options) or
                            self.segmenter)
        monkeypatch.setattr(self.segmenter, "process_file", process_file)


# The tests on this run are marked `once`: they run the real chain end to end (its version-sensitive parts are
# in test_segment_chain.py and test_coco.py; the share, the skip rule and the merge are tested one by one here).
@pytest.fixture(scope="module")
def workers_run(seg_dir, tmp_path_factory):
    """Worker 0 of 2 (flags) killed before its second photo, worker 1 (torchrun's variables), then worker 0
    again: its rerun must do only the photo it had not finished. Each photo is segmented once in all."""
    out = tmp_path_factory.mktemp("workers") / "out"
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        recorder = Recorder(mp)
        recorder.crash_at = "truck"
        code = _segment(seg_dir, out, "--num-workers", 2, "--worker-index", 0)
        runs.append((code, list(recorder.done), sorted(p.name for p in out.iterdir())))
        recorder.crash_at = None
        with mp.context() as env:
            for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}.items():
                env.setenv(name, value)
            runs.append((_segment(seg_dir, out), recorder.done[len(runs[0][1]):], None))
        before = len(recorder.done)
        runs.append((_segment(seg_dir, out, "--num-workers", 2, "--worker-index", 0), recorder.done[before:], None))
        builds = [options["device"] for options in recorder.builds]
    return out, runs, builds


@pytest.mark.once
def test_two_workers_do_every_photo_once_and_a_rerun_only_what_a_crash_left(workers_run):
    out, runs, builds = workers_run
    (crash_code, crash_done, crash_listing), (code_1, done_1, _), (rerun_code, rerun_done, _) = runs
    assert crash_code == 130 and crash_done == ["cars"]
    assert crash_listing == ["cars"], "the killed worker left no half-written folder and no COCO file"
    assert (code_1, done_1) == (0, ["groceries"])
    assert (rerun_code, rerun_done) == (0, ["truck"]), "the rerun skipped cars, done before the crash"
    assert sorted(crash_done + done_1 + rerun_done) == PHOTOS, "every photo segmented exactly once"
    assert sorted(p.name for p in out.iterdir()) == [*PHOTOS[:2], "instances.worker-0-of-2.json",
                                                     "instances.worker-1-of-2.json", "truck"]
    assert builds == [torch.device("cpu")] * 3
    worker_0 = json.loads((out / "instances.worker-0-of-2.json").read_text())
    assert [Path(i["source"]).name for i in worker_0["images"]] == ["cars.jpg", "truck.jpg"], \
        "the worker's COCO file covers its whole share, the skipped photo read back from its result.json"
    for name in PHOTOS:
        assert json.loads((out / name / "result.json").read_text())["random_weights"] is True


@pytest.mark.once
def test_the_merged_coco_file_is_the_one_a_single_worker_writes_and_loads_in_pycocotools(workers_run, capsys):
    from pycocotools.coco import COCO

    out, *_ = workers_run
    merged_path = out / "merged" / "instances.json"
    assert merge_cli.main([*map(str, sorted(out.glob("instances.worker-*.json"))), "--out", str(merged_path)]) == 0
    assert "3 image(s)" in capsys.readouterr().out
    merged = json.loads(merged_path.read_text())
    records = [json.loads((out / name / "result.json").read_text()) for name in PHOTOS]
    single = coco_instances(records)  # what one worker over --image-dir writes: the same ids throughout
    assert merged["info"].pop("merged_from") == ["instances.worker-0-of-2.json", "instances.worker-1-of-2.json"]
    assert merged == single
    assert [i["id"] for i in merged["images"]] == [1, 2, 3]
    assert [a["id"] for a in merged["annotations"]] == list(range(1, sum(r["num_detections"] for r in records) + 1))
    coco = COCO(str(merged_path))
    assert [img["file_name"] for img in coco.loadImgs([1, 2, 3])] == [f"{n}.jpg" for n in PHOTOS]
    for image_id, record in zip([1, 2, 3], records):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert [coco.loadCats(a["category_id"])[0]["name"] for a in anns] == [d["phrase"] for d in record["detections"]]
        for ann, det in zip(anns, record["detections"]):
            assert int(coco.annToMask(ann).sum()) == det["mask_area"]
    # Rebuilt from the result folders (the way back when a worker's file is lost): the same file.
    rebuilt = out / "merged" / "rebuilt.json"
    assert merge_cli.main(["--results", str(out), "--out", str(rebuilt)]) == 0
    assert json.loads(rebuilt.read_text()) == single


@pytest.mark.once
def test_a_rerun_of_a_finished_share_builds_no_model_and_rewrites_the_same_coco_file(workers_run, seg_dir, capsys,
                                                                                    monkeypatch):
    out, *_ = workers_run
    worker_file = out / "instances.worker-0-of-2.json"
    before = json.loads(worker_file.read_text())
    recorder = Recorder(monkeypatch)
    assert recorder.segmenter.seeder.describe()["name"] == seeder_record_name("gdino", "swin_t")
    capsys.readouterr()
    assert _segment(seg_dir, out, "--num-workers", 2, "--worker-index", 0) == 0
    assert recorder.done == [] and recorder.builds == [], "all done: no image segmented, no model built"
    assert "skipped 2 already done" in capsys.readouterr().err
    assert json.loads(worker_file.read_text()) == before


@pytest.mark.once
def test_only_complete_results_made_with_the_same_settings_count_as_done(workers_run, seg_dir, tmp_path):
    out, *_ = workers_run
    folder = tmp_path / "groceries"
    shutil.copytree(out / "groceries", folder)
    expected = {"image": str(seg_dir / "groceries.jpg"), "prompt": "paper bag. truck. wheel",
                "models.sam2.name": "sam2.1_hiera_tiny"}
    assert finished_image_result(folder, expected)["image"] == expected["image"]
    assert finished_image_result(folder, {**expected, "prompt": "car"}) is None
    assert finished_image_result(folder, {**expected, "models.sam2.name": "sam2.1_hiera_large"}) is None
    record = json.loads((folder / "result.json").read_text())
    if record["detections"]:
        (folder / record["detections"][-1]["mask_file"]).unlink()
        assert finished_image_result(folder, expected) is None, "a mask file is missing"
    (folder / "result.json").write_text(json.dumps(record)[:100])
    assert finished_image_result(folder, expected) is None, "result.json is truncated"


# --- merging: what is refused ---------------------------------------------------------------------------------

def _worker_file(folder: Path, index: int, count: int, sources: list[str]) -> Path:
    records = [{"image": s, "width": 4, "height": 3, "prompt": "car", "phrases": ["car"], "random_weights": True,
                "models": {}, "detections": []} for s in sources]
    path = worker_coco_path(folder / "instances.json", WorkerShare(count, index))
    path.write_text(json.dumps(coco_instances(records)))
    return path


def test_merge_refuses_a_missing_worker_overlapping_files_and_two_runs(tmp_path):
    first, third = _worker_file(tmp_path, 0, 3, ["a.jpg"]), _worker_file(tmp_path, 2, 3, ["c.jpg"])
    assert first.name == "instances.worker-0-of-3.json"
    with pytest.raises(UserError, match=r"worker\(s\) 1 of 3 is missing \(e.g. .*instances.worker-1-of-3.json\)"):
        merge_coco_files([first, third])
    second = _worker_file(tmp_path, 1, 3, ["c.jpg"])
    with pytest.raises(UserError, match="image c.jpg is in both instances.worker-1-of-3.json and "
                                        "instances.worker-2-of-3.json"):
        merge_coco_files([first, second, third])
    second.write_text(json.dumps(coco_instances([])))  # a worker whose share was empty
    assert [i["source"] for i in merge_coco_files([third, second, first, first])["images"]] == ["a.jpg", "c.jpg"]
    other_run = _worker_file(tmp_path, 0, 2, ["b.jpg"])
    with pytest.raises(UserError, match="come from runs with 2 and 3 workers"):
        merge_coco_files([first, second, third, other_run])


def test_merge_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    part = _worker_file(tmp_path, 0, 1, ["a.jpg"])
    (tmp_path / "notes.json").write_text("not json")
    for args, message in [([str(part), "--out", str(part)], "is one of the files to merge"),
                          ([str(tmp_path / "notes.json"), "--out", str(tmp_path / "m.json")], "cannot read"),
                          (["--out", str(tmp_path / "m.json")], "pass either the workers' COCO files or --results")]:
        assert merge_cli.main(args) == 2
        stderr = capsys.readouterr().err.strip().splitlines()
        assert len(stderr) == 1 and stderr[0].startswith("error: ") and message in stderr[0]
    assert not (tmp_path / "m.json").exists()


# --- two track.py workers over clips of the real bedroom frames -----------------------------------------------

class BoxPredictor:
    """SAM 2's video predictor interface; each object's mask is its prompt box on every frame."""

    def init_state(self, video_path, offload_video_to_cpu=False, offload_state_to_cpu=False):
        frames = sorted(Path(video_path).glob("*.jpg"))
        return {"num_frames": len(frames), "size": Image.open(frames[0]).size[::-1], "boxes": {}}

    def add_new_points_or_box(self, state, frame_idx, obj_id, box=None, points=None, labels=None):
        state["boxes"][obj_id] = [int(v) for v in box]

    def propagate_in_video(self, state, start_frame_idx=None, reverse=False):
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, state["num_frames"])
        for frame in order:
            ids = list(state["boxes"])
            logits = torch.full((len(ids), 1, *state["size"]), -10.0)
            for row, (x0, y0, x1, y1) in enumerate(state["boxes"].values()):
                logits[row, 0, y0:y1, x0:x1] = 5.0
            yield frame, ids, logits


class OneBoxSeeder:
    """A stand-in for the GroundingDINO seeder at its interface (one box, roughly the standing child), so it
    describes itself by that seeder's name: a finished output is compared with it."""

    def detect(self, image, prompt):
        return Detections([[300.0, 20.0, 520.0, 500.0]], [0.9], ["child"])

    def describe(self):
        return {"name": seeder_record_name("gdino", "swin_t"), "random_weights": True}


@pytest.fixture(scope="module")
def clips(seg_dir, tmp_path_factory):
    """Three 2-frame clips cut from the real bedroom frames."""
    frames = sorted((seg_dir / "bedroom").glob("*.jpg"))
    if len(frames) < 6:
        pytest.skip(f"bedroom frames not found in {seg_dir / 'bedroom'}")
    root = tmp_path_factory.mktemp("clips")
    for c, name in enumerate(["jump_a", "jump_b", "jump_c"]):
        (root / name).mkdir()
        for frame in frames[2 * c: 2 * c + 2]:
            shutil.copy(frame, root / name / frame.name)
    return root


def _track(monkeypatch, clips, out, *extra) -> tuple[list, list]:
    built = []
    monkeypatch.setattr("torch_seg.video.run.build_seeder", lambda **options: built.append("seeder") or OneBoxSeeder())
    monkeypatch.setattr("torch_seg.video.run.build_video_predictor", lambda *a: built.append("sam2") or BoxPredictor())
    tracked = []
    from torch_seg.video.run import TrackingJob

    real_track = TrackingJob.track
    monkeypatch.setattr(TrackingJob, "track", lambda self, video, folder: tracked.append(Path(video).name)
                        or real_track(self, video, folder))
    args = ["--video-dir", str(clips), "--prompt", "child", "--out", str(out), "--max-frames", "2",
            "--random-weights", "--device", "cpu", *map(str, extra)]
    assert track_cli.main(args) == 0
    return tracked, built


def test_two_track_workers_split_the_clips_and_a_rerun_skips_them(monkeypatch, clips, tmp_path, capsys):
    out = tmp_path / "out"
    first, built = _track(monkeypatch, clips, out, "--num-workers", 2, "--worker-index", 0)
    assert first == ["jump_a", "jump_c"] and built == ["seeder", "sam2"], "models built once for both clips"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    second, _ = _track(monkeypatch, clips, out)
    assert second == ["jump_b"]
    assert sorted(p.name for p in out.iterdir()) == ["jump_a", "jump_b", "jump_c"]
    for name in ["jump_a", "jump_b", "jump_c"]:
        record = json.loads((out / name / "tracks.json").read_text())
        assert record["video"] == str(clips / name) and record["num_frames"] == 2 and record["num_objects"] == 1
        assert sorted(p.name for p in (out / name).iterdir()) == ["masks", "overlay.mp4", "tracks.json"] or \
            (out / name / "overlay").is_dir()
        label = np.asarray(Image.open(out / name / "masks" / "00001.png"))
        assert label.shape == (540, 960) and label[200, 400] == 1 and label[10, 10] == 0
    capsys.readouterr()
    again, built = _track(monkeypatch, clips, out)
    assert again == [] and built == [] and "skipped 1 already done" in capsys.readouterr().err
    again, _ = _track(monkeypatch, clips, out, "--max-frames", 1)  # other settings: redone
    assert again == ["jump_b"]


def test_a_clip_that_fails_is_reported_and_the_others_are_still_tracked(monkeypatch, clips, tmp_path, capsys):
    folder = tmp_path / "clips"
    shutil.copytree(clips / "jump_a", folder / "jump_a")
    (folder / "empty").mkdir()
    (folder / "notes.txt").write_text("neither a video nor a frame folder: not listed")
    built = []
    monkeypatch.setattr("torch_seg.video.run.build_seeder", lambda **options: built.append("seeder") or OneBoxSeeder())
    monkeypatch.setattr("torch_seg.video.run.build_video_predictor", lambda *a: built.append("sam2") or BoxPredictor())
    code = track_cli.main(["--video-dir", str(folder), "--prompt", "child", "--out", str(tmp_path / "out"),
                           "--random-weights", "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert code == 2 and "error: 1 of 2 video(s) failed" in stderr and f"error: {folder / 'empty'}: no frames" in stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["jump_a"]
    (folder / "empty").rmdir()
    (folder / "notes.txt").unlink()
    (folder / "jump_a").rename(folder / ".hidden")
    assert track_cli.main(["--video-dir", str(folder), "--prompt", "child", "--out", str(tmp_path / "out"),
                           "--random-weights", "--device", "cpu"]) == 2
    assert "error: no videos (.mp4, .avi, .mov, .mkv, .webm, .m4v) or frame folders in" in capsys.readouterr().err
