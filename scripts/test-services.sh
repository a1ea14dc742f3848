#!/usr/bin/env bash
# Makes sure the servers the tests start for themselves are installed:
# aiosmtpd (a real SMTP server) and moto (an S3-compatible server), from PyPI.
set -euo pipefail
# Also schemathesis, which checks the running API against its OpenAPI document.
if ! python3 -c 'import aiosmtpd, moto.server, schemathesis' 2>/dev/null; then
    echo "Installing test tools (aiosmtpd, moto[server], schemathesis) with pip" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
        'aiosmtpd>=1.4' 'moto[server]>=5' 'schemathesis>=4,<5'
fi
