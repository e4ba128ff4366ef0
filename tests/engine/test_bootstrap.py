"""End to end: hardmine mine, training on a mined file, bootstrapping rounds, eval with test-time options."""

import json
from pathlib import Path

import pytest
import torch

from hardmine.cli import main
from hardmine.config import load_config
from hardmine.data.loading import load_dataset
from hardmine.engine import bootstrap, training
from hardmine.engine.inference import load_trained, predict_dataset
from hardmine.engine.mining import find_false_positives, read_hard_negatives
from hardmine.models import dense_head, roi_head


def test_mine_then_train_on_the_file_then_evaluate_at_several_scales(
    fast_overrides, synth_dir, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert main(["train", *fast_overrides, "solver.max_iter=2", "train.eval_at_end=false"]) == 0
    ckpt = str(run / "model_final.pt")
    train_json = synth_dir / "train.json"
    mined_path = tmp_path / "hn.json"
    assert main(["mine", ckpt, str(train_json), "--out", str(mined_path), "--score-thresh", "0"]) == 0
    assert "false positives on" in capsys.readouterr().out

    # The file holds exactly the checkpoint's false positives on the training set (to 0.01 px).
    index = load_dataset(train_json)
    _, model, _, device = load_trained(ckpt)
    expected = find_false_positives(index, predict_dataset(model, index, device), 0.0, 0.3)
    mined = read_hard_negatives(mined_path, index)
    assert sorted(mined) == sorted(expected) and mined
    for image_id, regions in expected.items():
        torch.testing.assert_close(mined[image_id].boxes, regions.boxes, atol=0.006, rtol=0)
        assert torch.equal(mined[image_id].labels, regions.labels)
    data = json.loads(mined_path.read_text())
    assert (data["checkpoint"], data["score_thresh"], data["iou_thresh"]) == (ckpt, 0.0, 0.3)

    # Training on it: every image's mined regions reach the RoI head, rescaled with the image.
    seen: dict[int, int] = {}
    real_append = roi_head.append_hard_negatives

    def spy(proposals, targets):
        for t in targets:
            seen[int(t["image_id"])] = int(t["hard_negatives"].shape[0])
        return real_append(proposals, targets)

    monkeypatch.setattr(roi_head, "append_hard_negatives", spy)
    retrain = [*fast_overrides, f"mining.file={mined_path}", "solver.max_iter=3", "train.eval_at_end=false"]
    assert main(["train", *retrain, f"output_dir={tmp_path / 'mined'}"]) == 0
    assert seen and all(count == len(mined.get(image_id, [])) for image_id, count in seen.items())

    # Evaluation with multi-scale + flip testing and iterative box regression.
    out = tmp_path / "ev"
    overrides = ["eval.scales=[160,192]", "eval.hflip=true", "eval.merge=vote", "roi_head.iterative.rounds=1"]
    assert main(["eval", ckpt, *overrides, "--out", str(out)]) == 0
    assert "AP" in json.loads((out / "metrics.json").read_text())


def test_bad_mined_files_and_options_are_named(fast_overrides, tmp_path, capsys):
    bad = tmp_path / "hn.json"
    bad.write_text(
        '{"format": "hardmine-hard-negatives", "version": 1, "images": [{"image_id": 999, "boxes": []}]}'
    )
    assert main(["train", *fast_overrides, f"mining.file={bad}", "solver.max_iter=1"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: images[0]: image id 999 is not in" in err and "Traceback" not in err
    assert main(["train", *fast_overrides, "mining.weight=0"]) == 2
    assert "mining.weight: must be > 0" in capsys.readouterr().err
    assert main(["mine", str(tmp_path / "x.pt"), "--out", str(bad), "--iou-thresh", "2"]) == 2
    assert "--iou-thresh must be in (0, 1]" in capsys.readouterr().err


def test_a_one_stage_detector_up_weights_anchors_on_a_mined_file(
    fast_overrides, synth_dir, tmp_path, monkeypatch
):
    index = load_dataset(synth_dir / "train.json")
    mined_path = tmp_path / "hn.json"
    entries = [{"image_id": r.image_id, "boxes": [[0, 0, 40, 40], [50, 50, 120, 90]]} for r in index.records]
    mined_path.write_text(json.dumps({"format": "hardmine-hard-negatives", "version": 1, "images": entries}))
    factors = []
    real = dense_head.HardNegativeUpweight.factors

    def spy(self, results, anchors, targets):
        out = real(self, results, anchors, targets)
        factors.append(out)
        return out

    monkeypatch.setattr(dense_head.HardNegativeUpweight, "factors", spy)
    cfg = load_config(
        None,
        [
            *fast_overrides,
            "model.arch=retinanet",
            f"mining.file={mined_path}",
            "mining.weight=3",
            "solver.max_iter=1",
            "train.eval_at_end=false",
        ],
    )
    training.train(cfg)
    assert factors and set(torch.cat(factors).unique().tolist()) == {1.0, 3.0}


def test_bootstrapping_rounds_train_mine_and_retrain_in_subfolders(fast_overrides, tmp_path, monkeypatch):
    loaded = []
    real_load = training.load_model_state
    monkeypatch.setattr(
        training, "load_model_state", lambda m, s, where: loaded.append(str(where)) or real_load(m, s, where)
    )
    cfg = load_config(
        None,
        [
            *fast_overrides,
            "solver.max_iter=2",
            "mining.rounds=1",
            "mining.round_iters=1",
            "mining.score_thresh=0",
        ],
    )
    result = bootstrap.train_rounds(cfg)
    out = Path(cfg.output_dir)
    assert result.output_dir == out and result.iterations == 1 and result.metrics is not None
    for name in (
        "round0/model_final.pt",
        "round1/hard_negatives.json",
        "round1/model_final.pt",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    round1 = load_config(out / "round1" / "config.yaml")
    assert round1.mining.file == str(out / "round1" / "hard_negatives.json")
    assert round1.mining.start_from == str(out / "round0" / "model_final.pt") == loaded[0]
    assert (round1.mining.rounds, round1.solver.max_iter) == (0, 1)
    assert (out / "model_final.pt").read_bytes() == (out / "round1" / "model_final.pt").read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mining_rounds"] == 1 and metrics["AP"] == result.metrics["AP"]
    assert load_config(out / "config.yaml").mining.rounds == 1

    # --resume: every round finished with the same config, so nothing trains again.
    def fail(*args, **kwargs):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(bootstrap, "train", fail)
    again = bootstrap.train_rounds(cfg, resume=True)
    assert again.metrics == pytest.approx(result.metrics)
