"""The Stud.IP tables: raw pages of the crawl (``raw_studip_pages``) and of the JSON:API listing
(``raw_studip_listing_pages``, compressed), the staged records of each sync (``stg_studip_*``)
and the current state merged from them (``studip_*``, with ``changed_in_sync``)."""

from resources.migrations import Migration, raw_page_table_ddl

# Applied in order after the core migrations (resources.warehouse.all_migrations); append only.
MIGRATIONS: list[Migration] = [
    # Stud.IP (assets/studip/): raw pages, the crawl's staged records per sync key, and the
    # current state merged from them.
    Migration(
        "studip: raw pages, staging and current state",
        raw_page_table_ddl("raw_studip_pages")
        + """
        CREATE TABLE studip_staged_users (
            sync_key VARCHAR NOT NULL, user_id VARCHAR NOT NULL, username VARCHAR NOT NULL,
            perms VARCHAR NOT NULL, email VARCHAR, given VARCHAR, family VARCHAR,
            formatted VARCHAR, datafields MAP(VARCHAR, VARCHAR)
        );
        CREATE TABLE studip_staged_semesters (
            sync_key VARCHAR NOT NULL, semester_id VARCHAR NOT NULL, title VARCHAR NOT NULL,
            token VARCHAR, begin_at TIMESTAMPTZ NOT NULL, end_at TIMESTAMPTZ NOT NULL,
            seminars_begin_at TIMESTAMPTZ, seminars_end_at TIMESTAMPTZ, visible INTEGER
        );
        CREATE TABLE studip_staged_sem_types (
            sync_key VARCHAR NOT NULL, type VARCHAR NOT NULL, name VARCHAR, class VARCHAR
        );
        CREATE TABLE studip_staged_courses (
            sync_key VARCHAR NOT NULL, course_id VARCHAR NOT NULL, number VARCHAR,
            title VARCHAR NOT NULL, subtitle VARCHAR, type VARCHAR NOT NULL,
            start_semester_id VARCHAR, end_semester_id VARCHAR, group_nr INTEGER
        );
        CREATE TABLE studip_staged_memberships (
            sync_key VARCHAR NOT NULL, course_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL
        );
        CREATE TABLE studip_staged_user_institutes (
            sync_key VARCHAR NOT NULL, user_id VARCHAR NOT NULL, institute_id VARCHAR NOT NULL,
            relation VARCHAR NOT NULL, perms VARCHAR, name VARCHAR, faculty_name VARCHAR,
            city VARCHAR
        );
        CREATE TABLE studip_users (
            user_id VARCHAR NOT NULL, username VARCHAR NOT NULL, perms VARCHAR NOT NULL,
            email VARCHAR, given VARCHAR, family VARCHAR, formatted VARCHAR,
            datafields MAP(VARCHAR, VARCHAR), changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_semesters (
            semester_id VARCHAR NOT NULL, title VARCHAR NOT NULL, token VARCHAR,
            begin_at TIMESTAMPTZ NOT NULL, end_at TIMESTAMPTZ NOT NULL,
            seminars_begin_at TIMESTAMPTZ, seminars_end_at TIMESTAMPTZ, visible INTEGER,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_courses (
            course_id VARCHAR NOT NULL, number VARCHAR, title VARCHAR NOT NULL, subtitle VARCHAR,
            type VARCHAR NOT NULL, type_name VARCHAR, type_class VARCHAR,
            start_semester_id VARCHAR, end_semester_id VARCHAR, group_nr INTEGER,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_memberships (
            course_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, status VARCHAR NOT NULL,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_institutes (
            institute_id VARCHAR NOT NULL, name VARCHAR, faculty_name VARCHAR, city VARCHAR,
            changed_in_sync VARCHAR NOT NULL
        );
        CREATE TABLE studip_user_institutes (
            user_id VARCHAR NOT NULL, institute_id VARCHAR NOT NULL, relation VARCHAR NOT NULL,
            perms VARCHAR, changed_in_sync VARCHAR NOT NULL
        );
        """,
    ),
    # ?semester= returns every course running in the semester: which selected semester a course
    # came back for gives an unlimited course its HUB term; study groups are no HUB sections.
    Migration(
        "studip: the selected semesters a course was returned for, and study groups",
        """
        ALTER TABLE studip_staged_courses ADD COLUMN semester_id VARCHAR;
        ALTER TABLE studip_staged_sem_types ADD COLUMN studygroup BOOLEAN;
        ALTER TABLE studip_courses ADD COLUMN first_selected_semester_id VARCHAR;
        ALTER TABLE studip_courses ADD COLUMN studygroup BOOLEAN;
        """,
    ),
    # The Stud.IP listing's pages (JSON:API) are large (a 100,000-user listing is over 1 GB of
    # JSON) and land in one transaction, whose strings DuckDB holds in memory: they are stored
    # zlib-compressed (about 15x smaller). assets/studip/listing.py:listing_pages reads them.
    Migration(
        "studip: the listing's raw pages, compressed",
        raw_page_table_ddl("raw_studip_listing_pages", compressed=True),
    ),
    # One naming for every source's staged records: raw_<system>_*, stg_<system>_*, <system>_*.
    Migration(
        "studip: staging tables named stg_studip_*",
        "".join(
            f"ALTER TABLE studip_staged_{name} RENAME TO stg_studip_{name};"
            for name in ("users", "semesters", "sem_types", "courses", "memberships")
        )
        + "ALTER TABLE studip_staged_user_institutes RENAME TO stg_studip_user_institutes;",
    ),
]
