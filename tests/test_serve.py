"""The HTTP API (torch_seg/server.py) through a real uvicorn server on a free local port, over the real
GroundingDINO + SAM 2.1 code with random weights, on the real photos: the answer's schema and masks, health,
one request at a time on the one model, and every bad input a client can send."""
import base64
import io
import json
import socket
import threading
import time
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image

from serve_support import MAX_DETECTIONS, live_server, shared_segmenter
from torch_seg.rle import rle_to_mask

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

RECORD_KEYS = {"schema_version", "image", "width", "height", "prompt", "phrases", "box_threshold", "text_threshold",
               "models", "random_weights", "note", "device", "autocast", "num_detections", "detections",
               "timings_ms"}
DETECTION_KEYS = {"index", "label", "phrase", "box_score", "box_xyxy", "mask_score", "mask_area", "mask_rle",
                  "mask_file"}
UPLOAD_LIMIT = 2 * 2**20
TOO_LONG_PHRASE = " ".join(["wheel"] * 300)  # refused by the model code itself, at once: a cheap job to hold


@pytest.fixture(scope="module")
def server(seg_dir):
    with live_server(max_upload_bytes=UPLOAD_LIMIT, max_detections=MAX_DETECTIONS, examples_dir=seg_dir) as served:
        yield served


def post(url, image=None, *, name="photo.jpg", timeout=120, **fields):
    files = {"image": (name, image)} if image is not None else {"prompt": (None, fields.pop("prompt"))}
    return requests.post(f"{url}/segment", files=files, data=fields, timeout=timeout)


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


