"""Label-store revisions, oldest first: r0001 is the schema `create_all` made before Alembic."""
