"""The CAMPUSonline tables and their migrations (``MIGRATIONS``).

* ``raw_co_students``, ``raw_co_studies``, ``raw_co_applications``: the raw pages of each sync
  (``raw_page_table_ddl``, added by the migration itself).
* ``stg_co_*``: the typed, validated rows of each sync's pages (one row per CO row), with the
  page they came from and a hash of their content (without ``SOURCE``/``TIMESTAMP``).
* ``co_students``, ``co_studies``, ``co_applications``: the current rows, one per id, with CO's
  field names, ``TIMESTAMP`` in UTC, ``row_hash`` and ``changed_in_sync`` (the key of the sync
  that last changed the row).
* ``co_sync_cursor``: one row per sync whose CO landing completed: the effective mode, the
  per-type LastSyncDate reached and the LiveSync maps (``{"<id>": "<UTC ISO time>"}``).

The column lists mirror the row models of ``resources.campusonline`` (a test keeps them equal).
"""

from resources.campusonline import SERVICES
from resources.change_detection import row_hash_sql
from resources.migrations import Migration, raw_page_table_ddl

RAW_TABLES = {code: f"raw_co_{code}" for code in SERVICES}
STAGING_TABLES = {code: f"stg_co_{code}" for code in SERVICES}
CURRENT_TABLES = {code: f"co_{code}" for code in SERVICES}
RECORD_TYPES = {"students": "student", "studies": "study", "applications": "application"}
UNHASHED_FIELDS = ("SOURCE", "TIMESTAMP")  # when CO re-sends a row, these change alone


def row_hash_expression(code: str) -> str:
    """SQL of a staged or current CO row's hash: its typed content columns, so a change in a
    field the models do not keep is no change."""
    fields = SERVICES[code].model.model_fields
    return row_hash_sql([f'"{name}"' for name in fields if name not in UNHASHED_FIELDS])


_STUDENT_COLUMNS = """
    SOURCE VARCHAR NOT NULL, "TIMESTAMP" TIMESTAMPTZ NOT NULL, STPERSONNR BIGINT NOT NULL,
    STUDID VARCHAR, GIVENNAME VARCHAR NOT NULL, FAMILYNAME VARCHAR NOT NULL, BIRTHDATE DATE,
    IDENTNROBFUSCATED VARCHAR NOT NULL, NATIONALITYNR BIGINT NOT NULL, NATIONALITY VARCHAR,
    NATIONALITYSECONDARYNR BIGINT, NATIONALITYSECONDARY VARCHAR,
    ADMISSIONQUALIFICATIONTYPENR VARCHAR NOT NULL, ADMISSIONQUALIFICATIONTYPE VARCHAR,
    SCHOOLCERTIFICATEDATE DATE, ADMISSIONQUALIFICATIONSTATENR BIGINT,
    ADMISSIONQUALIFICATIONSTATE VARCHAR, TELEPHONE VARCHAR, HOMEADDRESSNOTE VARCHAR,
    HOMEADDRESSSTREET VARCHAR, HOMEADDRESSPLACE VARCHAR, HOMEADDRESSPOSTCODE VARCHAR,
    HOMEADDRESSREGION VARCHAR, HOMEADDRESSCOUNTRYNR BIGINT, HOMEADDRESSCOUNTRY VARCHAR,
    HOMEADDRESSTELEPHONE VARCHAR, STUDADDRESSNOTE VARCHAR, STUDADDRESSSTREET VARCHAR,
    STUDADDRESSPLACE VARCHAR, STUDADDRESSPOSTCODE VARCHAR, STUDADDRESSREGION VARCHAR,
    STUDADDRESSCOUNTRYNR BIGINT, STUDADDRESSCOUNTRY VARCHAR, STUDADDRESSTELEPHONE VARCHAR,
    EMAILADDRESSTU VARCHAR, EMAILADDRESSCONFIRMED VARCHAR, EMAILADDRESSTEMPORARY VARCHAR,
    PERSSTATUS VARCHAR NOT NULL, STUDSTATUSKEY VARCHAR NOT NULL, STUDSTATUS VARCHAR,
    TUITIONSTATUS VARCHAR, TUITIONEXEMPTIONTYPE VARCHAR, IMMATRICULATIONDATE DATE,
    IMMATRICULATIONSEMESTER VARCHAR, EXMATRICULATIONSTATUSKEY VARCHAR,
    EXMATRICULATIONSTATUS VARCHAR, EXMATRICULATIONDATE DATE, EXMATRICULATIONSEMESTER VARCHAR,
    TERMSTART VARCHAR, TERMEND VARCHAR, ACADEMICTITLEPRECEDING VARCHAR,
    ACADEMICTITLEFOLLOWING VARCHAR, FORMERFAMILYNAME VARCHAR, SOCIALSECURITYNR VARCHAR,
    BPK VARCHAR, GENDERKEY VARCHAR NOT NULL, GENDER VARCHAR, NOTE VARCHAR
"""
_STUDY_COLUMNS = """
    SOURCE VARCHAR NOT NULL, "TIMESTAMP" TIMESTAMPTZ NOT NULL, STSTUDIUMNR BIGINT NOT NULL,
    STPERSONNR BIGINT NOT NULL, STUDYKEY VARCHAR NOT NULL, STUDYTYPE VARCHAR NOT NULL,
    STUDYNAME VARCHAR NOT NULL, STUDYSEMESTER BIGINT NOT NULL, STUDYSTATUSKEY VARCHAR NOT NULL,
    STUDYSTATUS VARCHAR, STUDYCURRICULUMVERSION VARCHAR, STUDYIMMATRICULATIONDATE DATE,
    STUDYIMMATRICULATIONSEMESTER VARCHAR, STUDYEXMATRICULATIONDATE DATE,
    STUDYEXMATRICULATIONSEMESTER VARCHAR, STUDYEXMATRICULATIONTYPEKEY VARCHAR,
    STUDYEXMATRICULATIONTYPE VARCHAR, STUDYQUALIFICATIONTYPENR VARCHAR,
    STUDYQUALIFICATIONTYPE VARCHAR, STUDYQUALIFICATIONDATE DATE, STUDYQUALIFICATIONSTATENR BIGINT,
    STUDYQUALIFICATIONSTATE VARCHAR, ADDITIONALCERTIFICATE VARCHAR
"""
_APPLICATION_COLUMNS = """
    SOURCE VARCHAR NOT NULL, "TIMESTAMP" TIMESTAMPTZ NOT NULL, BEWERBUNGNR BIGINT NOT NULL,
    STPERSONNR BIGINT NOT NULL, STSTUDIUMNR BIGINT, APPLICANTSTARTOFSTUDY VARCHAR NOT NULL,
    APPLICANTSTUDYTYPE VARCHAR NOT NULL, APPLICANTSTUDYNAME VARCHAR NOT NULL,
    APPLICANTSTUDYKEY VARCHAR NOT NULL, APPLICANTQUALIFICATIONTYPE VARCHAR,
    APPLICANTQUALIFICATIONDATE DATE, APPLICANTQUALIFICATIONSTATENR BIGINT,
    APPLICANTQUALIFICATIONSTATE VARCHAR
"""

