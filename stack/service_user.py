"""The unprivileged user the stack's services run as when `make up` runs as root.

As root, supervisord (the supervisor only) stays root, PostgreSQL runs as `postgres`, and
every other program (Kafka, MinIO, Airflow and the Spark drivers it starts, the producer,
Superset) runs as SERVICE_USER, a system user with no login and no home of its own. What
they can reach, as root (StackSettings):

- the state folder (`/var/lib/iot-lakehouse/<id>/home`: Kafka's and MinIO's data, Airflow's
  and Superset's homes): owned by the service user, 0700;
- the code (`.../app`, a copy of the clone that `make up` refreshes) and the generated configs
  (`.../run`): owned by root, group the service user's, 0750 and 0640: read, never written;
- the download cache (`/var/cache/iot-lakehouse`): root's, group-readable the same way.

Root never writes into a folder the service user owns (it could have planted a symbolic link
there): whatever goes there is written by a child process that runs as the service user.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_SERVICE_USER = "iot-lakehouse"


@dataclass(frozen=True)
class ServiceUser:
    """A user to run programs as: its name, uid and primary gid."""

    name: str
    uid: int
    gid: int

    def run(self, cmd: list[str], home: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
        """subprocess.run `cmd` as this user (its group only, umask 077); with `home`, its
        environment (`env`, else this process's) says HOME, USER and LOGNAME are its own."""
        if home is not None:
            kwargs["env"] = {**(kwargs.get("env") or os.environ), "HOME": str(home), "USER": self.name,
                             "LOGNAME": self.name}
        return subprocess.run(cmd, user=self.uid, group=self.gid, extra_groups=[], umask=0o077, **kwargs)


def lookup(name: str) -> ServiceUser | None:
    """Return the user `name`, or None when it does not exist."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return ServiceUser(name, entry.pw_uid, entry.pw_gid)


def existing(name: str) -> ServiceUser:
    """Return the service user `make up` made (stack.deploy.prepare); raise naming it if absent."""
    found = lookup(name)
    if found is None:
        raise RuntimeError(f"the service user {name} does not exist: run `make up` as root to create it")
    return found


def ensure_service_user(name: str) -> ServiceUser:
    """Return the service user, creating it (a system user and group, no login shell, no home)
    when it does not exist. Only root gets here."""
    found = lookup(name)
    if found:
        if found.uid == 0:
            raise RuntimeError(f"IOT_SERVICE_USER={name} is root: name an unprivileged user")
        return found
    log.info("creating the system user %s that the stack's services run as", name)
    result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                             "--shell", "/usr/sbin/nologin", "--comment", "iot-lakehouse services", name],
                            capture_output=True, text=True)
    if result.returncode != 0 and not lookup(name):  # another `make up` may have made it meanwhile
        raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()} (create the user by hand, or set "
                           "IOT_SERVICE_USER to an existing unprivileged user)")
    found = lookup(name)
    assert found is not None
    return found


def group_name(gid: int) -> str:
    """Return the name of group `gid` (its number when it has none)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def share_tree(root: Path, gid: int) -> int:
    """Make everything under `root` root's and readable (never writable) by group `gid`: folders
    0750, files their owner's bits with read (and execute, if the owner has it) for the group.
    Others get nothing. Symbolic links are left alone. Return how many entries changed."""
    changed = 0
    if not root.exists():
        return changed
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / d for d in dirs), *(Path(folder) / f for f in files)]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                wanted = 0o750
            else:
                wanted = (mode & 0o700) | 0o040 | (0o010 if mode & 0o100 else 0)
            if (st.st_uid, st.st_gid) != (0, gid):
                os.chown(path, 0, gid, follow_symlinks=False)
                changed += 1
            if mode != wanted:
                path.chmod(wanted)
                changed += 1
    return changed


# A child running as the service user writes a file into a folder that user owns: created new
# (mode 600) and renamed into place, so a link planted there is replaced, never followed.
_WRITE = """
import os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
tmp = path + ".%d.tmp" % os.getpid()
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as fh:
    fh.write(sys.stdin.buffer.read())
os.replace(tmp, path)
"""

# The same child makes folders (0700) and, for a stack made before its files were private,
# takes group and other bits off everything under a folder (stack.services.make_private_tree).
_PRIVATE = """
import os, sys
from pathlib import Path
from stack.services import make_private_tree
for d in sys.argv[2:]:
    os.makedirs(d, mode=0o700, exist_ok=True)
print(make_private_tree(Path(sys.argv[1])))
"""


def write_as(user: ServiceUser, path: Path, text: str) -> None:
    """Write `text` to `path` (mode 600) as `user`."""
    result = user.run([sys.executable, "-c", _WRITE, str(path)], input=text.encode(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"writing {path} as {user.name} failed: {result.stderr.decode(errors='replace')[-2000:]}")


def prepare_state(user: ServiceUser, app: Path, state: Path, folders: list[Path]) -> int:
    """As `user`: make `folders` under `state` and make `state` private; return how many
    entries had to be made private."""
    result = user.run([sys.executable, "-c", _PRIVATE, str(state), *map(str, folders)], home=state,
                      env={**os.environ, "PYTHONPATH": str(app)}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"preparing {state} as {user.name} failed: {result.stderr[-2000:]}")
    return int(result.stdout.strip() or 0)
