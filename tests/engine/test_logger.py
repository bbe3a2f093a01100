import json

from fpn.engine.logger import RunLogger, format_eta, format_train_line

RECORD = {"session": 1, "epoch": 2, "step": 20, "iter": 270, "loss": 1.5,
          "losses": {"rpn_cls": 0.25, "rcnn_cls": 1.25}, "lr": 0.001, "time": 0.25, "data_time": 0.01, "eta_s": 600.4}


def test_console_line():
    assert format_train_line(RECORD, epochs=12, iters_per_epoch=250) == (
        "[epoch 2/12][iter 20/250] loss 1.5000 (rpn_cls 0.2500 rcnn_cls 1.2500) lr 1.00e-03 0.250 s/it eta 0:10:00"
    )
    assert format_eta(3661) == "1:01:01" and format_eta(float("nan")) == "?"


def test_jsonl_and_tensorboard(tmp_path):
    log = RunLogger(tmp_path / "run", tensorboard=True)
    log.log_train(RECORD)
    log.log_eval({"session": 1, "epoch": 2, "iter": 270, "split": "test", "metric": "voc07", "map": 0.5,
                  "ap": {"a": 0.5, "b": None}})
    log.close()
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"type": "train", **RECORD}
    assert lines[1]["type"] == "eval" and lines[1]["map"] == 0.5 and lines[1]["ap"] == {"a": 0.5, "b": None}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/rpn_cls", "loss/rcnn_cls", "lr", "time/iter", "eval/mAP", "eval/AP/a"} <= tags
    assert "eval/AP/b" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("eval/mAP")] == [(270, 0.5)]


def test_appends_without_tensorboard(tmp_path):
    for _ in range(2):
        log = RunLogger(tmp_path, tensorboard=False)
        log.log_train(RECORD)
        log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not list(tmp_path.glob("events.*"))
