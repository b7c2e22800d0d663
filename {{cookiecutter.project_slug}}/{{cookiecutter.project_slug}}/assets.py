"""Static assets: build content-hashed copies plus a manifest, and resolve URLs through it.

`python -m {{ cookiecutter.project_slug }}.assets` copies static/ into STATIC_ROOT and writes
STATIC_ROOT/build/<name>.<hash><ext> and STATIC_ROOT/build/manifest-<release>.json. Hashed names change
when the content does, so nginx and uWSGI can tell browsers to cache them for a year.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from flask import Flask

from . import settings

SOURCE_DIR = settings.BASE_DIR / "static"
# One manifest per release: a release that is built but refused never changes what others read.
MANIFEST = f"build/manifest-{settings.RELEASE}.json"


def build(source: Path = SOURCE_DIR, target: Path = settings.STATIC_ROOT) -> dict[str, str]:
    """Copy assets into target and add hashed copies; return {source name: hashed name}."""
    manifest = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        name = path.relative_to(source).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        hashed = f"build/{Path(name).with_suffix(f'.{digest}{path.suffix}').as_posix()}"
        for destination in (target / name, target / hashed):
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
        manifest[name] = hashed
    # Write the manifest last and atomically: a reader sees the old one or the whole new one.
    manifest_path = target / MANIFEST
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    partial = manifest_path.with_suffix(".tmp")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(partial, manifest_path)
    return manifest


def load_manifest(root: Path = settings.STATIC_ROOT) -> dict[str, str]:
    """Read the manifest; a missing one is a start-up error that says how to build it."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"no static manifest at {path}: run `make static` first") from None


def init_app(app: Flask) -> None:
    """Give templates `asset_url('css/site.css')` -> <STATIC_URL>build/css/site.<hash>.css."""
    manifest = load_manifest()

    def asset_url(name: str) -> str:
        return f"{settings.STATIC_URL}{manifest[name]}"

    app.jinja_env.globals["asset_url"] = asset_url
    if "://" in settings.STATIC_URL:
        # nginx's same-origin policy (deploy/nginx.conf) would block the CDN's files: the pages
        # send their own, which also allows the CDN's origin (nginx then adds none).
        origin = "/".join(settings.STATIC_URL.split("/", 3)[:3])
        policy = (
            f"default-src 'self' {origin}; object-src 'none'; base-uri 'self'; "
            "form-action 'self'; frame-ancestors 'none'"
        )

        @app.after_request
        def allow_the_cdn(response):
            response.headers.setdefault("Content-Security-Policy", policy)
            return response


if __name__ == "__main__":
    built = build()
    print(f"built {len(built)} assets into {settings.STATIC_ROOT}", file=sys.stderr)
