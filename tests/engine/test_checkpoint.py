"""Checkpoints: atomic write, weights_only load, refusal of pickled objects, key mismatch messages."""

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from hardmine.engine.checkpoint import (
    atomic_write,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    require_keys,
    save_checkpoint,
)
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


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appears if the pickle is ever executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("form", ["torch.save", "legacy torch.save", "raw pickle"])
def test_malicious_checkpoint_runs_no_code_and_is_refused(tmp_path, form):
    marker = tmp_path / "pwned"
    payload = {"format": "hardmine-checkpoint", "version": 1, "model": {"w": _CreatesAFile(marker)}}
    path = tmp_path / "evil.pt"
    if form == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=form == "torch.save")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    if form == "torch.save":
        assert "refused: it holds a pickled Python object (io.open), not only tensors" in message
    else:
        assert "not a torch.save archive" in message


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "c.pt"
    save_checkpoint(target, {"iteration": 1})
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as fh:
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt
    assert load_checkpoint(target)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    stale = [tmp_path / ".checkpoint_last.pt.abc123.tmp", tmp_path / ".config.yaml.x_y.tmp"]
    keep = [tmp_path / ".other.pt.abc.tmp", tmp_path / "checkpoint_last.pt", tmp_path / "notes.tmp"]
    for p in stale + keep:
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, ("checkpoint_last.pt", "config.yaml"))
    assert sorted(removed) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_missing_entries_are_named(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"c.pt: the checkpoint lacks optimizer, rng \(it holds iteration"
    ):
        require_keys({"iteration": 1, "model": {}}, ("model", "optimizer", "rng"), tmp_path / "c.pt")


def test_a_failed_write_is_a_clear_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = save_checkpoint(tmp_path / "c.pt", {"iteration": 1})

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        CheckpointError, match=r"c.pt: cannot write the checkpoint \(\[Errno 28\] No space left"
    ):
        save_checkpoint(target, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(target)["iteration"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_loading_a_checkpoint_without_config_for_inference_names_what_is_missing(tmp_path):
    from hardmine.engine.inference import load_trained

    path = save_checkpoint(tmp_path / "weights_only.pt", {"model": {}})
    with pytest.raises(CheckpointError, match=r"weights_only.pt: the checkpoint lacks config, categories"):
        load_trained(path)
