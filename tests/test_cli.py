"""The command line: help, errors without tracebacks, synth, predict, proposals -> Fast R-CNN."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hardmine.cli import main
from hardmine.config import load_config


def test_help_lists_commands_and_every_train_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "proposals", "mine", "data", "weights"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "roi_head.sampler.batch_size_per_image=512" in out and "solver.amp='off'" in out


def test_python_dash_m_entry_point():
    run = subprocess.run([sys.executable, "-m", "hardmine", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("hardmine ")


def test_unknown_key_is_a_clear_error(capsys):
    assert main(["train", "roi_head.samplr=random"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("hardmine: error: unknown config key 'roi_head.samplr'") and "roi_head.sampler" in err
    )
    assert "Traceback" not in err


def test_bad_dataset_file_is_named(tmp_path, capsys):
    bad = tmp_path / "train.json"
    bad.write_text('{"images": [}')
    assert main(["train", f"data.train={bad}", f"data.val={bad}", f"output_dir={tmp_path}/o"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_data_synth(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--seed", "1", "--train", "3", "--val", "2"]) == 0
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    assert len(train["images"]) == 3 and (tmp_path / "s" / train["images"][0]["file_name"]).is_file()


def test_predict_proposals_and_fast_rcnn(fast_overrides, synth_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *fast_overrides, "solver.max_iter=2", "train.eval_at_end=false"]) == 0
    ckpt = str(run / "model_final.pt")

    image = synth_dir / "images" / "val_000000.png"
    assert (
        main(
            ["predict", ckpt, "--images", str(image), "--out", str(tmp_path / "pred"), "--score-thresh", "0"]
        )
        == 0
    )
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and {r["image_id"] for r in results} == {0}
    assert (tmp_path / "pred" / "val_000000.png").is_file()
    assert main(["predict", ckpt, "--out", str(tmp_path / "pred_val"), "--max-images", "2"]) == 0
    assert len(list((tmp_path / "pred_val").glob("*.png"))) == 2

    for split in ("train", "val"):
        assert (
            main(
                ["proposals", ckpt, "--split", split, "--out", str(tmp_path / f"{split}.pt"), "--top-n", "50"]
            )
            == 0
        )
    assert (
        main(
            [
                "train",
                *fast_overrides,
                "model.arch=fast_rcnn",
                f"data.train_proposals={tmp_path / 'train.pt'}",
                f"data.val_proposals={tmp_path / 'val.pt'}",
                "solver.max_iter=2",
                f"output_dir={tmp_path / 'fast'}",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP50"] <= 1.0
    capsys.readouterr()
    assert (
        main(["proposals", str(tmp_path / "fast" / "model_final.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    )
    assert "has no RPN" in capsys.readouterr().err


def test_corrupt_image_in_a_worker_is_named_without_traceback(synth_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    (data / "images" / "train_000002.png").write_bytes(b"not a png")
    code = main(
        [
            "train",
            str(Path(__file__).parents[1] / "configs" / "smoke.yaml"),
            f"data.train={data / 'train.json'}",
            f"data.val={data / 'val.json'}",
            "data.num_workers=1",
            "data.check_images=none",  # else the check before training finds the file first
            f"output_dir={tmp_path / 'o'}",
            "train.progress=false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (  # after the data check's warnings (tiny val set)
        f"hardmine: error: {data / 'images' / 'train_000002.png'} (image id 2): cannot read image: "
        f"cannot identify image file '{data / 'images' / 'train_000002.png'}'"
    )


def test_train_runs_bootstrapping_rounds_as_rounds_and_not_under_torchrun(
    fast_overrides, monkeypatch, capsys
):
    from hardmine.engine import bootstrap, training
    from hardmine.engine.trainer import TrainResult
    from hardmine.errors import ConfigError

    called = []

    def runner(name):
        def run(cfg, resume=False):
            called.append((name, cfg.mining.rounds, resume))
            return TrainResult(Path(cfg.output_dir), 1, 0.5, 4.0, 100.0, 0, None)

        return run

    monkeypatch.setattr(training, "train", runner("one run"))
    monkeypatch.setattr(bootstrap, "train_rounds", runner("rounds"))
    assert main(["train", *fast_overrides]) == 0
    assert main(["train", *fast_overrides, "mining.rounds=2", "--resume"]) == 0
    assert called == [("one run", 0, False), ("rounds", 2, True)]
    assert "trained 1 iterations: 0.500 s/iter" in capsys.readouterr().out
    monkeypatch.undo()

    with pytest.raises(
        ConfigError, match="mining.rounds=1: bootstrapping rounds are engine.bootstrap.train_rounds"
    ):
        training.train(load_config(None, [*fast_overrides, "mining.rounds=1"]))
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["train", *fast_overrides, "mining.rounds=1"]) == 2
    assert (
        "mining.rounds=1 (bootstrapping) runs in a single process, not under torchrun (WORLD_SIZE=2); "
        "train each round with mining.file instead" in capsys.readouterr().err
    )
