"""scripts/download_checkpoints.py: atomic downloads with checksum checks (file:// URLs stand in for the web)."""
import hashlib
import sys
from pathlib import Path

import pytest

from torch_seg.checkpoints import CheckpointSpec
from torch_seg.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import download_checkpoints  # noqa: E402


def test_download_verifies_the_pinned_checksum_and_leaves_no_partial_file(tmp_path):
    source = tmp_path / "source.pt"
    source.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "checkpoints"
    dest.mkdir()

    good = CheckpointSpec("model.pt", source.as_uri(), digest)
    assert download_checkpoints.download(good, dest).read_bytes() == source.read_bytes()

    bad = CheckpointSpec("other.pt", source.as_uri(), "0" * 64)
    with pytest.raises(UserError, match="does not match"):
        download_checkpoints.download(bad, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["model.pt"]


def test_unreachable_url_is_a_user_error(tmp_path):
    spec = CheckpointSpec("x.pt", (tmp_path / "absent.pt").as_uri(), None)
    with pytest.raises(UserError, match="cannot download"):
        download_checkpoints.download(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_offline_tokenizer_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    # A half-filled folder would be found, and refused, by every later run, --random-weights ones included.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "checkpoints" / "bert-base-uncased"
    with pytest.raises(UserError, match="are you online"):
        download_checkpoints.download_bert_files(folder)
    assert not (tmp_path / "checkpoints").exists()
