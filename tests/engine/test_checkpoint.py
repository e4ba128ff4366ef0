"""Checkpoints: atomic write, weights_only load, refusal of pickled objects, key mismatch messages."""

import pytest
import torch
from torch import nn

from hardmine.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from hardmine.errors import CheckpointError


def test_round_trip_and_no_temp_files_left(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"iteration": 3, "model": {"w": torch.ones(2)}})
    payload = load_checkpoint(path)
    assert payload["iteration"] == 3 and torch.equal(payload["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "hardmine-checkpoint", "version": 1, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a hardmine checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatching_state_names_the_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1), nn.Linear(1, 1)).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state, "ckpt.pt")
    text = str(info.value)
    assert "unexpected: 2.bias, 2.weight" in text
    assert "0.weight (4, 2) vs model (3, 2)" in text
