"""`python -m devstack run` (broker, Postgres, the five services, the console) or `up`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from devstack import runner
from devstack.state import devstack_dir


def _ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka-port",
        type=int,
        default=None,
        help="broker port (default: 9092 if free, else any; 0: any free port)",
    )
    parser.add_argument(
        "--pg-port",
        type=int,
        default=None,
        help="Postgres port (default: 5432 if free, else any; 0: any free port)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start broker, Postgres and all services (make run)")
    _ports(run)
    run.add_argument(
        "--service-cmd",
        default=runner.default_service_cmd(),
        help="command template per service, {name} and {python} substituted "
        "(default: $DEVSTACK_SERVICE_CMD or `python -m services.{name}`)",
    )
    run.add_argument("--services", default=None, help="comma-separated subset to start")
    run.add_argument("--health-timeout", type=float, default=60.0, metavar="S")
    run.add_argument("--http-port-base", type=int, default=8081, metavar="PORT")

    up = sub.add_parser("up", help="start only broker and Postgres; print the env exports")
    _ports(up)

    sub.add_parser("status", help="print what the current run recorded")

    args = parser.parse_args(argv)
    if args.command == "status":
        state = runner.state_file()
        owner = state.live_owner()
        if owner is None:
            print(f"no run active ({devstack_dir()})")
            return 1
        print(json.dumps({"runner_pid": owner, **state.info()}, indent=2))
        return 0
    if args.command == "up":
        return asyncio.run(
            runner.run(with_services=False, kafka_port=args.kafka_port, pg_port=args.pg_port)
        )
    only = [s.strip() for s in args.services.split(",") if s.strip()] if args.services else None
    return asyncio.run(
        runner.run(
            with_services=True,
            kafka_port=args.kafka_port,
            pg_port=args.pg_port,
            service_cmd=args.service_cmd,
            only=only,
            health_timeout=args.health_timeout,
            http_port_base=args.http_port_base,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