_STAGING_KEYS = """
    sync_key VARCHAR NOT NULL, request_key VARCHAR NOT NULL, page_nr INTEGER NOT NULL,
    row_nr INTEGER NOT NULL, row_hash VARCHAR NOT NULL,
"""
_CURRENT_EXTRAS = ", row_hash VARCHAR NOT NULL, changed_in_sync VARCHAR NOT NULL"


CAMPUSONLINE_SCHEMA = "\n".join(
    [
        f"CREATE TABLE stg_co_students ({_STAGING_KEYS}{_STUDENT_COLUMNS});",
        f"CREATE TABLE stg_co_studies ({_STAGING_KEYS}{_STUDY_COLUMNS});",
        f"CREATE TABLE stg_co_applications ({_STAGING_KEYS}{_APPLICATION_COLUMNS});",
        f"CREATE TABLE co_students ({_STUDENT_COLUMNS}{_CURRENT_EXTRAS});",
        f"CREATE TABLE co_studies ({_STUDY_COLUMNS}{_CURRENT_EXTRAS});",
        f"CREATE TABLE co_applications ({_APPLICATION_COLUMNS}{_CURRENT_EXTRAS});",
        """
        CREATE TABLE co_sync_cursor (
            sync_key VARCHAR PRIMARY KEY,
            effective_mode VARCHAR NOT NULL,   -- full | incremental | fallback
            sync_started_at TIMESTAMPTZ NOT NULL,  -- from the key: orders the syncs
            last_sync_students TIMESTAMPTZ,
            last_sync_studies TIMESTAMPTZ,
            last_sync_applications TIMESTAMPTZ,
            live_students JSON NOT NULL,
            live_studies JSON NOT NULL,
            live_applications JSON NOT NULL,
            changed_students INTEGER NOT NULL,
            vanished_students INTEGER NOT NULL,
            committed_at TIMESTAMPTZ NOT NULL
        );
        """,
    ]
)

# Until 2026-12-04 row_hash was an md5 of the row's JSON as received, computed in Python.
CO_ROW_HASH_MIGRATION = "\n".join(
    f"UPDATE {table} SET row_hash = {row_hash_expression(code)};"
    for code in SERVICES
    for table in (STAGING_TABLES[code], CURRENT_TABLES[code])
)

# Which sync's state co_students/co_studies/co_applications hold, and the base it was built on:
# an incremental sync that follows it overlays its rows instead of rebuilding from the base.
# (No sync_key column: retention must never prune it.)
CO_CURRENT_BUILT = """
CREATE TABLE co_current_built (built_from_key VARCHAR NOT NULL, base_key VARCHAR NOT NULL);
"""

# Applied in order after the core migrations (resources.warehouse.all_migrations); append only.
MIGRATIONS: list[Migration] = [
    Migration(
        "campusonline: raw pages, staging, current state and cursor",
        raw_page_table_ddl("raw_co_students")
        + raw_page_table_ddl("raw_co_studies")
        + raw_page_table_ddl("raw_co_applications")
        + CAMPUSONLINE_SCHEMA,
    ),
    # CO pages too: 310 MB of JSON at 100,000 students, landed in one transaction with the
    # cursor. New pages keep body NULL and body_zlib set; pages landed before keep body.
    Migration(
        "co: raw pages compressed",
        "".join(
            f"""
            ALTER TABLE {table} ADD COLUMN body_zlib BLOB;
            ALTER TABLE {table} ADD COLUMN body_bytes BIGINT;
            ALTER TABLE {table} ALTER COLUMN body DROP NOT NULL;
            """
            for table in ("raw_co_students", "raw_co_studies", "raw_co_applications")
        ),
    ),
    # CO rows are validated and hashed in DuckDB now (assets/campusonline/staging.py): rows
    # staged and current before keep comparing equal to the same rows staged after.
    Migration("co: row hashes over the typed content columns", CO_ROW_HASH_MIGRATION),
    Migration("co: the sync whose state the current tables hold", CO_CURRENT_BUILT),
]
