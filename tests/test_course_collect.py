"""`course handin --submit` and `course collect`: the hub's hand-in path (deploy/hub, deploy/kubernetes).

The collector runs as the instructor (often root) over folders students wrote, so every trick a student
could plant in their own folder is tried here: links to another student's file or to a root-only file, a
named pipe that would block a reader, an archive over the size limit, a folder name that is no student id.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tarfile

import pytest

from diffusion_lib.course import collect as collect_module
from diffusion_lib.course.collect import SUBMITTED_NAME, collect
from diffusion_lib.course.handin import submit


def _archive(path, text="x = 1\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    member = path.parent / "member.py"
    member.write_text(text)
    with tarfile.open(path, "w:gz") as tf:
        tf.add(member, arcname="diffusion_lib/member.py")
    member.unlink()
    return path


def test_collect_names_students_by_folder_and_keeps_the_time(tmp_path):
    handins = tmp_path / "handins"
    _archive(handins / "alice" / SUBMITTED_NAME, "alice = 1\n")
    # bob names his archive after alice: the folder, not the archive, says whose it is
    _archive(handins / "bob" / "alice.tar.gz")
    _archive(handins / "bob" / SUBMITTED_NAME, "bob = 1\n")
    (handins / "carol").mkdir()
    early = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    late = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    os.utime(handins / "alice" / SUBMITTED_NAME, (early, early))
    os.utime(handins / "bob" / SUBMITTED_NAME, (late, late))
    out = tmp_path / "submissions"
    results = {r.student: r for r in collect(handins, out, deadline=dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc),
                                             verbose=False)}
    assert sorted(p.name for p in out.iterdir()) == ["alice.tar.gz", "bob.tar.gz"]
    with tarfile.open(out / "bob.tar.gz") as tf:
        assert tf.extractfile("diffusion_lib/member.py").read() == b"bob = 1\n"
    assert results["alice"].late is False and results["bob"].late is True
    assert os.stat(out / "bob.tar.gz").st_mtime == pytest.approx(late)
    assert results["carol"].archive is None and results["carol"].problem == "nothing handed in"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_collect_refuses_links_pipes_and_oversized_archives(tmp_path, monkeypatch):
    handins, secret = tmp_path / "handins", tmp_path / "root-only.txt"
    secret.write_text("instructor secret")
    os.chmod(secret, 0o600)
    _archive(handins / "alice" / SUBMITTED_NAME)
    (handins / "mallory").mkdir()
    (handins / "mallory" / SUBMITTED_NAME).symlink_to(handins / "alice" / SUBMITTED_NAME)
    (handins / "trent").mkdir()
    (handins / "trent" / SUBMITTED_NAME).symlink_to(secret)
    (handins / "eve").symlink_to(handins / "alice")                 # a whole folder as a link
    (handins / "pipe").mkdir()
    os.mkfifo(handins / "pipe" / SUBMITTED_NAME)                    # would block a plain open()
    (handins / "big").mkdir()
    (handins / "big" / SUBMITTED_NAME).write_bytes(b"\0" * 2048)
    (handins / "..hidden").mkdir()
    monkeypatch.setattr(collect_module, "MAX_ARCHIVE_BYTES", 1024)
    out = tmp_path / "submissions"
    results = {r.student: r for r in collect(handins, out, verbose=False)}
    assert sorted(p.name for p in out.iterdir()) == ["alice.tar.gz"]
    assert "a link" in results["mallory"].problem and "a link" in results["trent"].problem
    assert results["eve"].problem.startswith("not a plain folder")
    assert "not a regular file" in results["pipe"].problem
    assert results["big"].problem == f"{SUBMITTED_NAME} refused: 0.0 MB, over the 0 MB limit"
    assert results["..hidden"].problem == "folder name is not a valid student id"
    assert secret.read_text() == "instructor secret"


def test_collect_wants_an_aware_deadline(tmp_path):
    (tmp_path / "h").mkdir()
    with pytest.raises(ValueError, match="must carry a timezone"):
        collect(tmp_path / "h", tmp_path / "s", deadline=dt.datetime(2026, 12, 2), verbose=False)
    with pytest.raises(FileNotFoundError, match="no hand-in folder"):
        collect(tmp_path / "missing", tmp_path / "s", verbose=False)


def test_submit_replaces_the_earlier_hand_in(tmp_path):
    folder = tmp_path / "handin"
    folder.mkdir()
    submit(_archive(tmp_path / "a" / "one.tar.gz", "v = 1\n"), folder, verbose=False)
    submit(_archive(tmp_path / "b" / "two.tar.gz", "v = 2\n"), folder, verbose=False)
    assert [p.name for p in folder.iterdir()] == [SUBMITTED_NAME]
    with tarfile.open(folder / SUBMITTED_NAME) as tf:
        assert tf.extractfile("diffusion_lib/member.py").read() == b"v = 2\n"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        submit(tmp_path / "a" / "one.tar.gz", tmp_path / "nowhere", verbose=False)


def test_handin_submit_without_a_hub_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COURSE_HANDIN_DIR"}
    done = subprocess.run([sys.executable, "-m", "diffusion_lib", "course", "handin", "--submit", "--root", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done
    assert "COURSE_HANDIN_DIR is not set" in done.stderr


# --- the "Hand in" button of handin.ipynb (diffusion_lib/course/handin_button.py) --------------------------

def _student_copy(root):
    """A release with one library file, as released (its hash in the manifest)."""
    import hashlib
    import json

    from diffusion_lib.course.handin import MANIFEST_FILE

    library = root / "diffusion_lib" / "homework_schedules.py"
    library.parent.mkdir(parents=True)
    library.write_text("def homework_schedule(T):\n    raise NotImplementedError('Task 1')\n")
    manifest = root / MANIFEST_FILE
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"files": {
        "diffusion_lib/homework_schedules.py": hashlib.sha256(library.read_bytes()).hexdigest()}}))
    return library


def test_the_button_hands_in_what_changed_and_says_why_when_it_cannot(tmp_path, monkeypatch):
    from diffusion_lib.course.handin_button import hand_in

    monkeypatch.delenv("COURSE_HANDIN_DIR", raising=False)
    root, folder = tmp_path / "release", tmp_path / "handin"
    library = _student_copy(root)
    folder.mkdir()
    untouched = hand_in(root, handin_dir=folder)
    assert untouched.state == "refused" and "nothing to hand in" in untouched.text, untouched
    assert list(folder.iterdir()) == []
    library.write_text("def homework_schedule(T):\n    return T\n")
    outside_the_hub = hand_in(root)
    assert outside_the_hub.state == "written" and "COURSE_HANDIN_DIR is not set" in outside_the_hub.text
    assert "rename it to <student-id>" in outside_the_hub.text
    assert list(folder.iterdir()) == []
    assert hand_in(root, handin_dir=tmp_path / "nowhere").state == "refused"
    monkeypatch.setenv("COURSE_HANDIN_DIR", str(folder))
    done = hand_in(root)
    assert done.state == "submitted", done
    assert "diffusion_lib/homework_schedules.py" in done.text and f"submitted: {folder / SUBMITTED_NAME}" in done.text
    assert "rename" not in done.text      # under the hub the folder, not the archive's name, says whose it is
    with tarfile.open(folder / SUBMITTED_NAME) as tf:
        assert b"return T" in tf.extractfile("diffusion_lib/homework_schedules.py").read()


def test_the_button_widget_runs_the_hand_in_on_click(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    import ipywidgets

    from diffusion_lib.course.handin_button import handin_button

    root, folder = tmp_path / "release", tmp_path / "handin"
    _student_copy(root)
    folder.mkdir()
    monkeypatch.setenv("COURSE_HANDIN_DIR", str(folder))
    box = handin_button(root)
    button, empty = box.children[0].children
    assert isinstance(button, ipywidgets.Button) and button.description == "Hand in"
    button.click()      # untouched: refused, nothing written
    assert "course-handin-refused" in box.children[1].value and not (folder / SUBMITTED_NAME).exists()
    empty.value = True  # "hand in even if nothing changed"
    button.click()
    assert "course-handin-submitted" in box.children[1].value and (folder / SUBMITTED_NAME).is_file()
    assert not button.disabled
