"""One typed configuration for a run (``fpn.config.sections``): what the model is and how it is trained (``data``,
``model``, ``solver``, ``seed``, the run folder), and how a process runs it (``runtime``: device, precision, layout,
compile, implementations).

The config is plain data. It is read in the ``build_*`` functions (``build_detector``, ``build_train_loader``, the
trainer's set-up) and never inside ``forward``. Presets (``fpn.config.presets``) are functions returning a fresh
``Config``; CLI flags and ``--set section.field=value`` override fields; ``to_dict`` / ``from_dict`` save and
restore it with every run and checkpoint (``fpn.config.serialize``; a checkpoint stores it without ``runtime``).
"""

from fpn.config.presets import (
    DATASET_PRESETS,
    PRESET_ALIASES,
    PRESETS,
    coco_res50,
    coco_res101,
    fpn_pytorch,
    get_preset,
    preset_for_dataset,
    synthetic,
    torchvision,
    voc07_res50_coco_init,
    voc07_res101,
    voc0712_res50_coco_init,
    voc0712_res101,
)
from fpn.config.sections import (
    AMP_MODES,
    BACKBONES,
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    LR_SCALINGS,
    NMS_IMPLS,
    NORMALIZATIONS,
    NORMS,
    OPTIMIZERS,
    POOL_IMPLS,
    RESIZES,
    RPN_SCORES,
    SCHEDULES,
    SOFT_NMS_METHODS,
    STOP_SIGNALS,
    Config,
    DataConfig,
    ModelConfig,
    RuntimeConfig,
    SolverConfig,
)
from fpn.config.serialize import LEGACY_KEYS, apply_overrides, from_dict, load_json, save_json, to_dict

__all__ = [name for name in dir() if not name.startswith("_")]
