#!/usr/bin/env bash
# Validates files against their JSON Schemas, offline, with check-jsonschema (PyPI; installed by
# scripts/install-deps.sh):
#   scripts/check-schemas.sh                    the example pipelines in docs/ci/
#   scripts/check-schemas.sh --github FILE      a GitHub Actions workflow (vendored schema)
#   scripts/check-schemas.sh --gitlab FILE      a GitLab CI file (vendored schema)
#   scripts/check-schemas.sh --report FILE      an `rpatch rehearse --json` report
# Options repeat. Exits non-zero when any file does not validate.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RPATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rpatch-tools/venv}"

if command -v check-jsonschema >/dev/null 2>&1; then
    CHECK=check-jsonschema
elif [ -x "$VENV/bin/check-jsonschema" ]; then
    CHECK="$VENV/bin/check-jsonschema"
else
    echo "check-schemas: check-jsonschema not found (run scripts/install-deps.sh)" >&2
    exit 2
fi

if [ $# -eq 0 ]; then
    set -- --github "$ROOT/docs/ci/github-actions.yml" --gitlab "$ROOT/docs/ci/gitlab-ci.yml"
fi
status=0
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "check-schemas: $1 needs a FILE" >&2; exit 2; }
    case "$1" in
        --github) schema=(--builtin-schema vendor.github-workflows) ;;
        --gitlab) schema=(--builtin-schema vendor.gitlab-ci) ;;
        --report) schema=(--schemafile "$ROOT/docs/schemas/rehearse.schema.json") ;;
        *) echo "check-schemas: unknown option $1" >&2; exit 2 ;;
    esac
    # The vendored and local schemas are read from disk: nothing is fetched.
    if ! "$CHECK" "${schema[@]}" "$2"; then
        status=1
    fi
    shift 2
done
exit $status
