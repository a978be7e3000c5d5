"""One artifact format for every file the library writes.

Every artifact (model checkpoint, classifier, data cache, feature cache, diffusers-folder metadata, run
summary) is one file holding::

    format           "diffusion_lib"           (foreign files are rejected)
    kind             what it is: "checkpoint", "classifier", "data_cache", "features", "diffusers_metadata",
                     "run_summary"
    version          the layout version of that kind (an int; a newer one than this library reads is refused)
    library_version  diffusion_lib.__version__ of the writer
    payload          a dict, the kind's content

written atomically (temporary file + ``os.replace``) with ``torch.save``, or as JSON when the path ends in
``.json``; read back with ``torch.load(weights_only=True)`` (no pickled code runs) and validated.
Each kind's payload is described where it is written (e.g. :mod:`diffusion_lib.checkpoint`).
"""

from __future__ import annotations

import json
import numbers
import pickle
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from .atomic import atomic_save, atomic_write_text

FORMAT = "diffusion_lib"


def save_artifact(path: str | Path, kind: str, payload: dict, version: int = 1) -> Path:
    """Write ``payload`` as an artifact of ``kind`` at ``version``, atomically.

    Args:
        path: destination; ``.json`` writes JSON (payload must be JSON-serialisable), anything else ``torch.save``.
        kind: the artifact kind (a short name, e.g. "checkpoint").
        payload: the content, a dict (tensors allowed unless JSON).
        version: layout version of this kind, an int >= 1.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``payload`` not a dict, or ``version`` not an int >= 1.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"artifact payload must be a dict; got {type(payload).__name__}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"artifact version must be an int >= 1; got {version!r}")
    record = {"format": FORMAT, "kind": kind, "version": version, "library_version": __version__, "payload": payload}
    path = Path(path)
    if path.suffix == ".json":
        return atomic_write_text(path, json.dumps(record, indent=2, default=str))
    return atomic_save(record, path)


def load_artifact(path: str | Path, kind: str, version: int = 1, *, required: Sequence[str] = (),
                  map_location: str | torch.device = "cpu") -> dict:
    """Read and validate an artifact written by :func:`save_artifact`; return its payload.

    Args:
        path: the file.
        kind: the kind expected; a file of another kind is refused.
        version: the newest layout version this reader understands; newer files are refused.
        required: payload keys that must be present.
        map_location: where tensors are loaded.

    Returns:
        The payload dict (with ``"_version"`` set to the file's version, for readers of several versions).

    Raises:
        FileNotFoundError: no such file (or ``path`` is a folder).
        ValueError: unreadable, truncated or foreign file; another kind; a version that is not an int or is
            newer than ``version``; a missing required key. Each message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{kind} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
        else:
            record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # torch names a refused class or function as "GLOBAL module.name"
            raise ValueError(f"{path} is corrupt or not a torch file (unreadable pickle stream)") from error
        raise ValueError(f"{path} contains code or objects other than tensors and plain data, and was refused "
                         "(only diffusion_lib artifacts are loaded)") from error
    except Exception as error:  # torch and json raise several types for truncated or corrupt files
        reason = " ".join(str(error).split())  # one line
        raise ValueError(f"{path} is corrupt or not a torch file ({type(error).__name__}: {reason})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffusion_lib {kind} file (no format={FORMAT!r} marker); "
                         "was it written by another library or an older version?")
    if record.get("kind") != kind:
        raise ValueError(f"{path} is a {record.get('kind')!r} file; expected a {kind!r} file")
    found = record.get("version")
    if isinstance(found, bool) or not isinstance(found, numbers.Integral):
        raise ValueError(f"{path} has version {found!r}; expected an int")
    if found > version:
        raise ValueError(f"{path} has {kind} version {found}; this library reads <= {version}: upgrade diffusion_lib")
    payload = record.get("payload")
    if not isinstance(payload, dict):
        raise ValueError(f"{path} has no payload dict")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"{kind} {path} is missing {missing}")
    return {**payload, "_version": int(found)}
