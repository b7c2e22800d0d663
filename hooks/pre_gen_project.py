"""Validate every answer before a single file is written.

CHECKS maps each field to a check returning what is allowed when the answer is bad, else None;
`main()` prints `error: <field>=<value>: expected <allowed>` per bad answer, exits 1 (no output).
"""

import json
import keyword
import re
import sys

# Rendered by cookiecutter: every answer as JSON data, never pasted between quotes.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Top-level modules the service imports, and the service's own top-level directories.
TAKEN_NAMES = set(
    "amqp billiard bin blinker celery click deploy dotenv environs flask greenlet itsdangerous "
    "jinja2 kombu markupsafe marshmallow pytest ruff sentry_sdk sqlalchemy static tests uwsgi var "
    "vine werkzeug".split()
)
LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"


def matches(pattern, allowed):
    return lambda value: None if re.fullmatch(pattern, str(value)) else allowed


def one_of(*choices):
    return lambda value: None if value in choices else "one of " + ", ".join(choices)


def number(low, high):
    def check(value):
        if re.fullmatch(r"[0-9]+", str(value)) and low <= int(value) <= high:
            return None
        return f"a whole number from {low} to {high}"

    return check


def boolean(value):
    return None if isinstance(value, bool) else "true or false"


def slug(value):
    if not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        return "lowercase letters, digits and _, starting with a letter (a Python package name)"
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return "not a Python keyword"
    if value in sys.stdlib_module_names:
        return "not the name of a standard library module"
    if value in TAKEN_NAMES:
        return "not the name of a dependency or of a directory of the service"
    return None


def domain(value):
    if re.fullmatch(r"[0-9.]+|.*:.*", value):
        return "a domain name, not an IP address"
    if value == "localhost" or (re.fullmatch(rf"{LABEL}(\.{LABEL})+", value) and len(value) <= 253):
        return None
    return "a lowercase domain name like example.com"


TEXT = matches(r"[^\x00-\x1f]*\S[^\x00-\x1f]*", "a non-empty single line of text")
CHECKS = {
    "project_name": TEXT,
    "project_slug": slug,
    "description": TEXT,
    "author_name": TEXT,
    "author_email": matches(r"[^@\s]+@[^@\s]+\.[^@\s]+", "an email address like team@example.com"),
    "domain_name": domain,
    "use_tls": boolean,
    "python_version": one_of("3.11", "3.12", "3.13"),
    "use_celery": boolean,
    "use_sentry": boolean,
    "deploy_root": matches(r"(/(?!\.+(/|$))[\w.-]+)+", "an absolute path like /srv: no spaces, quotes, .."),
    "http_port": number(1, 65535),
    "processes": number(1, 256),
    "process_manager": one_of("systemd", "emperor"),
    "cheap_mode": boolean,
    "create_virtualenv": boolean,
}


def errors(answers):
    """Return one error line per bad answer, in the order of cookiecutter.json."""
    bad = ((field, answers.get(field), check(answers.get(field))) for field, check in CHECKS.items())
    return [f"error: {field}={value!r}: expected {allowed}" for field, value, allowed in bad if allowed]


def main():
    lines = errors(ANSWERS)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
