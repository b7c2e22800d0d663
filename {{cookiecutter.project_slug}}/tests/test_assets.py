import json

from {{ cookiecutter.project_slug }} import assets


def test_hashed_name_changes_with_content(tmp_path):
    """A changed file gets a new URL, so a year-long cache never serves stale content."""
    source = tmp_path / "src"
    (source / "css").mkdir(parents=True)
    (source / "css" / "a.css").write_text("body { color: red; }")
    first = assets.build(source, tmp_path / "out")["css/a.css"]
    (source / "css" / "a.css").write_text("body { color: blue; }")
    second = assets.build(source, tmp_path / "out")["css/a.css"]
    assert first != second
    # The old hashed copy stays: pages rendered before the change keep working.
    assert (tmp_path / "out" / first).is_file() and (tmp_path / "out" / second).is_file()
    manifest = json.loads((tmp_path / "out" / assets.MANIFEST).read_text())
    assert manifest == {"css/a.css": second}
