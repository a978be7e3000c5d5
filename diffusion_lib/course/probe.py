"""The probe that runs inside the sandbox for host-decided checks: it only computes, never judges.

Copied by :func:`~.sandbox.write_support` as ``_course_probe`` and started by the runner as
``python -P -m _course_probe`` in the submission's working copy. It reads one JSON spec on standard
input (made by :mod:`.host_checks` on the host), calls the student's functions, and writes one JSON
object to the file descriptor in ``COURSE_PROBE_FD``. The submission's code runs in this process, so
what comes out is untrusted data: the host parses it strictly and decides (see :mod:`.host_checks`).

Spec kinds:

- ``{"kind": "schedule", "lengths": [T, ...]}`` -> ``{"betas": {"T": [float, ...] | "error text"}}``;
- ``{"kind": "guidance", "num_classes": K, "mix": [{"shape", "u", "c", "w"}], "guided": [{"shape", "x",
  "y", "w"}]}`` -> ``{"mix": [[float, ...] | "error text"], "guided": [...]}`` (flat, row-major).
"""

from __future__ import annotations

import json
import os
import sys

MAX_SPEC_BYTES = 1 << 20


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _flat(values) -> list:
    import numpy as np

    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def schedule(spec: dict) -> dict:
    """The student's betas for each T of the spec (their values as floats, or the error raised)."""
    import numpy as np

    import diffusion_lib.homework_schedules as homework

    out = {}
    for length in spec["lengths"]:
        try:
            out[str(length)] = _flat(np.asarray(homework.homework_schedule(int(length)), dtype=np.float64))
        except Exception as exc:  # noqa: BLE001 - an error is a result
            out[str(length)] = _error(exc)
    return {"betas": out}


def guidance(spec: dict) -> dict:
    """classifier_free_guidance and guided_prediction on the spec's inputs."""
    import torch
    from torch import nn

    from diffusion_lib.guidance import classifier_free_guidance, guided_prediction

    class Toy(nn.Module):
        num_classes = null_label = int(spec["num_classes"])

        def forward(self, x, t, y=None):
            return x * (y.to(x.dtype) + 1.0)[:, None, None, None]

    out: dict = {"mix": [], "guided": []}
    for case in spec["mix"]:
        try:
            u = torch.tensor(case["u"], dtype=torch.float64).reshape(case["shape"])
            c = torch.tensor(case["c"], dtype=torch.float64).reshape(case["shape"])
            out["mix"].append(_flat(classifier_free_guidance(u, c, float(case["w"])).detach().cpu()))
        except Exception as exc:  # noqa: BLE001
            out["mix"].append(_error(exc))
    for case in spec["guided"]:
        try:
            x = torch.tensor(case["x"], dtype=torch.float64).reshape(case["shape"])
            y = torch.tensor(case["y"], dtype=torch.long)
            t = torch.zeros(len(y), dtype=torch.long)
            out["guided"].append(_flat(guided_prediction(Toy(), x, t, y, float(case["w"])).detach().double().cpu()))
        except Exception as exc:  # noqa: BLE001
            out["guided"].append(_error(exc))
    return out


def main() -> int:
    spec = json.loads(sys.stdin.buffer.read(MAX_SPEC_BYTES))
    fd = int(os.environ["COURSE_PROBE_FD"])
    kinds = {"schedule": schedule, "guidance": guidance}
    try:
        result = kinds[spec["kind"]](spec)
    except Exception as exc:  # noqa: BLE001 - e.g. the student's module does not import
        result = {"error": _error(exc)}
    os.write(fd, json.dumps(result).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
