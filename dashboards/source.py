"""The data source both BI tools connect to: PostgreSQL's marts, as the read-only BI role."""

from __future__ import annotations

from dataclasses import dataclass

from common.env import Env


@dataclass(frozen=True)
class BiDatabase:
    """Where the dashboards read: the marts of POSTGRES_DB, as BI_DB_USER."""

    host: str
    port: int
    dbname: str
    user: str
    password: str

    @classmethod
    def from_env(cls, env: Env, hint: str) -> BiDatabase:
        """Read POSTGRES_HOST/PORT/DB and BI_DB_USER/PASSWORD; `hint` says how to get the password."""
        return cls(host=env.get("POSTGRES_HOST", "127.0.0.1"), port=env.get_port("POSTGRES_PORT", 5432),
                   dbname=env.get("POSTGRES_DB", "iot"), user=env.get("BI_DB_USER", "iot_bi"),
                   password=env.require("BI_DB_PASSWORD", hint))


@dataclass(frozen=True)
class Provisioning:
    """What a provisioner needs: the BI tool's admin login and the data source."""

    admin_user: str
    admin_password: str
    bi: BiDatabase

    @classmethod
    def from_env(cls, env: Env, user_var: str, default_user: str, password_var: str, hint: str) -> Provisioning:
        return cls(admin_user=env.get(user_var, default_user), admin_password=env.require(password_var, hint),
                   bi=BiDatabase.from_env(env, hint))


def wait_until_healthy(tool: str, url: str, probe, timeout: float) -> None:
    """Poll `probe` with the stack's deadline-bounded wait; raise TimeoutError naming the tool."""
    from common.probes import NotReady, wait_for

    try:
        wait_for(f"{tool} at {url}", probe, timeout)
    except NotReady as exc:
        raise TimeoutError(f"{tool} at {url} not healthy within {timeout:.0f} s: {exc}") from None


def run_cli(prog: str, doc: str, default_url: str, default_wait: float, errors: tuple[type[Exception], ...],
            settings_from_env, wait_until_healthy, provision, argv: list[str] | None = None) -> int:
    """The command line both provisioners share: --url, --spec, --wait; errors to stderr, exit 1."""
    import argparse
    import logging
    import sys
    from pathlib import Path

    from common.env import MissingSetting
    from dashboards.spec import SPEC_PATH, SpecError, load

    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=default_url, help="the BI tool's base URL (default %(default)s)")
    parser.add_argument("--spec", type=Path, default=SPEC_PATH,
                        help="the dashboard spec (default dashboards/spec.yaml)")
    parser.add_argument("--wait", type=float, default=default_wait,
                        help="seconds to wait for the BI tool to be healthy (default %(default)s)")
    args = parser.parse_args(argv)
    if args.wait < 0:
        parser.error("argument --wait: must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        spec = load(args.spec)
        settings = settings_from_env(Env())
        wait_until_healthy(args.url, args.wait)
        result = provision(args.url, settings, spec)
    except (SpecError, MissingSetting, TimeoutError, OSError, *errors) as exc:
        print(f"{prog.split()[-1]} provisioning failed: {exc}", file=sys.stderr)
        return 1
    print(f"dashboard: {result['url']}  (login {settings.admin_user})")
    return 0
