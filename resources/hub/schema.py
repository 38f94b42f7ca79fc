"""DDL of the HUB delivery tables (the "hub: …" migrations in resources/warehouse.py).

``hub_desired`` is what the HUB should hold (rebuilt from the student graph every sync),
``hub_state`` what it acknowledged; the diff of the two becomes ``hub_events``, grouped into
``hub_batches`` (the exact JSON posted, with its messageId and fate), and ``hub_log`` keeps the
HUB's per-item answers. One physical table per concept with a view per object type
(``hub_desired_users``, ``hub_state_sections``, …) for people querying the warehouse; the views
are not part of a migration but follow ``OBJECT_MODELS`` on every start (``type_views``).
"""

import re

from resources.hub import OBJECT_MODELS

_TABLES = """
CREATE TABLE hub_desired (
    object_type VARCHAR NOT NULL,      -- term | subject | user | section | studentparent | …
    key VARCHAR NOT NULL,              -- the business key: code, or a link's '|'-joined codes
    sis_id VARCHAR,
    payload JSON NOT NULL,             -- the exact object to send
    origin VARCHAR                     -- the person or course it came from (for tracing)
);
CREATE TABLE hub_state (
    object_type VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    sis_id VARCHAR,
    payload JSON,                      -- as acknowledged; NULL: the HUB holds it, content unknown
    certain BOOLEAN NOT NULL,          -- false: a post's fate is unknown, the HUB may hold it
    acknowledged_in VARCHAR NOT NULL,  -- sync key
    message_id VARCHAR,
    acknowledged_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (object_type, key)
);
CREATE TABLE hub_events (
    sync_key VARCHAR NOT NULL,
    seq INTEGER NOT NULL,              -- order of sending within the sync
    batch_no INTEGER NOT NULL,
    object_type VARCHAR NOT NULL,
    action VARCHAR NOT NULL,           -- insert | update | delete
    key VARCHAR NOT NULL,
    log_sis_id VARCHAR NOT NULL,       -- how getLog names the item: sis_id, else code, else '0'
    payload JSON NOT NULL,             -- the object (insert/update) or its key fields (delete)
    PRIMARY KEY (sync_key, seq)
);
CREATE TABLE hub_batches (
    sync_key VARCHAR NOT NULL,
    batch_no INTEGER NOT NULL,
    phase INTEGER NOT NULL,            -- batches of one phase are acknowledged before the next
    object_type VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    objects INTEGER NOT NULL,
    envelope JSON NOT NULL,            -- the exact text posted, stored before posting
    bytes INTEGER NOT NULL,
    status VARCHAR NOT NULL,           -- building | pending | posting | sent | acknowledged |
                                       -- unknown | not_arrived | rejected | superseded |
                                       -- forgotten
    message_id VARCHAR,
    http_status INTEGER,
    http_body VARCHAR,                 -- the HUB's answer when it refused or failed
    attempts INTEGER,
    posted_at TIMESTAMPTZ,
    log_status INTEGER,                -- getLog status: 1..4
    acknowledged_at TIMESTAMPTZ,
    PRIMARY KEY (sync_key, batch_no)
);
CREATE TABLE hub_log (
    sync_key VARCHAR NOT NULL,
    batch_no INTEGER NOT NULL,
    message_id VARCHAR NOT NULL,
    seq INTEGER,                       -- the event answered (NULL: no event matched the item)
    object_type VARCHAR NOT NULL,
    sis_id VARCHAR NOT NULL,
    level VARCHAR NOT NULL,            -- the worst level of the item's messages: i | w | e
    outcome VARCHAR NOT NULL,          -- applied | reconciled | failed
    message VARCHAR NOT NULL,
    logged_at TIMESTAMPTZ NOT NULL
);
"""


def _plural(object_type: str) -> str:
    return f"{object_type}s"


HUB_SCHEMA = _TABLES

# The tables with a view per object type. A migration runs once, so views made by one would
# never show a type added after a warehouse was created (a fresh one would have it): the views
# are made on every start instead (``warehouse.ensure_type_views``).
TYPE_VIEW_TABLES = ("hub_desired", "hub_state")
# How DuckDB stores one of those views: tells them apart from views people add themselves.
TYPE_VIEW_SQL = re.compile(
    r"CREATE VIEW (\w+) AS SELECT \* FROM (hub_desired|hub_state) WHERE \(object_type = '[^']*'\);"
)


def type_views() -> dict[str, str]:
    """The view of each object type over each of ``TYPE_VIEW_TABLES``: name -> its query."""
    return {
        f"{table}_{_plural(t)}": f"SELECT * FROM {table} WHERE object_type = '{t}'"
        for table in TYPE_VIEW_TABLES
        for t in OBJECT_MODELS
    }


# A batch the HUB refuses (400) is split in halves until the refused objects are isolated; an
# object refused alone is logged without a messageId. A message the HUB no longer knows (getLog
# 404) or still processes past HUB_MESSAGE_MAX_AGE is settled as an unknown outcome.
HUB_REFUSALS_SCHEMA = """
ALTER TABLE hub_log ALTER COLUMN message_id DROP NOT NULL;  -- NULL: refused, no message
ALTER TABLE hub_batches ADD COLUMN split_from INTEGER;      -- the refused batch this half came from
ALTER TABLE hub_batches ADD COLUMN given_up_in VARCHAR;     -- the sync that settled it as unknown
"""

# A batch's envelope is kept zlib-compressed (about 7x smaller): DuckDB rewrites a row group's
# column whenever rows are added to it, and the 1,000 envelopes (82 MB) of a first full sync at
# 100,000 students share one row group with every later sync's batches, so each sync's
# checkpoint copied them again (0.25 s). Batches stored before keep their JSON in ``envelope``.
HUB_COMPRESSED_ENVELOPES_SCHEMA = """
ALTER TABLE hub_batches ADD COLUMN envelope_zlib BLOB;  -- the exact text posted, zlib-compressed
ALTER TABLE hub_batches ALTER COLUMN envelope DROP NOT NULL;
"""
