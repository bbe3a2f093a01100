"""``fpn export``: flags and one-line errors (the exported graphs are tested in tests/engine/test_export_parity.py)."""

import pytest

from fpn.cli import main


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "missing.pth", "--out", "m.onnx"], "--checkpoint missing.pth: checkpoint file not found"),
    (["--checkpoint", "x.pth", "--out", "."], "--out .: is a folder"),
])
def test_bad_flags_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_bad_set_and_opset(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"),
                 "--set", "model.nope=1"]) == 2  # fmt: skip
    assert "unknown config key 'model.nope'" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"),
                 "--opset", "11"]) == 2  # fmt: skip
    assert "--opset 11: RoIAlign with aligned=True needs opset 16" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