class HeldSegmenter:
    """The shared segmenter, each `segment` call first waiting for `gate`; counts calls and overlaps."""

    def __init__(self, gate_open: bool = True):
        self._inner = shared_segmenter()
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.calls, self.active, self.most_active = 0, 0, 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def segment(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            assert self.gate.wait(120)
            return self._inner.segment(*args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


# --- what a client gets ---------------------------------------------------------------------------------------

def test_health_names_the_models_the_device_and_random_weights(server):
    url, _ = server
    health = requests.get(f"{url}/health").json()
    assert health["status"] == "ready" and health["random_weights"] is True and health["device"] == "cpu"
    assert health["models"]["sam2"]["name"] == "sam2.1_hiera_tiny"
    assert health["models"]["seeder"]["name"] == "groundingdino_swin_t"
    assert health["defaults"] == {"box_threshold": 0.35, "text_threshold": 0.25, "max_detections": MAX_DETECTIONS}
    assert health["limits"]["max_upload_bytes"] == UPLOAD_LIMIT


def test_segment_answers_the_result_json_record_with_masks_that_decode(server, seg_dir):
    url, _ = server
    photo = seg_dir / "groceries.jpg"
    response = post(url, photo.read_bytes(), name="groceries.jpg", prompt="paper bag. car", overlay="1", coco="1")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == RECORD_KEYS | {"result_id", "overlay_png", "coco"}
    assert (answer["image"], answer["width"], answer["height"]) == ("groceries.jpg", 800, 534)
    assert answer["random_weights"] is True and "RANDOM WEIGHTS" in answer["note"]
    assert answer["phrases"] == ["paper bag", "car"] and answer["box_threshold"] == 0.35
    assert {"load", "queue", "detect", "sam_encode", "sam_decode", "overlay", "total"} == set(answer["timings_ms"])
    assert 1 <= answer["num_detections"] == len(answer["detections"]) <= MAX_DETECTIONS
    masks = []
    for det in answer["detections"]:
        assert set(det) == DETECTION_KEYS and det["phrase"] in answer["phrases"]
        mask = rle_to_mask(det["mask_rle"])
        assert mask.shape == (534, 800) and int(mask.sum()) == det["mask_area"]
        masks.append(mask)
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (800, 534)

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = answer["coco"]
    coco.createIndex()
    assert [coco.annToMask(a).astype(bool).sum() for a in coco.loadAnns(coco.getAnnIds())] == [m.sum() for m in masks]

    download = requests.get(f"{url}/results/{answer['result_id']}.zip")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        record = {k: v for k, v in answer.items() if k in RECORD_KEYS}
        assert json.loads(archive.read("result.json")) == record
        assert sorted(archive.namelist()) == sorted(["overlay.png", "result.json",
                                                     *(d["mask_file"] for d in answer["detections"])])
        for det, mask in zip(answer["detections"], masks):
            np.testing.assert_array_equal(np.asarray(Image.open(archive.open(det["mask_file"]))) > 0, mask)


def test_concurrent_requests_wait_their_turn_on_the_one_model(seg_dir):
    held = HeldSegmenter()
    photo = (seg_dir / "groceries.jpg").read_bytes()
    asks = [{"box_threshold": "1.0"}, {"max_detections": "1"}, {"text_threshold": "0.9"}]
    answers = [None] * len(asks)

    def client(i):
        answers[i] = post(url, photo, prompt="paper bag. car", **asks[i])

    with live_server(lambda: held) as (url, service):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = requests.get(f"{url}/health").json()
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    records = [a.json() for a in answers]
    assert held.calls == 3 and held.most_active == 1, "one request at a time on the one model"
    assert records[0]["box_threshold"] == 1.0 and records[0]["num_detections"] == 0
    assert records[1]["num_detections"] == 1
    assert records[2]["text_threshold"] == 0.9 and records[2]["box_threshold"] == 0.35
    assert max(r["timings_ms"]["queue"] for r in records) > 0.5 * min(r["timings_ms"]["detect"] for r in records), \
        "the later requests waited for the earlier ones"
    assert health["counts"]["completed"] == 3 and health["queue"]["pending"] == 0


def test_a_full_queue_answers_503_and_the_held_request_still_gets_its_answer(seg_dir):
    held = HeldSegmenter(gate_open=False)
    first = {}
    with live_server(lambda: held, max_pending=1) as (url, service):
        thread = threading.Thread(target=lambda: first.update(r=post(url, (seg_dir / "groceries.jpg").read_bytes(),
                                                                     prompt=TOO_LONG_PHRASE)))
        thread.start()
        wait_for(lambda: held.calls == 1)
        busy = post(url, (seg_dir / "groceries.jpg").read_bytes(), prompt="car")
        held.gate.set()
        thread.join()
    assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["Retry-After"]
    assert first["r"].status_code == 400 and "256-token text limit" in first["r"].json()["error"]


def test_a_request_past_the_timeout_gets_504_and_a_queued_one_never_runs(seg_dir):
    held = HeldSegmenter(gate_open=False)
    photo = (seg_dir / "groceries.jpg").read_bytes()
    with live_server(lambda: held, request_timeout_s=1.0) as (url, service):
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(post(url, photo, prompt=TOO_LONG_PHRASE)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held.gate.set()
        wait_for(lambda: service.pending == 0)
        assert requests.get(f"{url}/health").json()["counts"]["timed_out"] == 2
    assert [a.status_code for a in answers] == [504, 504]
    assert "1 s timeout" in answers[0].json()["error"]
    assert held.calls == 1, "the request still waiting when its time ran out left the queue"


def test_a_request_while_the_models_load_gets_503_then_the_server_is_ready(seg_dir):
    gate = threading.Event()

    def slow_build():
        assert gate.wait(60)
        return shared_segmenter()

    with live_server(slow_build, wait=False) as (url, service):
        loading = requests.get(f"{url}/health")
        early = post(url, (seg_dir / "groceries.jpg").read_bytes(), prompt="car")
        gate.set()
        wait_for(lambda: service.status == "ready")
        ready = requests.get(f"{url}/health")
    assert loading.status_code == 503 and loading.json()["status"] == "loading" and loading.json()["models"] is None
    assert early.status_code == 503 and "still loading" in early.json()["error"] and early.headers["Retry-After"]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def raw_request(url: str, body: bytes, content_length: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    boundary = "b0undary"
    head = (f"POST /segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def multipart(fields: dict, image: bytes, boundary="b0undary") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_a_client_that_disconnects_mid_request_is_dropped_and_the_server_goes_on(seg_dir):
    held = HeldSegmenter(gate_open=False)
    photo = (seg_dir / "groceries.jpg").read_bytes()
    with live_server(lambda: held) as (url, service):
        # Mid-upload: half the promised body, then gone.
        raw_request(url, photo[:1000], content_length=len(photo)).close()
        wait_for(lambda: service.counts["dropped"] == 1)
        # Mid-wait: the whole form, then gone while another request holds the model.
        first = {}
        thread = threading.Thread(target=lambda: first.update(r=post(url, photo, prompt=TOO_LONG_PHRASE)))
        thread.start()
        wait_for(lambda: held.calls == 1)
        sock = raw_request(url, multipart({"prompt": "car"}, photo))
        wait_for(lambda: service.pending == 2)
        sock.close()
        wait_for(lambda: service.counts["dropped"] == 2 and service.pending == 1)
        held.gate.set()
        thread.join()
        health = requests.get(f"{url}/health")
    assert first["r"].status_code == 400
    assert held.calls == 1, "the disconnected request never reached the model"
    assert health.status_code == 200 and health.json()["queue"]["pending"] == 0


# --- bad input --------------------------------------------------------------------------------------------------

def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8000, 7000)).save(buffer, format="PNG")  # 56 MP of one colour: a small file
    return buffer.getvalue()


BAD_REQUESTS = {
    "not an image": (dict(image=b"%PDF-1.4 not a photo", prompt="car"), 400, "not an image PIL can read"),
    "empty file": (dict(image=b"", prompt="car"), 400, "empty (0 bytes)"),
    "truncated photo": (dict(image="groceries[:5000]", prompt="car"), 400, "corrupt or truncated"),
    "over 50 MP": (dict(image="huge", prompt="car"), 400, "more than the 50 MP limit"),
    "empty prompt": (dict(image="groceries", prompt=""), 400, "the prompt is empty"),
    "whitespace prompt": (dict(image="groceries", prompt="  \n "), 400, "the prompt is empty"),
    "wordless prompt": (dict(image="groceries", prompt="car. !!"), 400, "has no letter or digit"),
    "phrase over 256 tokens": (dict(image="groceries", prompt=TOO_LONG_PHRASE), 400, "256-token text limit"),
    "box threshold above 1": (dict(image="groceries", prompt="car", box_threshold="1.5"), 400, "box_threshold must"),
    "text threshold below 0": (dict(image="groceries", prompt="car", text_threshold="-0.1"), 400, "[0, 1]"),
    "threshold not a number": (dict(image="groceries", prompt="car", box_threshold="high"), 400, "got 'high'"),
    "threshold nan": (dict(image="groceries", prompt="car", box_threshold="nan"), 400, "box_threshold must"),
    "no detections asked": (dict(image="groceries", prompt="car", max_detections="0"), 400, "from 1 to 3"),
    "too many detections": (dict(image="groceries", prompt="car", max_detections="4"), 400, "from 1 to 3"),
    "bad overlay flag": (dict(image="groceries", prompt="car", overlay="maybe"), 400, "overlay must be 1 or 0"),
    "unknown field": (dict(image="groceries", prompt="car", box_thresh="0.3"), 400, "unknown form field 'box_thresh'"),
    "no image field": (dict(prompt="car"), 400, "no file in field 'image'"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_one_line_4xx_and_the_server_goes_on(server, seg_dir, case):
    url, service = server
    fields, status, message = BAD_REQUESTS[case]
    fields = dict(fields)
    image = fields.pop("image", None)
    if isinstance(image, str):  # made here, from the real photo
        photo = (seg_dir / "groceries.jpg").read_bytes()
        image = {"groceries": lambda: photo, "groceries[:5000]": lambda: photo[:5000], "huge": huge_png}[image]()
    completed = service.counts["completed"]
    response = post(url, image, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert service.counts["completed"] == completed, "nothing reached SAM"
    assert requests.get(f"{url}/health").json()["status"] == "ready"


def test_an_oversized_upload_is_413_whether_or_not_its_size_is_declared(server):
    url, _ = server
    too_big = b"\xff" * (UPLOAD_LIMIT + 1)
    declared = post(url, too_big, prompt="car")

    def chunks():  # no Content-Length: the server counts as the body arrives
        for i in range(0, len(too_big), 2**16):
            yield too_big[i:i + 2**16]

    streamed = requests.post(f"{url}/segment", data=chunks(), timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    for response in (declared, streamed):
        assert response.status_code == 413 and "over this server's 2 MB limit" in response.json()["error"]
    assert requests.get(f"{url}/health").json()["status"] == "ready"


@pytest.mark.parametrize("method, path, body, status, message", [
    ("post", "/segment", {"data": {"prompt": "car"}}, 415, "multipart/form-data"),
    ("post", "/segment", {"data": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, "Missing boundary"),
    ("post", "/segment", {"files": [("image", b"a"), ("image", b"b")], "data": {"prompt": "car"}}, 400,
     "malformed multipart form (Too many files"),
    ("post", "/segment", {"files": {"image": b"a"}, "data": {"prompt": "car. " * 5000}}, 400,
     "more than this server's"),
    ("get", "/segment", {}, 405, "Method Not Allowed"),
    ("get", "/results/0123abcd.zip", {}, 404, "no recent result"),
    ("get", "/examples/passwd", {}, 404, "no example"),
])
def test_wrong_requests_get_a_json_error(server, method, path, body, status, message):
    url, _ = server
    response = getattr(requests, method)(f"{url}{path}", timeout=30, **body)
    assert response.status_code == status and message in response.json()["error"]


def test_the_page_and_the_examples_are_served(server, seg_dir):
    url, _ = server
    page = requests.get(url)
    assert page.status_code == 200 and 'id="segment"' in page.text and "/segment" in page.text
    examples = requests.get(f"{url}/examples").json()["examples"]
    assert examples == ["cars.jpg", "groceries.jpg", "truck.jpg"]
    assert requests.get(f"{url}/examples/truck.jpg").content == (seg_dir / "truck.jpg").read_bytes()


# --- scripts/serve.py -------------------------------------------------------------------------------------------

def run_serve_cli(capsys, *args) -> tuple[int, str]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import serve as serve_cli

    code = serve_cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--max-queue", "0"], "--max-queue must be at least 1"),
    (["--max-detections", "0"], "--max-detections must be at least 1"),
    (["--box-threshold", "2"], "outside [0, 1]"),
    (["--port", "70000"], "--port must be from 0 to 65535"),
    (["--request-timeout", "0"], "must be positive"),
    (["--examples", "absent_dir"], "is not a folder of images"),
])
def test_serve_cli_refuses_bad_options_in_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_serve_cli(capsys, *args, "--random-weights")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and message in err


def test_serve_cli_refuses_a_port_in_use(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = run_serve_cli(capsys, "--port", taken.getsockname()[1], "--random-weights")
    assert code == 2 and "Address already in use): pass another --port" in err


def test_serve_cli_without_checkpoints_exits_2_naming_the_download(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_SEG_CHECKPOINTS", str(tmp_path))
    code, err = run_serve_cli(capsys, "--port", "0", "--device", "cpu")
    assert code == 2 and "error: the models failed to load" in err and "download_checkpoints.py" in err
