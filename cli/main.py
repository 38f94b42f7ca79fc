"""The ``hubsync`` command line (``python -m cli`` works too).

Commands are a small registry: each ``Command`` names its handler and its arguments. ``sync
--source CODE`` takes the codes of the source systems' registry (``resources.sources``).

Dagster, DuckDB and the assets are imported by the handlers that need them, not here: importing
Dagster takes seconds, and `hubsync --help` or a configuration error should not wait for it.
"""

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli.home import load_project_dotenv, prepare_dagster_home
from cli.reachability import all_system_codes, unreachable_message
from resources.private_files import make_new_files_private
from resources.settings import PROJECT_ROOT, ConfigError, Settings, load_settings
from resources.sources import source_codes, source_system

if TYPE_CHECKING:
    import duckdb

    from resources.warehouse import WarehouseResource

Handler = Callable[[argparse.Namespace], int]

UI_HOST = "127.0.0.1"
DAGSTER_DEV_SHUTDOWN_S = 30


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _warehouse(settings: Settings) -> "WarehouseResource":
    from resources.warehouse import WarehouseResource

    return WarehouseResource.of(settings)


def _hub_reset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yes", action="store_true", help="do it (without: only say what would be forgotten)"
    )


def _hub_reset(args: argparse.Namespace) -> int:
    from cli.hub_reset import hub_reset  # opens the warehouse: imports Dagster

    return hub_reset(args)


