"""``fpn demo``: detect objects in images and draw them.

For every input image (files, or folders scanned for image files) writes ``OUT/<name>.jpg`` with boxes,
class names and scores drawn, and ``OUT/detections.json`` with the detections of score >= ``--thresh``
(boxes continuous xyxy in the image's pixels); with ``--save-labels FORMAT`` also labels a labelling tool imports,
in ``OUT/<format>/`` (``fpn.data.writers``: COCO JSON, VOC XML, YOLO txt). A video file (``fpn.video``: .mp4, .mov,
.avi ...; needs the ``fpn[video]`` extra) becomes ``OUT/<name>.mp4`` with every frame drawn, frames batched like
images. The model is a checkpoint (``--checkpoint``, PyTorch) or an exported ONNX file (``--model``, ONNX Runtime),
run through ``fpn.Detector``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fpn.commands import flags
from fpn.data.writers import LABEL_FORMATS
from fpn.errors import UserError
from fpn.video import is_video, video_info

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
CHUNK = 64  # images decoded and predicted together


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files, folders of images and/or video files (.mp4, .mov ...: pip install 'fpn[video]')")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="a .pth file written by fpn train")
    source.add_argument("--model", metavar="PATH", help="an .onnx file written by fpn export (runs in onnxruntime)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--thresh", type=float, default=0.5, help="minimum score of a shown detection (default 0.5)")
    p.add_argument("--bs", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--save-labels", action="append", choices=LABEL_FORMATS, default=[], metavar="FORMAT",
                   help="also write the detections (score >= --thresh) as labels in OUT/FORMAT/ for a labelling tool: "
                   "coco (annotations.json), voc (Annotations/*.xml) or yolo (labels/*.txt, data.yaml); repeatable")
    p.add_argument("--save-conf", action="store_true",
                   help="YOLO labels: the score as a 6th column (as Ultralytics' --save-conf; most tools import 5)")
    flags.add_device(p)
    flags.add_amp(p)
    flags.add_set(p, "model.nms_thresh=0.4", several=False)
    flags.add_progress(p)


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); UserError for anything missing."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"{p}: image not found")
    return paths


def readable_images(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """(the files that read as images, one reason per file that does not), by a header check before anything is
    written; a UserError when none does."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
            good.append(path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            bad.append(f"{path}: not a readable image ({reason})")
    if not good:
        raise UserError(bad[0] + (f" (and the {len(bad) - 1} other files given)" if len(bad) > 1 else ""))
    return good, bad


def output_names(paths: list[Path]) -> list[str]:
    """``<stem>.jpg`` per image; a repeated stem gets ``_<n>`` appended."""
    names, seen = [], {}
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f"{stem}.jpg" if n == 0 else f"{stem}_{n}.jpg")
    return names


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from fpn.api import Detector
    from fpn.engine.device import resolve_device, resolve_precision
    from fpn.visualize import detections_record, draw_detections
    from fpn.io import atomic_open, atomic_write_text

    if args.bs < 1:
        raise UserError(f"--bs {args.bs}: must be at least 1")
    if not 0.0 <= args.thresh <= 1.0:
        raise UserError(f"--thresh {args.thresh}: expected a score between 0 and 1")
    if args.model and args.overrides:
        raise UserError("--set: applies to a --checkpoint; an exported --model has its settings built in")
    if not args.model:  # a precision the device lacks fails before anything is read; said once, here
        device = resolve_device(args.device or "auto")
        precision = resolve_precision(args.amp or "auto", device)
        print(f"precision: {precision}")
    found = collect_images(args.images)
    videos = [p for p in found if is_video(p)]  # checked (PyAV, readable) before the model loads
    for video in videos:
        video_info(video)
    images = [p for p in found if not is_video(p)]
    paths, skipped = readable_images(images) if images else ([], [])
    for reason in skipped:  # one bad file does not stop a folder
        print(f"warning: {reason}; skipped", file=sys.stderr)
    if args.model:
        detector = Detector.from_onnx(args.model)
    else:
        detector = Detector.from_checkpoint(args.checkpoint, str(device), precision.amp, args.overrides)
    print(f"model: {args.model} (onnxruntime)" if args.model else f"model: {args.checkpoint} on {device}")
    classes = detector.classes

    out = Path(args.out)
    writers = _label_writers(args, detector, out)
    names = output_names(paths)
    results = []
    bar = tqdm(total=len(paths), desc="demo", unit="img", dynamic_ncols=True, disable=not args.progress or None,
               leave=False)  # fmt: skip
    for start in range(0, len(paths), CHUNK):  # a chunk of images in memory at a time
        chunk = paths[start:start + CHUNK]
        for i, (path, det) in enumerate(zip(chunk, _predict(detector, chunk, args, skipped)), start):
            if det is None:  # passed the header check but did not decode (said, and counted)
                continue
            output = {"boxes": det.boxes, "scores": det.scores, "labels": det.labels}
            name = names[i]
            with Image.open(path) as im:
                drawn = draw_detections(im, output, classes, args.thresh)
                for writer in writers:
                    keep = det.scores >= args.thresh
                    writer.add(path.name, im.width, im.height, det.boxes[keep], det.labels[keep], det.scores[keep],
                               stem=Path(name).stem)  # fmt: skip
            with atomic_open(out / name, "wb") as f:
                drawn.save(f, format="JPEG", quality=92)
            entry = detections_record(str(i), str(path), output, classes, args.thresh)
            entry["output"] = name
            del entry["id"]
            results.append(entry)
            dets = entry["detections"]
            summary = ", ".join(f"{d['class']} {d['score']:.2f}" for d in dets[:6]) + (" ..." if len(dets) > 6 else "")
            print(f"{path}: {len(dets)} detection(s){': ' + summary if dets else ''}")
        bar.update(len(chunk))
    bar.close()
    info = {
        "checkpoint" if args.checkpoint else "model": str(args.checkpoint or args.model), "classes": list(classes),
        "thresh": args.thresh, "box_format": "xyxy, continuous pixel coordinates of the image", "images": results,
    }  # fmt: skip
    for video, name in zip(videos, output_names(videos)):
        _demo_video(detector, video, out / f"{Path(name).stem}.mp4", classes, args)
    if not paths:
        return 0
    atomic_write_text(out / "detections.json", json.dumps(info, indent=1) + "\n")
    for writer in writers:
        print(f"wrote {writer.fmt.upper()} labels of {len(writer.stems)} image(s) to {writer.close()}")
    print(f"wrote {len(results)} image(s) and detections.json to {out}"
          + (f"; skipped {len(skipped)} unreadable file(s), named above" if skipped else ""))
    return 0


