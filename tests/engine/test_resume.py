"""What `--resume`, `eval` and `predict` accept: checkpoints of another model are refused naming the
keys, incomplete ones naming the missing entries; older configs and changed free keys resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hardmine.cli import main
from hardmine.config import load_config
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint, save_checkpoint
from hardmine.errors import CheckpointError
from tests.conftest import FAST


@pytest.fixture(scope="module")
def trained(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 2-iteration run and the overrides that made it."""
    out = tmp_path_factory.mktemp("trained")
    overrides = [
        *FAST,
        f"data.train={synth_dir / 'train.json'}",
        f"data.val={synth_dir / 'val.json'}",
        "solver.max_iter=2",
        "train.eval_at_end=false",
    ]
    training.train(load_config(None, [*overrides, f"output_dir={out / 'run'}"]))
    return out / "run", overrides


def _copy(trained: tuple[Path, list[str]], tmp_path: Path):
    run, overrides = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, load_config(None, [*overrides, f"output_dir={out}"])


def test_resume_refuses_weights_of_another_model_naming_the_keys(trained, tmp_path):
    out, cfg = _copy(trained, tmp_path)
    payload = load_checkpoint(out / "checkpoint_last.pt")
    model = payload["model"]
    name = next(k for k in model if k.endswith("cls_score.weight"))
    model[name] = torch.zeros(3, model[name].shape[1])
    model["extra.weight"] = torch.zeros(1)
    del model[next(k for k in model if k.startswith("backbone."))]
    save_checkpoint(
        out / "checkpoint_last.pt", {k: v for k, v in payload.items() if k not in ("format", "version")}
    )
    with pytest.raises(CheckpointError) as info:
        training.train(cfg, resume=True)
    message = str(info.value)
    assert "the checkpoint does not fit this model; missing: backbone." in message
    assert "unexpected: extra.weight" in message and f"shape mismatch: {name} (3, " in message


def test_resume_refuses_a_checkpoint_without_training_state(trained, tmp_path):
    out, cfg = _copy(trained, tmp_path)
    payload = load_checkpoint(out / "checkpoint_last.pt")
    keep = ("iteration", "model", "config", "categories")
    save_checkpoint(out / "checkpoint_last.pt", {k: payload[k] for k in keep})
    with pytest.raises(CheckpointError, match="the checkpoint lacks optimizer, scheduler, rng"):
        training.train(cfg, resume=True)


def test_resume_accepts_a_checkpoint_written_before_new_options_existed(trained, tmp_path):
    out, cfg = _copy(trained, tmp_path)
    payload = load_checkpoint(out / "checkpoint_last.pt")
    del payload["config"]["data"]["on_invalid"], payload["config"]["train"]["max_nonfinite_steps"]
    del payload["faults"]
    save_checkpoint(
        out / "checkpoint_last.pt", {k: v for k, v in payload.items() if k not in ("format", "version")}
    )
    cfg.train.max_nonfinite_steps = 9  # a free key: may change on resume
    assert training.train(cfg, resume=True).iterations == 2


def test_resume_without_a_checkpoint_starts_from_the_beginning(trained, tmp_path, capsys):
    out, cfg = _copy(trained, tmp_path)
    (out / "checkpoint_last.pt").unlink()
    assert training.train(cfg, resume=True).iterations == 2
    assert f"--resume: no checkpoint in {out} yet; training from the start" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_refuse_a_checkpoint_that_does_not_fit_naming_the_keys(
    trained, tmp_path, command, capsys
):
    run, _ = trained
    argv = [
        command,
        str(run / "model_final.pt"),
        "roi_head.representation_size=64",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"hardmine: error: {run / 'model_final.pt'}: the checkpoint does not fit this model;"
    )
    assert "shape mismatch: roi_head.box_head.fc6.bias (256,) vs model (64,)" in err
    assert "roi_head.box_head.fc6.weight (256, " in err
