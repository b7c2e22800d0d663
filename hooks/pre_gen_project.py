"""Validate every answer before a single file is written.

Each check takes the answer and returns what is allowed when the answer is bad, or None.
On the first bad answers `main()` prints one line per field, `error: <field>=<value>: <allowed>`,
and exits 1; cookiecutter then removes the half-made output directory.
"""

import ipaddress
import json
import keyword
import re
import sys

# Rendered by cookiecutter: every answer as JSON data, never pasted between quotes.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
# Top-level modules the service imports, and the service's own top-level directories.
TAKEN_NAMES = {
    "amqp", "billiard", "bin", "blinker", "celery", "click", "deploy", "dotenv", "environs",
    "flask", "itsdangerous", "jinja2", "kombu", "markupsafe", "marshmallow", "pytest", "ruff",
    "sentry_sdk", "sqlalchemy", "static", "tests", "uwsgi", "uwsgidecorators", "var", "vine",
    "werkzeug",
}
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_slug(value):
    if not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        return "lowercase letters, digits and _, starting with a letter (a Python package name)"
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return "not a Python keyword"
    if value in sys.stdlib_module_names:
        return "not the name of a standard library module"
    if value in TAKEN_NAMES:
        return "not the name of a dependency or of a directory of the service"
    return None


def check_text(value):
    if not value.strip() or any(ord(char) < 32 for char in value):
        return "a non-empty single line of text"
    return None


def check_email(value):
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        return "an email address like team@example.com"
    return None


def check_domain(value):
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
        return "a domain name, not an IP address"
    except ValueError:
        pass
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(LABEL.match(label) for label in labels):
        return "a lowercase domain name like example.com"
    return None


def check_python(value):
    if value not in PYTHON_VERSIONS:
        return "one of " + ", ".join(PYTHON_VERSIONS)
    return None


def check_deploy_root(value):
    if not value.startswith("/") or value == "/" or re.search(r"[\s'\"$\\]", value):
        return "an absolute directory path without spaces or quotes, like /srv"
    return None


def check_int(low, high):
    def check(value):
        if not re.fullmatch(r"[0-9]+", str(value)) or not low <= int(value) <= high:
            return f"a whole number from {low} to {high}"
        return None

    return check


def check_bool(value):
    if not isinstance(value, bool):
        return "true or false"
    return None


CHECKS = {
    "project_name": check_text,
    "project_slug": check_slug,
    "description": check_text,
    "author_name": check_text,
    "author_email": check_email,
    "domain_name": check_domain,
    "python_version": check_python,
    "use_celery": check_bool,
    "use_sentry": check_bool,
    "deploy_root": check_deploy_root,
    "http_port": check_int(1, 65535),
    "processes": check_int(1, 256),
    "cheap_mode": check_bool,
    "create_virtualenv": check_bool,
}


def errors(answers):
    """Return one error line per bad answer, in the order of cookiecutter.json."""
    lines = []
    for field, check in CHECKS.items():
        value = answers.get(field)
        allowed = check(value)
        if allowed:
            lines.append(f"error: {field}={value!r}: expected {allowed}")
    return lines


def main():
    lines = errors(ANSWERS)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
