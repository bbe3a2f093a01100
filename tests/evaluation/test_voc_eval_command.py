"""`fpn voc-eval` end to end on a tiny devkit written in tmp_path."""

import json

import pytest

from fpn.cli import main
from fpn.data.voc import write_voc_xml
from fpn.evaluation.results import result_file, write_result_files

CLASSES = ("cat", "dog", "bird")
OBJECTS = {  # 50x50 images; VOC boxes
    "000001": [("cat", (1, 1, 10, 10), False), ("dog", (21, 21, 40, 40), True)],
    "000002": [("cat", (5, 5, 24, 24), False)],
    "000003": [("dog", (1, 1, 30, 30), False)],
    "000004": [],
}
DETS = {
    # cat, npos 2: TP, FP (no cat in 000004), TP -> recall .5 .5 1, precision 1 1/2 2/3
    #   voc07: t = 0 .. 0.5 (6 thresholds) -> 1; t = 0.6 .. 1 (5) -> 2/3: AP = (6 + 5 * 2/3) / 11 = 28/33
    #   area: .5 * 1 + .5 * 2/3 = 5/6
    "cat": [("000001", 0.9, 1, 1, 10, 10), ("000004", 0.8, 1, 1, 10, 10), ("000002", 0.7, 5, 5, 24, 24)],
    # dog, npos 1 (the 000001 dog is difficult): ignored, then IoU 30*16 / 30*30 = 0.533 -> TP: AP 1 (both)
    "dog": [("000001", 0.6, 21, 21, 40, 40), ("000003", 0.5, 1, 1, 30, 16)],
    # bird: no ground truth -> AP undefined, left out of the mAP
    "bird": [],
}
MAP_VOC07 = (28 / 33 + 1) / 2
MAP_AREA = (5 / 6 + 1) / 2


