"""The comparison's gallery: samplers that keep every candidate (focal loss) are shown by their
highest-loss candidates, which needs the losses recorded although the sampler does not ask for them;
selecting samplers show their own selection; every method is drawn on the same image."""

from pathlib import Path

import torch
from PIL import Image

from hardmine.config import load_config
from hardmine.data.dataset import DetectionDataset
from hardmine.data.sources import resolve_split
from hardmine.engine.checkpoint import save_checkpoint
from hardmine.models.build import build_model
from hardmine.report.gallery import build_head_sampler, record_selection
from hardmine.report.hard_examples import pick_image, render_example

SMALL = [
    "model.min_size=192",
    "model.max_size=192",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
]


def saved_model(tmp_path: Path, synth_dir: Path, *overrides: str) -> tuple[Path, object, object]:
    cfg = load_config(
        None,
        [*SMALL, f"data.train={synth_dir / 'train.json'}", f"data.val={synth_dir / 'val.json'}", *overrides],
    )
    index = resolve_split(cfg.data, "train")
    torch.manual_seed(0)
    model = build_model(cfg, index.num_classes).eval()
    path = save_checkpoint(
        tmp_path / "model_final.pt",
        {
            "iteration": 0,
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "categories": [{"id": c.id, "name": c.name, "label": c.label} for c in index.categories],
        },
    )
    return path, cfg, index


def test_highest_loss_candidates_are_the_eligible_ones_ranked_by_the_heads_own_loss(tmp_path, synth_dir):
    _, cfg, index = saved_model(tmp_path, synth_dir, "model.arch=retinanet")
    model = build_model(cfg, index.num_classes).eval()
    record = pick_image(index, None)
    image, target = DetectionDataset(index, train=False)[index.records.index(record)]
    sampler = build_head_sampler(cfg, "dense_head", "none")
    assert not sampler.needs_scores
    plain = record_selection(model, image, target, "dense_head", sampler)
    assert plain.call.losses is None  # the head does not score for a sampler that keeps everything
    scored = record_selection(model, image, target, "dense_head", sampler, score_all=True)
    assert torch.equal(scored.result.indices, plain.result.indices)  # same selection: all eligible
    top = scored.highest_loss(10)
    loss = scored.call.losses[0].cls
    assert len(top) == 10 and scored.eligible[top].all()
    assert loss[top].tolist() == sorted(loss[top].tolist(), reverse=True)
    assert loss[top[-1]] >= loss[scored.eligible].topk(10).values.min()


def test_examples_are_drawn_on_the_same_image_with_captions_saying_what_is_shown(tmp_path, synth_dir):
    retina, _, index = saved_model(tmp_path / "r", synth_dir, "model.arch=retinanet")
    faster, _, _ = saved_model(tmp_path / "f", synth_dir, "roi_head.sampler=ohem")
    busiest = max(len(r.boxes) for r in index.records)
    focal, image_id = render_example("focal", retina, None, 12, tmp_path / "g" / "focal.png")
    shown = pick_image(index, str(image_id))
    assert len(shown.boxes) == busiest
    assert (
        "sampler `none` trains on all" in focal.caption
        and "drawn are the 12 with the highest" in focal.caption
    )
    ohem, same_id = render_example("ohem", faster, str(image_id), 12, tmp_path / "g" / "ohem.png")
    assert same_id == image_id and "sampler `ohem` selects" in ohem.caption
    for example in (focal, ohem):
        with Image.open(example.path) as picture:
            assert picture.format == "PNG" and picture.size == (shown.width, shown.height)
