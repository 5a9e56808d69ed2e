"""Alembic environment: the engine comes from ``feedback_app.db.alembic_config`` (no alembic.ini)."""

from alembic import context

from feedback_app.models import Base

config = context.config


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.driver_connection
        if sqlite:
            # Batch mode rebuilds a table (create copy, drop old, rename). With foreign keys on,
            # dropping the old `users` table would CASCADE-delete every ranking. The pragma only
            # takes effect outside a transaction, hence on the raw connection before BEGIN.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
            context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=sqlite)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")
            connection.commit()
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


run_migrations_online()
