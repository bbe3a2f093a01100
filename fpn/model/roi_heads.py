"""RoI heads: multi-scale RoIAlign on P2..P5, a two-FC box head, its losses, and detections.

Shapes: N images, P proposals per image (padded, with a validity mask), G ground-truth slots
(padded), S sampled RoIs per image, R = N*S (training) or N*P (inference) RoIs pooled, C foreground
classes (C+1 scores with background 0), K regression outputs per RoI (C+1, or 1 class-agnostic).
``pred_*`` are network outputs, ``gt_*`` targets.

Training: the ground-truth boxes join the proposals (so every object has a perfect RoI from the
first iteration); candidates are matched (IoU >= roi_fg_iou -> its object's class, IoU in
[roi_bg_iou_lo, roi_bg_iou_hi) -> background, else ignored; not foreground and mostly inside a crowd
region -> ignored) and ``roi_batch_per_image`` are sampled
per image with at most ``roi_positive_fraction`` foreground. Only the sampled RoIs are pooled.
Losses: cross-entropy over the sampled RoIs + smooth-L1 (beta ``rcnn_smooth_l1_beta``) on the
foreground RoIs' deltas of their ground-truth class, both divided by the number of sampled RoIs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import Config
from fpn.structures import GroundTruth
from fpn.model.box_coder import BoxCoder
from fpn.model.box_ops import batched_iou
from fpn.model.level_mapper import LevelMapper
from fpn.model.matcher import IGNORE, Matcher
from fpn.model.ops import Ops
from fpn.model.ops.roi_pool import per_level_roi_align
from fpn.model.postprocess import PostProcessor, SoftNMSPostProcessor, split_by_image
from fpn.model.sampler import BalancedSampler
from fpn.model.targets import crowd_ioa


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign of each RoI on the level ``LevelMapper`` picks; ``aligned=True`` (continuous pixel boxes,
    torchvision's half-pixel shift; the default) or ``False`` (torchvision's detection models: no half-pixel
    shift, sides of at least 1 feature pixel). ``pool``: the multi-level RoIAlign (``fpn.model.ops.roi_pool``
    interface), chosen at build."""

    def __init__(
        self, strides: tuple[int, ...], output_size: int, sampling_ratio: int, mapper: LevelMapper,
        pool: Callable = per_level_roi_align, aligned: bool = True,
    ):
        super().__init__()
        self.scales = [1.0 / s for s in strides]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.mapper = mapper
        self.pool = pool
        self.aligned = aligned

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        """features P2..P5, boxes (N, B, 4) network-input pixels -> (N*B, C, s, s), image-major."""
        n, b, _ = boxes.shape
        image = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(b, output_size=n * b)
        rois = torch.cat((image.unsqueeze(1), boxes.reshape(n * b, 4)), dim=1)  # (N*B, 5): image, x1, y1, x2, y2
        level = self.mapper(rois[:, 1:]) - self.mapper.min_level  # (R,) index into features
        return self.pool(features, rois, level, self.scales, self.output_size, self.sampling_ratio, self.aligned)


