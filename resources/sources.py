"""The source systems hubsync syncs from, each declared once in ``SOURCE_SYSTEMS``.

Everything that concerns all sources iterates this registry instead of naming them: the
Definitions (each source's resource and assets), ``sync_summary`` (which waits for every source's
assets), the warehouse's migrations, ``hubsync sync --source``, the reachability check, the
local sandbox and its URL settings. A source lives in folders of the same shape:

* ``resources/<name>/__init__.py``: its typed client and ``<name>_resource(settings)``, the
  ``dagster.ConfigurableResource`` under the resource key ``<name>``;
* ``resources/<name>/schema.py``: ``MIGRATIONS``, its tables (``raw_<code>_*`` raw pages,
  ``stg_<code>_*`` staged records, ``<code>_*`` current state with ``changed_in_sync``);
* ``assets/<name>/__init__.py``: ``<NAME>_ASSETS``, in asset group ``<name>``, every one
  downstream of ``sync_run``;
* ``sandbox/<name>.py``: the simulated system the sandbox serves.

The parts are named as ``module:attribute`` and imported when used, so reading the registry
costs nothing: ``hubsync --help`` lists the sources without importing Dagster.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    from resources.migrations import Migration
    from resources.settings import Settings


def load(reference: str) -> Any:
    """The object a ``"package.module:attribute"`` reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True)
class SourceSystem:
    code: str  # `hubsync sync --source CODE`, the quarantine's source, the sandbox's URL key
    name: str  # resource key, asset group and folder in resources/ and assets/
    label: str  # as its users call it
    url_variable: str  # the setting holding its API's URL
    settings: "Callable[[Settings], Any]"  # its part of the settings (has .api_url)
    sandbox: str  # module:class of its simulated server
    resource: str = field(default="")  # module:factory(source settings) -> the resource
    schema: str = field(default="")  # module:MIGRATIONS
    assets: str = field(default="")  # module:list of its asset definitions

    def __post_init__(self) -> None:
        defaults = {
            "resource": f"resources.{self.name}:{self.name}_resource",
            "schema": f"resources.{self.name}.schema:MIGRATIONS",
            "assets": f"assets.{self.name}:{self.name.upper()}_ASSETS",
        }
        for name, default in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, default)

    def api_url(self, settings: "Settings") -> str:
        return str(self.settings(settings).api_url)

    def make_resource(self, settings: "Settings") -> "dg.ConfigurableResource":
        return load(self.resource)(self.settings(settings))

    def migrations(self) -> "Sequence[Migration]":
        return load(self.schema)

    def asset_definitions(self) -> "Sequence[dg.AssetsDefinition]":
        return load(self.assets)


# Registry order is the order of the sandbox's ports (8701, 8702, …) and of the migrations.
SOURCE_SYSTEMS: tuple[SourceSystem, ...] = (
    SourceSystem(
        "co", "campusonline", "CAMPUSonline", "CO_API_URL", lambda s: s.co,
        sandbox="sandbox.campusonline:CoServer",
    ),
    SourceSystem(
        "studip", "studip", "Stud.IP", "STUDIP_API_URL", lambda s: s.studip,
        sandbox="sandbox.studip:StudipServer",
    ),
    SourceSystem(
        "lms", "lms", "LMS", "LMS_API_URL", lambda s: s.lms,
        sandbox="sandbox.lms:LmsServer",
    ),
)  # fmt: skip


def source_system(code: str) -> SourceSystem:
    """The registered source whose code is ``code``; ``KeyError`` naming the known ones."""
    for system in SOURCE_SYSTEMS:
        if system.code == code:
            return system
    raise KeyError(f"no source system {code!r} (known: {', '.join(source_codes())})")


def source_codes() -> list[str]:
    return [system.code for system in SOURCE_SYSTEMS]


HUB_CODE, HUB_URL_VARIABLE = "hub", "HUB_API_URL"


def url_variables() -> dict[str, str]:
    """code -> the setting naming that system's URL: every source system's, then the HUB's."""
    return {**{s.code: s.url_variable for s in SOURCE_SYSTEMS}, HUB_CODE: HUB_URL_VARIABLE}
