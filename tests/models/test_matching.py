"""Matching candidates to the ground truth: what the samplers see."""

import torch

from hardmine.models.matching import candidates_from_matches, match_boxes


def test_candidates_carry_the_class_and_the_index_of_their_ground_truth():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 31.0], [50.0, 50.0, 60.0, 60.0], [21.0, 21.0, 29.0, 29.0]]
    )
    match = match_boxes(boxes, gt, torch.tensor([3, 1]))
    candidates = candidates_from_matches([match], [boxes])
    assert candidates.gt_index[0].tolist() == [0, 1, 0, 1]  # the empty one: 0, with IoU 0
    assert candidates.gt_labels[0].tolist() == [3, 1, 3, 1]
    torch.testing.assert_close(candidates.ious[0], torch.tensor([0.9, 100 / 110, 0.0, 0.64]))
    assert candidates.boxes[0] is boxes
