"""The reverse process as a video: one frame per sampler step, the step and t written on each frame.

Each frame is the grid of x_t (the sample entering the step) with, to its right, the network's
predicted x_0 at that step (:func:`diffusion_lib.viz.trajectory_frames`); the last frame's prediction
is the final sample. GIF through Pillow, MP4 (H.264) through imageio-ffmpeg's bundled ffmpeg.

    python -m diffusion_lib sample --checkpoint runs/digits_cfg/checkpoints/last.ckpt --out grid.png \\
        --trajectory reverse.mp4
    >>> out = sample(model, schedule, shape=(16, 1, 16, 16), y=labels, capture_steps="all", ...)
    >>> save_trajectory_video(out.trajectory, "reverse.gif", nrow=4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write
from .viz import grid_image, trajectory_frames

VIDEO_SUFFIXES = (".gif", ".mp4")
CAPTION_HEIGHT = 14  # pixels of the text band above each frame


def annotated_frames(trajectory, nrow: int = 8, scale: int = 4, with_pred_x0: bool = True) -> list[np.ndarray]:
    """One uint8 RGB picture (H', W', 3) per captured step, captioned "step i/K  t=T".

    Args:
        trajectory: a :class:`diffusion_lib.sampling.Trajectory` (x_t, pred_x0 of shape (K, N, C, H, W)).
        nrow: images per grid row.
        scale: integer upscaling (nearest neighbour) so small images stay visible.
        with_pred_x0: show the predicted x_0 to the right of each x_t.

    Returns:
        K arrays of equal shape (K = number of captured steps).

    Raises:
        ValueError: an empty trajectory or scale < 1.
    """
    if trajectory is None or len(trajectory.steps) == 0:
        raise ValueError("the trajectory is empty: sample with capture_steps='all'")
    if scale < 1:
        raise ValueError(f"scale must be an int >= 1; got {scale}")
    frames = trajectory_frames(trajectory, with_pred_x0=with_pred_x0)
    total = len(trajectory.steps)
    font = ImageFont.load_default()
    pictures = []
    for frame, step, t in zip(frames, trajectory.steps, trajectory.timesteps):
        pixels = grid_image(frame, nrow=nrow)  # uint8 (H, W, C), C = 1 or 3
        grid = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (max(grid.width, 120), grid.height + CAPTION_HEIGHT), "black")
        canvas.paste(grid, (0, CAPTION_HEIGHT))
        ImageDraw.Draw(canvas).text((2, 1), f"step {step + 1}/{total}  t={t}", fill="white", font=font)
        pictures.append(np.asarray(canvas))
    return pictures


def save_trajectory_video(trajectory, path: str | Path, nrow: int = 8, fps: float = 10.0, scale: int = 4,
                          hold_last_s: float = 1.5, with_pred_x0: bool = True) -> Path:
    """Write the denoising of a grid as a GIF (Pillow) or MP4 (imageio-ffmpeg), atomically.

    Args:
        trajectory: a :class:`diffusion_lib.sampling.Trajectory` (capture_steps="all" for every step).
        path: ``.gif`` or ``.mp4``.
        nrow, scale, with_pred_x0: as for :func:`annotated_frames`.
        fps: frames per second.
        hold_last_s: how long the last frame stays (GIF: its duration; MP4: repeated frames).

    Returns:
        The path written. A GIF has exactly one frame per captured step.

    Raises:
        ValueError: another suffix, fps <= 0, or an empty trajectory.
        ImportError: MP4 without imageio-ffmpeg (the message says how to install it).
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"the trajectory video must end in {' or '.join(VIDEO_SUFFIXES)}; got {path}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    pictures = annotated_frames(trajectory, nrow, scale, with_pred_x0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(p) for p in pictures]
        durations = [int(1000 / fps)] * (len(images) - 1) + [int(1000 * max(hold_last_s, 1 / fps))]
        return atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True,
                                                             append_images=images[1:], duration=durations, loop=0))
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise ImportError("MP4 needs imageio-ffmpeg: pip install 'diffusion_lib[tracking]' (or pip install "
                          "imageio-ffmpeg); or write a .gif") from error
    height, width = pictures[0].shape[:2]
    padded = (height + 15) // 16 * 16, (width + 15) // 16 * 16  # H.264 / yuv420p want multiples of 16
    frames = [np.pad(p, ((0, padded[0] - height), (0, padded[1] - width), (0, 0))) for p in pictures]
    frames += [frames[-1]] * int(round(hold_last_s * fps))

    def write(tmp: str) -> None:
        writer = imageio_ffmpeg.write_frames(tmp, (padded[1], padded[0]), fps=fps, macro_block_size=1,
                                             output_params=["-f", "mp4"])
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return atomic_write(path, write)
