"""``fpn demo`` on a video file (fpn.video, PyAV: the ``fpn[video]`` extra) on the tiny checkpoint."""

import sys
from fractions import Fraction

import numpy as np
import pytest
from tiny_model import rectangles_image

from fpn.cli import main
from fpn.errors import UserError
from fpn.video import VideoWriter, process_video, read_frames, require_av, video_info

try:
    import av  # noqa: F401

    HAVE_AV = True
except ImportError:
    HAVE_AV = False
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV is not installed (pip install 'fpn[video]')")


def frames(n=5, height=128, width=160):
    """``n`` generated frames: the tiny detector's coloured rectangles on noise, a different layout each."""
    return [rectangles_image(100 + i, height, width)[0].permute(1, 2, 0).numpy() for i in range(n)]


def block_error(a, b) -> float:
    """Mean absolute difference of the 8x8 block means of two same-sized frames."""
    h, w = a.shape[0] // 8, a.shape[1] // 8
    blocks = [f[:h * 8, :w * 8].astype(float).reshape(h, 8, w, 8, 3).mean((1, 3)) for f in (a, b)]
    return float(np.abs(blocks[0] - blocks[1]).mean())


def write_clip(path, images, rate=10):
    with VideoWriter(path, images[0].shape[1], images[0].shape[0], rate) as w:
        for im in images:
            w.write(im)
    return path


@needs_av
def test_the_writer_and_reader_keep_count_size_rate_and_pixels_roughly(tmp_path):
    images = frames(4, 96, 128)
    write_clip(tmp_path / "c.mp4", images, rate=Fraction(30000, 1001))
    assert video_info(tmp_path / "c.mp4") == (128, 96, Fraction(30000, 1001), 4)
    back = list(read_frames(tmp_path / "c.mp4"))
    assert [f.shape for f in back] == [(96, 128, 3)] * 4 and back[0].dtype == np.uint8
    # H.264 is lossy (the noise most of all) but 8x8 block means stay close, and each frame is nearest its own
    error = np.array([[block_error(a, b) for a in images] for b in back])
    assert (error.argmin(1) == np.arange(4)).all() and error.diagonal().max() < 4, error
    # an odd size is kept (4:4:4 instead of 4:2:0)
    write_clip(tmp_path / "odd.mp4", frames(2, 47, 63))
    assert video_info(tmp_path / "odd.mp4")[:2] == (63, 47)


@needs_av
def test_process_video_hands_chunks_in_order_and_a_failure_leaves_no_file(tmp_path):
    write_clip(tmp_path / "c.mp4", frames(7, 64, 64))
    seen = []

    def draw(chunk, first):
        seen.append((first, len(chunk)))
        return [255 - f for f in chunk]

    n, seconds = process_video(tmp_path / "c.mp4", tmp_path / "o.mp4", draw, chunk=3, progress=False)
    assert (n, seen) == (7, [(0, 3), (3, 3), (6, 1)]) and seconds > 0
    assert video_info(tmp_path / "o.mp4")[3] == 7

    def fail(chunk, first):
        raise UserError("boom")

    with pytest.raises(UserError, match="boom"):
        process_video(tmp_path / "c.mp4", tmp_path / "f.mp4", fail, chunk=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "o.mp4"]  # no f.mp4, no temporary file


@needs_av
def test_an_unreadable_video_is_one_line_naming_it(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(UserError, match=r"bad\.mp4: not a readable video"):
        video_info(tmp_path / "bad.mp4")


@needs_av
@pytest.mark.slow
def test_demo_draws_every_frame_of_a_video(tiny_checkpoint, tmp_path, capsys):
    images = frames(5)
    clip = write_clip(tmp_path / "clip.mp4", images)
    rc = main(["demo", str(clip), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--bs", "2",
               "--thresh", "0.3", "--amp", "none", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clip.mp4"]
    assert video_info(tmp_path / "o" / "clip.mp4") == (160, 128, Fraction(10), 5)  # same count, size and rate
    drawn = list(read_frames(tmp_path / "o" / "clip.mp4"))
    source = list(read_frames(clip))
    for a, b in zip(source, drawn):  # boxes and labels drawn on every frame (the tiny model finds rectangles)
        assert (np.abs(a.astype(int) - b.astype(int)).max(-1) > 60).sum() > 50
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"{clip}: 5 frames drawn into {tmp_path / 'o' / 'clip.mp4'} (")
    assert out[-1].endswith(" frames/s)")


def test_without_pyav_a_video_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(UserError) as e:
        require_av("clip.mp4")
    assert str(e.value) == "clip.mp4: video needs PyAV: pip install 'fpn[video]'"
    (tmp_path / "clip.mp4").write_bytes(b"")
    # said before the checkpoint is read (this one does not exist)
    rc = main(["demo", str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "none.pth"), "--out",
               str(tmp_path / "o"), "--no-progress", "--amp", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {tmp_path / 'clip.mp4'}: video needs PyAV: pip install 'fpn[video]'"
    assert not (tmp_path / "o").exists()
