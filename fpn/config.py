"""One typed configuration for a run: data, model, solver.

The config is plain data. It is read in the ``build_*`` functions (``build_detector``, ``build_loader``,
the trainer) and never inside ``forward``. Presets are functions returning a fresh ``Config``; CLI flags
and ``--set section.field=value`` override fields; ``to_dict`` / ``from_dict`` save and restore it with
every run and checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn.errors import UserError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # pascal_voc | pascal_voc_0712 | synthetic | coco | path to a VOC or COCO-JSON folder
    data_dir: str = "data"
    train_scales: tuple[int, ...] = (600,)  # shorter side; several values = multi-scale training
    test_scale: int = 600
    max_size: int = 1000  # longer side never exceeds this
    test_max_size: int = 0  # the longer-side limit at test time (test, demo, API, export); 0: max_size
    flip: bool = True  # train on each image and its mirror (the seed's doubled dataset)
    use_difficult: bool = False  # keep difficult objects in training (the seed did)
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

    def test_size_limit(self) -> int:
        """The longer-side limit of test-time inputs: ``test_max_size``, or ``max_size`` when that is 0."""
        return self.test_max_size or self.max_size


@dataclass
class ModelConfig:
    backbone: str = "res101"  # res18 | res34 | res50 | res101 | res152
    backbone_width: int = 64  # channels of the stem / layer1; 64 is torchvision's ResNet (smaller: from scratch only)
    pretrained: str = "imagenet"  # imagenet (torchvision weights) | none | path to a .pth file
    norm: str = "frozen_bn"  # frozen_bn | bn | gn  (bn/gn when training from scratch)
    fuse_frozen_bn: bool = True  # frozen BatchNorm applied through its convolution's weight and bias (no pass over
    #   the activations; same outputs and gradients up to rounding); False: torchvision's FrozenBatchNorm2d as is
    freeze_at: int = 1  # 0: nothing frozen, 1: stem + layer1 frozen, 2: + layer2 ...
    fpn_channels: int = 256
    channels_last: bool = True  # NHWC convolutions: much faster on the CPU (oneDNN), +10-15% on an H200 (training
    #   and inference, docs/PERFORMANCE.md); False: NCHW
    compile: str = ""  # "" (eager) or a torch.compile backend ("inductor") for backbone + FPN: fuses their elementwise
    #   work on a GPU (measure it: docs/PERFORMANCE.md); slow to compile on a CPU. A few input sizes (a larger
    #   data.size_divisible) keep recompiles rare; after the second size torch compiles for any size
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
    rpn_per_level_top_n: bool = True  # False: the seed's top-n jointly over all levels
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
    class_agnostic: bool = False  # the seed's --cag
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
    # implementations (the same results; "auto" picks by device: docs/ARCHITECTURE.md, "CUDA-only branches")
    pool_impl: str = "auto"  # auto | sparse (CPU) | packed (CUDA, no host sync) | torchvision (per level)
    nms_impl: str = "auto"  # auto | mask (keep masks, Triton on CUDA: no host sync) | offset | segment (CPU threads)
    # a whole detector's starting weights (fpn train --init): a checkpoint; box-predictor classes matched by name
    init: str = ""


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
    bias_lr_factor: float = 1.0  # the seed's "double bias" would be 2.0
    bias_weight_decay: bool = False
    epochs: int = 12
    lr_decay_epochs: tuple[int, ...] = (10,)  # lr *= gamma after each of these epochs
    lr_decay_gamma: float = 0.1
    lr_schedule: str = "step"  # step (lr_decay_epochs, lr_decay_gamma) | cosine (to 0 at the last iteration)
    warmup_iters: int = 100
    warmup_factor: float = 0.1
    amp: str = "auto"  # auto | none | bf16 | fp16 (auto: bf16 where native, fp16 on older GPUs, else fp32)
    amp_used: str = ""  # written by a run: what amp resolved to on its device (none | bf16 | fp16); not read
    clip_grad_norm: float = 0.0  # 0 disables
    # long runs (fpn.engine.trainer): mid-epoch checkpoints every N iterations ("500") or every so long ("30m",
    # "2h", "90s"); "" only at epoch ends (and on a stop signal)
    checkpoint_every: str = ""
    keep_checkpoints: int = 2  # mid-epoch checkpoints (interval and interrupted) kept, newest; 0: all. Epoch ends: all
    stop_signal: str = ""  # besides SIGTERM, this signal (USR1 | USR2) also stops, saves and exits 75 (SLURM --signal)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    preset: str = "voc07_res101"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    save_dir: str = "runs"
    exp_name: str = "default"
    log_interval: int = 20
    eval_at_end: bool = False


# --- presets: plain data --------------------------------------------------------------------------------


def voc07_res101() -> Config:
    """The seed's VOC2007 recipe: res101, batch 2, lr 1e-3, 12 epochs, decay x0.1 after epoch 10."""
    cfg = Config(preset="voc07_res101")
    cfg.data.dataset = "pascal_voc"
    return cfg


