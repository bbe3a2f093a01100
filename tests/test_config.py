import json

import pytest

from fpn import config as C
from fpn.errors import UserError


def test_presets_are_fresh_plain_data():
    a, b = C.get_preset("synthetic"), C.get_preset("synthetic")
    a.model.backbone = "res50"
    assert b.model.backbone == "res18"  # no shared mutable state between presets
    assert C.get_preset("voc07_res101").data.dataset == "pascal_voc"
    assert C.get_preset("voc0712_res101").data.dataset == "pascal_voc_0712"


def test_the_ancestors_preset_differs_where_it_did_and_keeps_its_old_name():
    assert C.get_preset("seed") == C.get_preset("fpn_pytorch") and C.get_preset("seed").preset == "fpn_pytorch"
    s, v = C.get_preset("fpn_pytorch").model, C.get_preset("voc07_res101").model
    assert (s.rpn_channels, v.rpn_channels) == (512, 256)
    assert (s.rpn_pre_nms_top_n_train, s.rpn_post_nms_top_n_test) == (12000, 300)
    assert not s.rpn_per_level_top_n and v.rpn_per_level_top_n
    assert (s.roi_batch_per_image, v.roi_batch_per_image) == (128, 512)
    assert s.nms_thresh == 0.3


def test_voc_recipe_matches_the_seed_table():
    cfg = C.preset_for_dataset("pascal_voc")
    s = cfg.solver
    assert (cfg.model.backbone, s.batch_size, s.lr, s.epochs, s.lr_decay_epochs) == ("res101", 2, 1e-3, 12, (10,))
    assert (cfg.data.train_scales, cfg.data.max_size, s.momentum, s.weight_decay) == ((600,), 1000, 0.9, 1e-4)


def test_torchvision_preset_holds_its_conventions_and_the_fine_tuning_presets_build_on_it():
    tv, own = C.get_preset("torchvision"), C.Config()
    assert (tv.data.resize, tv.data.test_scale, tv.data.max_size, tv.model.backbone) == ("torchvision", 800, 1333, "res50")
    m = tv.model
    assert (m.anchor_round, m.anchor_strides_from_input, m.rpn_score, m.roi_level_eps_in_log, m.pool_aligned) == (
        True, True, "sigmoid", False, False)  # fmt: skip
    o = own.model
    assert (own.data.resize, o.anchor_round, o.anchor_strides_from_input, o.rpn_score, o.roi_level_eps_in_log,
            o.pool_aligned, o.init) == ("fast", False, False, "logit", True, True, "")  # fmt: skip
    ft = C.get_preset("voc07_res50_coco_init")
    assert (ft.data.dataset, ft.solver.lr, ft.solver.epochs, ft.solver.lr_decay_epochs) == ("pascal_voc", 5e-4, 4, (3,))
    assert ft.model == tv.model and ft.data == tv.data
    assert C.get_preset("voc0712_res50_coco_init").data.dataset == "pascal_voc_0712"


def test_custom_folder_gets_voc_recipe():
    cfg = C.preset_for_dataset("/some/folder")
    assert cfg.data.dataset == "/some/folder" and cfg.model.backbone == "res101"


def test_overrides_coerce_types():
    cfg = C.apply_overrides(
        C.Config(),
        ["model.backbone=res50", "solver.lr=0.01", "data.train_scales=[480,600]", "data.flip=False",
         "model.rpn_nms_thresh=1", "solver.lr_decay_epochs=8"],
    )
    assert cfg.model.backbone == "res50" and cfg.solver.lr == 0.01
    assert cfg.data.train_scales == (480, 600) and cfg.data.flip is False
    assert cfg.model.rpn_nms_thresh == 1.0 and isinstance(cfg.model.rpn_nms_thresh, float)
    assert cfg.solver.lr_decay_epochs == (8,)


@pytest.mark.parametrize(
    "item, fragment",
    [("model.nope=1", "unknown config key 'model.nope'"), ("lr", "expected key=value"),
     ("solver.epochs=abc", "expected a value like 12"), ("model=1", "unknown config key 'model'")],
)
def test_bad_overrides_name_the_flag(item, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        C.apply_overrides(C.Config(), [item])
    assert "\n" not in str(e.value)


def test_round_trip_through_json(tmp_path):
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["model.anchor_sizes=[8,16,32,64,128]"])
    path = tmp_path / "config.json"
    C.save_json(cfg, path)
    again = C.load_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["model"]["anchor_sizes"] == [8, 16, 32, 64, 128]


def test_bad_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        C.load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a readable JSON config"):
        C.load_json(bad)
    bad.write_text('{"model": {"colour": 1}}')
    with pytest.raises(UserError, match="unknown config key 'model.colour'"):
        C.load_json(bad)


