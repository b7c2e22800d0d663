"""Create the notes table (the example pages' POST /notes and GET /notes).

Runs before the switch: a new table is invisible to the release still serving, which never reads
or writes it; the new release finds it in place from its first request.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "af6f780d13df"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
    )


def downgrade() -> None:
    op.drop_table("notes")
