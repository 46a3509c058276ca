"""The detection training loss: task-aligned assignment of labelled boxes to a dense detector's
locations, then a classification loss towards the alignment and a box loss on the positives.

Each labelled box takes the ``TOPK`` predictions that align best with it (TOOD / YOLOv8's
task-aligned assigner: the metric is ``score^ALPHA x IoU^BETA`` for the box's class) among those
whose predicted centre lies inside it (all predictions when none does). A prediction claimed by
several boxes keeps the one it overlaps most. A positive's class target is its alignment,
normalised so that each box's best positive reaches that box's best IoU; every other class and
location has target 0 (binary cross-entropy, summed and divided by the targets' total). Positives
add GIoU and L1 box losses (each side's L1 relative to the labelled box's width or height),
weighted by the same targets.
Assignment runs on detached predictions, so it only chooses; the losses carry the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOPK = 10
ALPHA = 1.0
BETA = 6.0
BOX_WEIGHT = 2.0
L1_WEIGHT = 1.0


def assign(
    boxes: torch.Tensor, scores: torch.Tensor, truth: torch.Tensor, topk: int = TOPK
) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image: each prediction's labelled box (index, -1 for background) and its soft class
    target (its normalised alignment). ``boxes`` A x 4, ``scores`` A x C (probabilities), ``truth``
    G x 5 (no padding rows)."""
    from torchvision.ops import box_iou

    count = boxes.shape[0]
    owner = torch.full((count,), -1, dtype=torch.long, device=boxes.device)
    target = torch.zeros(count, device=boxes.device)
    if truth.shape[0] == 0:
        return owner, target
    iou = box_iou(truth[:, :4], boxes).clamp_min(0)  # G x A
    cls = truth[:, 4].long()
    align = scores[:, cls].T.clamp_min(1e-9) ** ALPHA * iou**BETA  # G x A
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (
        (centre[None, :, 0] > truth[:, None, 0])
        & (centre[None, :, 0] < truth[:, None, 2])
        & (centre[None, :, 1] > truth[:, None, 1])
        & (centre[None, :, 1] < truth[:, None, 3])
    )
    inside |= ~inside.any(dim=1, keepdim=True)  # a box no predicted centre reaches: every prediction
    ranked = torch.where(inside, align, torch.full_like(align, -1.0))
    k = min(topk, count)
    top = ranked.topk(k, dim=1).indices  # G x k
    chosen = torch.zeros_like(align, dtype=torch.bool).scatter_(1, top, True) & inside
    claimed = chosen.any(dim=0)
    best_box = torch.where(chosen, iou, torch.full_like(iou, -1.0)).argmax(dim=0)  # per prediction
    owner = torch.where(claimed, best_box, owner)
    pos = owner >= 0
    if pos.any():
        a = align[owner[pos], pos.nonzero()[:, 0]]
        o = iou[owner[pos], pos.nonzero()[:, 0]]
        best_align = torch.zeros(truth.shape[0], device=boxes.device).scatter_reduce(
            0, owner[pos], a, reduce="amax", include_self=True
        )
        best_iou = torch.zeros(truth.shape[0], device=boxes.device).scatter_reduce(
            0, owner[pos], o, reduce="amax", include_self=True
        )
        target[pos] = a / best_align[owner[pos]].clamp_min(1e-9) * best_iou[owner[pos]]
    return owner, target


def detection_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch's mean loss: ``outputs`` N x A x (4 + C) (boxes in pixels, class logits),
    ``targets`` N x MAX_BOXES x 5 padded with class -1."""
    from torchvision.ops import generalized_box_iou_loss

    boxes, logits = outputs[..., :4].float(), outputs[..., 4:].float()
    total = outputs.new_zeros(())
    for n in range(outputs.shape[0]):
        truth = targets[n][targets[n][:, 4] >= 0].to(boxes.dtype)
        owner, soft = assign(boxes[n].detach(), logits[n].detach().sigmoid(), truth)
        cls_target = torch.zeros_like(logits[n])
        pos = owner >= 0
        if pos.any():
            cls_target[pos, truth[owner[pos], 4].long()] = soft[pos]
        norm = soft.sum().clamp_min(1.0)
        loss = F.binary_cross_entropy_with_logits(logits[n], cls_target, reduction="sum") / norm
        if pos.any():
            weight = soft[pos]
            matched = truth[owner[pos], :4]
            giou = generalized_box_iou_loss(boxes[n][pos], matched, reduction="none")
            extent = (matched[:, 2:] - matched[:, :2]).clamp_min(1.0).repeat(1, 2)  # w, h, w, h
            l1 = ((boxes[n][pos] - matched).abs() / extent).sum(-1)
            loss = loss + (weight * (BOX_WEIGHT * giou + L1_WEIGHT * l1)).sum() / norm
        total = total + loss
    return total / outputs.shape[0]
