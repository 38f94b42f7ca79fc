"""The LMS tables: raw pages per endpoint, watermarks, the staged items of each sync
(``stg_lms_registrations``) and the current state (``lms_registrations``, ``lms_courses``,
``lms_learners``).

Column names of LMS data are the API's (``RegistrationId``, ``OrgProfileFieldValues`` …).
"""

from resources.migrations import Migration, raw_page_table_ddl

LMS_SCHEMA = """
CREATE TABLE lms_watermarks (            -- one row per landed endpoint of a sync
    sync_key VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,           -- 'active' | 'completed'
    mode VARCHAR NOT NULL,               -- the sync's mode ('full' reads from the beginning)
    sync_started_at TIMESTAMPTZ NOT NULL,-- from the key: orders the landings
    from_date TIMESTAMPTZ,               -- the fromDate sent; NULL: from the beginning of time
    next_from_date TIMESTAMPTZ NOT NULL, -- now, taken just before the endpoint's first call
    landed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sync_key, endpoint)
);
CREATE TABLE lms_registration_items (    -- validated items of each sync's pages, duplicates kept
    sync_key VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    page_nr INTEGER NOT NULL,
    item_nr INTEGER NOT NULL,            -- position in the page's Items
    RegistrationId VARCHAR NOT NULL,
    RegistrationStatus INTEGER NOT NULL,
    RegistrationDate TIMESTAMPTZ NOT NULL,
    CompletionDate TIMESTAMPTZ,
    CompletionLocation VARCHAR,
    CourseId VARCHAR NOT NULL,
    CourseCode VARCHAR NOT NULL,
    CourseName VARCHAR NOT NULL,
    OfferingShortId VARCHAR NOT NULL,
    OrganizationLoginId VARCHAR NOT NULL,
    UniqueLoginId VARCHAR NOT NULL,
    EmailAddress VARCHAR NOT NULL,
    ContactEmail VARCHAR,
    FirstName VARCHAR NOT NULL,
    LastName VARCHAR NOT NULL,
    OrgProfileFieldValues MAP(VARCHAR, VARCHAR) NOT NULL
);
CREATE TABLE lms_registrations (
    RegistrationId VARCHAR PRIMARY KEY,
    RegistrationStatus INTEGER NOT NULL,
    RegistrationStatusName VARCHAR NOT NULL, -- Pending | Active | Completed (the seed's mapping)
    RegistrationDate TIMESTAMPTZ NOT NULL,
    CompletionDate TIMESTAMPTZ,
    CompletionLocation VARCHAR,
    CourseId VARCHAR NOT NULL,
    CourseCode VARCHAR NOT NULL,
    OfferingShortId VARCHAR NOT NULL,
    OrganizationLoginId VARCHAR NOT NULL,
    UniqueLoginId VARCHAR NOT NULL,
    EmailAddress VARCHAR NOT NULL,
    OrgProfileFieldValues MAP(VARCHAR, VARCHAR) NOT NULL,
    fetched_in_sync VARCHAR NOT NULL,    -- the sync whose page holds this version
    row_hash VARCHAR NOT NULL,
    changed_in_sync VARCHAR NOT NULL     -- the sync that last changed the row
);
CREATE TABLE lms_courses (
    CourseId VARCHAR PRIMARY KEY,
    CourseCode VARCHAR NOT NULL,
    CourseName VARCHAR NOT NULL,
    OfferingShortIds VARCHAR[] NOT NULL,
    row_hash VARCHAR NOT NULL,
    changed_in_sync VARCHAR NOT NULL
);
CREATE TABLE lms_learners (
    OrganizationLoginId VARCHAR PRIMARY KEY,
    UniqueLoginId VARCHAR NOT NULL,
    EmailAddress VARCHAR NOT NULL,
    ContactEmail VARCHAR,
    FirstName VARCHAR NOT NULL,
    LastName VARCHAR NOT NULL,
    StudentId VARCHAR,                   -- the StudentId profile field; NULL when absent
    OrgProfileFieldValues MAP(VARCHAR, VARCHAR) NOT NULL,
    row_hash VARCHAR NOT NULL,
    changed_in_sync VARCHAR NOT NULL
);
"""

# Applied in order after the core migrations (resources.warehouse.all_migrations); append only.
MIGRATIONS: list[Migration] = [
    Migration(
        "lms: raw registrations, watermarks, staging and current state",
        raw_page_table_ddl("raw_lms_active_registrations")
        + raw_page_table_ddl("raw_lms_completed_registrations")
        + LMS_SCHEMA,
    ),
    Migration(
        "lms: staging table named stg_lms_registrations",
        "ALTER TABLE lms_registration_items RENAME TO stg_lms_registrations;",
    ),
    Migration(
        "lms: the sync whose state the current tables hold",
        # one row: the landing the lms_* tables were built as of, and the full sync under it
        "CREATE TABLE lms_current_built "
        "(built_from_key VARCHAR NOT NULL, base_key VARCHAR NOT NULL);",
    ),
]
