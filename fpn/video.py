"""Video files for ``fpn demo``: frames in, drawn frames out, with PyAV (the optional extra ``fpn[video]``).

PyAV binds FFmpeg's libraries in-process and ships them in its wheel (no ffmpeg program, no other
dependency): frames arrive as RGB uint8 arrays, the same input ``fpn.Detector.predict`` takes from an image.
The output is H.264 (libx264) in an MP4 at the input's frame rate and size, written to a temporary name and
renamed when complete. ``process_video`` knows nothing of models: the caller turns a chunk of frames into
drawn frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from fpn.errors import UserError
from fpn.io import atomic_open

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
EXTRA = "pip install 'fpn[video]'"


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def require_av(what: str):
    """The ``av`` module, or a UserError naming ``what`` (the command and file) and the extra to install."""
    try:
        import av
    except ImportError:
        raise UserError(f"{what}: video needs PyAV: {EXTRA}") from None
    return av


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


def video_info(path: str | Path) -> tuple[int, int, Fraction, int]:
    """(width, height, frame rate, frame count; 0 where the container does not say) of the first video stream."""
    av = require_av(str(path))
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return stream.codec_context.width, stream.codec_context.height, Fraction(rate), int(stream.frames or 0)
    except av.FFmpegError as e:
        raise UserError(f"{path}: not a readable video ({_reason(e)})") from None


def read_frames(path: str | Path):
    """The frames of the first video stream, in order, as RGB uint8 (H, W, 3) arrays."""
    av = require_av(str(path))
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise UserError(f"{path}: not a readable video ({_reason(e)})") from None


class VideoWriter:
    """RGB uint8 frames of one size into an H.264 MP4 at ``rate`` frames per second; ``path`` appears only
    when ``close()`` completes (a context manager closes it; an exception leaves nothing behind)."""

    def __init__(self, path: str | Path, width: int, height: int, rate: Fraction | float):
        av = require_av(str(path))
        self.path = Path(path)
        self._file_cm = atomic_open(self.path, "wb")
        self._file = self._file_cm.__enter__()
        self._container = av.open(self._file, "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(rate).limit_denominator(100000))
        self._stream.width, self._stream.height = width, height
        # 4:2:0 (what every player takes) needs even sizes; an odd-sized video keeps its size in 4:4:4
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._av = av

    def write(self, frame: np.ndarray) -> None:
        picture = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(picture))

    def close(self, ok: bool = True) -> None:
        """Finish the file (``ok``) or discard it."""
        try:
            if ok:
                self._container.mux(self._stream.encode())  # flush the encoder's delayed frames
            self._container.close()
        except BaseException as e:
            self._file_cm.__exit__(type(e), e, e.__traceback__)  # removes the temporary file
            raise
        if ok:
            self._file_cm.__exit__(None, None, None)  # renames it into place
        else:
            abandoned = RuntimeError("video not completed")
            self._file_cm.__exit__(RuntimeError, abandoned, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def process_video(
    src: str | Path, dst: str | Path, draw: Callable[[list[np.ndarray], int], Sequence[np.ndarray]],
    chunk: int = 16, progress: bool | None = None,
) -> tuple[int, float]:
    """Every frame of ``src`` through ``draw(frames, index of the first)`` (a chunk at a time, same-sized drawn
    frames back) into ``dst`` at ``src``'s frame rate and size, with a progress bar; (frames, seconds)."""
    from tqdm import tqdm

    width, height, rate, count = video_info(src)
    t0, done = time.perf_counter(), 0
    bar = tqdm(total=count or None, desc=Path(src).name, unit="frame", dynamic_ncols=True,
               disable=not progress if progress is not None else None, leave=False)  # fmt: skip
    with VideoWriter(dst, width, height, rate) as writer:
        frames: list[np.ndarray] = []
        for frame in read_frames(src):
            frames.append(frame)
            if len(frames) == chunk:
                done = _flush(writer, draw, frames, done, bar)
        if frames:
            done = _flush(writer, draw, frames, done, bar)
        if done == 0:
            raise UserError(f"{src}: the video has no frames")
    bar.close()
    return done, time.perf_counter() - t0


def _flush(writer: VideoWriter, draw, frames: list[np.ndarray], done: int, bar) -> int:
    for drawn in draw(frames, done):
        writer.write(drawn)
    bar.update(len(frames))
    n = done + len(frames)
    frames.clear()
    return n
