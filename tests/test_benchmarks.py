"""The benchmark scripts: the throughput benchmark's FLOP counting, and that the throughput and training-settings
scripts run end to end on tiny settings."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attention_flops(mapping: dict | None) -> int:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    return counter.get_total_flops()


def test_cpu_flash_attention_is_counted_like_the_gpu_kernels():
    shape = (2, 4, 64, 16)
    expected = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    # PyTorch's counter alone misses the CPU kernel (so diffusers' attention went uncounted before) ...
    assert attention_flops(None) == 0
    # ... and the benchmark's mapping counts it with the GPU kernels' formulas.
    assert attention_flops(load_script().CPU_ATTENTION_FLOPS) == expected


def test_train_throughput_prints_both_tables():
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, check=True)
    lines = result.stdout.splitlines()
    first_table = lines[:lines.index("")]  # a blank line separates the two tables
    rows = {line.split()[0]: line.split() for line in first_table if line.startswith(("ours ", "diffusers "))}
    assert set(rows) == {"ours", "diffusers"}
    assert any(line.startswith("ours, NCHW+loop") for line in lines)
    assert "ceiling GFLOP/s" in result.stdout
    assert "1.5x diffusers' GFLOP/s leaves" in result.stdout
    # diffusers' network does more work per image (one more ResBlock per up level, attention counted)
    assert float(rows["diffusers"][2]) > float(rows["ours"][2]) > 0


def test_training_settings_compares_rows_that_train_the_same_model():
    """On the CPU the Trainer ignores amp and channels_last changes only the layout, so both rows see the same
    losses: the table compares speed, not different runs."""
    script = SCRIPT.parent / "training_settings.py"
    result = subprocess.run([sys.executable, str(script), "--device", "cpu", "--rows", "fp32", "bf16+cl",
                             "--warmup", "1", "--steps", "2", "--set", "model.base_channels=16",
                             "--set", "training.batch_size=8", "--set", "data.image_size=32"],
                            capture_output=True, text=True, timeout=600, check=True)
    lines = result.stdout.splitlines()
    assert "lfw_faces (1x32x32), batch 8" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"fp32", "bf16+cl"}
    assert rows["fp32"][4] == "1.00x"
    assert float(rows["bf16+cl"][-1]) == pytest.approx(float(rows["fp32"][-1]), rel=1e-4)


def test_grading_benchmark_makes_the_three_kinds_of_submission(tmp_path):
    """benchmarks/grading.py's submissions (the grading itself is too slow for the suite): correct carries the
    instructor's files, wrong all but guidance.py, untouched none of them."""
    import tarfile

    spec = importlib.util.spec_from_file_location("grading_bench", SCRIPT.parent / "grading.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = SCRIPT.parents[1]
    kinds = module.make_submissions(root, tmp_path, 3)
    assert kinds == {"correct-0": "correct", "wrong-1": "wrong", "untouched-2": "untouched"}
    members = {}
    for student in kinds:
        with tarfile.open(tmp_path / "subs" / f"{student}.tar.gz") as archive:
            members[student] = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    guidance = (root / "diffusion_lib/guidance.py").read_bytes()
    assert members["correct-0"]["diffusion_lib/guidance.py"] == guidance
    assert "diffusion_lib/guidance.py" not in members["wrong-1"]
    assert set(members["wrong-1"]) == set(members["correct-0"]) - {"diffusion_lib/guidance.py"}
    assert set(members["untouched-2"]) <= {"MANIFEST.json"}
