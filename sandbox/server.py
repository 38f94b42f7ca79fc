"""``hubsync sandbox``: the four simulated systems over one world, in one process.

Default ports are 8701 CO, 8702 Stud.IP, 8703 LMS and 8704 HUB (``--port-base`` moves all four;
``0`` picks free ports). Each server answers, besides its API and its own ``/_sandbox/faults``
and ``/_sandbox/requests`` routes, the world's admin routes:

* ``GET /_sandbox/world``: seed, size, world time and record counts;
* ``POST /_sandbox/world/step`` ``{"seed": n, "include_deletes": false, "scale": 1.0}``: apply a
  batch of changes (see :meth:`World.step`) and return what changed;
* ``POST /_sandbox/world/clock`` ``{"advance_seconds": n}``: move world time forward;
* ``GET /_sandbox/expected``: the world's expected HUB state (``sandbox.expected``).

With a state directory the world and the HUB's state survive a restart (the world is pickled on
a clean stop, the HUB keeps ``hub_state.json``), so a sandbox that was synced keeps matching the
warehouse that synced it.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resources import sources
from sandbox.http import FaultConfig, HttpError, Request, Response, SandboxServer
from sandbox.world import World

log = logging.getLogger("sandbox")

DEFAULT_PORT_BASE = 8701
HUB_SERVER = "sandbox.hub:HubServer"


def server_classes() -> dict[str, str]:
    """code -> module:class of each simulated system: hubsync's source systems in registry
    order (ports 8701, 8702, …), then the HUB."""
    return {**{s.code: s.sandbox for s in sources.SOURCE_SYSTEMS}, sources.HUB_CODE: HUB_SERVER}


class Sandbox:
    """The four servers over one world. Use :func:`running_sandbox` to start and stop them."""

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port_base: int = DEFAULT_PORT_BASE,
        state_dir: Path | None = None,
        faults: dict[str, FaultConfig] | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.world = world
        self.state_dir = state_dir
        faults = faults or {}
        options = options or {}
        hub_options = dict(options.get("hub", {}))
        if state_dir is not None:
            hub_options.setdefault("state_path", state_dir / "hub_state.json")
        self.servers: dict[str, SandboxServer] = {}
        for offset, (system, server_class) in enumerate(server_classes().items()):
            system_options = hub_options if system == "hub" else options.get(system, {})
            server = sources.load(server_class)(
                world,
                host=host,
                port=port_base + offset if port_base else 0,
                faults=faults.get(system),
                **system_options,
            )
            _add_world_routes(server, world)
            self.servers[system] = server

    @property
    def co(self) -> SandboxServer:
        return self.servers["co"]

    @property
    def studip(self) -> SandboxServer:
        return self.servers["studip"]

    @property
    def lms(self) -> SandboxServer:
        return self.servers["lms"]

    @property
    def hub(self) -> SandboxServer:
        return self.servers["hub"]

    @property
    def urls(self) -> dict[str, str]:
        """Base URLs as hubsync's ``CO_API_URL``, ``STUDIP_API_URL``, … settings expect them."""
        return {system: server.base_url for system, server in self.servers.items()}

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point hubsync at this sandbox."""
        names = sources.url_variables()
        return {names[system]: url for system, url in self.urls.items()}

    def start(self) -> None:
        started: list[SandboxServer] = []
        try:
            for server in self.servers.values():
                server.start()
                started.append(server)
        except OSError:
            for server in started:
                server.stop()
            raise

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self.state_dir is not None:
            save_world(self.world, self.state_dir)


def _add_world_routes(server: SandboxServer, world: World) -> None:
    def describe(request: Request) -> Response:
        with world.lock:
            return Response.json(
                {
                    "seed": world.seed,
                    "students": world.size,
                    "now": world.clock.now().isoformat(),
                    "clock_offset_seconds": world.clock.offset_seconds,
                    "steps": world.step_count,
                    "co_students": len(world.co_students),
                    "co_studies": len(world.co_studies),
                    "co_applications": len(world.co_applications),
                    "studip_users": len(world.studip_users),
                    "studip_courses": len(world.studip_courses),
                    "lms_registrations": len(world.lms_registrations),
                }
            )

    def step(request: Request) -> Response:
        body = request.json() or {}
        try:
            summary = world.step(
                body.get("seed"),
                include_deletes=bool(body.get("include_deletes", False)),
                scale=float(body.get("scale", 1.0)),
            )
        except (TypeError, ValueError) as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        return Response.json(
            {
                "seed": summary.seed,
                "at": summary.at.isoformat(),
                "counts": summary.counts(),
                "changes": summary.changes,
            }
        )

    def clock(request: Request) -> Response:
        body = request.json() or {}
        try:
            now = world.clock.advance(float(body.get("advance_seconds", 0)))
        except (TypeError, ValueError) as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        return Response.json(
            {"now": now.isoformat(), "clock_offset_seconds": world.clock.offset_seconds}
        )

    def expected(request: Request) -> Response:
        from sandbox.expected import expected_hub_state

        result = expected_hub_state(world)
        return Response.json({"state": result.state, "unsendable": result.unsendable})

    server.router.add("GET", "/_sandbox/world", describe)
    server.router.add("POST", "/_sandbox/world/step", step)
    server.router.add("POST", "/_sandbox/world/clock", clock)
    server.router.add("GET", "/_sandbox/expected", expected)


# -- state -------------------------------------------------------------------------------------


def world_path(state_dir: Path) -> Path:
    return state_dir / "world.pickle"


def save_world(world: World, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    target = world_path(state_dir)
    temporary = target.with_suffix(".tmp")
    with world.lock:
        temporary.write_bytes(pickle.dumps(world, protocol=pickle.HIGHEST_PROTOCOL))
    temporary.replace(target)


def load_or_create_world(seed: int, students: int, state_dir: Path | None) -> World:
    """The saved world of ``state_dir`` when it has the same seed and size, else a new one."""
    if state_dir is not None and world_path(state_dir).exists():
        try:
            world = pickle.loads(world_path(state_dir).read_bytes())  # noqa: S301 - our own file
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            log.warning("ignoring unreadable sandbox state %s: %s", world_path(state_dir), exc)
        else:
            if isinstance(world, World) and (world.seed, world.size) == (seed, students):
                return world
            log.warning("sandbox state in %s is for another world; starting afresh", state_dir)
        reset_state(state_dir)
    return World(seed, students)


def reset_state(state_dir: Path) -> None:
    for name in ("world.pickle", "hub_state.json"):
        (state_dir / name).unlink(missing_ok=True)


@contextmanager
def running_sandbox(
    *,
    port_base: int = DEFAULT_PORT_BASE,
    students: int = 500,
    seed: int = 42,
    host: str = "127.0.0.1",
    quiet: bool = True,
    world: World | None = None,
    state_dir: Path | None = None,
    faults: dict[str, FaultConfig] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Sandbox]:
    """Start the four servers (in threads of this process) and stop them on exit.

    ``port_base=0`` picks free ports. ``quiet`` keeps the per-request log lines out of the
    console (they are logged at INFO on the ``sandbox`` logger).
    """
    if quiet:
        logging.getLogger("sandbox").setLevel(logging.WARNING)
    world = world or load_or_create_world(seed, students, state_dir)
    sandbox = Sandbox(
        world, host=host, port_base=port_base, state_dir=state_dir, faults=faults, options=options
    )
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


# -- command line ------------------------------------------------------------------------------


def _parse_faults(values: list[str]) -> dict[str, FaultConfig]:
    """``--fault co:error_rate=0.1`` (repeatable; ``all:`` applies to every server)."""
    systems = list(server_classes())
    settings: dict[str, dict[str, Any]] = {system: {} for system in systems}
    for value in values:
        target, _, assignment = value.partition(":")
        name, _, raw = assignment.partition("=")
        if target not in (*systems, "all") or not name or not raw:
            raise argparse.ArgumentTypeError(
                f"--fault {value!r}: expected SYSTEM:NAME=VALUE with SYSTEM one of "
                f"{', '.join(systems)} or all"
            )
        parsed: Any = raw.split(",") if name == "script" else _number(raw)
        for system in systems if target == "all" else (target,):
            settings[system][name] = parsed
    try:
        return {system: FaultConfig.from_dict(values) for system, values in settings.items()}
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--fault: {exc}") from None


def _number(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubsync sandbox",
        description="Serve simulated CAMPUSonline, Stud.IP, LMS and HUB APIs over one "
        "synthetic university until Ctrl-C.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; use 0.0.0.0 only on purpose)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help="CO on this port, Stud.IP +1, LMS +2, HUB +3 (default 8701)",
    )
    parser.add_argument("--students", type=int, default=500, help="world size (default 500)")
    parser.add_argument("--seed", type=int, default=42, help="world seed (default 42)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the world and the HUB state here across restarts",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard the saved state in --state-dir first"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SYSTEM:NAME=VALUE",
        help="inject faults, e.g. co:error_rate=0.1, hub:retry_after=2, "
        "all:latency_floor_ms=20, studip:script=error,drop (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = _parse_faults(args.fault)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.students < 1:
        parser.error("--students must be at least 1")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if args.state_dir is not None and args.fresh:
        reset_state(args.state_dir)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"building a world of {args.students} students (seed {args.seed}) ...", flush=True)
    try:
        with running_sandbox(
            port_base=args.port_base,
            students=args.students,
            seed=args.seed,
            host=args.host,
            quiet=args.quiet,
            state_dir=args.state_dir,
            faults=faults,
        ) as sandbox:
            for name, url in sandbox.env.items():
                print(f"{name}={url}", flush=True)
            print("sandbox ready; Ctrl-C stops it", flush=True)
            stop.wait()
            print("stopping ...", flush=True)
    except OSError as exc:
        print(
            f"hubsync sandbox: cannot listen on {args.host}:{args.port_base}..: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
