"""Files hubsync creates hold personal data and credentials: only their owner may read them.
Kept free of heavy imports, so the CLI can tighten the umask before anything else runs."""

import os

PRIVATE_UMASK = 0o077


def make_new_files_private() -> None:
    """From now on this process creates files 0600 and folders 0700 (the umask only tightens)."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
