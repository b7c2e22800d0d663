"""${message}

Runs before the switch. Replace this paragraph: say when the migration runs (before or after
the switch) and why the release still serving survives it (README.md, "Migrations in a deploy").
One change per migration.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}
# True when the release still serving cannot live with this migration (it drops, renames or narrows
# something that release uses): bin/deploy then runs it after the switch, once no worker runs that
# release. bin/deploy refuses such a migration before the switch (README.md, "Migrations in a deploy").
AFTER_SWITCH = False


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
