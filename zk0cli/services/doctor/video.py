"""Video decoding: write a tiny clip, decode it with each backend LeRobot can use.

LeRobot's backends are thin wrappers over PyAV ("pyav") and torchcodec ("torchcodec"); calling
those libraries directly tests the same codecs without importing lerobot (~12 s here).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from zk0cli.core.checks import CheckResult, fail, ok, warn
from zk0cli.services.doctor.context import DoctorContext

NAME = "video decoding"
# LeRobot 0.6 records AV1 with libsvtav1 (configs/video.py); H.264 where that encoder is missing.
ENCODERS = (("libsvtav1", "AV1"), ("libx264", "H.264"))
FRAMES, SIZE, FPS = 8, 64, 30


def check_video(_ctx: DoctorContext) -> CheckResult:
    with tempfile.TemporaryDirectory(prefix="zk0-doctor-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        try:
            codec = write_clip(clip)
        except Exception as exc:  # noqa: BLE001 - whatever PyAV raises, the answer is the same
            return fail(
                NAME, f"PyAV cannot write a test clip: {_one_line(exc)}", "reinstall PyAV: ./install.sh", backends={}
            )
        backends = {"pyav": _try(decode_pyav, clip), "torchcodec": _try(decode_torchcodec, clip)}
    data = {"codec": codec, "backends": backends}
    working = [name for name, error in backends.items() if not error]
    if "pyav" not in working:
        return fail(NAME, f"PyAV cannot decode {codec}: {backends['pyav']}", "reinstall PyAV: ./install.sh", **data)
    if "torchcodec" not in working:
        return warn(
            NAME,
            f"pyav decodes {codec}; torchcodec does not ({backends['torchcodec']})",
            "nothing needed for zk0 (it decodes with pyav); for LeRobot's torchcodec default install FFmpeg 4-8 "
            "shared libraries, e.g. `apt install ffmpeg`",
            **data,
        )
    return ok(NAME, f"pyav and torchcodec decode {codec}", **data)


def write_clip(path: Path) -> str:
    """Encode FRAMES moving-gradient frames; returns the codec used, e.g. 'AV1 (libsvtav1)'."""
    import av
    import numpy as np

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise; 1 = errors only
    encoder, label = next((e for e in ENCODERS if e[0] in av.codecs_available), ENCODERS[-1])
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=FPS)
        assert isinstance(stream, av.VideoStream)  # a video encoder's stream, for the type checker
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        ramp = np.arange(SIZE, dtype=np.uint8)[None, :, None] * 4
        for i in range(FRAMES):
            image = np.broadcast_to(ramp + i * 8, (SIZE, SIZE, 3)).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return f"{label} ({encoder})"


def decode_pyav(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    return frames


def decode_torchcodec(path: Path) -> int:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))
    return len(decoder.get_frames_at(indices=list(range(FRAMES))).data)


def _try(decode, clip: Path) -> str:
    """'' when the backend decoded every frame, else why not (one line)."""
    try:
        decoded = decode(clip)
    except Exception as exc:  # noqa: BLE001 - torchcodec raises RuntimeError/OSError/ImportError when FFmpeg is absent
        return _one_line(exc)
    return "" if decoded == FRAMES else f"decoded {decoded} of {FRAMES} frames"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""  # torchcodec's messages run on for pages
    return f"{type(exc).__name__}: {first}".rstrip(": ")