def test_coco_presets_are_the_1x_schedule():
    cfg = C.preset_for_dataset("coco")
    d, s = cfg.data, cfg.solver
    assert (cfg.preset, cfg.model.backbone, d.dataset) == ("coco_res50", "res50", "coco")
    assert (s.batch_size, s.lr, s.epochs, s.lr_decay_epochs, s.warmup_iters) == (16, 0.02, 12, (8, 11), 1000)
    assert (d.train_scales, d.test_scale, d.max_size, d.flip, d.flip_random) == ((800,), 800, 1333, True, True)
    assert cfg.eval_at_end and C.get_preset("coco_res101").model.backbone == "res101"
    assert C.preset_for_dataset("/my/coco_json_folder").preset == "voc07_res101"  # own datasets: the VOC recipe


def test_synthetic_preset_sees_each_of_its_images_once_in_1600_batches_of_4():
    import numpy as np

    from fpn.data.loader import build_train_loader

    cfg = C.get_preset("synthetic")
    d, s = cfg.data, cfg.solver
    # the quickstart's dataset is the one `fpn synth` writes by default, so one reuses the other's folder
    assert (d.synth_train, d.synth_test) == (C.DataConfig().synth_train, C.DataConfig().synth_test) == (6400, 300)
    # the trainer's loader over records of one orientation (one group): the image or its mirror per item
    records = [{"id": str(i), "image": f"{i}.jpg", "width": 320, "height": 240, "boxes": np.zeros((0, 4)),
                "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool)} for i in range(d.synth_train)]
    loader = build_train_loader(cfg, records, ("a",))
    batches = loader.batch_sampler.epoch_batches(1)
    assert len(loader) == len(batches) == 1600 and {len(b) for b in batches} == {s.batch_size} and s.epochs == 1
    images = sorted(i % d.synth_train for b in batches for i, _ in b)
    assert images == list(range(d.synth_train))


def test_runtime_is_apart_from_what_the_model_is_and_older_keys_still_read():
    old = {"model": {"backbone": "res50", "pool_impl": "packed", "channels_last": False}, "device": "cpu",
           "solver": {"amp": "bf16", "amp_used": "bf16", "lr": 0.5}, "preset": "seed"}  # a config of 2026-12-05
    cfg = C.from_dict(old)
    assert (cfg.model.backbone, cfg.solver.lr, cfg.preset) == ("res50", 0.5, "fpn_pytorch")
    assert (cfg.runtime.pool_impl, cfg.runtime.channels_last, cfg.runtime.device, cfg.runtime.amp) == (
        "packed", False, "cpu", "bf16")
    assert "runtime" not in C.to_dict(cfg, runtime=False) and C.to_dict(cfg)["runtime"]["pool_impl"] == "packed"
    C.apply_overrides(cfg, ["model.nms_impl=mask", "runtime.compile=inductor"])  # the old --set names too
    assert (cfg.runtime.nms_impl, cfg.runtime.compile) == ("mask", "inductor")
    with pytest.raises(UserError, match="solver.amp_used is no longer a setting"):
        C.apply_overrides(cfg, ["solver.amp_used=bf16"])


def test_checkpoint_config_takes_no_runtime_from_the_checkpoint():
    from fpn.checkpoint import checkpoint_config

    saved = C.get_preset("synthetic")
    saved.runtime.pool_impl, saved.runtime.amp = "packed", "fp16"
    cfg = checkpoint_config({"config": C.to_dict(saved)}, "x.pth")
    assert cfg.runtime == C.RuntimeConfig() and cfg.model == saved.model


@pytest.mark.parametrize("section, field, value, words", [
    ("data", "resize", "pil", "data.resize: unknown 'pil'"),
    ("data", "test_max_size", -1, "data.test_max_size: expected 0"),
    ("model", "backbone", "res7", "model.backbone: unknown backbone 'res7'"),
    ("model", "rpn_fg_iou", 1.5, "model.rpn_bg_iou / rpn_fg_iou"),
    ("model", "anchor_sizes", (32, 64), "model.anchor_sizes: need one size per level"),
    ("solver", "optimizer", "lamb", "solver.optimizer lamb: choose one of sgd, adamw"),
    ("solver", "checkpoint_every", "soon", "solver.checkpoint_every=soon"),
    ("runtime", "amp", "fp8", "--amp fp8: expected one of auto, none, bf16, fp16"),
    ("runtime", "nms_impl", "fast", "runtime.nms_impl: must be one of auto, segment, offset, mask"),
    ("runtime", "device", "tpu", "--device tpu: expected auto, cpu, cuda or cuda:N"),
])  # fmt: skip
def test_each_section_checks_its_own_fields(section, field, value, words):
    cfg = C.get_preset("voc07_res101")
    assert cfg.validate() is cfg
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        getattr(cfg, section).validate()
    with pytest.raises(UserError):
        cfg.validate()


def test_rules_across_sections():
    cfg = C.get_preset("torchvision")  # pool_aligned=False: the packed pooler takes either alignment (issue 28)
    cfg.runtime.pool_impl = "packed"
    cfg.validate()
    cfg.runtime.pool_impl, cfg.model.pool_sampling_ratio = "sparse", 0
    with pytest.raises(UserError, match="runtime.pool_impl=sparse needs model.pool_sampling_ratio > 0"):
        cfg.validate()
