"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=512), nullable=False),
        sa.Column("recovery_id", sa.String(length=36), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_time"), ["time"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_type"), ["type"], unique=False)

    op.create_table(
        "policies",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("checkpoint_strategy", sa.String(), nullable=False),
        sa.Column("checkpoint_path", sa.String(), nullable=True),
        sa.Column("best_metric", sa.String(), nullable=True),
        sa.Column("best_mode", sa.String(), nullable=False),
        sa.Column("fallback_to_previous", sa.Boolean(), nullable=False),
        sa.Column("restore_optimizer", sa.Boolean(), nullable=False),
        sa.Column("poll_interval_ms", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("backoff_ms", sa.Integer(), nullable=False),
        sa.Column("max_backoff_ms", sa.Integer(), nullable=False),
        sa.Column("jitter", sa.String(), nullable=False),
        sa.Column("attempt_timeout_ms", sa.Integer(), nullable=False),
        sa.Column("on_recovery_url", sa.String(), nullable=True),
        sa.Column("on_failure_url", sa.String(), nullable=True),
        sa.Column("restart_mode", sa.String(), nullable=False),
        sa.Column("on_restart_url", sa.String(), nullable=True),
        sa.Column("owner_run_id", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "tinker_sessions",
        sa.Column("session_id", sa.String(length=256), nullable=False),
        sa.Column("alive", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(length=512), nullable=False),
        sa.Column("recovery_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhooks_due", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("policy_id", sa.String(length=36), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=False,
        ),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_claim", sa.String(length=36), nullable=True),
        sa.Column(
            "last_error",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column(
            "last_checkpoint",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column("active_recovery_id", sa.String(length=36), nullable=True),
        sa.Column("successor_run_id", sa.String(length=512), nullable=True),
        sa.Column("predecessor_run_id", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["policy_id"], ["policies.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_due", ["status", "next_poll_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_runs_policy_id"), ["policy_id"], unique=False
        )

    op.create_table(
        "recoveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("checkpoint_path", sa.String(), nullable=True),
        sa.Column("restore_optimizer", sa.Boolean(), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("new_run_id", sa.String(length=512), nullable=True),
        sa.Column(
            "error",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_key", sa.String(length=64), nullable=True),
        sa.Column("session_id", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("recoveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recoveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_recoveries_run_id"), ["run_id"], unique=False
        )
        batch_op.create_index(
            "ux_recoveries_one_active",
            ["run_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('queued', 'running', 'backoff')"),
            postgresql_where=sa.text("status IN ('queued', 'running', 'backoff')"),
        )

    op.create_table(
        "attempts",
        sa.Column("recovery_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("checkpoint_path", sa.String(), nullable=True),
        sa.Column("restore_optimizer", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.Column("model_seq_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=256), nullable=True),
        sa.Column("fallbacks_left", sa.Integer(), nullable=True),
        sa.Column("new_run_id", sa.String(length=512), nullable=True),
        sa.Column(
            "error",
            sa.JSON().with_variant(
                postgresql.JSONB(astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["recovery_id"],
            ["recoveries.id"],
        ),
        sa.PrimaryKeyConstraint("recovery_id", "attempt"),
    )


def downgrade() -> None:
    op.drop_table("attempts")
    with op.batch_alter_table("recoveries", schema=None) as batch_op:
        batch_op.drop_index(
            "ux_recoveries_one_active",
            sqlite_where=sa.text("status IN ('queued', 'running', 'backoff')"),
            postgresql_where=sa.text("status IN ('queued', 'running', 'backoff')"),
        )
        batch_op.drop_index(batch_op.f("ix_recoveries_run_id"))
        batch_op.drop_index("ix_recoveries_due")

    op.drop_table("recoveries")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_policy_id"))
        batch_op.drop_index("ix_runs_due")

    op.drop_table("runs")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhooks_due")

    op.drop_table("webhook_deliveries")
    op.drop_table("tinker_sessions")
    op.drop_table("policies")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_type"))
        batch_op.drop_index(batch_op.f("ix_events_time"))
        batch_op.drop_index(batch_op.f("ix_events_run_id"))

    op.drop_table("events")
