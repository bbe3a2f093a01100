"""Region Proposal Network over P2..P6: head, proposal selection and losses.

Shapes: N images, L pyramid levels, a anchors per cell, A anchors in all (A_l on level l, in the
``AnchorGenerator`` order), G ground-truth slots (padded), S sampled anchors per image, K pre-NMS
candidates per image, P post-NMS proposals per image. ``pred_*`` are network outputs, ``gt_*`` targets.

One objectness logit per anchor (sigmoid / binary cross-entropy), so training and inference read the
same channel (the seed paired softmax channels differently in its loss and its inference).

Proposal selection (no gradient): top ``pre_nms_top_n`` logits per level (or jointly over all levels
with ``rpn_per_level_top_n=False``, the seed's way), decode, clip to the image, drop boxes smaller than
``rpn_min_size``, NMS per image and level (per image only in the joint mode; the ``nms`` implementation chosen
at build, ``fpn.model.ops``) as a keep mask, then the best ``post_nms_top_n`` kept boxes per image. The output is
padded: (N, P, 4) boxes with a (N, P) validity mask.
NMS and the post-NMS top-n rank the logits (``rpn_score="logit"``) or, as torchvision does, their float32
sigmoid (``"sigmoid"``): the same order except where close high logits round to one probability, whose ties
NMS then breaks by index.

Losses: anchors are matched to the ground truth (IoU >= rpn_fg_iou or best anchor of an object ->
positive, < rpn_bg_iou -> negative; not positive and mostly inside a crowd region -> ignored),
``rpn_batch_per_image`` are sampled per image with at most ``rpn_positive_fraction`` positives; BCE over
the sampled anchors plus smooth-L1 (beta ``rpn_smooth_l1_beta``) on the positives' deltas, both divided by
the number of sampled anchors in the batch. An image without objects contributes negatives only; its
regression loss is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import RPN_SCORES, Config
from fpn.structures import GroundTruth
from fpn.model.anchors import AnchorGenerator
from fpn.model.box_coder import BoxCoder
from fpn.model.box_ops import batched_iou, boxes_big_enough, clip_boxes
from fpn.model.matcher import Matcher
from fpn.model.ops import Ops
from fpn.model.ops.nms import NMS, ThreadedNMS, best_kept
from fpn.model.sampler import BalancedSampler
from fpn.model.targets import crowd_ioa


class RPNHead(nn.Module):
    """Shared over levels: 3x3 conv + ReLU, then 1x1 convs to a logits and 4a deltas per cell."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for m in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """[(N, C, H_l, W_l)] -> pred_logits (N, A), pred_deltas (N, A, 4), in anchor order."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            o = self.objectness(t)  # (N, a, H, W)
            n, a, h, w = o.shape
            logits.append(o.permute(0, 2, 3, 1).reshape(n, h * w * a))  # (N, H, W, a) -> (N, H*W*a)
            d = self.deltas(t).view(n, a, 4, h, w)  # (N, a*4, H, W) -> (N, a, 4, H, W)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))  # (N, H, W, a, 4) -> (N, H*W*a, 4)
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    SCORES = RPN_SCORES  # what NMS and the post-NMS top-n rank (``score``)

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        matcher: Matcher,
        sampler: BalancedSampler,
        pre_nms_top_n: tuple[int, int],  # (train, test)
        post_nms_top_n: tuple[int, int],  # (train, test)
        per_level_top_n: bool = True,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        smooth_l1_beta: float = 1.0 / 9.0,
        nms: NMS | None = None,  # fpn.model.ops.nms interface; default: threads per group (the CPU's)
        score: str = "logit",
        stable_sort: bool = True,  # fpn.model.ops.nms.best_kept
    ):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.per_level_top_n = per_level_top_n
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.nms = nms if nms is not None else ThreadedNMS()
        self.stable_sort = stable_sort
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        self.score = score

    def forward(
        self, features: list[Tensor], image_sizes: Tensor, gt: GroundTruth | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """features P2..P6, image_sizes (N, 2) float (h, w), input_size (H, W) of the padded batch (needed by
        anchors with ``strides_from_input``) -> (proposals (N, P, 4), valid (N, P), losses {"rpn_cls",
        "rpn_box"} when ``gt`` is given, else {})."""
        anchors, level_counts = self.anchor_generator(
            [tuple(f.shape[-2:]) for f in features], features[0].device, input_size
        )
        pred_logits, pred_deltas = self.head(features)
        proposals, valid = self.select_proposals(
            anchors, level_counts, pred_logits.detach(), pred_deltas.detach(), image_sizes
        )
        losses = {} if gt is None else self.losses(anchors, pred_logits, pred_deltas, gt)
        return proposals, valid, losses

    @torch.no_grad()
    def select_proposals(
        self, anchors: Tensor, level_counts: list[int], pred_logits: Tensor, pred_deltas: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """anchors (A, 4), pred_logits (N, A), pred_deltas (N, A, 4) -> (N, P, 4) boxes, (N, P) valid."""
        n, num_anchors = pred_logits.shape
        pre_n = self.pre_nms_top_n[0 if self.training else 1]
        post_n = self.post_nms_top_n[0 if self.training else 1]
        logits = pred_logits.float()
        if self.per_level_top_n:
            scores, index, sizes = [], [], []
            start = 0
            for count in level_counts:
                k = torch.sym_min(pre_n, count)  # sym_min: counts are symbolic in torch.export
                s, i = logits[:, start:start + count].topk(k, dim=1)  # (N, k_l) best of this level
                scores.append(s)
                index.append(i + start)
                sizes.append(k)
                start += count
            scores, index = torch.cat(scores, dim=1), torch.cat(index, dim=1)  # (N, K)
            group_sizes = sizes  # NMS groups: the levels of each image
        else:
            scores, index = logits.topk(torch.sym_min(pre_n, num_anchors), dim=1)  # (N, K) jointly over levels
            group_sizes = [index.shape[1]]  # NMS per image, across levels (the seed)
        if self.score == "sigmoid":
            scores = scores.sigmoid()

        k = index.shape[1]
        deltas = pred_deltas.gather(1, index.unsqueeze(2).expand(n, k, 4))  # (N, K, 4)
        boxes = clip_boxes(self.box_coder.decode(deltas, anchors[index]), image_sizes)  # (N, K, 4)
        ok = boxes_big_enough(boxes, self.min_size) & torch.isfinite(scores)  # (N, K)
        keep = self.nms(boxes, scores, ok, group_sizes, self.nms_thresh, image_sizes.max())  # boxes are clipped
        best, valid = best_kept(scores, keep, post_n, self.stable_sort)  # (N, P) each
        proposals = boxes.gather(1, best.unsqueeze(2).expand(n, post_n, 4))  # (N, P, 4)
        return torch.where(valid.unsqueeze(2), proposals, 0.0), valid

    def label_anchors(self, anchors: Tensor, gt: GroundTruth) -> tuple[Tensor, Tensor]:
        """anchors (A, 4) -> (matched (N, A) ground-truth index, labels (N, A) in {1, 0, -1})."""
        return self.matcher(batched_iou(gt.boxes, anchors), gt.valid, crowd_ioa(gt, anchors))  # IoU (N, G, A)

    def losses(self, anchors: Tensor, pred_logits: Tensor, pred_deltas: Tensor, gt: GroundTruth) -> dict[str, Tensor]:
        """anchors (A, 4), pred_logits (N, A), pred_deltas (N, A, 4) -> {"rpn_cls", "rpn_box"} fp32 scalars."""
        with torch.no_grad():
            matched, labels = self.label_anchors(anchors, gt)  # (N, A) each
            sample = self.sampler(labels)  # (N, S)
            idx, is_pos, valid = sample.index, sample.is_pos, sample.valid
            n, s = idx.shape
            sampled_anchors = anchors[idx]  # (N, S, 4)
            gt_boxes = gt.boxes.gather(1, matched.gather(1, idx).unsqueeze(2).expand(n, s, 4))  # (N, S, 4)
            # off the positives the target is the anchor itself: zero deltas, always finite
            gt_boxes = torch.where(is_pos.unsqueeze(2), gt_boxes, sampled_anchors)
            gt_deltas = self.box_coder.encode(sampled_anchors, gt_boxes)  # (N, S, 4)
            normalizer = valid.sum().clamp(min=1).float()

        pred_logits = pred_logits.gather(1, idx).float()  # (N, S)
        pred_deltas = pred_deltas.gather(1, idx.unsqueeze(2).expand(n, s, 4)).float()  # (N, S, 4)
        cls = F.binary_cross_entropy_with_logits(pred_logits, is_pos.float(), reduction="none")
        box = F.smooth_l1_loss(pred_deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="none").sum(dim=2)
        zero = torch.zeros((), device=cls.device)
        return {
            "rpn_cls": torch.where(valid, cls, zero).sum() / normalizer,
            "rpn_box": torch.where(is_pos, box, zero).sum() / normalizer,
        }


def build_rpn(cfg: Config, in_channels: int, ops: Ops) -> RegionProposalNetwork:
    m = cfg.model
    strides = (4, 8, 16, 32, 64)
    m.validate()
    anchors = AnchorGenerator(m.anchor_sizes, m.anchor_ratios, strides, m.anchor_round, m.anchor_strides_from_input,
                              cache=ops.cache_anchors)
    return RegionProposalNetwork(
        head=RPNHead(in_channels, m.rpn_channels, anchors.num_anchors_per_cell),
        anchor_generator=anchors,
        matcher=Matcher(m.rpn_fg_iou, m.rpn_bg_iou, 0.0, allow_low_quality=True, crowd_thresh=m.crowd_ioa),
        sampler=BalancedSampler(m.rpn_batch_per_image, m.rpn_positive_fraction),
        pre_nms_top_n=(m.rpn_pre_nms_top_n_train, m.rpn_pre_nms_top_n_test),
        post_nms_top_n=(m.rpn_post_nms_top_n_train, m.rpn_post_nms_top_n_test),
        per_level_top_n=m.rpn_per_level_top_n,
        nms_thresh=m.rpn_nms_thresh,
        min_size=m.rpn_min_size,
        smooth_l1_beta=m.rpn_smooth_l1_beta,
        score=m.rpn_score,
        nms=ops.proposal_nms,
        stable_sort=ops.stable_sort,
    )
