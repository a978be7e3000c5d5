"""CourseSpawner: DockerSpawner for the course, one container of the student image per student.

What it adds to DockerSpawner (dockerspawner 14), each a setting in jupyterhub_config.py:

* **Profiles** chosen on the spawn page: "cpu" (the default) and "gpu" (one NVIDIA GPU through Docker's
  ``device_requests``, the way ``docker run --gpus 1`` asks for it; dockerspawner#244). Each profile sets the
  container's memory and CPU limits.
* **The student's copy of the release** on a named volume ``course-<user>`` over ``/workspace``. Docker fills
  an empty named volume from the image's folder on first use, so the first start seeds it with the release
  (library, homework, coursework/answers); later starts find the student's edits, runs and outputs.
* **The datasets** folder of the host, read-only, at ``/workspace/datasets``, shared by everyone.
* **The hand-in folder**: the host's ``<handins>/<user>`` (created here, owned by the image's student user,
  mode 0700) mounted at ``/handin``. A student's container sees only its own folder, so no student can read
  another's work or hand-in; ``course handin --submit`` writes there and ``course collect`` gathers them.
* **The grading folder**, for admins only: the host's folder that ``course grade`` writes, read-write at
  ``/workspace/grading`` of the staff's server (``$COURSE_GRADING_DIR``), where the instructor repository's
  ``nbgrader_config.py`` points formgrader (hand grades are saved into its gradebook). Students never get it.

Raises (at spawn, shown on the spawn page): HTTP 400 for a profile that is not offered; ValueError for a
user name that cannot name a folder or a hand-in folder that is not a plain folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dockerspawner import DockerSpawner
from traitlets import Dict, Integer, Unicode, default

SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
GRADING_MOUNT = "/workspace/grading"   # where the instructor repository's nbgrader_config.py looks


class CourseSpawner(DockerSpawner):
    """A DockerSpawner with course profiles, a per-student volume and a private hand-in folder."""

    profiles = Dict(
        config=True,
        help="slug -> {display_name, mem_limit, cpu_limit, gpus (0 or a count)}; the first is the default",
    )
    datasets_dir = Unicode("", config=True, help="host folder of the datasets, mounted read-only (empty: none)")
    handins_dir = Unicode("", config=True,
                          help="the host's hand-in folder as the hub sees it (one sub-folder per student)")
    handins_host_dir = Unicode("", config=True,
                               help="the same folder as the Docker engine sees it (bind source; default: handins_dir)")
    student_uid = Integer(1000, config=True, help="uid of the image's student user (owner of the hand-in folder)")
    student_gid = Integer(1000, config=True, help="gid of the image's student user")
    grading_host_dir = Unicode("", config=True,
                               help="the host's grading folder (course grade --output), mounted read-write at "
                                    "/workspace/grading of admins' servers only (empty: none)")
    admin_image = Unicode("", config=True,
                          help="image of the hub admins' servers, e.g. the instructor image (empty: the same image)")
    profile_slug = Unicode(None, allow_none=True, help="the profile this server was started with")

    @default("options_form")
    def _options_form(self) -> str:
        """One radio button per profile, the first checked."""
        rows = []
        for i, (slug, profile) in enumerate(self.profiles.items()):
            checked = " checked" if i == 0 else ""
            rows.append(f'<label><input type="radio" name="profile" value="{slug}"{checked}> '
                        f'{profile.get("display_name", slug)}</label><br>')
        return "\n".join(rows)

    def options_from_form(self, formdata: dict) -> dict:
        """The spawn form's choice: {"profile": slug} (the first profile when none is sent)."""
        chosen = (formdata.get("profile") or [next(iter(self.profiles), "")])[0]
        return {"profile": chosen}

    @default("apply_user_options")
    def _apply_default(self):
        return apply_profile

    def _handin_folder(self) -> Path:
        """``<handins_dir>/<user>``, made by the hub (never through a link) and owned by the student user."""
        name = self.user.name
        if not SAFE_NAME.match(name):
            raise ValueError(f"user name {name!r} cannot name a hand-in folder (allowed: {SAFE_NAME.pattern})")
        root = Path(self.handins_dir)
        folder = root / name
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        if folder.is_symlink() or not folder.is_dir():
            raise ValueError(f"hand-in folder {folder} is not a plain folder")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, self.student_uid, self.student_gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return folder

    async def start(self):
        staff = bool(self.user.admin)
        if self.admin_image and staff:   # staff work in the instructor's repository: grading, formgrader
            self.image = self.admin_image
        volumes = {f"course-{self.user.name}": "/workspace"}
        environment = {"COURSE_HANDIN_DIR": "/handin", "COURSE_PROFILE": self.profile_slug}
        if self.grading_host_dir and staff:
            volumes[self.grading_host_dir] = {"bind": GRADING_MOUNT, "mode": "rw"}
            environment["COURSE_GRADING_DIR"] = GRADING_MOUNT
        if self.datasets_dir:
            volumes[self.datasets_dir] = {"bind": "/workspace/datasets", "mode": "ro"}
        if self.handins_dir:
            folder = self._handin_folder()
            source = Path(self.handins_host_dir or self.handins_dir) / folder.name
            volumes[str(source)] = {"bind": "/handin", "mode": "rw"}
        self.volumes = volumes
        self.environment = {**self.environment, **environment}
        self.log.info("spawning %s with profile %s", self.user.name, self.profile_slug)
        return await super().start()


def apply_profile(spawner: CourseSpawner, user_options: dict) -> None:
    """JupyterHub's ``apply_user_options`` hook: the chosen profile's limits and GPUs, validated (user input).

    Raises:
        tornado.web.HTTPError(400): a profile that is not offered (shown on the spawn page).
    """
    from tornado import web

    slug = (user_options or {}).get("profile") or next(iter(spawner.profiles))
    if not isinstance(slug, str) or slug not in spawner.profiles:
        raise web.HTTPError(400, f"profile {slug!r} is not offered; choose one of {sorted(spawner.profiles)}")
    profile = spawner.profiles[slug]
    spawner.profile_slug = slug
    spawner.mem_limit = profile.get("mem_limit")
    spawner.cpu_limit = profile.get("cpu_limit")
    host_config = {k: v for k, v in spawner.extra_host_config.items() if k != "device_requests"}
    gpus = int(profile.get("gpus", 0))
    if gpus:   # what `docker run --gpus N` asks the engine for (NVIDIA Container Toolkit)
        host_config["device_requests"] = [{"Driver": "nvidia", "Count": gpus, "Capabilities": [["gpu"]]}]
    spawner.extra_host_config = host_config