def voc0712_res101() -> Config:
    cfg = voc07_res101()
    cfg.preset = "voc0712_res101"
    cfg.data.dataset = "pascal_voc_0712"
    return cfg


def synthetic() -> Config:
    """A CPU-friendly recipe for the built-in synthetic dataset: a narrow ResNet-18 trained from scratch
    (BatchNorm in train mode, nothing frozen), small images, anchors one octave smaller, automatic
    precision (bf16 where the CPU has it natively, else fp32), AdamW with a cosine schedule (from scratch and
    in 1000 iterations it reached a clearly higher mAP than SGD with a step decay: docs/PERFORMANCE.md).
    Sized for the quickstart's goal: `fpn train --dataset synthetic` within 10 minutes on a 2-core CPU without
    native bf16, VOC07 mAP >= 0.7 for any generator seed (seeds 0-3 in bf16 and fp32: README; the search:
    docs/PERFORMANCE.md, "The synthetic recipe on 2 cores", third and fourth rounds)."""
    cfg = Config(preset="synthetic")
    d, m, s = cfg.data, cfg.model, cfg.solver
    d.dataset = "synthetic"
    d.train_scales = (192,)
    d.max_size = 288
    d.test_scale = 240  # testing a little larger than training: +0.02-0.03 mAP for ~8 s of evaluation
    d.test_max_size = 368
    d.flip_random = True  # each of the 6400 images once, mirrored or not: fresh images beat seeing mirrors
    d.workers = 1
    m.backbone = "res18"
    m.backbone_width = 32
    m.pretrained = "none"
    m.norm = "bn"
    m.freeze_at = 0
    m.fpn_channels = 64
    m.rpn_channels = 64
    m.fc_dim = 256
    m.anchor_sizes = (16, 32, 64, 128, 256)
    m.roi_canonical_size = 112.0
    m.rpn_pre_nms_top_n_train = 500  # per level; 1000: ~11% more time per step, same mAP (seed 0)
    m.rpn_post_nms_top_n_train = 500
    m.rpn_pre_nms_top_n_test = 500
    m.rpn_post_nms_top_n_test = 300
    m.roi_batch_per_image = 256  # twice the RoIs of 128: +0.02-0.06 mAP for ~15% more time per step
    m.nms_thresh = 0.4  # objects overlap little in these images
    s.batch_size = 4  # twice the updates of batch 8 for ~7% more time: +0.02 mAP (generator seed 3, fp32)
    s.reference_batch = 4
    s.optimizer = "adamw"
    s.lr = 2e-3
    s.weight_decay = 0.05
    s.lr_schedule = "cosine"
    s.epochs = 1  # 6400 images / 4 = 1600 iterations: fresh images beat repeated epochs and flipped copies
    s.lr_decay_epochs = ()
    s.warmup_iters = 100
    cfg.eval_at_end = True
    cfg.log_interval = 10
    return cfg


def seed() -> Config:
    """The seed code's own settings where they differ from ours, for comparison."""
    cfg = voc07_res101()
    cfg.preset = "seed"
    m, s = cfg.model, cfg.solver
    m.rpn_channels = 512
    m.rpn_per_level_top_n = False
    m.rpn_pre_nms_top_n_train, m.rpn_post_nms_top_n_train = 12000, 2000
    m.rpn_pre_nms_top_n_test, m.rpn_post_nms_top_n_test = 6000, 300
    m.rpn_min_size = 0.0
    m.roi_batch_per_image = 128
    m.roi_bg_iou_lo = 0.0
    m.nms_thresh = 0.3
    m.score_thresh = 0.0
    cfg.data.use_difficult = True
    cfg.data.normalization = "caffe"
    s.weight_decay = 1e-4
    s.bias_lr_factor = 1.0
    s.warmup_iters = 0
    return cfg


def coco_res50() -> Config:
    """The standard COCO "1x" schedule (detectron2 / mmdetection): res50 with ImageNet weights, batch 16
    (per process: on 8 GPUs use --bs 2 to keep 16 in all), SGD lr 0.02 with 1000 warm-up iterations,
    12 epochs, lr x0.1 after epochs 8 and 11, shorter side 800 / longer at most 1333, each image once per
    epoch mirrored with probability 1/2, COCO evaluation at the end. Published box AP on val2017 (targets):
    torchvision R50-FPN 37.0 (26 epochs), detectron2 R50-FPN 1x 37.9, mmdetection R50 1x 37.4."""
    cfg = Config(preset="coco_res50")
    d, m, s = cfg.data, cfg.model, cfg.solver
    d.dataset = "coco"
    d.train_scales, d.test_scale, d.max_size = (800,), 800, 1333
    d.flip, d.flip_random = True, True
    d.workers = 4
    m.backbone = "res50"
    s.batch_size = 16
    s.lr = 0.02
    s.epochs = 12
    s.lr_decay_epochs = (8, 11)
    s.warmup_iters, s.warmup_factor = 1000, 0.001
    cfg.eval_at_end = True
    return cfg


