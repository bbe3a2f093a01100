"""Presets: plain data, each a function returning a fresh ``Config``."""

from __future__ import annotations

from fpn.config.sections import Config
from fpn.errors import UserError


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
    s.keep_epoch_checkpoints = 2  # the newest two epoch checkpoints (~47 MB each) stay
    cfg.eval_at_end = True
    cfg.log_interval = 10
    return cfg


def small() -> Config:
    """``synthetic`` for a small dataset of one's own (``--dataset FOLDER``, CPU-friendly, from scratch): at least
    the recipe's 1600 iterations however few the images (``solver.min_iters``: 200 images at batch 4 train 32
    epochs; one epoch, 50 iterations, reached COCO mAP 0.0003: README, "Small datasets")."""
    cfg = synthetic()
    cfg.preset = "small"
    cfg.solver.min_iters = 1600
    return cfg


def fpn_pytorch() -> Config:
    """The ancestor's (``fpn.pytorch``) own settings where they differ from ours, for comparison (the preset was
    called ``seed``; that name still selects it)."""
    cfg = voc07_res101()
    cfg.preset = "fpn_pytorch"
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
    "small": small,
    "fpn_pytorch": fpn_pytorch,
    "coco_res50": coco_res50,
    "coco_res101": coco_res101,
    "torchvision": torchvision,
    "voc07_res50_coco_init": voc07_res50_coco_init,
    "voc0712_res50_coco_init": voc0712_res50_coco_init,
}

# the preset a dataset name selects when no preset is named
DATASET_PRESETS = {"pascal_voc": "voc07_res101", "pascal_voc_0712": "voc0712_res101", "synthetic": "synthetic",
                   "coco": "coco_res50"}  # fmt: skip


# old names still accepted
PRESET_ALIASES = {"seed": "fpn_pytorch"}


def get_preset(name: str) -> Config:
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def preset_for_dataset(dataset: str) -> Config:
    """The default recipe for a dataset name; a dataset folder (VOC or COCO JSON) gets the VOC recipe."""
    cfg = get_preset(DATASET_PRESETS.get(dataset, "voc07_res101"))
    cfg.data.dataset = dataset
    return cfg
