"""The sampler gallery: the recorded selection is the sampler's own, the model is left unchanged,
candidates are drawn in original image pixels, and bad requests are clear errors (API and CLI)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hardmine.cli import main
from hardmine.config import Config, load_config
from hardmine.data.dataset import DetectionDataset
from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.data.sources import resolve_split
from hardmine.engine.checkpoint import save_checkpoint
from hardmine.engine.proposals import load_proposals, save_proposals
from hardmine.errors import ConfigError, DataError, HardmineError
from hardmine.models.build import build_model
from hardmine.report.gallery import (
    FG_COLOR,
    build_head_sampler,
    check_head,
    find_record,
    render_selection,
)

#: Small images and few proposals: a forward takes well under a second on 2 CPU cores.
SMALL = [
    "model.min_size=192",
    "model.max_size=192",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
]


def make_run(
    tmp_path: Path, synth_dir: Path, *overrides: str
) -> tuple[Path, Config, nn.Module, DatasetIndex]:
    """An untrained model saved as a checkpoint the way training writes one."""
    cfg = load_config(
        None,
        [
            *SMALL,
            f"data.train={synth_dir / 'train.json'}",
            f"data.val={synth_dir / 'val.json'}",
            f"output_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    index = resolve_split(cfg.data, "train")
    torch.manual_seed(0)
    model = build_model(cfg, index.num_classes).eval()
    checkpoint = save_checkpoint(
        tmp_path / "run" / "model_final.pt",
        {
            "iteration": 0,
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "categories": [{"id": c.id, "name": c.name, "label": c.label} for c in index.categories],
        },
    )
    return checkpoint, cfg, model, index


def busiest(index: DatasetIndex) -> ImageRecord:
    """The training image with the most ground-truth boxes."""
    return max(index.records, key=lambda r: len(r.boxes))


@pytest.mark.parametrize(
    ("arch", "head"), [("faster_rcnn", "roi_head"), ("faster_rcnn", "rpn"), ("retinanet", "dense_head")]
)
def test_records_exactly_what_ohem_selects_and_leaves_the_model_unchanged(arch, head, synth_dir, tmp_path):
    _, cfg, model, index = make_run(tmp_path, synth_dir, f"model.arch={arch}")
    record = busiest(index)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    samplers = {name: h.sampler for name, h in model.heads.items()}
    rng = torch.get_rng_state()

    image, selection = render_selection(model, cfg, index, record, head=head)

    image.save(tmp_path / "gallery.png")
    with Image.open(tmp_path / "gallery.png") as png:
        assert png.format == "PNG" and png.size == (record.width, record.height)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: h.sampler for name, h in model.heads.items()} == samplers
    assert torch.equal(torch.get_rng_state(), rng)

    call = selection.call
    assert selection.sampler == "ohem" and call.losses is not None
    fresh = build_head_sampler(cfg, head, "ohem")
    (expected,) = fresh(call.candidates, lambda labels: call.losses)
    assert torch.equal(selection.result.indices, expected.indices)
    assert torch.equal(selection.result.labels, expected.labels)
    assert fresh.last_stats == call.stats
    counts = selection.counts
    assert counts["num_fg_selected"] > 0 and counts["num_bg_selected"] > 0
    assert counts["num_fg_selected"] + counts["num_bg_selected"] == call.stats["num_selected"]
    assert counts["num_eligible"] == call.stats["num_candidates"]
    assert selection.boxes.shape == (call.candidates.boxes[0].shape[0], 4)


def test_a_plain_training_forward_would_change_the_state(synth_dir, tmp_path):
    """The unchanged-state check above is not vacuous: the backbone's BatchNorm tracks statistics."""
    _, _, model, index = make_run(tmp_path, synth_dir)
    image, target = DetectionDataset(index, train=False)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        model([image], [target])
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_candidates_are_drawn_in_original_image_pixels(synth_dir, tmp_path):
    _, cfg, model, index = make_run(tmp_path, synth_dir)
    record = busiest(index)
    gt = torch.from_numpy(record.boxes)
    num_gt = len(gt)

    # sampler=none keeps every eligible candidate, so the ground-truth boxes the RoI head adds to
    # its candidates (the last ones) are all selected as foreground.
    image, selection = render_selection(model, cfg, index, record, head="roi_head", sampler="none")

    resized = selection.call.candidates.boxes[0][-num_gt:].cpu()
    assert not torch.allclose(resized, gt, atol=1.0)  # the model works at another scale
    assert torch.allclose(selection.boxes[-num_gt:], gt, atol=1e-3)
    num_candidates = selection.boxes.shape[0]
    assert set(range(num_candidates - num_gt, num_candidates)) <= set(selection.fg_indices.tolist())
    pixels = np.asarray(image)
    x1, _, x2, y2 = gt[gt[:, 3].argmax()].round().int().tolist()  # lowest box: clear of the legend
    assert tuple(pixels[y2, (x1 + x2) // 2]) == FG_COLOR


def test_fast_rcnn_reads_its_proposals_file(synth_dir, tmp_path):
    generator = torch.Generator().manual_seed(0)
    proposals = {}
    for r in resolve_split(
        load_config(None, [f"data.train={synth_dir / 'train.json'}"]).data, "train"
    ).records:
        xy = torch.rand(30, 2, generator=generator) * torch.tensor([r.width - 40, r.height - 40])
        boxes = torch.cat([xy, xy + 8 + 30 * torch.rand(30, 2, generator=generator)], dim=1)
        proposals[r.image_id] = {"boxes": boxes, "scores": torch.ones(30)}
    path = save_proposals(tmp_path / "train_proposals.pt", proposals)
    _, cfg, model, index = make_run(
        tmp_path, synth_dir, "model.arch=fast_rcnn", f"data.train_proposals={path}"
    )
    record = busiest(index)

    image, selection = render_selection(model, cfg, index, record)

    assert selection.head == "roi_head" and image.size == (record.width, record.height)
    expected = load_proposals(path, index)[record.image_id]
    assert torch.allclose(selection.boxes[: len(expected)], expected, atol=1e-3)


def test_clear_errors(synth_dir, tmp_path):
    _, cfg, model, index = make_run(tmp_path, synth_dir, "model.arch=retinanet")
    with pytest.raises(HardmineError, match=r"has no head 'roi_head'; its heads: dense_head$"):
        render_selection(model, cfg, index, busiest(index), head="roi_head")
    with pytest.raises(DataError) as error:
        find_record(index, 9999)
    assert "'9999'" in str(error.value) and str(index.source) in str(error.value)
    with pytest.raises(ConfigError, match="unknown sampler 'ohm'"):
        build_head_sampler(cfg, "dense_head", "ohm")
    _, _, fast_rcnn, _ = make_run(
        tmp_path, synth_dir, "model.arch=fast_rcnn", "data.train_proposals=unread.pt"
    )
    with pytest.raises(HardmineError, match=r"its heads: roi_head$"):
        check_head(fast_rcnn, "rpn")


def test_find_record_by_id_file_name_or_base_name(synth_dir):
    index = resolve_split(load_config(None, [f"data.train={synth_dir / 'train.json'}"]).data, "train")
    record = index.records[2]
    for key in (record.image_id, str(record.image_id), record.file_name, Path(record.file_name).name):
        assert find_record(index, key) is record


def test_cli(synth_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["gallery", "--help"])
    assert "--image ID_OR_FILE_NAME" in capsys.readouterr().out
    checkpoint, _, _, index = make_run(tmp_path, synth_dir)
    name = Path(busiest(index).file_name).name
    assert main(["gallery", str(checkpoint), "--image", name, "--head", "rpn", "--show-all"]) == 0
    out = checkpoint.parent / "gallery" / f"{Path(name).stem}_rpn_ohem.png"
    with Image.open(out) as png:
        assert png.size == (busiest(index).width, busiest(index).height)
    assert "rpn/ohem on image" in capsys.readouterr().out

    assert main(["gallery", str(checkpoint), "--image", "9999", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hardmine: error: no image with id or file name '9999' in ")
    assert str(synth_dir / "train.json") in err and "Traceback" not in err
    assert main(["gallery", str(checkpoint), "--image", name, "--head", "dense_head"]) == 2
    assert "its heads: roi_head, rpn" in capsys.readouterr().err
