# Copyright: rpatch developers
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Running rpatch on a managed host and reading its ``--json`` output.

Shared by the ``rpatch.live.patch`` and ``rpatch.live.status_info`` modules. rpatch prints exactly
one JSON object on stdout with ``--json``: a report, or ``{"schema_version": 1, "error": {...}}``.
Its exit code is derived from the error's kind, so the kind (a stable snake_case word) is what a
playbook should match on, never the message.
"""

import hashlib
import json

# Where rpatch is looked for besides PATH: the .deb installs /usr/bin/rpatch, a copied binary
# usually lands in /usr/local/bin, and a non-login SSH session may have a short PATH.
RPATCH_DIRS = ["/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin"]


def find_rpatch(module, path):
    """The rpatch executable to run: ``path`` when given, else the one found on the host."""
    if path:
        return path
    return module.get_bin_path("rpatch", required=True, opt_dirs=RPATCH_DIRS)


def sha256_file(path):
    """Hex SHA-256 of a file, read in chunks (patch libraries can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_json(module, argv):
    """Runs rpatch with ``--json`` in ``argv`` and returns ``(rc, report, error, stderr)``.

    ``report`` is the parsed object (or None when stdout held no JSON), ``error`` the normalised
    error ``{"kind", "exit_code", "message"}`` when rpatch reported one, else None. Output that is
    not JSON (an rpatch too old for a command, a usage error on stderr) becomes an error whose
    message is what rpatch printed.
    """
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
    report = None
    try:
        report = json.loads(out) if out.strip() else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        report = None
    error = None
    if report is not None and isinstance(report.get("error"), dict):
        raw = report["error"]
        error = {
            "kind": raw.get("kind", "internal"),
            "exit_code": raw.get("code", raw.get("exit_code", rc)),
            "message": raw.get("message", ""),
        }
    elif report is None and rc != 0:
        text = (err or out or "").strip()
        error = {
            "kind": "usage" if rc == 2 else "internal",
            "exit_code": rc,
            "message": text or "rpatch exited with %d and printed no JSON" % rc,
        }
    return rc, report, error, err
