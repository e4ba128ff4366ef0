"""The segmentation task through the detection engine: training with its logs and diagnostics,
exact resume, evaluation (mIoU), class weights for a fresh model, `hardmine eval` and `hardmine
predict` drawing masks; and which task a config or a checkpoint has."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from hardmine.cli import main
from hardmine.config import load_config
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.tasks import DETECTION, SEGMENTATION, task_of, task_of_checkpoint

PRESET = Path(__file__).resolve().parents[2] / "configs" / "segmentation_tiny.yaml"
SEG = ["model.min_size=128", "model.max_size=128", "train.eval_at_end=false"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_the_task_follows_model_arch() -> None:
    assert task_of(load_config(PRESET)) is SEGMENTATION
    assert task_of(load_config(None, ["model.arch=retinanet"])) is DETECTION
    assert SEGMENTATION.masks and not DETECTION.masks
    assert SEGMENTATION.logged_metrics == ("mIoU", "pixel_accuracy")


def test_training_logs_pixel_diagnostics_and_resumes_to_the_same_weights(fast_overrides, tmp_path) -> None:
    base = [*fast_overrides, *SEG, "solver.max_iter=4", "train.checkpoint_period=2", "seg_head.sampler=ohem"]
    training.train(load_config(PRESET, [*base, f"output_dir={tmp_path / 'full'}"]))
    cut = load_config(PRESET, [*base, f"output_dir={tmp_path / 'cut'}", "train.stop_at=2"])
    assert training.train(cut).stopped == "train.stop_at=2"
    resumed = load_config(PRESET, [*base, f"output_dir={tmp_path / 'cut'}"])
    training.train(resumed, resume=True)
    a, b = _weights(tmp_path / "full" / "model_final.pt"), _weights(tmp_path / "cut" / "model_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = list(csv.DictReader((tmp_path / "cut" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    for column in (
        "loss_seg",
        "seg/num_kept",
        "seg/kept_fraction",
        "seg/fg_loss_share",
        "seg/sampler/min_kept",
    ):
        assert rows[-1][column] != "", column
    # batches of 128 x 128 pixels: min_kept = 100000 x 128 x 128 / (512 x 1024) = 3125 per image
    assert float(rows[-1]["seg/sampler/min_kept"]) == 2 * 3125


def test_evaluation_during_and_after_training_gives_miou(fast_overrides, tmp_path) -> None:
    cfg = load_config(
        PRESET, [*fast_overrides, *SEG, "solver.max_iter=2", "train.eval_period=1", "train.eval_at_end=true"]
    )
    result = training.train(cfg)
    assert result.metrics is not None
    assert set(result.metrics) >= {"mIoU", "pixel_accuracy", "IoU/background", "IoU/red_circle"}
    assert 0.0 <= result.metrics["mIoU"] <= 1.0
    out = Path(cfg.output_dir)
    history = json.loads((out / "eval_history.json").read_text())["evaluations"]
    assert [e["iteration"] for e in history] == [1, 2]
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert rows[0]["eval/mIoU"] != "" and rows[0]["eval/pixel_accuracy"] != ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(result.metrics["mIoU"]) and metrics["iterations"] == 2


def test_class_balanced_weights_come_from_the_training_masks(fast_overrides, synth_dir) -> None:
    from hardmine.data.loading import load_dataset
    from hardmine.data.masks import load_mask
    from hardmine.segmentation.pixel_losses import count_class_pixels, median_frequency_weights

    cfg = load_config(PRESET, [*fast_overrides, *SEG, "solver.max_iter=1", "seg_head.loss=class_balanced"])
    training.train(cfg)
    index = load_dataset(synth_dir / "train.json", masks=True)
    counts = count_class_pixels((load_mask(r, index) for r in index.records), index.num_classes)
    saved = _weights(Path(cfg.output_dir) / "model_final.pt")["criterion.loss.class_weight"]
    torch.testing.assert_close(saved, median_frequency_weights(counts))


def test_eval_and_predict_commands_score_and_draw_masks(fast_overrides, synth_dir, tmp_path, capsys) -> None:
    cfg = load_config(PRESET, [*fast_overrides, *SEG, "solver.max_iter=1"])
    training.train(cfg)
    checkpoint = Path(cfg.output_dir) / "model_final.pt"
    assert task_of_checkpoint(checkpoint) is SEGMENTATION
    assert main(["eval", str(checkpoint), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "mIoU" in metrics and metrics["checkpoint"] == str(checkpoint)
    assert "mIoU" in capsys.readouterr().out

    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "pred"), "--max-images", "2"]) == 0
    drawings = sorted((tmp_path / "pred").glob("*.png"))
    masks = sorted((tmp_path / "pred" / "masks").glob("*.png"))
    assert len(drawings) == 2 and [m.name for m in masks] == [d.name for d in drawings]
    with Image.open(masks[0]) as mask, Image.open(drawings[0]) as drawing:
        assert mask.mode == "P"
        # image, prediction and ground truth side by side (4 px gaps), a caption strip above
        assert drawing.width == 3 * mask.width + 8 and drawing.height == mask.height + 14
    assert "masks drawn" in capsys.readouterr().out
    image = sorted((synth_dir / "images").glob("val_*.png"))[0]
    assert main(["predict", str(checkpoint), "--images", str(image), "--out", str(tmp_path / "loose")]) == 0
    with Image.open(tmp_path / "loose" / image.name) as drawing, Image.open(image) as original:
        assert drawing.width == 2 * original.width + 4  # image and prediction: no ground truth

    # the detectors' own commands refuse it, naming the model
    for command in (
        ["mine", str(checkpoint), "--out", str(tmp_path / "m.json")],
        ["gallery", str(checkpoint), "--image", "0"],
    ):
        assert main(command) == 2
        assert "holds a segmentation model (model.arch=fcn)" in capsys.readouterr().err


def test_mixed_precision_trains_the_segmentation_model(fast_overrides) -> None:
    cfg = load_config(
        PRESET, [*fast_overrides, *SEG, "solver.max_iter=2", "solver.amp=bf16", "seg_head.sampler=topk"]
    )
    result = training.train(cfg)
    assert result.skipped_steps == 0
    rows = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert all(torch.isfinite(torch.tensor(float(r["loss_seg"]))) for r in rows)
    assert float(rows[-1]["seg/kept_fraction"]) == pytest.approx(0.2, abs=1e-3)


def test_a_bad_mask_stops_training_naming_its_file_or_is_skipped(synth_dir, fast_overrides, tmp_path) -> None:
    from hardmine.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    Image.new("L", (10, 10)).save(data / "masks" / "train_000001.png")  # another size than its image
    overrides = [*fast_overrides, *SEG, "solver.max_iter=1", f"data.train={data / 'train.json'}"]
    with pytest.raises(DataError) as info:
        training.train(load_config(PRESET, overrides))
    assert "masks/train_000001.png" in str(info.value) and "mask is 10x10 but the image is" in str(info.value)
    result = training.train(load_config(PRESET, [*overrides, "data.on_invalid=skip"]))
    assert result.iterations == 1
