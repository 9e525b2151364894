"""An index on job_events by kind: the last ``best`` event (webhook payloads) and a
several-metric job's front (every ``best`` event) without reading its ``trial`` events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_job_events_job_kind", "job_events", ["job_id", "kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job_kind", table_name="job_events")
