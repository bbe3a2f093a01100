from fpn import config as C
from fpn.data.synthetic import matches
from fpn.engine.prepare import ensure_synthetic


def test_ensure_synthetic_keeps_a_matching_dataset_and_regenerates_another_for_training(tmp_path):
    cfg = C.get_preset("synthetic")
    cfg.data.data_dir, cfg.data.synth_train, cfg.data.synth_test = str(tmp_path), 4, 2
    said = []
    ensure_synthetic(cfg, log=said.append, exact=True)
    root = tmp_path / "synthetic"
    assert matches(root, 0, 4, 2)
    assert said == [f"generating the synthetic dataset in {root} (seed 0: 4 train + 2 test images) ..."]
    ensure_synthetic(cfg, log=said.append, exact=True)  # the same parameters: kept
    assert len(said) == 1
    cfg.data.synth_seed = 1  # another seed: kept for testing (a checkpoint's config need not name the data) ...
    ensure_synthetic(cfg, log=said.append)
    assert matches(root, 0, 4, 2) and len(said) == 1
    ensure_synthetic(cfg, log=said.append, exact=True)  # ... regenerated for training: seed 1's own images
    assert matches(root, 1, 4, 2) and said[-1].startswith("regenerating the synthetic dataset")
