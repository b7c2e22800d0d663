"""The example pages on a real database: POST /notes writes, GET /notes reads (SQLite and PostgreSQL)."""

from sqlalchemy import inspect

from {{ cookiecutter.project_slug }} import db
from {{ cookiecutter.project_slug }}.models import Base


def test_a_posted_note_is_read_back_newest_first(client, database):
    """What one request writes, the next one reads, on SQLite and on PostgreSQL alike."""
    assert client.get("/notes").get_json() == {"notes": []}
    for text in ("first", "second, with ünïcode"):
        response = client.post("/notes", json={"text": text})
        assert response.status_code == 201, response.text
        assert response.get_json()["text"] == text
    notes = client.get("/notes").get_json()["notes"]
    assert [note["text"] for note in notes] == ["second, with ünïcode", "first"]
    assert notes[0]["id"] > notes[1]["id"] and notes[0]["created_at"]


def test_a_note_without_text_or_over_500_characters_is_refused(client, database):
    for body in ({}, {"text": ""}, {"text": 7}, {"text": "x" * 501}):
        response = client.post("/notes", json=body)
        assert response.status_code == 400, body
    assert client.get("/notes").get_json() == {"notes": []}


def test_the_migrations_create_every_table_of_the_models(database):
    """Upgraded to the newest migration, the database has the models' tables and columns."""
    inspector = inspect(db.engine())
    for table in Base.metadata.tables.values():
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        assert columns == set(table.columns.keys()), table.name