def _demo_video(detector, path: Path, dst: Path, classes, args: argparse.Namespace) -> None:
    """Every frame of the video ``path`` drawn into ``dst`` (batches of ``--bs`` frames through ``predict``)."""
    import numpy as np
    from PIL import Image

    from fpn.video import process_video
    from fpn.visualize import draw_detections

    def draw(frames, first):
        dets = detector.predict(frames, batch_size=args.bs)
        return [np.asarray(draw_detections(Image.fromarray(f), {"boxes": d.boxes, "scores": d.scores,
                                                                "labels": d.labels}, classes, args.thresh))
                for f, d in zip(frames, dets)]  # fmt: skip

    frames, seconds = process_video(path, dst, draw, chunk=max(CHUNK // 4, args.bs), progress=args.progress)
    print(f"{path}: {frames} frames drawn into {dst} ({frames / max(seconds, 1e-9):.1f} frames/s)")


def _predict(detector, paths: list[Path], args: argparse.Namespace, skipped: list[str]) -> list:
    """``detector.predict`` of each path; a file that does not decode gets None, its reason appended to ``skipped``
    and said once; out of memory (``--checkpoint`` on a GPU) is a one-line error."""
    from fpn.engine.device import OUT_OF_MEMORY, resolve_device, resolve_precision, test_out_of_memory

    try:
        return detector.predict(paths, batch_size=args.bs)
    except UserError as e:  # a file of the chunk does not decode: it alone is skipped
        if len(paths) == 1:
            skipped.append(str(e))
            print(f"warning: {e}; skipped", file=sys.stderr)
            return [None]
        return [det for path in paths for det in _predict(detector, [path], args, skipped)]
    except OUT_OF_MEMORY:
        device = resolve_device(args.device or "auto")
        cfg = detector._runner.cfg  # a --checkpoint's config (ONNX runs on the CPU)
        precision = resolve_precision(args.amp or "auto", device)
        raise test_out_of_memory(device, "test step", args.bs, cfg.data, precision) from None


def _label_writers(args: argparse.Namespace, detector, out: Path) -> list:
    """A ``LabelWriter`` per ``--save-labels`` format. COCO labels get the category ids of the checkpoint's dataset
    when it is a COCO dataset that still resolves with the same classes (a labelling project's ids), else 1..C."""
    from fpn.data.writers import LabelWriter

    ids = None
    if "coco" in args.save_labels and args.checkpoint:
        from fpn.data.catalog import resolve_dataset

        d = detector._runner.cfg.data
        try:
            spec = resolve_dataset(d.dataset, d.data_dir, train_json=d.train_json, train_images=d.train_images,
                                   test_json=d.test_json, test_images=d.test_images)  # fmt: skip
            if spec.category_ids and tuple(spec.classes) == tuple(detector.classes):
                ids = spec.category_ids
        except (UserError, OSError):  # the training data is not here: ids 1..C
            pass
        print(f"COCO labels: category ids {'of dataset ' + d.dataset if ids else '1..C (the classes in order)'}")
    return [LabelWriter(fmt, out / fmt, detector.classes, ids if fmt == "coco" else None, args.save_conf)
            for fmt in dict.fromkeys(args.save_labels)]
