"""Trajectory capture: the recorded states are the sampler's real states, and they make figures and GIFs."""

import pytest
import torch
from PIL import Image

from diffusion_lib import viz
from diffusion_lib.sampling import ddim_sample, ddpm_sample, inference_timesteps


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_requested_steps_and_shapes(tiny_cond_unet, schedule, sampler):
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    out = sampler(tiny_cond_unet, schedule, noise=noise, y=y, num_inference_steps=10, capture_steps=[9, 0, 3, 3])
    traj = out.trajectory
    assert traj.steps == [0, 3, 9]  # sorted, duplicates dropped
    assert traj.timesteps == inference_timesteps(100, 10)[[0, 3, 9]].tolist()
    assert traj.x_t.shape == traj.pred_x0.shape == (3, 4, 1, 8, 8)
    assert traj.x_t.dtype == traj.pred_x0.dtype == torch.float32
    torch.testing.assert_close(traj.x_t[0], noise)  # the state entering the first step is x_T
    assert traj.pred_x0.abs().max() <= 1.0  # clipped predictions


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_capturing_does_not_change_the_samples(tiny_cond_unet, schedule, sampler):
    run = lambda capture: sampler(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), y=torch.tensor([1, 2]),
                                  num_inference_steps=8, capture_steps=capture,
                                  generator=torch.Generator().manual_seed(3))
    plain, captured = run(None), run("all")
    assert plain.trajectory is None
    assert torch.equal(plain.images, captured.images)
    assert len(captured.trajectory.steps) == 8


def test_ddim_trajectory_follows_the_update_rule(tiny_cond_unet, schedule):
    """Each captured x_t is the DDIM (eta = 0) update of the previous state and its x_0 prediction (Song et al. eq. 12)."""
    out = ddim_sample(tiny_cond_unet, schedule, shape=(3, 1, 8, 8), y=torch.tensor([0, 1, 2]), num_inference_steps=6,
                      capture_steps="all", generator=torch.Generator().manual_seed(0))
    traj = out.trajectory
    abar = schedule.alphas_cumprod
    for k in range(len(traj.steps) - 1):
        t, t_prev = traj.timesteps[k], traj.timesteps[k + 1]
        x_t, x0 = traj.x_t[k], traj.pred_x0[k]
        eps = (x_t - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
        expected = abar[t_prev].sqrt() * x0 + (1 - abar[t_prev]).sqrt() * eps
        torch.testing.assert_close(traj.x_t[k + 1], expected, atol=1e-5, rtol=1e-5)
    # after the last step alpha_bar_prev = 1: the sample is the last prediction of x_0
    torch.testing.assert_close(out.images, traj.pred_x0[-1].clamp(-1, 1))


def test_trajectory_frames_and_gif(tiny_cond_unet, schedule, tmp_path):
    out = ddpm_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), y=torch.tensor([0, 1]), num_inference_steps=5,
                      capture_steps="all", generator=torch.Generator().manual_seed(0))
    frames = viz.trajectory_frames(out.trajectory, final=out.images)
    assert frames.shape == (6, 2, 1, 8, 17)  # 5 steps + final; x_t | spacer | x0
    assert torch.equal(frames[-1, :, :, :, :8], out.images)
    assert frames.abs().max() <= 1.0
    assert viz.trajectory_frames(out.trajectory, with_pred_x0=False).shape == (5, 2, 1, 8, 8)
    path = viz.save_gif(frames, tmp_path / "reverse.gif", nrow=2, scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        assert gif.size == (2 * (2 * 17 + 3), 2 * (8 + 2))  # make_grid: padding 1 around every image
    fig = viz.trajectory_figure(out.trajectory, num_images=2, columns=3)
    assert [ax.get_title() for ax in fig.axes[:3]] == [f"t = {t}" for t in (out.trajectory.timesteps[i] for i in (0, 2, 4))]
