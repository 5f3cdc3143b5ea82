"""The local stack: real Kafka, MinIO, PostgreSQL, Spark and Airflow on 127.0.0.1, no Docker.

Usage (normally through make, which first builds the venv from requirements.lock):
    make up        # = stack/bin/stackctl up      install what is missing, start, probe, initialise
    make status    # = stack/bin/stackctl status  each service's state, port, URL and logins
    make down      # = stack/bin/stackctl down    stop everything (data is kept)
    make clean     # = stack/bin/stackctl clean   stop and delete all local data (caches kept)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.env import ConfigError, Env, MissingSetting
from common.probes import NotReady
from stack import install, manager
from stack.settings import ENV_FILE, SecretLost, ensure_env_file, load_settings

log = logging.getLogger("stackctl")


def _print_status(settings) -> None:
    rows = manager.status(settings)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("service", "state", "port", "pid")}
    header = "  ".join(k.upper().ljust(widths[k]) for k in widths) + "  URL"
    print(header)
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["url"])
    print()
    for what, where in manager.credentials(settings).items():
        print(f"{what + ':':18} {where}")
    print(f"{'Logs:':18} {settings.log_dir}/<service>.log")


def main(argv: list[str] | None = None) -> int:
    """Run the stack CLI; return the process exit status."""
    parser = argparse.ArgumentParser(
        prog="stackctl",
        description="Run the project's real services as local processes under supervisord, "
                    "all bound to 127.0.0.1. Configuration: .env (created from .env.example "
                    "with random secrets on the first `up`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--env-file", type=Path, default=ENV_FILE, metavar="PATH",
                        help=f"the stack's configuration (default {ENV_FILE}); IOT_ENV_FILE plays no part here")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="install what is missing, start every service, probe, initialise")
    sub.add_parser("down", help="stop every service and supervisord; data is kept")
    sub.add_parser("status", help="show each service's state, port and URL, and where the logins are")
    sub.add_parser("clean", help="stop, then delete all local data (STACK_HOME); download caches stay")
    sub.add_parser("sql", help="apply sql/*.sql again (idempotent)")
    sub.add_parser("spark-conf-dir", help="print the SPARK_CONF_DIR `make up` renders (stackctl spark-submit uses it)")
    args = parser.parse_args(argv)
    os.umask(0o077)  # everything the stack writes is private to its user (stackctl sets it too)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # While the broker starts, kafka-python logs every refused connection as an error; the
    # readiness probe reports what matters itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    try:
        if args.command == "up":
            for name in ensure_env_file(args.env_file):
                log.info("generated %s into %s", name, args.env_file)
        settings = load_settings(Env.from_file(args.env_file))
        if args.command == "up":
            timings = manager.up(settings)
            log.info("stack is up in %.1fs (%s)", timings["total"],
                         ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total"))
            _print_status(settings)
        elif args.command == "down":
            print("stopped" if manager.down(settings) else "nothing was running")
        elif args.command == "status":
            _print_status(settings)
        elif args.command == "clean":
            for path in manager.clean(settings):
                print(f"deleted {path}")
        elif args.command == "spark-conf-dir":
            print(settings.spark_conf_dir)
        elif args.command == "sql":
            from stack.init import apply_sql

            print("applied", ", ".join(apply_sql(settings)))
    except (install.MissingPrerequisite, MissingSetting, NotReady, SecretLost, ConfigError) as exc:
        print(f"stackctl {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
