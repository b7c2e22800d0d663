"""What the template's tests (tests/) and benchmarks (bench/) share: helpers, one module per concern.

    env          the checkout, the machine and its tools: paths, CI, require, free_port, wait_for
    bake         baking a service, and working in it as its developer does (git, make, its Python)
    load         the one load client: keep-alive or not, strict or browser-like, paced or not
    http         requests and health probes through nginx
    uwsgi        uWSGI's unix socket (the uwsgi protocol) and its stats socket
    proc         processes on this machine: pid files, liveness, children, working directories
    serve        a baked service on this machine: `make serve`, `make deploy`, its processes
    emperor      process_manager=emperor: the Emperor as root, a vassal, nginx in front
    lab          scripts/lab's booted Debian hosts, and the fleets the service's playbooks manage
    fake_ingest  a local stand-in for Sentry's ingest

Helpers only: pytest's fixtures stay in tests/conftest.py and tests/e2e/conftest.py. Tests import
these as `from testkit.load import Load` (pyproject.toml puts the checkout on pytest's path); a
benchmark adds the checkout to sys.path first. Nothing here imports a test module.
"""
