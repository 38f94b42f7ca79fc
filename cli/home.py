"""Process set-up shared by the commands: the project's .env and the Dagster instance folder."""

import os
import shutil
import sys
from collections.abc import MutableMapping
from pathlib import Path

from dotenv import load_dotenv

from resources.settings import PROJECT_ROOT

DOTENV_PATH = PROJECT_ROOT / ".env"
DEFAULT_DAGSTER_HOME = PROJECT_ROOT / "data" / "dagster_home"
INSTANCE_CONFIG = PROJECT_ROOT / "dagster.yaml"


def load_project_dotenv(path: Path | None = None) -> None:
    """Load the project's .env, as `dagster dev` does, without overriding the environment.

    The CLI and the code location started by `hubsync ui` then see the same settings.
    """
    load_dotenv(path or DOTENV_PATH, override=False)


def prepare_dagster_home(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Make DAGSTER_HOME (default data/dagster_home) exist, with the project's dagster.yaml.

    CLI runs and `hubsync ui` then share one instance: runs of either show up in the UI, and
    the pool and run limits of dagster.yaml apply. The default home always gets the project's
    current dagster.yaml; an explicitly set DAGSTER_HOME gets it only when it has none, so an
    operator's own instance configuration (e.g. Postgres storage) is never overwritten.
    """
    configured = environ.get("DAGSTER_HOME", "").strip()
    home = Path(configured).expanduser().resolve() if configured else DEFAULT_DAGSTER_HOME
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    wanted = INSTANCE_CONFIG.read_bytes()
    if not target.exists() or (not configured and target.read_bytes() != wanted):
        shutil.copyfile(INSTANCE_CONFIG, target)
    elif target.read_bytes() != wanted:
        print(
            f"hubsync: note: keeping {target}, which differs from {INSTANCE_CONFIG}",
            file=sys.stderr,
        )
    environ["DAGSTER_HOME"] = str(home)
    return home