def _campusonline(handler: str) -> Handler:
    """The CAMPUSonline command ``handler`` of cli/campusonline.py, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        unreachable = unreachable_message(load_settings(), ["co"])
        if unreachable:
            print(unreachable, file=sys.stderr)
            return 1
        from cli import campusonline

        return getattr(campusonline, handler)(args)

    return run


def _run_sync(settings: Settings, *, full: bool, sources: Sequence[str] = ()) -> int:
    """Run one sync in this process and print its progress and summary; 0 when it succeeded."""
    import dagster as dg

    from assets.partitions import SyncMode, new_sync_key
    from assets.sync import has_successful_full_sync
    from cli.runs import SyncKeyTaken, render_summary, run_sync
    from pipelines.definitions import build_definitions

    prepare_dagster_home()
    if not full:
        with _warehouse(settings).connection() as conn:
            full = not has_successful_full_sync(conn)
        if full:
            print("hubsync: no successful full sync yet, so this one is full")
    mode: SyncMode = "full" if full else "incremental"
    defs = build_definitions(settings)
    selection = None
    if sources:
        groups = ["sync", *(source_system(code).name for code in sources)]
        selection = list(dg.AssetSelection.groups(*groups).resolve(defs.resolve_asset_graph()))
    try:
        report = run_sync(defs, mode, new_sync_key(mode), asset_selection=selection)
    except SyncKeyTaken as exc:
        print(f"hubsync: {exc}", file=sys.stderr)
        return 1
    print(render_summary(report, warehouse=settings.warehouse_path))
    return 0 if report.success else 1


def _sync(args: argparse.Namespace) -> int:
    settings = load_settings()
    unreachable = unreachable_message(settings, args.source or all_system_codes())
    if unreachable:
        print(unreachable, file=sys.stderr)
        return 1
    return _run_sync(settings, full=args.full, sources=args.source)


def _demo(args: argparse.Namespace) -> int:
    from cli.local_sandbox import (
        environment,
        sandbox_environment,
        sandbox_state_dir,
        started_sandbox,
    )

    settings = load_settings()
    with ExitStack() as stack:
        if settings.uses_sandbox:
            print("hubsync: starting the sandbox (simulated CAMPUSonline, Stud.IP, LMS and HUB)")
            sandbox = stack.enter_context(
                started_sandbox(sandbox_state_dir(settings.warehouse_path))
            )
            stack.enter_context(environment(sandbox_environment(sandbox.urls)))
            settings = load_settings()
        else:  # real systems: say so in one line if one does not answer
            unreachable = unreachable_message(settings, all_system_codes())
            if unreachable:
                print(unreachable, file=sys.stderr)
                return 1
        code = _run_sync(settings, full=True)
    print(
        "\nSee the run, its assets and the warehouse tables in the Dagster UI:\n"
        f"  .venv/bin/hubsync ui   then open http://{UI_HOST}:3000\n"
        "Query the warehouse: .venv/bin/hubsync export sync_runs"
    )
    return code


def _ui(args: argparse.Namespace) -> int:
    from cli import dagster_dev
    from cli.local_sandbox import sandbox_environment, sandbox_state_dir, started_sandbox

    settings = load_settings()
    home = prepare_dagster_home()
    command = dagster_dev.dagster_dev_command(
        str(PROJECT_ROOT / "workspace.yaml"), args.host, args.port, verbose=args.verbose
    )
    with ExitStack() as stack:
        env = dict(os.environ)
        if args.verbose:  # the runs' console log level (pipelines/jobs.py)
            env["HUBSYNC_CONSOLE_LOG_LEVEL"] = "DEBUG"
        if settings.uses_sandbox:
            sandbox = stack.enter_context(
                started_sandbox(sandbox_state_dir(settings.warehouse_path))
            )
            env.update(sandbox_environment(sandbox.urls))
            print(
                "hubsync: sandbox running: "
                + ", ".join(f"{k} {u}" for k, u in sandbox.urls.items())
            )
        print(
            f"hubsync: Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True
        )
        # Started from DAGSTER_HOME: from the project folder dagster would warn that the
        # project's dagster.yaml is not the instance's (it is copied there).
        process, output = dagster_dev.start(command, cwd=str(home), env=env, verbose=args.verbose)
        code = _wait_for_dagster_dev(process)
        output.join(timeout=5)  # its last lines
        return code


def _wait_for_dagster_dev(process: "subprocess.Popen[str]") -> int:
    try:
        return process.wait()
    except KeyboardInterrupt:
        print("hubsync: stopping the Dagster UI (Ctrl-C again to force)", file=sys.stderr)
    try:  # dagster dev got the same Ctrl-C and is shutting its services down
        return process.wait(timeout=DAGSTER_DEV_SHUTDOWN_S)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        process.terminate()  # its webserver and daemon exit when it does (shutdown pipes)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox.server import main as sandbox_main

    return sandbox_main(list(args.args))


# A sync run holds DuckDB's one lock while it runs (RunHold); an export waits that long for it.
EXPORT_LOCK_WAIT_S = 120.0


def _export(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.warehouse_path.exists():  # opening it would create an empty one
        print(
            f"hubsync: there is no warehouse at {settings.warehouse_path} (HUBSYNC_WAREHOUSE); "
            "`hubsync demo` or `hubsync sync` creates it",
            file=sys.stderr,
        )
        return 1
    from cli.export import (
        export_students,
        export_table,
        export_unsendable_persons,
        warehouse_tables,
    )

    with ExitStack() as stack:
        conn = stack.enter_context(_export_connection(settings))
        if args.table == "students":
            export_students(
                conn, sys.stdout, co_base_url=settings.co.api_url, zone=settings.co.timezone
            )
            return 0
        if args.table == "unsendable_persons":
            export_unsendable_persons(conn, args.format, sys.stdout)
            return 0
        tables = warehouse_tables(conn)
        if args.table not in tables:
            print(
                f"hubsync: the warehouse {settings.warehouse_path} has no table {args.table!r}; "
                f"available: {', '.join(tables)}; and students, unsendable_persons",
                file=sys.stderr,
            )
            return 1
        export_table(conn, args.table, args.format, sys.stdout)
    return 0


@contextmanager
def _export_connection(settings: Settings) -> Iterator["duckdb.DuckDBPyConnection"]:
    """The warehouse, once no other process (a sync step) holds its lock; says so if it waits."""
    import duckdb

    from resources.warehouse import WarehouseError, WarehouseResource, _is_lock_conflict

    path = str(settings.warehouse_path)
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(
                WarehouseResource.of(settings, lock_timeout_s=0).connection()
            )
        except WarehouseError as exc:
            if not (isinstance(exc.__cause__, duckdb.Error) and _is_lock_conflict(exc.__cause__)):
                raise
            print(
                f"hubsync: the warehouse {path} is in use by another process (a sync writes "
                f"it); waiting up to {EXPORT_LOCK_WAIT_S:g} s for it",
                file=sys.stderr,
                flush=True,
            )
            waiting = WarehouseResource.of(settings, lock_timeout_s=EXPORT_LOCK_WAIT_S)
            conn = stack.enter_context(waiting.connection())
        yield conn


def _sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full", action="store_true", help="full sync even if incremental would do"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        choices=source_codes(),
        help="sync only this source (repeatable)",
    )


def _student_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "id", help="CAMPUSonline obfuscated id (IDENTNROBFUSCATED) or person number (STPERSONNR)"
    )


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=3000, help="web UI port (default 3000)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log everything, at DEBUG: each run's framework events and every daemon tick "
        "(by default INFO, without the per-tick lines)",
    )
    parser.add_argument(
        "--host",
        default=UI_HOST,
        help=f"address the UI listens on (default {UI_HOST}: this machine only; "
        "0.0.0.0 exposes it, on purpose only)",
    )


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table",
        help="warehouse table or view, e.g. sync_runs; or students: every person as the "
        "connector's student JSON with their studies, applications, courses and registrations; "
        "or unsendable_persons: the persons not sent to the HUB, and why",
    )
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")


COMMANDS: tuple[Command, ...] = (
    Command("demo", "start the sandbox if no real systems are configured, run a full sync", _demo),
    Command("sandbox", "serve the simulated CO, Stud.IP, LMS and HUB APIs (see --help)", _sandbox),
    Command("ui", "open the Dagster UI (starts the sandbox unless real URLs are set)", _ui,
            arguments=_ui_arguments),
    Command("sync", "run one sync now (full if there is no successful full sync yet)", _sync,
            arguments=_sync_arguments),
    Command("sync-one", "sync one student and print them as JSON", _campusonline("sync_one"),
            arguments=_student_id),
    Command("show-student", "print one student as CAMPUSonline returns them",
            _campusonline("show_student"), arguments=_student_id),
    Command("show-studies", "print one student's studies", _campusonline("show_studies"),
            arguments=_student_id),
    Command("show-applications", "print one student's applications",
            _campusonline("show_applications"), arguments=_student_id),
    Command("export", "write a warehouse table, or the students, to stdout", _export,
            arguments=_export_arguments),
    Command("hub-reset", "forget what the HUB acknowledged (after switching or restoring "
            "the HUB); the next sync sends everything", _hub_reset, arguments=_hub_reset_arguments),
)  # fmt: skip
COMMANDS_BY_NAME = {command.name: command for command in COMMANDS}
PASSTHROUGH = "sandbox"  # its arguments, --help included, go to `sandbox.server.main` unparsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubsync",
        description="Sync CAMPUSonline, Stud.IP and the LMS into the HUB (Dagster pipelines).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.help, add_help=command.name != PASSTHROUGH
        )
        if command.arguments is not None:
            command.arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [PASSTHROUGH]:
        args = argparse.Namespace(command=PASSTHROUGH, args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    command = COMMANDS_BY_NAME[args.command]
    make_new_files_private()  # the warehouse, sandbox state, Dagster's run storage
    load_project_dotenv()
    try:
        return command.run(args)
    except ConfigError as exc:
        print(f"hubsync: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hubsync: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_warehouse_error(exc):
            raise
        print(f"hubsync: {exc}", file=sys.stderr)
        return 1


def _is_warehouse_error(exc: Exception) -> bool:
    # resources.warehouse is loaded already if it raised: no import (of Dagster) just to check
    warehouse = sys.modules.get("resources.warehouse")
    return warehouse is not None and isinstance(exc, warehouse.WarehouseError)
