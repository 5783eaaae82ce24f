"""COCO export (torch_seg/coco.py, segment.py --coco) and prompts longer than GroundingDINO's 256 tokens
(torch_seg/seeders/long_prompts.py): the file round-trips through pycocotools, and 300 class names work."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_support import shared_segmenter
from torch_seg.coco import coco_instances, write_coco
from torch_seg.errors import UserError
from torch_seg.images import load_image
from torch_seg.prompts import caption_from_phrases
from torch_seg.results import write_json
from torch_seg.rle import mask_to_rle
from torch_seg.seeders.long_prompts import (GDINO_MAX_TEXT_TOKENS, merge_chunk_detections, split_phrases,
                                            tokenizer_counter)
from torch_seg.text_encoder import SMALL_BERT, random_weights_text_encoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import segment as segment_cli  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]


# --- COCO -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_run(seg_dir, tmp_path_factory):
    """segment.py --coco over two real photos and a file that is not an image (the shared random-weight models
    stand in for the ones segment.py would build)."""
    tmp = tmp_path_factory.mktemp("coco_run")
    bad = tmp / "notes.jpg"
    bad.write_text("not a photo")
    out, coco_file = tmp / "out", tmp / "coco" / "instances.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("torch_seg.pipeline.TextSegmenter", lambda **options: shared_segmenter())
        code = segment_cli.main([
            "--image", str(seg_dir / "groceries.jpg"), str(bad), str(seg_dir / "truck.jpg"),
            "--prompt", "paper bag. truck. wheel", "--out", str(out), "--coco", str(coco_file),
            "--random-weights", "--device", "cpu"])
    assert code == 2, "the unreadable file fails the run, the two photos are still written"
    return out, coco_file


def test_segment_cli_writes_one_coco_file_for_the_run(coco_run, seg_dir):
    out, coco_file = coco_run
    data = json.loads(coco_file.read_text())
    assert [p.name for p in coco_file.parent.iterdir()] == ["instances.json"], "no temporary file left behind"
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        (1, "groceries.jpg", 800, 534), (2, "truck.jpg", *Image.open(seg_dir / "truck.jpg").size)]
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "paper bag"), (2, "truck"), (3, "wheel")]
    assert data["info"]["random_weights"] is True and "RANDOM WEIGHTS" in data["info"]["note"]
    records = [json.loads((out / name / "result.json").read_text()) for name in ("groceries", "truck")]
    assert len(data["annotations"]) == sum(r["num_detections"] for r in records) > 0
    assert data == coco_instances(records), "the file is built from the result.json records, nothing else"


def test_coco_file_round_trips_through_pycocotools(coco_run):
    from pycocotools.coco import COCO

    out, coco_file = coco_run
    coco = COCO(str(coco_file))
    records = {1: json.loads((out / "groceries" / "result.json").read_text()),
               2: json.loads((out / "truck" / "result.json").read_text())}
    for image_id, record in records.items():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(annotations) == record["num_detections"]
        for ann, det in zip(annotations, record["detections"]):
            mask_png = np.asarray(Image.open(out / Path(record["image"]).stem / det["mask_file"])) > 0
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask_png)
            x0, y0, x1, y1 = det["box_xyxy"]
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.011)
            assert ann["area"] == det["mask_area"] == int(mask_png.sum())
            assert coco.loadCats(ann["category_id"])[0]["name"] == det["phrase"]


def test_coco_file_serves_as_detection_results_for_cocoeval(coco_run, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, coco_file = coco_run
    ground_truth = COCO(str(coco_file))
    detections = ground_truth.loadRes(json.loads(coco_file.read_text())["annotations"])
    for iou_type in ("segm", "bbox"):
        evaluation = COCOeval(ground_truth, detections, iou_type)
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        # Scored against themselves, the detections are perfect: AP 1 at IoU 0.5.
        assert evaluation.stats[1] == pytest.approx(1.0)


def test_coco_categories_are_prompt_phrases_even_for_a_narrowed_label():
    def record(image, prompt_phrases, detections):
        return {"image": image, "width": 4, "height": 3, "prompt": ". ".join(prompt_phrases),
                "phrases": prompt_phrases, "random_weights": False, "models": {},
                "detections": [{"label": label, **({"phrase": phrase} if phrase else {}), "box_score": 0.5,
                                "box_xyxy": [0.0, 0.0, 2.0, 1.0], "mask_score": 0.9, "mask_area": 3,
                                "mask_rle": mask_to_rle(np.eye(3, 4, dtype=bool))}
                               for label, phrase in detections]}

    records = [record("a/x.jpg", ["paper bag", "car"], [("bag", "paper bag"), ("car", "car")]),
               record("https://host/y.png?s=1", ["car", "dog"], [("dog", None)])]  # an older record: no "phrase"
    coco = coco_instances(records)
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "paper bag"), (2, "car"), (3, "dog")]
    assert [(a["id"], a["image_id"], a["category_id"], a["label"]) for a in coco["annotations"]] == [
        (1, 1, 1, "bag"), (2, 1, 2, "car"), (3, 2, 3, "dog")]
    assert [i["file_name"] for i in coco["images"]] == ["x.jpg", "y.png"]
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 2.0, 1.0]
    assert coco == coco_instances(json.loads(json.dumps(records))), "the same records give the same file"


def test_a_failed_write_leaves_the_previous_coco_file_whole(tmp_path, monkeypatch):
    path = write_coco(tmp_path / "instances.json", [])
    before = path.read_text()
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("torch_seg.results.os.fsync", disk_full)
    with pytest.raises(OSError):
        write_coco(path, [])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["instances.json"], "no temporary file left behind"


# --- prompts longer than 256 tokens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(random_weights_text_encoder(**SMALL_BERT))


def class_names(n: int, tokenizer) -> list[str]:
    """n distinct real English words from the BERT vocabulary, every fourth as a two-word phrase."""
    words = [w for w in tokenizer.vocab if w.isalpha() and w.isascii() and len(w) >= 4]
    words = sorted(words)[:: max(1, len(words) // (2 * n))][: 2 * n]
    return [f"{words[i]} {words[n + i]}" if i % 4 == 3 else words[i] for i in range(n)]


def test_300_class_names_split_into_captions_that_each_fit(tokenizer):
    names = class_names(300, tokenizer)
    count = tokenizer_counter(tokenizer)
    assert count(caption_from_phrases(names)) > 2 * GDINO_MAX_TEXT_TOKENS, "the prompt needs several captions"
    chunks = split_phrases(names, count)
    assert len(chunks) >= 3
    assert [p for chunk in chunks for p in chunk] == names, "every phrase once, in prompt order"
    for chunk, following in zip(chunks, chunks[1:]):
        assert count(caption_from_phrases(chunk)) <= GDINO_MAX_TEXT_TOKENS
        assert count(caption_from_phrases([*chunk, following[0]])) > GDINO_MAX_TEXT_TOKENS, "filled greedily"
    assert count(caption_from_phrases(chunks[-1])) <= GDINO_MAX_TEXT_TOKENS


def test_a_prompt_of_exactly_256_tokens_stays_one_caption(tokenizer):
    count = tokenizer_counter(tokenizer)
    # "[CLS] car . car . ... [SEP]": 2 special tokens + 2 per phrase; "car" repeated is fine for the splitter.
    fits = ["car"] * 127
    assert count(caption_from_phrases(fits)) == 256
    assert split_phrases(fits, count) == [fits]
    assert len(split_phrases([*fits, "dog"], count)) == 2


def test_a_single_phrase_longer_than_the_limit_is_an_error_that_says_so(tokenizer):
    long_phrase = " ".join(["wheel"] * 300)
    with pytest.raises(UserError, match=r"is 303 tokens as a caption, more than the detector's 256-token text limit"):
        split_phrases(["car", long_phrase], tokenizer_counter(tokenizer))


def test_merge_keeps_the_best_box_per_phrase_then_the_top_k():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    phrase_ids = np.array([0, 0, 1, 0])  # box 1 repeats box 0's phrase; box 2 is the same place, another phrase
    assert merge_chunk_detections(boxes, scores, phrase_ids, max_detections=10).tolist() == [0, 2, 3]
    assert merge_chunk_detections(boxes, scores, phrase_ids, max_detections=2).tolist() == [0, 2]


def test_300_class_names_detect_with_labels_from_every_caption(seg_dir, tokenizer, monkeypatch):
    seeder = shared_segmenter().seeder
    image = load_image(seg_dir / "groceries.jpg")
    names = class_names(300, tokenizer)
    chunks = split_phrases(names, tokenizer_counter(seeder.model.tokenizer))
    backbone_runs, caption_outputs = [], []
    backbone_forward, run_caption = type(seeder.model.backbone).forward, seeder._run_caption
    monkeypatch.setattr(type(seeder.model.backbone), "forward",
                        lambda self, samples: backbone_runs.append(1) or backbone_forward(self, samples))
    monkeypatch.setattr(seeder, "_run_caption",
                        lambda *a: caption_outputs.append(run_caption(*a)) or caption_outputs[-1])
    # Random weights score every query about alike: threshold 0 and no cap keep every caption's survivors.
    detections = seeder.detect(image, ". ".join(names), box_threshold=0.0, max_detections=100_000)
    assert len(backbone_runs) == 1 and len(caption_outputs) == len(chunks) >= 3, "one backbone run for all captions"
    assert "forward" not in vars(seeder.model.backbone), "the backbone is restored"
    caption_of = {phrase: c for c, chunk in enumerate(chunks) for phrase in chunk}
    assert {caption_of[p] for p in detections.phrases} == set(range(len(chunks)))
    assert all(label in phrase for label, phrase in zip(detections.labels, detections.phrases))
    assert np.all(np.diff(detections.scores) <= 0), "best first"
    # The last caption ran on the first one's backbone features: the same output as a run of its own.
    with torch.inference_mode():
        alone = run_caption(seeder.preprocess(image), chunks[-1], caption_outputs[-1].first_phrase)
    np.testing.assert_array_equal(alone.token_scores, caption_outputs[-1].token_scores)
    np.testing.assert_array_equal(alone.boxes_cxcywh, caption_outputs[-1].boxes_cxcywh)