def make_devkit(root, year="2007", with_classes_txt=True, objects=OBJECTS, split="test"):
    voc = root / f"VOC{year}"
    for image_id, objs in objects.items():
        write_voc_xml(
            voc / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", 50, 50,
            [{"name": n, "bbox": b, "difficult": d} for n, b, d in objs],
        )  # fmt: skip
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in objects))
    if with_classes_txt:
        (voc / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    write_result_files(root / "results" / f"VOC{year}" / "Main", split, DETS, CLASSES)
    result_file(root / "results" / f"VOC{year}" / "Main", split, "bird").unlink()  # missing file: no detections
    return root


def run_cli(capsys, *argv):
    code = main(["voc-eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end_voc07(tmp_path, capsys):
    devkit = make_devkit(tmp_path / "VOCdevkit")
    code, out, err = run_cli(capsys, "--devkit", devkit, "--json", tmp_path / "ap.json", "--plot", tmp_path / "p.png")
    assert (code, err) == (0, "")
    data = json.loads((tmp_path / "ap.json").read_text())
    assert data["metric"] == "voc07" and list(data["ap"]) == list(CLASSES)
    assert data["ap"]["cat"] == pytest.approx(28 / 33, abs=1e-12)
    assert data["ap"]["dog"] == pytest.approx(1.0, abs=1e-12)
    assert data["ap"]["bird"] is None
    assert data["map"] == pytest.approx(MAP_VOC07, abs=1e-12)
    last = f"mAP = {MAP_VOC07:.4f} (voc07 11-point, 2 classes; without ground truth, excluded: bird)"
    assert out.strip().split("\n")[-1] == last
    assert "\ncat    0.8485       2        3\n" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_metric_follows_year_and_flag(tmp_path, capsys):
    devkit = make_devkit(tmp_path / "d12", year="2012")
    code, out, _ = run_cli(capsys, "--devkit", devkit, "--year", "2012", "--json", tmp_path / "a.json")
    assert code == 0 and json.loads((tmp_path / "a.json").read_text())["metric"] == "area"
    assert json.loads((tmp_path / "a.json").read_text())["map"] == pytest.approx(MAP_AREA, abs=1e-12)
    code, out, _ = run_cli(capsys, "--devkit", devkit, "--year", "2012", "--metric", "voc07")
    assert code == 0 and f"mAP = {MAP_VOC07:.4f} (voc07 11-point" in out
    # 0712: VOC2007 annotations and results, voc07 metric
    devkit = make_devkit(tmp_path / "d07")
    code, out, _ = run_cli(capsys, "--devkit", devkit, "--year", "0712", "--metric", "area")
    assert code == 0 and f"mAP = {MAP_AREA:.4f} (area" in out


@pytest.mark.slow
def test_default_voc_classes_and_classes_flag(tmp_path, capsys):
    # without classes.txt the 20 VOC classes are used: 'bird' and 'cat' are VOC classes, 'dog' too
    devkit = make_devkit(tmp_path / "d", with_classes_txt=False)
    code, out, _ = run_cli(capsys, "--devkit", devkit)
    assert code == 0 and "aeroplane" in out and "mAP = " in out and "(voc07 11-point, 2 classes;" in out
    results = tmp_path / "d" / "results" / "VOC2007" / "Main"
    code, out, _ = run_cli(capsys, "--devkit", devkit, "--classes", "cat,dog", "--results-dir", results)
    assert code == 0 and "aeroplane" not in out and f"mAP = {MAP_VOC07:.4f} (voc07 11-point, 2 classes)" in out
    # names keep their case (result file names) and match the annotations case-insensitively
    result_file(results, "test", "cat").rename(result_file(results, "test", "Cat"))
    code, out, _ = run_cli(capsys, "--devkit", devkit, "--classes", "Cat,dog", "--results-dir", results)
    assert code == 0 and "\nCat    0.8485" in out and f"mAP = {MAP_VOC07:.4f}" in out


def _break(kind, root):
    voc = root / "VOC2007"
    args = []
    if kind == "no devkit":
        args = ["--devkit", root / "missing"]
    elif kind == "no annotations":
        for p in (voc / "Annotations").iterdir():
            p.unlink()
        (voc / "Annotations").rmdir()
    elif kind == "no list":
        (voc / "ImageSets" / "Main" / "test.txt").unlink()
    elif kind == "missing xml":
        (voc / "Annotations" / "000003.xml").unlink()
    elif kind == "malformed xml":
        (voc / "Annotations" / "000003.xml").write_text("<annotation><size>")
    elif kind == "unknown class":
        (voc / "classes.txt").write_text("cat\nbird\n")
    elif kind == "box outside image":
        text = (voc / "Annotations" / "000002.xml").read_text().replace("<xmax>24</xmax>", "<xmax>51</xmax>")
        (voc / "Annotations" / "000002.xml").write_text(text)
    elif kind == "empty image set":
        (voc / "ImageSets" / "Main" / "test.txt").write_text("\n")
    elif kind == "duplicate id":
        (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000001\n")
    elif kind == "bad results line":
        result_file(root / "results" / "VOC2007" / "Main", "test", "dog").write_text("000003 0.5 1 1 30\n")
    elif kind == "results on unknown image":
        result_file(root / "results" / "VOC2007" / "Main", "test", "dog").write_text("000009 0.5 1 1 30 30\n")
    elif kind == "no results":
        args = ["--results-dir", root / "elsewhere"]
    elif kind == "bad year":
        args = ["--year", "07"]
    elif kind == "bad classes flag":
        args = ["--classes", "cat,dog,Cat"]
    elif kind == "bad classes.txt":
        (voc / "classes.txt").write_text("cat\ndog\na/b\n")
    elif kind == "unwritable json":
        (root / "j").mkdir()
        args = ["--json", root / "j"]
    return args


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("no devkit", "folder not found"),
        ("no annotations", "Annotations: annotations folder not found"),
        ("no list", "test.txt: image set 'test' not found"),
        ("missing xml", "000003.xml: annotation file not found"),
        ("malformed xml", "000003.xml: malformed XML"),
        ("unknown class", "000001.xml: object 2 has unknown class 'dog'"),
        ("box outside image", "000002.xml: object 1 (cat) box (5,5,51,24) lies outside the 50x50 image"),
        ("empty image set", "test.txt: image set is empty"),
        ("duplicate id", "test.txt:3: image '000001' is already listed on line 1"),
        ("bad results line", "comp4_det_test_dog.txt:1: expected 6 fields"),
        ("results on unknown image", "comp4_det_test_dog.txt:1: image '000009' is not in the evaluated image set"),
        ("no results", "elsewhere: results directory not found"),
        ("bad year", "--year: expected a year"),
        ("bad classes flag", "--classes: class 'Cat' is listed twice"),
        ("bad classes.txt", "classes.txt: bad class name 'a/b'"),
        ("unwritable json", "cannot write"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, kind, expected):
    devkit = make_devkit(tmp_path / "VOCdevkit")
    extra = _break(kind, devkit)
    argv = ["--devkit", devkit, *extra] if kind != "no devkit" else extra
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err
    if kind != "unwritable json":  # the table is printed before the JSON is written
        assert "mAP" not in out
