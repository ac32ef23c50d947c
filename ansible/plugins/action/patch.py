# Copyright: rpatch developers
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Action plugin of ``rpatch.live.patch``: reads the manifest on the controller, transfers it and
its library to the host when the host's copies differ, then runs the module there with
``manifest`` naming the manifest on the host (staged, or the copy kept from an earlier run).

The library's hash is checked here first, so a manifest that does not match its library fails
before any host is contacted for patching; the module checks it again on the host.
"""

import hashlib
import json
import os
import posixpath
import shlex
import tomllib

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.plugins.action import ActionBase
from ansible.utils.hashing import checksum, checksum_s

DEFAULT_REMOTE_DIR = "/var/lib/rpatch/manifests"

# Beside the manifest on the host: its name, file, library and the library's SHA-256, as read
# here (the module reads it; the same name in plugins/modules/patch.py).
SIDECAR = ".rpatch-manifest.json"

# rpatch's exit codes of the kinds this plugin can report before the host is touched: the same
# refusals rpatch itself makes.
EXIT_CODES = {"library_missing": 6, "library_invalid": 7, "manifest_invalid": 27}


class ManifestError(Exception):
    """A manifest that cannot be used, with rpatch's error kind for it."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def read_manifest(path):
    """Name, library path (relative, as written) and library SHA-256 of a manifest, checked
    against the library on the controller."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ManifestError("manifest_invalid", "cannot read manifest %s: %s" % (path, e))
    library = data.get("library")
    want = data.get("library_sha256")
    if not isinstance(library, str) or not library:
        raise ManifestError("manifest_invalid", "manifest %s names no library" % path)
    if not isinstance(want, str) or not want:
        raise ManifestError("manifest_invalid", "manifest %s has no library_sha256" % path)
    parts = library.split("/")
    if library.startswith("/") or ".." in parts:
        raise ManifestError(
            "manifest_invalid",
            "manifest %s: library %r must be a path relative to the manifest's directory, "
            "without '..', to be transferred with it (rpatch manifest new writes such a path "
            "when the library sits in the manifest's directory)" % (path, library))
    name = data.get("name") or posixpath.splitext(posixpath.basename(library))[0]
    local_library = os.path.join(os.path.dirname(path), library)
    try:
        digest = hashlib.sha256()
        with open(local_library, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise ManifestError("library_missing", "library %s of manifest %s: %s" % (
            local_library, path, e))
    have = digest.hexdigest()
    if have != want.lower():
        raise ManifestError(
            "library_invalid",
            "library %s has sha256 %s, manifest %s wants %s; nothing was touched" % (
                local_library, have, path, want))
    return name, library, have, local_library


class ActionModule(ActionBase):
    """Transfers a manifest and its library, then runs ``rpatch.live.patch`` on the host."""

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        manifest = args.get("manifest")
        if not manifest:
            result.update(failed=True, msg="manifest is required")
            return result
        try:
            local_manifest = self._find_needle("files", manifest)
        except AnsibleError as e:
            result.update(failed=True, msg=to_text(e))
            return result
        try:
            name, library, sha256, local_library = read_manifest(local_manifest)
        except ManifestError as e:
            result.update(failed=True, msg="%s: %s" % (e.kind, e.message),
                          error=dict(kind=e.kind, exit_code=EXIT_CODES.get(e.kind),
                                     message=e.message))
            return result

        manifest_file = os.path.basename(local_manifest)
        dest_dir = posixpath.join(args.get("remote_dir") or DEFAULT_REMOTE_DIR, name)
        # What the module needs to know of the manifest without parsing TOML on the host (whose
        # Python may predate tomllib): kept beside the manifest there.
        sidecar = json.dumps(dict(name=name, manifest_file=manifest_file, library=library,
                                  library_sha256=sha256), sort_keys=True) + "\n"
        try:
            kept = posixpath.join(dest_dir, manifest_file)
            if self._host_copies_differ([
                (checksum(local_manifest), kept),
                (checksum(local_library), posixpath.join(dest_dir, library)),
                (checksum_s(sidecar), posixpath.join(dest_dir, SIDECAR)),
            ], task_vars):
                # The module installs the staged copies (not in check mode).
                args["manifest"] = self._stage(local_manifest, manifest_file, local_library,
                                               library, sidecar)
            else:
                args["manifest"] = kept
            result.update(self._execute_module(
                module_name="rpatch.live.patch", module_args=args, task_vars=task_vars))
        except AnsibleError as e:
            result.update(failed=True, msg=to_native(e))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _host_copies_differ(self, pairs, task_vars):
        """Whether any of the host's kept copies is missing or differs: ``pairs`` holds the
        controller's SHA-1 (what the stat module reports) and the host's path."""
        for want, remote in pairs:
            stat = self._execute_remote_stat(remote, all_vars=task_vars, follow=False,
                                             checksum=True)
            if not stat.get("exists") or stat.get("checksum") != want:
                return True
        return False

    def _stage(self, local_manifest, manifest_file, local_library, library, sidecar):
        """Transfers the manifest, its library and the sidecar into the task's temporary
        directory on the host, the library at its path relative to the manifest (so rpatch can
        read the staged manifest as it is); returns the staged manifest's path."""
        tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
        base = posixpath.join(tmpdir, "rpatch-manifest")
        remote_manifest = posixpath.join(base, manifest_file)
        remote_library = posixpath.join(base, library)
        dirs = sorted({base, posixpath.dirname(remote_library)})
        mkdir = self._low_level_execute_command(
            "mkdir -p " + " ".join(shlex.quote(d) for d in dirs), sudoable=True)
        if mkdir.get("rc") != 0:
            raise AnsibleError("cannot create %s on the host: %s" % (
                base, mkdir.get("stderr", "").strip()))
        self._transfer_file(local_manifest, remote_manifest)
        self._transfer_file(local_library, remote_library)
        remote_sidecar = self._transfer_data(posixpath.join(base, SIDECAR), sidecar)
        self._fixup_perms2((base, remote_manifest, remote_library, remote_sidecar))
        return remote_manifest
