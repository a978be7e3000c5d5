"""JupyterHub for one GPU host: every student's server is a container of the course's student image.

Read by the hub container of deploy/hub/docker-compose.yml; every site setting is an environment variable
of that file (deploy/hub/.env.example lists them). docs/class.md explains the choices.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from course_spawner import CourseSpawner  # noqa: E402

c = get_config()  # noqa: F821 (JupyterHub provides it)
env = os.environ.get

# --- the hub and its proxy (configurable-http-proxy, started by the hub) -----------------------------------
c.JupyterHub.bind_url = "http://:8000"
c.JupyterHub.hub_ip = "0.0.0.0"                      # the servers reach the hub API over the course network
c.JupyterHub.hub_connect_ip = env("HUB_CONNECT_HOST", "hub")
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/data/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "/srv/jupyterhub/data/proxy.pid"

# --- who may log in --------------------------------------------------------------------------------------
# NativeAuthenticator (course_auth.py: its login page, fixed for JupyterHub 6): students sign up at /hub/signup,
# an admin authorises them at /hub/authorize. Swap it for OAuth (oauthenticator: GitHub, a university's OIDC)
# or LTI (ltiauthenticator) with COURSE_AUTHENTICATOR and that package's settings (docs/class.md).
c.JupyterHub.authenticator_class = env("COURSE_AUTHENTICATOR", "course_auth.CourseNativeAuthenticator")
c.Authenticator.admin_users = {name for name in env("COURSE_ADMINS", "instructor").split(",") if name}
c.Authenticator.allow_all = True                     # NativeAuthenticator's own approval decides who gets in
c.NativeAuthenticator.open_signup = env("COURSE_OPEN_SIGNUP", "false").lower() == "true"
c.NativeAuthenticator.minimum_password_length = 10
c.NativeAuthenticator.check_common_password = True

# --- one container per student ---------------------------------------------------------------------------
c.JupyterHub.spawner_class = CourseSpawner
c.DockerSpawner.image = env("COURSE_STUDENT_IMAGE", "diffusion-lib-student:latest")
c.CourseSpawner.admin_image = env("COURSE_INSTRUCTOR_IMAGE", "")   # the admins' servers: grading, formgrader
c.DockerSpawner.network_name = env("COURSE_NETWORK", "diffusion-lib-hub")
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True                        # a stopped server's container goes; its volume stays
c.DockerSpawner.name_template = "course-{username}"
c.DockerSpawner.extra_host_config = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                                     "pids_limit": int(env("COURSE_PIDS_LIMIT", "4096")),
                                     "shm_size": env("COURSE_SHM_SIZE", "2g")}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = int(env("COURSE_START_TIMEOUT", "600"))   # the first start copies the release
c.Spawner.http_timeout = 120
c.CourseSpawner.datasets_dir = env("COURSE_DATASETS_HOST_DIR", "")
c.CourseSpawner.handins_dir = "/srv/handins"         # the hand-in folder as mounted into the hub container
c.CourseSpawner.handins_host_dir = env("COURSE_HANDINS_HOST_DIR", "")
c.CourseSpawner.grading_host_dir = env("COURSE_GRADING_HOST_DIR", "")   # staff only: formgrader's folder
c.CourseSpawner.student_uid = int(env("COURSE_STUDENT_UID", "1000"))
c.CourseSpawner.student_gid = int(env("COURSE_STUDENT_GID", "1000"))
c.CourseSpawner.profiles = {
    "cpu": {"display_name": "CPU: homework parts 1 to 3.2b (smoke profiles)",
            "mem_limit": env("COURSE_CPU_MEM", "8G"), "cpu_limit": float(env("COURSE_CPU_CORES", "2")), "gpus": 0},
    "gpu": {"display_name": "GPU: one NVIDIA GPU for 3.2c and the full profiles",
            "mem_limit": env("COURSE_GPU_MEM", "32G"), "cpu_limit": float(env("COURSE_GPU_CORES", "8")), "gpus": 1},
}

# How often the hub reads activity from the proxy and the servers report theirs (seconds): the culler
# decides on it. Shorter than the idle timeout, or a busy server looks idle.
c.JupyterHub.last_activity_interval = int(env("COURSE_ACTIVITY_INTERVAL", "300"))
c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": env("COURSE_ACTIVITY_INTERVAL", "300")}

# --- idle servers stop (their volumes stay) ---------------------------------------------------------------
c.JupyterHub.load_roles = [{"name": "idle-culler", "services": ["idle-culler"],
                            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}]
c.JupyterHub.services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                f"--timeout={int(env('COURSE_IDLE_TIMEOUT', '3600'))}",
                f"--cull-every={int(env('COURSE_CULL_EVERY', '300'))}"],
}]
