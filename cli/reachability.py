"""Whether the systems a command talks to answer at all, said in one line when they do not.

Without the sandbox running, a sync used to fail step by step (dozens of lines, no hint) and
`show-student` printed a traceback. A command checks first: any HTTP answer, whatever its
status, means the system is there; no answer (connection refused, unknown host, timeout) is
reported with the setting that names the URL and what to do.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import requests

from resources import sources
from resources.http import safe_url
from resources.settings import VARIABLES_BY_NAME, Settings
from resources.sources import source_system

TIMEOUT_S = 5


@dataclass(frozen=True)
class System:
    code: str  # as `hubsync sync --source` names it; "hub" for the HUB
    name: str
    variable: str  # the setting holding its URL


HUB = System(sources.HUB_CODE, "HUB", sources.HUB_URL_VARIABLE)


def systems() -> list[System]:
    """Every source system of the registry, and the HUB."""
    return [System(s.code, s.label, s.url_variable) for s in sources.SOURCE_SYSTEMS] + [HUB]


def all_system_codes() -> list[str]:
    return [system.code for system in systems()]


def api_url(settings: Settings, code: str) -> str:
    return settings.hub.api_url if code == HUB.code else source_system(code).api_url(settings)


def answers(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when anything answers HTTP at ``url`` (through the proxies requests would use)."""
    try:
        requests.get(url, timeout=timeout_s, allow_redirects=False, stream=True).close()
    except requests.RequestException:
        return False
    return True


def unreachable_message(settings: Settings, codes: Sequence[str]) -> str | None:
    """One line naming the systems among ``codes`` that do not answer, and what to do; None
    when all of them answer."""
    by_code = {system.code: system for system in systems()}
    urls = {code: api_url(settings, code) for code in codes}
    down = [(by_code[code], url) for code, url in urls.items() if not answers(url)]
    if not down:
        return None
    listed = ", ".join(f"{system.name} at {safe_url(url)}" for system, url in down)
    variables = " / ".join(system.variable for system, _ in down)
    sandbox = all(
        url.rstrip("/") == VARIABLES_BY_NAME[system.variable].default for system, url in down
    )
    if sandbox:
        hint = f"start `hubsync sandbox` (or `hubsync ui`) in another terminal, or set {variables}"
    else:
        hint = f"check that it is up and reachable from here, or set {variables}"
    return f"hubsync: no answer from {listed}: {hint}"
