"""Versioned schema changes, applied in order when a store opens.

Never edit a released migration: append a new one.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "instances, versions, steps",
        """
        CREATE TABLE versions (
            hash        VARCHAR PRIMARY KEY,
            created_at  TIMESTAMP NOT NULL,
            path        VARCHAR,
            blob        VARCHAR NOT NULL
        );
        CREATE TABLE instances (
            id           VARCHAR PRIMARY KEY,
            notebook     VARCHAR NOT NULL,
            version      VARCHAR NOT NULL,
            status       VARCHAR NOT NULL,
            parameters   VARCHAR NOT NULL DEFAULT '{}',
            created_at   TIMESTAMP NOT NULL,
            updated_at   TIMESTAMP NOT NULL,
            owner_pid    INTEGER,
            owner_start  BIGINT,
            owner_host   VARCHAR,
            failed_cell  INTEGER,
            error        VARCHAR,
            output       VARCHAR,
            cwd          VARCHAR
        );
        -- one row per finished attempt of a cell; append-only but for `dropped`
        CREATE TABLE steps (
            instance_id     VARCHAR NOT NULL,
            idx             INTEGER NOT NULL,
            seq             BIGINT NOT NULL,
            cell_id         VARCHAR NOT NULL,
            source_hash     VARCHAR NOT NULL,
            status          VARCHAR NOT NULL,
            attempt         INTEGER NOT NULL,
            started_at      TIMESTAMP,
            duration_ms     DOUBLE,
            execution_count INTEGER,
            outputs         VARCHAR,
            outputs_blob    VARCHAR,
            state           VARCHAR,
            error           VARCHAR,
            replay          BOOLEAN NOT NULL DEFAULT false,
            dropped         BOOLEAN NOT NULL DEFAULT false
        );
        CREATE INDEX steps_instance ON steps (instance_id);
        """,
    ),
    (
        2,
        "cell source on steps, for interactive sessions (no stored notebook version)",
        "ALTER TABLE steps ADD COLUMN source VARCHAR;",
    ),
    (
        3,
        "suspended instances (sleep, wait for events) and the events sent to them",
        """
        ALTER TABLE instances ADD COLUMN wake_at TIMESTAMP;
        ALTER TABLE instances ADD COLUMN waiting_for VARCHAR;
        ALTER TABLE instances ADD COLUMN suspension VARCHAR;
        ALTER TABLE instances ADD COLUMN resolutions VARCHAR;
        CREATE TABLE events (
            seq           BIGINT NOT NULL,
            instance_id   VARCHAR NOT NULL,
            name          VARCHAR NOT NULL,
            data          VARCHAR,
            created_at    TIMESTAMP NOT NULL,
            delivered_at  TIMESTAMP,
            delivered_key VARCHAR
        );
        CREATE INDEX events_instance ON events (instance_id);
        """,
    ),
    (
        4,
        "step rows name their journal record (crash recovery copies each record once); "
        "the journal a run writes; run options (declared environment, scan mode)",
        """
        ALTER TABLE steps ADD COLUMN rid VARCHAR;
        ALTER TABLE instances ADD COLUMN options VARCHAR;
        ALTER TABLE instances ADD COLUMN journal VARCHAR;
        """,
    ),
    (
        5,
        "the engine as a service: queue order, priority, tenant, workflow, schedule and "
        "webhook of instances; cron schedules; webhook deliveries",
        """
        ALTER TABLE instances ADD COLUMN priority INTEGER DEFAULT 0;
        ALTER TABLE instances ADD COLUMN tenant VARCHAR;
        ALTER TABLE instances ADD COLUMN workflow VARCHAR;
        ALTER TABLE instances ADD COLUMN schedule VARCHAR;
        ALTER TABLE instances ADD COLUMN webhook VARCHAR;
        ALTER TABLE instances ADD COLUMN queued_seq BIGINT DEFAULT 0;
        CREATE INDEX instances_status ON instances (status);
        CREATE TABLE schedules (
            name        VARCHAR PRIMARY KEY,
            notebook    VARCHAR NOT NULL,
            cron        VARCHAR NOT NULL,
            tz          VARCHAR NOT NULL,
            parameters  VARCHAR NOT NULL DEFAULT '{}',
            overlap     VARCHAR NOT NULL,
            catch_up    VARCHAR NOT NULL,
            tenant      VARCHAR,
            priority    INTEGER NOT NULL DEFAULT 0,
            webhook     VARCHAR,
            paused      BOOLEAN NOT NULL DEFAULT false,
            created_at  TIMESTAMP NOT NULL,
            last_fire   TIMESTAMP
        );
        CREATE TABLE notifications (
            seq          BIGINT NOT NULL,
            instance_id  VARCHAR NOT NULL,
            url          VARCHAR NOT NULL,
            body         VARCHAR NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            created_at   TIMESTAMP NOT NULL,
            delivered_at TIMESTAMP,
            last_error   VARCHAR
        );
        """,
    ),
    (
        6,
        "metering: CPU seconds and peak memory of each cell's attempt",
        """
        ALTER TABLE steps ADD COLUMN cpu_s DOUBLE;
        ALTER TABLE steps ADD COLUMN peak_rss_bytes BIGINT;
        """,
    ),
    (
        7,
        "no index on instances.status: every run changes its status at least twice, and "
        "an update of an indexed column costs DuckDB a delete and an insert in the index "
        "(0.8 ms of 1.6 here); the few queries by status are scans at start and per "
        "schedule, which DuckDB's column scan does in milliseconds at a million rows",
        """
        DROP INDEX IF EXISTS instances_status;
        """,
    ),
]
