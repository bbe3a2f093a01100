"""The detector: ResNet backbone -> FPN neck -> RPN -> RoI heads, and ``build_detector``."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import Config
from fpn.structures import GroundTruth, pad_targets, to_device
from fpn.errors import UserError
from fpn.model.backbone import ResNetBackbone, build_backbone, fold_batchnorm, uses_caffe_weights
from fpn.model.fpn_neck import FPNNeck
from fpn.model.ops import Ops, choose_ops
from fpn.model.postprocess import SoftNMSPostProcessor, compact, split_by_image
from fpn.model.roi_heads import RoIHeads, build_roi_heads
from fpn.model.rpn import RegionProposalNetwork, build_rpn

Size = Sequence[int]  # (h, w)


class FPNDetector(nn.Module):
    """Faster R-CNN with a Feature Pyramid Network.

    Contract (the only entry point is ``forward``):

    * training mode: ``model(images, image_sizes, targets)`` -> ``{"rpn_cls", "rpn_box", "rcnn_cls",
      "rcnn_box"}``, scalar float32 losses (sum them for the total loss). ``targets``: one dict per
      image, {"boxes": float (K, 4) continuous xyxy in network-input pixels, "labels": int64 (K,) in
      1..C}; K may be 0 (then that image only teaches "background" and its box losses are 0); or the same
      already padded, a ``fpn.structures.GroundTruth`` (what the loader's batches carry as ``batch.gt``).
    * eval mode: ``model(images, image_sizes, original_sizes=None)`` -> one dict per image
      {"boxes": float32 (D, 4) xyxy, "scores": (D,), "labels": int64 (D,) in 1..C}, sorted by score.
      Boxes are in network-input pixels, or in original-image pixels when ``original_sizes`` (list of
      (h, w)) is given: scaled by original / input size per axis and clipped to the original image.
      ``original_sizes`` is keyword-only.

    ``images``: a zero-padded (N, 3, H, W) batch (H, W multiples of 32 are best) with ``image_sizes`` a list of (h,
    w) per image before padding (None: the full H, W; or an (N, 2) tensor, never read on the host); or a list of 3 x
    h x w tensors, padded here to a multiple of ``cfg.data.size_divisible`` (``image_sizes`` may then be None).
    Inputs are already normalised (``cfg.data.normalization``).

    Works on CPU and CUDA, in float32 and under ``torch.autocast`` (bf16/fp16): logits and deltas
    are cast to float32 before losses, box decoding and NMS.

    ``channels_last``: convolutions run on channels-last (NHWC) tensors: weights are stored that way and
    the input batch is converted in ``forward``. Same arithmetic up to rounding; on the CPU oneDNN's
    convolutions and the stem's max-pool are much faster in that layout (docs/PERFORMANCE.md).

    No host syncs on CUDA (with Triton) in a training step; an inference batch through ``forward`` reads its
    results' counts (two small reads), through ``detect_to_host`` none but the copy of its fixed-shape tables. The
    small host-to-device copies (image sizes, padded targets) are non-blocking from pinned memory. Details and the
    CPU fallbacks: docs/ARCHITECTURE.md, "Conventions".

    ``compile_backend``: "" or a torch.compile backend for the training forward + losses (``losses``) and the
    inference batch (``detect_padded``, which ``detect`` compacts), one graph each (``compile_fullgraph``: no graph
    breaks allowed, where the chosen ops allow it: ``fpn.model.ops.choose_ops``); the compiled functions are
    the model's own, made here and again for each copy (a deep copy or a pickle never carries it).
    ``choices``: the keyword arguments of ``fpn.model.ops.choose_ops`` the model was built with (``for_inference``
    chooses its copy's ops with them).
    """

    def __init__(self, backbone: ResNetBackbone, neck: FPNNeck, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 size_divisible: int = 32, channels_last: bool = False, compile_backend: str = "",
                 choices: dict | None = None, compile_fullgraph: bool = True):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.size_divisible = size_divisible
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=torch.channels_last)  # 4-D weights; a later .to(device) keeps the layout
        self.compile_backend, self.compile_fullgraph = compile_backend, compile_fullgraph
        self._compiled = self._compile()
        self.choices = dict(choices or {})

    def _compile(self) -> dict | None:
        # lazy: torch.compile traces on the first call, again for a new input shape (ground-truth slots included;
        # after the second, dynamic sizes), once per mode; a few padded sizes keep that rare
        if not self.compile_backend:
            return None
        options = {"backend": self.compile_backend, "fullgraph": self.compile_fullgraph}
        return {"losses": torch.compile(self._plain_losses, **options),
                "detect": torch.compile(self._plain_detect_padded, **options)}  # fmt: skip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_compiled": None}  # bound to this model: never copied

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._compiled = self._compile()

    def forward(
        self,
        images: Tensor | list[Tensor],
        image_sizes: list[Size] | None = None,
        targets: list[dict[str, Tensor]] | GroundTruth | None = None,
        *,
        original_sizes: list[Size] | None = None,
    ):
        images, image_sizes = self._batch(images, image_sizes)
        sizes = _sizes_tensor(image_sizes, images.device)  # (N, 2) (h, w)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for detections")
            n = targets.boxes.shape[0] if isinstance(targets, GroundTruth) else len(targets)
            if n != images.shape[0]:
                raise ValueError(f"{n} targets for {images.shape[0]} images")
            if isinstance(targets, GroundTruth):  # padded by the loader; already there unless the caller kept it
                gt = targets.to(images.device, non_blocking=True)
            else:
                gt = pad_targets(targets, images.device)
            return self.losses(images, sizes, gt)
        original = None if original_sizes is None else _sizes_tensor(original_sizes, images.device)
        return split_by_image(*self.detect(images, sizes, original), images.shape[0])

    def losses(self, images: Tensor, image_sizes: Tensor, gt: GroundTruth) -> dict[str, Tensor]:
        """Training mode on a padded batch, its sizes (N, 2) float (h, w) and its ground truth, all on the model's
        device: the loss dict of ``forward``. Fixed shapes in, nothing read on the host: what ``torch.compile``
        (fullgraph) and a CUDA graph (``fpn.engine.graphed_step``) hold."""
        if self._compiled is not None:
            return self._compiled["losses"](images, image_sizes, gt)
        return self._plain_losses(images, image_sizes, gt)

    def _plain_losses(self, images: Tensor, image_sizes: Tensor, gt: GroundTruth) -> dict[str, Tensor]:
        features = self.features(images)
        proposals, valid, rpn_losses = self.rpn(features, image_sizes, gt, input_size=images.shape[-2:])
        return {**rpn_losses, **self.roi_heads(features[:4], proposals, valid, image_sizes, gt)}

    @torch.no_grad()
    def detect_to_host(
        self, images: Tensor | list[Tensor], image_sizes: list[Size] | None = None, *,
        original_sizes: list[Size] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Eval mode: ``forward``'s detections per image as CPU tensors (boxes, scores float32; labels int64), all
        of a batch moved in one transfer (``forward`` then ``.cpu()`` on each field would wait for the GPU once per
        tensor)."""
        images, image_sizes = self._batch(images, image_sizes)
        original = None if original_sizes is None else _sizes_tensor(original_sizes, images.device)
        sizes = _sizes_tensor(image_sizes, images.device)
        if isinstance(self.roi_heads.postprocessor, SoftNMSPostProcessor):  # no fixed-shape form
            boxes, scores, labels, image = self.detect(images, sizes, original)
            # (D, 7): box, score, label, image; labels and image indices are exact in float32 (far below 2**24)
            flat = torch.cat((boxes.float(), scores.float()[:, None], labels[:, None].float(),
                              image[:, None].float()), 1).cpu()  # fmt: skip
            boxes, scores, labels, image = flat[:, :4], flat[:, 4], flat[:, 5].long(), flat[:, 6].long()
        else:  # the (N, D) tables come over whole and are compacted on the host: no wait for their count
            boxes, scores, labels, found = self.detect_padded(images, sizes, original)
            # (N, D, 7): box, score, label, found; labels are exact in float32
            table = torch.cat((boxes.float(), scores.float()[..., None], labels[..., None].float(),
                               found[..., None].float()), dim=2).cpu()  # fmt: skip
            image, boxes, scores, labels = compact(table[..., :4], table[..., 4], table[..., 5].long(),
                                                   table[..., 6] > 0)
        return split_by_image(boxes, scores, labels, image, images.shape[0])

    def features(self, images: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> [P2, P3, P4, P5, P6]."""
        images = images.contiguous(memory_format=self.memory_format)
        return self.neck(self.backbone(images))

    def detect(
        self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Eval mode on a padded batch with its sizes as tensors (N, 2) float (h, w): the detections of all
        images flat, boxes (D, 4), scores (D,), labels (D,), image (D,) int64 index of each one's image (grouped
        by image, best first). What ``forward`` splits per image, and what an exported graph computes."""
        if self._compiled is not None and not isinstance(self.roi_heads.postprocessor, SoftNMSPostProcessor):
            image, boxes, scores, labels = compact(*self.detect_padded(images, image_sizes, original_sizes))
            return boxes, scores, labels, image
        features = self.features(images)
        proposals, valid, _ = self.rpn(features, image_sizes, input_size=images.shape[-2:])
        return self.roi_heads.detect(features[:4], proposals, valid, image_sizes, original_sizes)

    def detect_padded(
        self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``detect`` as fixed-shape tables, nothing read on the host (``torch.compile`` fullgraph, CUDA graphs):
        boxes (N, D, 4), scores (N, D), labels (N, D), found (N, D) bool, D = ``detections_per_image``
        (``fpn.model.postprocess.compact`` makes them ``detect``'s output). Not with soft-NMS."""
        if self._compiled is not None:
            return self._compiled["detect"](images, image_sizes, original_sizes)
        return self._plain_detect_padded(images, image_sizes, original_sizes)

    def _plain_detect_padded(self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None):
        features = self.features(images)
        proposals, valid, _ = self.rpn(features, image_sizes, input_size=images.shape[-2:])
        return self.roi_heads.detect_padded(features[:4], proposals, valid, image_sizes, original_sizes)

    def _batch(self, images: Tensor | list[Tensor], image_sizes: list[Size] | Tensor | None) -> tuple[Tensor, list]:
        """A padded (N, 3, H, W) batch and the (h, w) of each image in it (an (N, 2) tensor stays one)."""
        if isinstance(image_sizes, Tensor):  # read nowhere on the host (torch.compile, CUDA graphs)
            if images.dim() != 4 or image_sizes.shape != (images.shape[0], 2):
                raise ValueError(f"images (N, 3, H, W) with image_sizes (N, 2), got shapes {tuple(images.shape)} "
                                 f"and {tuple(image_sizes.shape)}")  # fmt: skip
            return images, image_sizes
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
            if image_sizes is None:
                image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        else:
            if image_sizes is None:
                image_sizes = [tuple(im.shape[-2:]) for im in images]
            d = self.size_divisible
            h = -(-max(im.shape[-2] for im in images) // d) * d  # round up to a multiple of d
            w = -(-max(im.shape[-1] for im in images) // d) * d
            # pad each image at the bottom/right with zeros, (3, h_i, w_i) -> (3, h, w), then stack
            images = torch.stack([F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in images])
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"{len(image_sizes)} image sizes for {images.shape[0]} images")
        return images, [tuple(int(v) for v in s) for s in image_sizes]


def _sizes_tensor(sizes: list[Size] | Tensor, device: torch.device) -> Tensor:
    """(h, w) per image -> (N, 2) float32 on ``device``, copied without a host sync."""
    if isinstance(sizes, Tensor):
        return sizes.to(device=device, dtype=torch.float32)
    return to_device(torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2), device)


def _runtime_choices(cfg: Config) -> dict:
    """How the model computes, not what: the one place that reads these config fields. The keyword arguments of
    ``choose_ops`` (with the pooler's settings it checks them against), plus ``channels_last``."""
    r = cfg.runtime
    return {"pool": r.pool_impl, "nms": r.nms_impl, "fuse_frozen_bn": r.fuse_frozen_bn, "compile": r.compile,
            "channels_last": r.channels_last,
            "sampling_ratio": cfg.model.pool_sampling_ratio, "aligned": cfg.model.pool_aligned}


def build_detector(cfg: Config, num_classes: int, load_pretrained: bool = True, *, device: torch.device | str = "cpu",
                   purpose: str = "train", ops: Ops | None = None) -> FPNDetector:  # fmt: skip
    """The detector ``cfg.model`` describes, for ``num_classes`` classes including background, with the
    implementations (``fpn.model.ops.choose_ops``) for ``device`` and ``purpose`` ("train", "infer", "export");
    ``ops`` overrides that choice (tests). Build it for the device it will run on (``.to(device)`` moves the
    weights, not the choice).

    ``load_pretrained=False`` skips reading ``cfg.model.pretrained`` (use it when a checkpoint is
    loaded right after, e.g. for testing). Configuration mistakes raise ``fpn.errors.UserError``.
    """
    m = cfg.model
    if num_classes < 2:
        raise UserError(f"the model needs at least one object class plus background, got num_classes={num_classes}")
    if load_pretrained:
        _check_normalization(cfg)
    cfg.validate()
    choices = _runtime_choices(cfg)
    channels_last = choices.pop("channels_last")
    if ops is None:
        ops = choose_ops(device, purpose, **choices)
    backbone = build_backbone(cfg, load_weights=load_pretrained, conv_norm=ops.conv_norm)
    neck = FPNNeck(backbone.out_channels, m.fpn_channels)
    return FPNDetector(
        backbone, neck, build_rpn(cfg, m.fpn_channels, ops), build_roi_heads(cfg, m.fpn_channels, num_classes, ops),
        size_divisible=cfg.data.size_divisible, channels_last=channels_last, compile_backend=ops.compile_backend,
        choices=choices, compile_fullgraph=ops.compile_fullgraph,
    )


def for_inference(model: FPNDetector, device: torch.device | str | None = None, purpose: str = "infer") -> FPNDetector:
    """A copy of ``model`` for inference only (``fpn.Detector``, export, ``fpn bench``): eval mode, every
    BatchNorm folded into its convolution (``fold_batchnorm``), channels-last convolutions, and the ops for
    ``device`` (default: where the model's weights are) and ``purpose`` ("infer", or "export" for a traced
    graph). The same detections up to float rounding (tests), faster on a CPU (docs/PERFORMANCE.md). ``fpn test``
    keeps the plain model, so that it prints the training run's numbers."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    ops = choose_ops(device, purpose, **model.choices)
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model.backbone)
    model.rpn.nms = ops.proposal_nms
    model.rpn.anchor_generator.cache = {} if ops.cache_anchors else None
    model.roi_heads.pooler.pool = ops.pool
    model.roi_heads.postprocessor.nms = ops.detection_nms
    model.rpn.stable_sort = model.roi_heads.postprocessor.stable_sort = ops.stable_sort
    model.compile_backend, model.compile_fullgraph = ops.compile_backend, ops.compile_fullgraph
    model._compiled = model._compile()
    model.memory_format = torch.channels_last  # the input batch is converted in forward
    return model.to(memory_format=torch.channels_last)


def _check_normalization(cfg: Config) -> None:
    """Pretrained weights only work on inputs normalised the way they were trained."""
    m, norm = cfg.model, cfg.data.normalization
    if uses_caffe_weights(cfg) and norm != "caffe":
        raise UserError(
            f"model.pretrained={m.pretrained}: caffe-format weights need caffe input normalisation "
            "(--set data.normalization=caffe)"
        )
    if m.pretrained == "imagenet" and norm != "imagenet":
        raise UserError(
            f"model.pretrained=imagenet: torchvision weights need data.normalization=imagenet, not {norm} "
            "(caffe normalisation goes with caffe weights such as resnet101_caffe.pth: --pretrained PATH)"
        )