def coco_res101() -> Config:
    """``coco_res50`` with res101. Published box AP on val2017 (target): mmdetection R101 1x 39.4."""
    cfg = coco_res50()
    cfg.preset = "coco_res101"
    cfg.model.backbone = "res101"
    return cfg


def torchvision() -> Config:
    """torchvision's ``fasterrcnn_resnet50_fpn`` conventions: what ``fpn convert torchvision`` writes into a converted
    checkpoint, so that it computes torchvision's detections (docs/TORCHVISION.md). Solver: the VOC recipe's."""
    cfg = voc07_res101()
    cfg.preset = "torchvision"
    d, m = cfg.data, cfg.model
    d.resize = "torchvision"
    d.train_scales, d.test_scale, d.max_size = (800,), 800, 1333
    m.backbone = "res50"
    m.anchor_round = True
    m.anchor_strides_from_input = True
    m.rpn_score = "sigmoid"
    m.roi_level_eps_in_log = False
    m.pool_aligned = False
    m.rcnn_smooth_l1_beta = 1.0 / 9.0  # torchvision's box-head loss (training only)
    return cfg


def voc07_res50_coco_init() -> Config:
    """Fine-tuning a COCO-trained torchvision model on VOC2007 (``fpn train --init CONVERTED.pth``): its
    conventions, a third of the VOC schedule and half its learning rate (sources: docs/TORCHVISION.md)."""
    cfg = torchvision()
    cfg.preset = "voc07_res50_coco_init"
    s = cfg.solver
    s.lr = 5e-4
    s.epochs = 4
    s.lr_decay_epochs = (3,)
    return cfg


def voc0712_res50_coco_init() -> Config:
    cfg = voc07_res50_coco_init()
    cfg.preset = "voc0712_res50_coco_init"
    cfg.data.dataset = "pascal_voc_0712"
    return cfg


PRESETS = {
    "voc07_res101": voc07_res101,
    "voc0712_res101": voc0712_res101,
    "synthetic": synthetic,
    "seed": seed,
    "coco_res50": coco_res50,
    "coco_res101": coco_res101,
    "torchvision": torchvision,
    "voc07_res50_coco_init": voc07_res50_coco_init,
    "voc0712_res50_coco_init": voc0712_res50_coco_init,
}

# the preset a dataset name selects when no preset is named
DATASET_PRESETS = {"pascal_voc": "voc07_res101", "pascal_voc_0712": "voc0712_res101", "synthetic": "synthetic",
                   "coco": "coco_res50"}  # fmt: skip


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def preset_for_dataset(dataset: str) -> Config:
    """The default recipe for a dataset name; a dataset folder (VOC or COCO JSON) gets the VOC recipe."""
    cfg = get_preset(DATASET_PRESETS.get(dataset, "voc07_res101"))
    cfg.data.dataset = dataset
    return cfg


# --- (de)serialisation and overrides ---------------------------------------------------------------------


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output; unknown keys are an error, missing keys keep defaults."""
    cfg = Config()
    for key, value in d.items():
        if key in ("data", "model", "solver"):
            section = getattr(cfg, key)
            for k, v in value.items():
                _set_field(section, k, v, f"{key}.{k}")
        else:
            _set_field(cfg, key, value, key)
    return cfg


def save_json(cfg: Config, path: str | Path) -> None:
    from fpn.io import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def load_json(path: str | Path) -> Config:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: a config file must hold a JSON object")
    return from_dict(d)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (``--set``); values are Python/JSON literals or bare strings."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value, e.g. model.backbone=res50 (other arguments go "
                            "before --set or after --)")  # fmt: skip
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        target: Any = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, p):
                raise UserError(f"--set {item}: unknown config key '{key}'")
            target = getattr(target, p)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        _set_field(target, parts[-1], value, key, flag=f"--set {item}")
    return cfg


def _set_field(obj: Any, name: str, value: Any, key: str, flag: str | None = None) -> None:
    where = flag or f"config key '{key}'"
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields or dataclasses.is_dataclass(getattr(obj, name)):
        raise UserError(f"{where}: unknown config key '{key}'")
    current = getattr(obj, name)
    setattr(obj, name, _coerce(value, current, where))


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert ``value`` to the type of the field's current value (tuples from lists, int to float...)."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, (bool, int)):
            return bool(value)
    elif isinstance(current, tuple):
        if isinstance(value, (int, float)):
            value = (value,)
        if isinstance(value, (list, tuple)):
            elem = type(current[0]) if current else None
            try:
                return tuple(elem(v) if elem else v for v in value)
            except (TypeError, ValueError):
                pass
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(current, str):
        return str(value)
    else:
        return value
    raise UserError(f"{where}: expected a value like {current!r}, got {value!r}")
