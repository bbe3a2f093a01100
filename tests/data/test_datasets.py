"""The dataset a config names, made ready (fpn.data.datasets): the synthetic one generated, kept or regenerated."""


from fpn import config as C
from fpn.data.datasets import ensure_synthetic
from fpn.data.synthetic import generate, matches


def test_ensure_synthetic_uses_what_is_there_and_regenerates_only_what_was_asked_for(tmp_path):
    cfg = C.get_preset("synthetic")
    cfg.data.data_dir, cfg.data.synth_train, cfg.data.synth_test = str(tmp_path), 4, 2
    said = []
    ensure_synthetic(cfg, log=said.append, training=True)
    root = tmp_path / "synthetic"
    assert matches(root, 0, 4, 2)
    assert said == [f"generating the synthetic dataset in {root} (seed 0: 4 train + 2 test images) ..."]
    ensure_synthetic(cfg, log=said.append, training=True)  # the same parameters: kept
    assert len(said) == 1

    cfg.data.synth_seed = 1  # another seed in the config (a preset, --config): the dataset there is used ...
    ensure_synthetic(cfg, log=said.append)  # ... silently for testing a checkpoint
    assert matches(root, 0, 4, 2) and len(said) == 1
    ensure_synthetic(cfg, log=said.append, training=True, asked=["data.synth_train"])  # ... and for training
    assert matches(root, 0, 4, 2) and cfg.data.synth_seed == 1  # the config is left as given (the run records the
    # folder's parameters: DatasetSpec.generator)
    assert said[-1] == (f"dataset synthetic: training on the complete dataset in {root} as it is: seed 0: 4 train + "
                        "2 test images (the config's: seed 1: 4 train + 2 test images; --set data.synth_seed=1 "
                        "regenerates it)")  # fmt: skip

    cfg.data.synth_seed = 1  # asked for on the command line (--set data.synth_seed=1): regenerated, and said
    ensure_synthetic(cfg, log=said.append, training=True, asked=["data.synth_seed"])
    assert matches(root, 1, 4, 2)
    assert said[-1] == (f"regenerating the synthetic dataset in {root} (seed 1: 4 train + 2 test images, as --set "
                        "data.synth_seed=1 asks); it held seed 0: 4 train + 2 test images")  # fmt: skip


def test_a_coco_only_synthetic_dataset_gets_the_voc_layout_added(tmp_path):
    root = tmp_path / "synthetic"
    generate(root, seed=3, n_train=2, n_test=1, formats=("coco",))
    cfg = C.get_preset("synthetic")
    cfg.data.data_dir = str(tmp_path)
    said = []
    ensure_synthetic(cfg, log=said.append, training=True)
    assert matches(root, 3, 2, 1, ("voc", "coco")) and (cfg.data.synth_seed, cfg.data.synth_train) == (0, 6400)
    assert said[-1].startswith(f"adding the VOC layout to the COCO-format synthetic dataset in {root} (seed 3")


def test_a_split_is_described_by_its_counts():
    import numpy as np

    from fpn.data.datasets import describe_split

    def rec(labels, difficult, crowd=None):
        r = {"labels": np.array(labels, dtype=np.int64), "difficult": np.array(difficult, dtype=bool)}
        if crowd is not None:
            r["crowd"] = np.array(crowd, dtype=bool)
        return r

    records = [rec([1, 2, 2], [False, False, True]), rec([], []), rec([1], [True]), rec([2, 1], [True, False],
                                                                                     [True, False])]  # fmt: skip
    assert describe_split("train", records, ("cat", "dog")) == (
        "train: 4 images (2 without objects), 3 objects (cat 2, dog 1); 2 difficult, 1 crowd regions left out")
    assert describe_split("train", records, ("cat", "dog"), use_difficult=True) == (
        "train: 4 images (1 without objects), 5 objects (cat 3, dog 2); 0 difficult, 1 crowd regions left out")
