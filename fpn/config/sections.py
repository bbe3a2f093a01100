"""The sections of a config, their choices and their checks.

What a model *is* and how it is trained (``data``, ``model``, ``solver``, the RNG ``seed``, the run folder) is
kept apart from how a process *runs* it (``runtime``: device, precision, layout, compile, which implementation of
an operation): a checkpoint's config carries the first; the second comes from the command that runs it.

Each choice is declared once here, as a tuple that ``validate()`` and argparse's ``choices`` both read. Each
section's ``validate()`` checks its own fields (one-line ``UserError`` naming the key, and the flag where one
sets it); ``Config.validate()`` checks them all and the few rules that span sections. Nothing here is read
inside ``forward``: the ``build_*`` functions read the config, once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from fpn.errors import UserError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)

# --- choices, declared once ------------------------------------------------------------------------------------
BACKBONES = ("res18", "res34", "res50", "res101", "res152")
NORMS = ("frozen_bn", "bn", "gn")
NORMALIZATIONS = ("imagenet", "caffe")
RESIZES = ("fast", "torchvision")
RPN_SCORES = ("logit", "sigmoid")
SOFT_NMS_METHODS = ("linear", "gaussian")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
LR_SCALINGS = ("none", "linear")
AMP_MODES = ("auto", "none", "bf16", "fp16")
STOP_SIGNALS = ("TERM", "USR1", "USR2")
# implementations of one operation, the same results (docs/ARCHITECTURE.md, "Ops"); "auto" chooses by device
POOL_IMPLS = ("auto", "torchvision", "by_mask", "sparse", "packed")
NMS_IMPLS = ("auto", "segment", "offset", "mask")


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _choice(value, choices: tuple, key: str) -> tuple[bool, str]:
    return value in choices, f"{key} {value}: choose one of {', '.join(choices)}"


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # pascal_voc | pascal_voc_0712 | synthetic | coco | path to a VOC or COCO-JSON folder
    data_dir: str = "data"
    train_scales: tuple[int, ...] = (600,)  # shorter side; several values = multi-scale training
    test_scale: int = 600
    max_size: int = 1000  # longer side never exceeds this
    test_max_size: int = 0  # the longer-side limit at test time (test, demo, API, export); 0: max_size
    flip: bool = True  # train on each image and its mirror (the ancestor's doubled dataset)
    use_difficult: bool = False  # keep difficult objects in training (the ancestor did)
    normalization: str = "imagenet"  # imagenet (RGB mean/std, 0-1 range) | caffe (BGR, 0-255, mean only)
    size_divisible: int = 32  # padded batch size is a multiple of this (stride of C5)
    workers: int = 2
    # torchvision conventions (the `torchvision` preset; docs/TORCHVISION.md)
    resize: str = "fast"  # fast: uint8 resize to round(h*f), then normalise | torchvision: normalise, then float
    #   resize to floor(h*s)
    # synthetic generator, used when dataset == "synthetic" and no data exists yet
    synth_seed: int = 0
    synth_train: int = 6400
    synth_test: int = 300
    # explicit COCO JSON files (they define the dataset; --dataset then only names the run); images default
    # to the JSON's folder
    train_json: str = ""
    train_images: str = ""
    test_json: str = ""
    test_images: str = ""
    filter_empty: bool = False  # drop training images without objects (detectron2 / torchvision do); default: negatives
    flip_random: bool = False  # with flip: each image once per epoch, mirrored with probability 1/2 (1x schedules)
    # static shapes (issue 28): a few padded input sizes and a fixed ground-truth size per run
    pad_bucket: int = 64  # training batches: each padded side is the smallest multiple of this, or the side's
    #   limit (the shorter side's max(train_scales) or the longer side's max_size, rounded up to size_divisible),
    #   that holds the batch (fpn.data.transforms.PadRule); 0: the batch's largest sides rounded up to
    #   size_divisible (one shape per size). A multiple of size_divisible. Costs 1.6-2.8% more pixels than 0 on a
    #   VOC-like set at 600/1000 for half the shapes (128: 4.9-8.5%, a quarter); docs/PERFORMANCE.md
    test_pad_bucket: int = 0  # the same rule for fpn test, the evaluation after training and the Python API
    #   (0: detections as before; buckets change detections near the bottom/right border slightly)
    max_objects: int = 0  # object slots of a training batch's ground truth: 0: the most of any training image,
    #   rounded up to a multiple of 8 (fixed for the run); N: N slots (an image with more is an error at the
    #   start); -1: each batch's own most (a shape per batch)

    def test_size_limit(self) -> int:
        """The longer-side limit of test-time inputs: ``test_max_size``, or ``max_size`` when that is 0."""
        return self.test_max_size or self.max_size

    def validate(self) -> "DataConfig":
        scales_ok = len(self.train_scales) >= 1 and all(isinstance(s, int) and s > 0 for s in self.train_scales)
        _check([
            (scales_ok, f"config data.train_scales: expected positive integers, got {tuple(self.train_scales)!r}"),
            (self.max_size > 0 and math.isfinite(self.max_size),
             f"config data.max_size: expected a positive integer, got {self.max_size!r}"),
            (self.test_max_size >= 0,
             f"config data.test_max_size: expected 0 (max_size) or a positive integer, got {self.test_max_size}"),
            (isinstance(self.test_scale, int) and self.test_scale > 0,
             f"config data.test_scale: expected positive integers, got {(self.test_scale,)!r}"),
            (self.workers >= 0, f"--workers {self.workers}: must be 0 or more"),
            (self.size_divisible >= 1, f"config data.size_divisible: expected >= 1, got {self.size_divisible}"),
            (self.pad_bucket >= 0 and self.pad_bucket % max(1, self.size_divisible) == 0,
             f"config data.pad_bucket: expected 0 or a multiple of data.size_divisible ({self.size_divisible}), "
             f"got {self.pad_bucket}"),
            (self.test_pad_bucket >= 0 and self.test_pad_bucket % max(1, self.size_divisible) == 0,
             f"config data.test_pad_bucket: expected 0 or a multiple of data.size_divisible ({self.size_divisible}), "
             f"got {self.test_pad_bucket}"),
            (self.max_objects >= -1,
             f"config data.max_objects: expected -1 (per batch), 0 (from the training images) or a positive "
             f"number, got {self.max_objects}"),
            (self.resize in RESIZES,
             f"config data.resize: unknown '{self.resize}', choose one of: {', '.join(RESIZES)}"),
            (self.normalization in NORMALIZATIONS,
             f"config data.normalization: unknown '{self.normalization}', choose one of: {', '.join(NORMALIZATIONS)}"),
        ])  # fmt: skip
        return self


@dataclass
class ModelConfig:
    """What the network is: architecture, matching, sampling, losses and post-processing settings."""

    backbone: str = "res101"  # one of BACKBONES
    backbone_width: int = 64  # channels of the stem / layer1; 64 is torchvision's ResNet (smaller: from scratch only)
    pretrained: str = "imagenet"  # imagenet (torchvision weights) | none | path to a .pth file
    norm: str = "frozen_bn"  # frozen_bn | bn | gn  (bn/gn when training from scratch)
    freeze_at: int = 1  # 0: nothing frozen, 1: stem + layer1 frozen, 2: + layer2 ...
    fpn_channels: int = 256
    # anchors: one size per level P2..P6
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # RPN
    rpn_channels: int = 256
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_per_level_top_n: bool = True  # False: the ancestor's top-n jointly over all levels
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1e-3  # proposals smaller than this (input pixels) are dropped
    rpn_smooth_l1_beta: float = 1.0 / 9.0
    # RoI heads
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou_lo: float = 0.0
    roi_bg_iou_hi: float = 0.5
    roi_canonical_size: float = 224.0
    roi_canonical_level: int = 4
    pool_size: int = 7
    pool_sampling_ratio: int = 2
    fc_dim: int = 1024
    class_agnostic: bool = False  # the ancestor's --cag
    bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)  # = 1 / (0.1, 0.1, 0.2, 0.2)
    rcnn_smooth_l1_beta: float = 1.0
    # crowd regions (COCO iscrowd=1): anchors / proposals with this fraction of their area inside one are ignored
    crowd_ioa: float = 0.7
    # inference
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    soft_nms: bool = False  # soft-NMS instead of NMS (linear: decay 1 - IoU above nms_thresh)
    soft_nms_method: str = "linear"  # linear | gaussian (decay exp(-IoU^2 / sigma))
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 0.001
    # torchvision conventions (the `torchvision` preset; docs/TORCHVISION.md); the defaults are this project's own
    anchor_round: bool = False  # round each cell's anchor corners to integers, as torchvision does
    anchor_strides_from_input: bool = False  # level stride = padded input size // feature size (torchvision: under
    #   64 for P6 when P5's size is odd, e.g. 57 for a 288 px input); False: the nominal strides 4..64
    rpn_score: str = "logit"  # what RPN NMS and the post-NMS top-n rank: logit | sigmoid (torchvision: float32
    #   probabilities, so close high logits tie)
    roi_level_eps_in_log: bool = True  # level = floor(k0 + log2(s/s0 + eps)); False: floor(k0 + log2(s/s0) + eps)
    #   (torchvision)
    pool_aligned: bool = True  # RoIAlign with the half-pixel shift; False: torchvision's detection models (no shift,
    #   boxes at least 1 feature pixel wide)
    # a whole detector's starting weights (fpn train --init): a checkpoint; box-predictor classes matched by name
    init: str = ""

    def validate(self) -> "ModelConfig":
        _check([
            (self.backbone in BACKBONES,
             f"model.backbone: unknown backbone '{self.backbone}'; choose one of: {', '.join(BACKBONES)}"),
            (self.norm in NORMS, f"model.norm: unknown norm '{self.norm}'; choose one of: {', '.join(NORMS)}"),
            (0 <= self.freeze_at <= 4,
             f"model.freeze_at: must be 0..4 (0 nothing, 1 stem+layer1, ... 4 all), got {self.freeze_at}"),
            (self.backbone_width >= 8 and not (self.norm == "gn" and self.backbone_width % 32),
             f"model.backbone_width: must be at least 8 (a multiple of 32 with gn), got {self.backbone_width}"),
            (len(self.anchor_sizes) == 5,
             f"model.anchor_sizes: need one size per level P2..P6 (5 values), got {self.anchor_sizes}"),
            _choice(self.rpn_score, RPN_SCORES, "model.rpn_score"),
            (0.0 <= self.rpn_bg_iou <= self.rpn_fg_iou <= 1.0,
             f"model.rpn_bg_iou / rpn_fg_iou: need 0 <= bg <= fg <= 1, got {self.rpn_bg_iou}, {self.rpn_fg_iou}"),
            (0.0 <= self.roi_bg_iou_lo <= self.roi_bg_iou_hi <= self.roi_fg_iou <= 1.0,
             "model.roi_bg_iou_lo / roi_bg_iou_hi / roi_fg_iou: need 0 <= lo <= hi <= fg <= 1, "
             f"got {self.roi_bg_iou_lo}, {self.roi_bg_iou_hi}, {self.roi_fg_iou}"),
            (0.0 <= self.rpn_positive_fraction <= 1.0,
             f"model.rpn_positive_fraction: must be in [0, 1], got {self.rpn_positive_fraction}"),
            (0.0 <= self.roi_positive_fraction <= 1.0,
             f"model.roi_positive_fraction: must be in [0, 1], got {self.roi_positive_fraction}"),
            (self.soft_nms_method in SOFT_NMS_METHODS,
             f"model.soft_nms_method: must be linear or gaussian, got {self.soft_nms_method!r}"),
        ])  # fmt: skip
        return self


@dataclass
class SolverConfig:
    batch_size: int = 2  # images per process (per GPU); the total batch is batch_size x processes
    optimizer: str = "sgd"  # sgd (momentum) | adamw (betas 0.9, 0.999; decoupled weight decay)
    lr: float = 1e-3
    # lr_scaling: none (lr as given, whatever the total batch) | linear (lr x total batch / reference_batch)
    lr_scaling: str = "none"
    reference_batch: int = 2  # the total batch the preset's lr is meant for (read by lr_scaling=linear)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    bias_lr_factor: float = 1.0  # the ancestor's "double bias" would be 2.0
    bias_weight_decay: bool = False
    epochs: int = 12
    lr_decay_epochs: tuple[int, ...] = (10,)  # lr *= gamma after each of these epochs
    lr_decay_gamma: float = 0.1
    lr_schedule: str = "step"  # step (lr_decay_epochs, lr_decay_gamma) | cosine (to 0 at the last iteration)
    # small datasets (fpn.engine.schedule.small_dataset_epochs): epochs raised so a run trains at least this many
    # iterations, lr_decay_epochs scaled with them; 0: epochs as given
    min_iters: int = 0
    warmup_iters: int = 100
    warmup_factor: float = 0.1
    clip_grad_norm: float = 0.0  # 0 disables
    # long runs (fpn.engine.hooks.Checkpointer): mid-epoch checkpoints every N iterations ("500") or every so long
    # ("30m", "2h", "90s"); "" only at epoch ends (and on a stop signal)
    checkpoint_every: str = ""
    keep_checkpoints: int = 2  # mid-epoch checkpoints (interval and interrupted) kept, newest; 0: all
    keep_epoch_checkpoints: int = 0  # epoch-end checkpoints kept, newest (the final one always); 0: all
    stop_signal: str = ""  # besides SIGTERM, this signal (USR1 | USR2) also stops, saves and exits 75 (SLURM --signal)

    def validate(self) -> "SolverConfig":
        _check([
            (self.optimizer in OPTIMIZERS, f"solver.optimizer {self.optimizer}: choose one of {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in SCHEDULES,
             f"solver.lr_schedule {self.lr_schedule}: choose one of {', '.join(SCHEDULES)}"),
            (self.batch_size >= 1, f"--bs {self.batch_size}: the batch size must be at least 1"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1"),
            (self.lr > 0, f"--lr {self.lr}: the learning rate must be positive"),
            (self.lr_scaling in LR_SCALINGS,
             f"solver.lr_scaling {self.lr_scaling}: choose one of {', '.join(LR_SCALINGS)}"),
            (self.reference_batch >= 1, f"solver.reference_batch {self.reference_batch}: must be at least 1"),
            (all(e >= 1 for e in self.lr_decay_epochs), f"--lr-decay-step {self.lr_decay_epochs}: epochs are 1-based"),
            (self.warmup_iters >= 0, f"solver.warmup_iters {self.warmup_iters}: must be 0 or more"),
            (self.min_iters >= 0, f"solver.min_iters {self.min_iters}: must be 0 (epochs as given) or more"),
            (self.momentum >= 0 and self.weight_decay >= 0, "solver.momentum and solver.weight_decay must be >= 0"),
            (self.keep_checkpoints >= 0,
             f"solver.keep_checkpoints {self.keep_checkpoints}: must be 0 (keep all) or more"),
            (self.keep_epoch_checkpoints >= 0,
             f"solver.keep_epoch_checkpoints {self.keep_epoch_checkpoints}: must be 0 (keep all) or more"),
        ])  # fmt: skip
        self.checkpoint_interval()
        self.stop_signal_name()
        return self

    def checkpoint_interval(self) -> tuple[int, float]:
        """``checkpoint_every`` as (iterations, seconds), at most one of them non-zero: "" or "0" -> (0, 0),
        "500" -> (500, 0), "30m" -> (0, 1800), "2h", "90s"; a UserError naming the key otherwise."""
        text = str(self.checkpoint_every).strip().lower()
        if text in ("", "0"):
            return 0, 0.0
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text)
        if m is None or float(m.group(1)) <= 0 or (not m.group(2) and "." in m.group(1)):
            raise UserError(f"solver.checkpoint_every={self.checkpoint_every}: expected a number of iterations (500) "
                            "or a time (90s, 30m, 2h)")  # fmt: skip
        if not m.group(2):
            return int(m.group(1)), 0.0
        return 0, float(m.group(1)) * {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]

    def stop_signal_name(self) -> str:
        """``stop_signal`` as TERM, USR1 or USR2 (with or without SIG), "" for none; a UserError otherwise."""
        name = str(self.stop_signal).strip().upper()
        name = name[3:] if name.startswith("SIG") else name
        if name and name not in STOP_SIGNALS:
            raise UserError(f"--stop-signal {self.stop_signal}: choose one of {', '.join(STOP_SIGNALS)}")
        return name


@dataclass
class RuntimeConfig:
    """How a process runs a model: not part of what the model is, so checkpoints do not carry it as architecture
    (a checkpoint records the run's resolved precision beside its config); every command takes its own."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | none | bf16 | fp16 (auto: bf16 where native, fp16 on older GPUs, else fp32)
    channels_last: bool = True  # NHWC convolutions: much faster on the CPU (oneDNN), +10-15% on an H200 (training
    #   and inference, docs/PERFORMANCE.md); False: NCHW
    fuse_frozen_bn: bool = True  # frozen BatchNorm applied through its convolution's weight and bias (no pass over
    #   the activations; same outputs and gradients up to rounding); False: torchvision's FrozenBatchNorm2d as is
    compile: str = ""  # "" (eager) or a torch.compile backend ("inductor") for backbone + FPN: fuses their elementwise
    #   work on a GPU (measure it: docs/PERFORMANCE.md); slow to compile on a CPU. A few input sizes (a larger
    #   data.size_divisible) keep recompiles rare; after the second size torch compiles for any size
    # implementations of one operation (the same results; "auto" picks by device: docs/ARCHITECTURE.md, "Ops")
    pool_impl: str = "auto"  # auto | sparse (CPU) | packed (CUDA, no host sync) | torchvision (per level) | by_mask
    #   (per level on masked RoIs, no host sync: what an exported graph holds)
    nms_impl: str = "auto"  # auto | mask (keep masks, Triton on CUDA: no host sync) | offset | segment (CPU threads)
    cuda_graphs: bool = False  # training steps captured as CUDA graphs, one per input shape, and replayed
    #   (fpn.engine.graphed_step); off until measured; what cannot be captured (CPU, fp16, DDP) trains eagerly

    def validate(self) -> "RuntimeConfig":
        device = str(self.device).strip().lower()
        _check([
            (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device) is not None,
             f"--device {self.device}: expected auto, cpu, cuda or cuda:N"),
            (self.amp in AMP_MODES, f"--amp {self.amp}: expected one of {', '.join(AMP_MODES)}"),
            (self.pool_impl in POOL_IMPLS,
             f"runtime.pool_impl: must be one of {', '.join(POOL_IMPLS)}, got {self.pool_impl!r}"),
            (self.nms_impl in NMS_IMPLS,
             f"runtime.nms_impl: must be one of {', '.join(NMS_IMPLS)}, got {self.nms_impl!r}"),
            (isinstance(self.cuda_graphs, bool), f"runtime.cuda_graphs: must be true or false, got {self.cuda_graphs!r}"),
        ])  # fmt: skip
        return self


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    preset: str = "voc07_res101"
    seed: int = 0  # the RNG seed (data order, initialisation, sampling)
    save_dir: str = "runs"
    exp_name: str = "default"
    log_interval: int = 20
    eval_at_end: bool = False

    def validate(self) -> "Config":
        """Every section's checks and the rules spanning sections; returns the config."""
        self.data.validate()
        self.model.validate()
        self.solver.validate()
        self.runtime.validate()
        m, r = self.model, self.runtime
        _check([
            (self.log_interval >= 1, f"log_interval {self.log_interval}: must be at least 1"),
            (not (r.pool_impl == "sparse" and m.pool_sampling_ratio <= 0),
             "runtime.pool_impl=sparse needs model.pool_sampling_ratio > 0"),
        ])  # fmt: skip
        return self
