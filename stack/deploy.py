"""As root, `make up` lays the stack out for its unprivileged service user (stack/service_user.py).

/var/lib/iot-lakehouse/<id>/   root, 0711: the users below pass through, nobody lists it
    app/       root:<service group> 0750: a copy of the clone's code, refreshed by every `make up`
    run/       root:<service group> 0750: generated configs, supervisord's socket
    logs/      root 0700: supervisord's logs of every program
    home/      <service user> 0700: Kafka's and MinIO's data, Airflow's and Superset's homes
    postgres/  postgres 0700: the cluster
/var/cache/iot-lakehouse/      root:<service group> 0750: venvs, jars, Go binaries

The clone itself (perhaps under /root, which nobody else may enter) keeps `.stack/` with the
stack's id and its record of secrets in use, both root's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from common.probes import wait_for
from stack.service_user import ServiceUser, ensure_service_user, share_tree
from stack.settings import StackSettings

log = logging.getLogger(__name__)

# What the services import or run from the clone.
APP_PARTS = ("common", "dags", "dashboards", "jobs", "orchestration", "producer", "sql", "stack", "pyproject.toml")
# The state folders an older version kept in the clone's .stack/ as root, moved once.
STATE_PARTS = ("kafka", "minio", "airflow", "superset")
SHARED_MARK = ".shared"


def _owned_folder(path: Path, uid: int, gid: int, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)


def _source_files(repo: Path, parts: tuple[str, ...]) -> list[Path]:
    files = []
    for part in parts:
        src = repo / part
        if src.is_file():
            files.append(src)
            continue
        for folder, dirs, names in os.walk(src):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [Path(folder) / n for n in names if not n.endswith((".pyc", ".tmp"))]
    return files


def sync_code(repo: Path, app: Path, parts: tuple[str, ...] = APP_PARTS) -> int:
    """Copy `parts` of `repo` into `app`, keeping modification times; delete what the clone no
    longer has. Return how many files were copied or deleted."""
    wanted: set[Path] = set()
    changed = 0
    for src in _source_files(repo, parts):
        rel = src.relative_to(repo)
        wanted.add(rel)
        dest = app / rel
        st = src.stat()
        try:
            dst = dest.stat()
            if dst.st_size == st.st_size and int(dst.st_mtime) == int(st.st_mtime) \
                    and (dst.st_mode & 0o100) == (st.st_mode & 0o100):
                continue
        except FileNotFoundError:
            pass
        dest.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        changed += 1
    for folder, _dirs, names in os.walk(app, topdown=False):
        here = Path(folder)
        if "__pycache__" in here.parts:
            continue
        for name in names:
            rel = (here / name).relative_to(app)
            if rel not in wanted:
                (here / name).unlink()
                changed += 1
        if here != app and not any(here.iterdir()):
            here.rmdir()
        elif here != app and [p.name for p in here.iterdir()] == ["__pycache__"]:
            shutil.rmtree(here)
    return changed


def deploy_code(s: StackSettings, user: ServiceUser) -> int:
    """Refresh the services' copy of the code, compile it (the service user may not write its
    bytecode there) and let the service group read it; return how many files changed."""
    changed = sync_code(s.repo, s.app)
    if changed:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(s.app)], check=True,
                       capture_output=True)
    share_tree(s.app, user.gid)
    return changed


def share_cache(s: StackSettings, user: ServiceUser, force: bool = False) -> int:
    """Let the service group read the download cache (root's): each entry once, again when
    `force` (an installer ran). Return how many entries changed."""
    _owned_folder(s.cache_dir, 0, user.gid, 0o750)
    changed = 0
    for entry in sorted(s.cache_dir.iterdir()):
        mark = entry / SHARED_MARK
        if entry.is_dir() and (force or not mark.exists()):
            mark.touch()
            changed += share_tree(entry, user.gid)
    return changed


def _stop_legacy_supervisord(s: StackSettings) -> None:
    pidfile = s.home / "run" / "supervisord.pid"
    if not pidfile.is_file():
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return
    log.info("stopping the stack an older version started from %s (supervisord pid %d)", s.home, pid)
    os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(f"the older stack's supervisord (pid {pid}) to stop its programs and exit", gone, 180)


def migrate_state(s: StackSettings, user: ServiceUser) -> list[str]:
    """Move the data an older version kept in the clone's .stack/ as root (Kafka, MinIO,
    Airflow, Superset) into the service user's state folder, once; return what moved."""
    moved = []
    legacy = [p for p in STATE_PARTS if (s.home / p).is_dir() and not (s.state / p).exists()]
    if not legacy:
        return moved
    _stop_legacy_supervisord(s)
    for part in legacy:
        shutil.move(str(s.home / part), str(s.state / part))
        cfg = s.state / part / "airflow.cfg"  # written on Airflow's first start, with absolute paths
        if cfg.is_file():
            cfg.write_text(cfg.read_text().replace(str(s.home / part), str(s.state / part)))
        for folder, dirs, files in os.walk(s.state / part):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.chown(name, user.uid, user.gid, follow_symlinks=False)
        moved.append(part)
    for part in ("run", "logs", "spark"):  # generated again under the new layout
        if (s.home / part).is_dir():
            shutil.rmtree(s.home / part)
    log.info("moved %s from %s to %s (owned by %s)", ", ".join(moved), s.home, s.state, user.name)
    return moved


def prepare(s: StackSettings) -> ServiceUser:
    """Make the service user and the layout above, move an older stack's data into it, refresh
    the code; return the service user."""
    assert s.service_user, "only as root"
    user = ensure_service_user(s.service_user)
    s.root_dir.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    _owned_folder(s.root_dir.parent, 0, 0, 0o711)
    _owned_folder(s.root_dir, 0, 0, 0o711)  # an older version let `postgres` own it
    for folder in (s.app, s.run_dir):
        _owned_folder(folder, 0, user.gid, 0o750)
    _owned_folder(s.log_dir, 0, 0, 0o700)
    _owned_folder(s.state, user.uid, user.gid, 0o700)
    migrate_state(s, user)
    if changed := deploy_code(s, user):
        log.info("copied %d changed files of the code to %s", changed, s.app)
    return user
