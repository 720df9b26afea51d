#!/usr/bin/env bash
# The local stack of real services for shells and CI, without activating the virtualenv:
#
#   bash infra/local/stack.sh up [--services s3,mlflow] [--s3-port N] [--mlflow-port N]
#                                [--no-auth: MLflow without authentication, single-user only]
#   bash infra/local/stack.sh status [--json]
#   bash infra/local/stack.sh down
#   source "${TIPSV2_HOME:-.tipsv2}/stack/stack.env"   # the stack's credentials and URLs
#
# It runs `tipsv2 stack ...`; the logic (what starts, where, with which flags) is in
# components/stack.py. Environment: TIPSV2_HOME (default ./.tipsv2, relative to the current
# folder), TIPSV2_S3_PORT / TIPSV2_MLFLOW_PORT (default: the last run's or any free port),
# TIPSV2_JUICEFS (the juicefs binary; default: the one next to the venv's python),
# PYTHON (default: the repository's .venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
exec "$python" -c 'import sys; from pipelines.cli import main; sys.exit(main(["stack", *sys.argv[1:]]))' "$@"
