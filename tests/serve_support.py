"""What tests/test_serve.py, test_serve_browser.py and test_coco.py share: one random-weight TextSegmenter per
test session (real GroundingDINO and SAM 2.1 code; a small BERT and a 256-pixel GroundingDINO input for speed,
as tests/test_segment_chain.py), and a real HTTP server over it on a free local port."""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
from torch_seg.server import ServerLimits, create_app, running_server, wait_until_ready
from torch_seg.text_encoder import SMALL_BERT, random_weights_text_encoder

MAX_DETECTIONS = 3  # SAM decodes one mask per box: few boxes keep the tests fast


@functools.cache
def shared_segmenter() -> TextSegmenter:
    """Built once per process. It is not thread-safe: use it through one server (or directly) at a time."""
    quiet_library_warnings()
    return TextSegmenter(seeder="gdino", sam2_model="tiny", text_encoder=random_weights_text_encoder(**SMALL_BERT),
                         device="cpu", random_weights=True, max_detections=MAX_DETECTIONS,
                         seeder_options={"resize_shortest": 256})


@contextlib.contextmanager
def live_server(build=shared_segmenter, *, wait: bool = True, examples_dir=None, **limits) -> Iterator[tuple]:
    """A real uvicorn server in a background thread; yields (base URL, SegmentationService)."""
    app = create_app(build, random_weights=True, limits=ServerLimits(**limits), examples_dir=examples_dir)
    with running_server(app) as url:
        if wait:
            wait_until_ready(app.state.service)
        yield url, app.state.service
