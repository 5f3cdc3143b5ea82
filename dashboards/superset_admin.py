"""Create Superset's admin, or reset its password, from the environment.

Usage (Superset's own virtualenv; `make up` runs it, stack/init.py):

    SUPERSET_ADMIN_USER=admin SUPERSET_ADMIN_PASSWORD=... python -m dashboards.superset_admin

`superset fab create-admin --password ...` would put the password on a command line, which
every local user can read in `ps`; this takes it from the environment instead. Needs
SUPERSET_CONFIG_PATH (the stack's superset_config.py) and a migrated, initialised metadata
database (`superset db upgrade`, `superset init`).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    """Create or update the admin user; return the exit status."""
    user, password = os.environ.get("SUPERSET_ADMIN_USER", ""), os.environ.get("SUPERSET_ADMIN_PASSWORD", "")
    if not user or not password:
        print("superset_admin: SUPERSET_ADMIN_USER and SUPERSET_ADMIN_PASSWORD must be set (see .env.example)",
              file=sys.stderr)
        return 2
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        sm = app.appbuilder.sm
        existing = sm.find_user(username=user)
        if existing is None:
            role = sm.find_role(sm.auth_role_admin)
            if role is None:
                print(f"superset_admin: no {sm.auth_role_admin} role: run `superset init` first", file=sys.stderr)
                return 1
            if not sm.add_user(user, "IoT", "Admin", f"{user}@localhost", role, password=password):
                print(f"superset_admin: could not create the admin {user!r} (see Superset's log above)",
                      file=sys.stderr)
                return 1
            print(f"superset_admin: created the admin {user}")
        else:
            sm.reset_password(existing.id, password)
            print(f"superset_admin: reset the password of {user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