class BoxHead(nn.Module):
    """Two FC layers + ReLU, then class logits (C+1) and box deltas (K*4)."""

    def __init__(self, in_features: int, fc_dim: int, num_classes: int, class_agnostic: bool):
        super().__init__()
        self.fc1 = nn.Linear(in_features, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes)
        self.num_reg = 1 if class_agnostic else num_classes
        self.bbox_pred = nn.Linear(fc_dim, 4 * self.num_reg)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C_feat, s, s) -> pred_class_logits (R, C+1), pred_deltas (R, K, 4)."""
        # fc1 reads each RoI's bins in (y, x, channel) order: a free view of the sparse pooler's output
        # (channels-last strides); torchvision's contiguous output is copied once (as (channel, y, x) order
        # would copy the sparse one)
        x = F.relu(self.fc1(pooled.permute(0, 2, 3, 1).flatten(1)))  # (R, s*s*C_feat) -> (R, fc_dim)
        x = F.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x).view(-1, self.num_reg, 4)  # (R, K*4) -> (R, K, 4)


class RoIHeads(nn.Module):
    def __init__(
        self, pooler: MultiScaleRoIAlign, box_head: BoxHead, matcher: Matcher, sampler: BalancedSampler,
        box_coder: BoxCoder, postprocessor: PostProcessor, smooth_l1_beta: float = 1.0,
    ):
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = box_coder
        self.postprocessor = postprocessor
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self, features: list[Tensor], proposals: Tensor, proposal_valid: Tensor, image_sizes: Tensor,
        gt: GroundTruth | None = None, original_sizes: Tensor | None = None,
    ):
        """features P2..P5, proposals (N, P, 4) + valid (N, P), image_sizes (N, 2) (h, w).
        Training (``gt`` given): {"rcnn_cls", "rcnn_box"}; else a list of N detection dicts."""
        if gt is not None:
            return self.losses(features, proposals, proposal_valid, gt)
        detections = self.detect(features, proposals, proposal_valid, image_sizes, original_sizes)
        return split_by_image(*detections, proposals.shape[0])

    def detect(
        self, features: list[Tensor], proposals: Tensor, proposal_valid: Tensor, image_sizes: Tensor,
        original_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inference: the flat detections of ``PostProcessor`` (boxes, scores, labels, image index)."""
        return self.postprocessor(*self._predict(features, proposals), proposals, proposal_valid, image_sizes,
                                  original_sizes)  # fmt: skip

    def detect_padded(
        self, features: list[Tensor], proposals: Tensor, proposal_valid: Tensor, image_sizes: Tensor,
        original_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inference as fixed-shape tables (``PostProcessor.padded``): boxes (N, D, 4), scores, labels, found (N, D)."""
        return self.postprocessor.padded(*self._predict(features, proposals), proposals, proposal_valid, image_sizes,
                                         original_sizes)  # fmt: skip

    def _predict(self, features: list[Tensor], proposals: Tensor) -> tuple[Tensor, Tensor]:
        """The box head on every proposal: class logits (N, P, C+1) and box deltas (N, P, K, 4)."""
        n, p, _ = proposals.shape
        pred_class_logits, pred_deltas = self.box_head(self.pooler(features, proposals))
        return (pred_class_logits.view(n, p, -1),  # (N*P, C+1) -> (N, P, C+1)
                pred_deltas.view(n, p, -1, 4))  # (N*P, K, 4) -> (N, P, K, 4)  # fmt: skip

    def label_candidates(self, proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth) -> tuple[Tensor, Tensor, Tensor]:
        """The ground truth joins the proposals -> (candidates (N, P+G, 4), matched (N, P+G) ground-truth
        index, labels (N, P+G) in {1, 0, -1}; padding slots are -1)."""
        candidates = torch.cat((proposals, gt.boxes), dim=1)
        candidate_valid = torch.cat((proposal_valid, gt.valid), dim=1)
        # IoU (N, G, P+G); candidates mostly inside a crowd region are ignored
        matched, labels = self.matcher(batched_iou(gt.boxes, candidates), gt.valid, crowd_ioa(gt, candidates))
        labels = torch.where(candidate_valid, labels, torch.full_like(labels, IGNORE))
        return candidates, matched, labels

    def losses(
        self, features: list[Tensor], proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth
    ) -> dict[str, Tensor]:
        """-> {"rcnn_cls", "rcnn_box"} fp32 scalars over the sampled RoIs."""
        with torch.no_grad():
            candidates, matched, labels = self.label_candidates(proposals, proposal_valid, gt)  # (N, P+G, ...)
            sample = self.sampler(labels)  # (N, S)
            idx, is_pos, valid = sample.index, sample.is_pos, sample.valid
            n, s = idx.shape
            rois = candidates.gather(1, idx.unsqueeze(2).expand(n, s, 4))  # (N, S, 4)
            gt_index = matched.gather(1, idx)  # (N, S)
            gt_classes = torch.where(is_pos, gt.labels.gather(1, gt_index), torch.zeros_like(gt_index))  # (N, S)
            gt_boxes = gt.boxes.gather(1, gt_index.unsqueeze(2).expand(n, s, 4))  # (N, S, 4)
            # background RoIs regress to themselves: zero, finite targets (masked out anyway)
            gt_boxes = torch.where(is_pos.unsqueeze(2), gt_boxes, rois)
            gt_deltas = self.box_coder.encode(rois, gt_boxes).view(n * s, 4)  # (N, S, 4) -> (N*S, 4)
            gt_classes, is_pos, valid = gt_classes.view(n * s), is_pos.view(n * s), valid.view(n * s)
            normalizer = valid.sum().clamp(min=1).float()

        pred_class_logits, pred_deltas = self.box_head(self.pooler(features, rois))  # (N*S, C+1), (N*S, K, 4)
        cls = F.cross_entropy(pred_class_logits.float(), gt_classes, reduction="none")  # (N*S,)
        # deltas of each RoI's ground-truth class (row 0 when class-agnostic): (N*S, K, 4) -> (N*S, 4)
        reg_index = gt_classes if pred_deltas.shape[1] > 1 else torch.zeros_like(gt_classes)
        pred_deltas = pred_deltas.gather(1, reg_index.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1).float()
        box = F.smooth_l1_loss(pred_deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="none").sum(dim=1)
        zero = torch.zeros((), device=cls.device)
        return {
            "rcnn_cls": torch.where(valid, cls, zero).sum() / normalizer,
            "rcnn_box": torch.where(is_pos, box, zero).sum() / normalizer,
        }


def build_roi_heads(cfg: Config, in_channels: int, num_classes: int, ops: Ops) -> RoIHeads:
    m = cfg.model
    cfg.validate()
    mapper = LevelMapper(m.roi_canonical_size, m.roi_canonical_level, min_level=2, max_level=5,
                         eps_in_log=m.roi_level_eps_in_log)
    box_coder = BoxCoder(m.bbox_reg_weights)
    if m.soft_nms:
        postprocessor = SoftNMSPostProcessor(box_coder, m.score_thresh, m.nms_thresh, m.detections_per_image,
                                             m.soft_nms_method, m.soft_nms_sigma, m.soft_nms_min_score)  # fmt: skip
    else:
        postprocessor = PostProcessor(box_coder, m.score_thresh, m.nms_thresh, m.detections_per_image,
                                      ops.detection_nms, ops.stable_sort)  # fmt: skip
    return RoIHeads(
        pooler=MultiScaleRoIAlign((4, 8, 16, 32), m.pool_size, m.pool_sampling_ratio, mapper, pool=ops.pool,
                                  aligned=m.pool_aligned),
        box_head=BoxHead(in_channels * m.pool_size**2, m.fc_dim, num_classes, m.class_agnostic),
        matcher=Matcher(
            m.roi_fg_iou, m.roi_bg_iou_hi, m.roi_bg_iou_lo, allow_low_quality=False, crowd_thresh=m.crowd_ioa
        ),
        sampler=BalancedSampler(m.roi_batch_per_image, m.roi_positive_fraction),
        box_coder=box_coder,
        postprocessor=postprocessor,
        smooth_l1_beta=m.rcnn_smooth_l1_beta,
    )
