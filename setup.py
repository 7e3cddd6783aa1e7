from setuptools import find_packages, setup

setup(
    name="gnsq_server",
    version="0.1.0",
    description="NSQ's nsqd and nsqlookupd daemons, wire-compatible, in Python on gevent",
    packages=find_packages(include=["gnsq_server", "gnsq_server.*"]),
    package_data={"gnsq_server.admin": ["templates/*.html", "static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "gevent>=23.9",
        "flask>=2.3",
        # HTTP/1.1 request parsing in C (llhttp, Node's parser; uvicorn uses it): our server on
        # it answers /pub ~5x faster than gevent.pywsgi, which parses in Python
        "httptools>=0.6",
        "click>=8.1",
        # /metrics: the Prometheus exposition format, written by the reference library
        "prometheus_client>=0.16",
        # snappy framing for the IDENTIFY upgrade (Rust `snap`; abi3 wheels, no libsnappy)
        "cramjam>=2.8",
        # nsqd's own config files are TOML; tomllib is in the standard library from 3.11
        "tomli>=1.1; python_version < '3.11'",
        # the command-line tools (gnsq_tail, to_gnsq, gnsq_to_file) speak to nsqd through
        # gnsq's connection class: IDENTIFY, TLS/snappy/deflate upgrades, frames, messages
        "gnsq>=1.0.2",
        # gnsq's (and the tests' pynsq) snappy upgrade needs it (a shim over cramjam)
        "python-snappy>=0.7",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            "hypothesis>=6.80",
            "requests>=2.31",
            "pynsq>=0.9.1",
            "ruff>=0.5",
            # conf/supervisord.conf is tested under a real supervisord
            "supervisor>=4.2",
            # test certificates for TLS are generated in the test session
            "cryptography>=41",
            # gnsqadmin's browser tests drive Debian's chromium through chromedriver
            "selenium>=4.10",
        ],
    },
    entry_points={
        "console_scripts": [
            "gnsqd=gnsq_server.cli:gnsqd",
            "gnsqlookupd=gnsq_server.cli:gnsqlookupd",
            "gnsqadmin=gnsq_server.cli:gnsqadmin",
            "gnsq_tail=gnsq_server.tools.cli:gnsq_tail",
            "to_gnsq=gnsq_server.tools.cli:to_gnsq",
            "gnsq_to_file=gnsq_server.tools.cli:gnsq_to_file",
            "gnsq_stat=gnsq_server.tools.cli:gnsq_stat",
        ],
    },
)
