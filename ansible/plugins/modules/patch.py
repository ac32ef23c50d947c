#!/usr/bin/python
# Copyright: rpatch developers
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Apply or roll back an rpatch manifest in the running processes of a managed host."""

DOCUMENTATION = r"""
---
module: patch
short_description: Apply or roll back an rpatch manifest in the running processes of a host
version_added: 0.1.0
description:
  - Applies the patch a manifest describes to every process on the host that maps the manifest's
    module build (matched by build-id, in any namespace), or to the given O(pids), by running
    C(rpatch attach --manifest FILE --json); with O(state=rolled_back) runs C(rpatch rollback
    --manifest FILE --json).
  - The manifest is a file on the controller. Its action plugin reads it, checks the library's
    SHA-256 against the manifest there, transfers the manifest and its library to the host (only
    when the host's copy differs), and the module checks the hash again on the host before rpatch
    (which checks it a third time) touches any process.
  - The task is C(changed) only when some process was actually patched or rolled back; a re-run
    finds every process C(already_applied) (or C(not_applied)) and is C(ok).
  - On failure the result carries rpatch's error kind (C(error.kind), a stable word such as
    C(busy) or C(no_safe_thread)), its exit code and its message. When only some processes fail,
    the task fails with kind C(some_processes_failed) and lists each failed process; the others
    were still patched (RV(processes) says which).
  - Check mode runs rpatch with C(--dry-run) (nothing is touched; the report says which processes
    C(would_apply) or C(would_roll_back)); diff mode shows the processes whose state changes.
author:
  - rpatch developers (!UNKNOWN)
requirements:
  - rpatch with manifest support (C(rpatch attach --manifest)) on the managed host, run as root
    (ptrace rights over the target processes).
  - Python 3.11 or later on the controller (the manifest is TOML).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
    details: Linux only (ptrace, /proc).
options:
  manifest:
    description:
      - Path on the controller of the manifest (TOML) made by C(rpatch manifest new). A relative
        path is looked up like M(ansible.builtin.copy)'s O(ansible.builtin.copy#module:src)
        (the role's or playbook's C(files/) directory first).
      - Its library (a path relative to the manifest's directory) is transferred with it.
    type: path
    required: true
  state:
    description:
      - V(applied) patches every matching process not carrying the patch yet.
      - V(rolled_back) undoes this manifest's patch wherever it is applied. No matching process
        left is success (nothing carries the patch).
    type: str
    choices: [applied, rolled_back]
    default: applied
  pids:
    description:
      - Only these processes (each must map the manifest's module build). Omitted, every
        matching process on the host (C(--all)).
    type: list
    elements: int
  allow_no_match:
    description:
      - With O(state=applied), succeed (unchanged) when no process on the host matches the
        manifest. By default that fails with kind C(no_process_matched), since the rollout
        expected the service to run there.
    type: bool
    default: false
  timeout:
    description:
      - Seconds rpatch keeps retrying while a thread executes in, or has on its stack, the
        function to patch (rpatch's C(--timeout); its default is 5).
    type: float
  load_timeout:
    description:
      - Seconds allowed for the patch library to load in each target (C(--load-timeout)).
      - Attach only.
    type: float
  jobs:
    description:
      - At most this many processes are worked on at once (C(--jobs)).
    type: int
  allow_active:
    description:
      - Patch (or roll back) even while a thread has the function on its stack
        (C(--allow-active)).
    type: bool
    default: false
  allow_stopped:
    description:
      - Patch processes stopped by SIGSTOP (C(--allow-stopped)). Attach only.
    type: bool
    default: false
  allow_seccomp:
    description:
      - Patch processes running under a seccomp filter (C(--allow-seccomp)). Attach only.
    type: bool
    default: false
  allow_insecure_lib:
    description:
      - Load a library that is group/world-writable or owned by another user
        (C(--allow-insecure-lib)). Attach only.
    type: bool
    default: false
  force:
    description:
      - Patch although the replacement's signature differs, or the function is a closure or
        async body (C(--force)). Attach only.
    type: bool
    default: false
  strict:
    description:
      - Refuse functions that were inlined into callers which keep the old code (C(--strict)).
        Attach only.
    type: bool
    default: false
  all_matches:
    description:
      - Patch every instance of a generic function name (C(--all-matches)). Attach only.
    type: bool
    default: false
  cascade:
    description:
      - Also roll back later patches stacked on the same functions (C(--cascade)). Rollback
        only.
    type: bool
    default: false
  remote_dir:
    description:
      - Directory on the host under which the manifest and its library are kept, in a
        subdirectory named after the manifest's C(name).
    type: path
    default: /var/lib/rpatch/manifests
  rpatch_path:
    description:
      - The rpatch executable on the host. Omitted, it is looked up in PATH,
        C(/usr/local/bin), C(/usr/local/sbin), C(/usr/bin) and C(/usr/sbin).
    type: path
notes:
  - Processes are independent, as in rpatch itself; one failing neither stops nor undoes the
    others. Roll a failed host back with O(state=rolled_back).
  - Changing the files kept under O(remote_dir) alone does not make the task C(changed).
seealso:
  - module: rpatch.live.status_info
"""

EXAMPLES = r"""
- name: Patch every process running the build the manifest names
  rpatch.live.patch:
    manifest: patches/calc-fix-1.toml
    timeout: 10

- name: Patch two processes only, waiting longer for busy threads
  rpatch.live.patch:
    manifest: patches/calc-fix-1.toml
    pids: [1234, 1240]
    allow_active: false
    timeout: 30

- name: Roll the patch back everywhere on the host
  rpatch.live.patch:
    manifest: patches/calc-fix-1.toml
    state: rolled_back

- name: Which processes would change (check mode runs rpatch --dry-run)
  rpatch.live.patch:
    manifest: patches/calc-fix-1.toml
  check_mode: true
  diff: true
  register: plan
"""

RETURN = r"""
state:
  description: The requested state.
  returned: always
  type: str
  sample: applied
manifest:
  description: The manifest as used on the host.
  returned: always
  type: dict
  contains:
    name:
      description: The patch's name.
      type: str
      sample: calc-fix-1
    path:
      description: The manifest's path on the host.
      type: str
      sample: /var/lib/rpatch/manifests/calc-fix-1/calc-fix-1.toml
    library:
      description: The library's path as the manifest names it (relative to the manifest).
      type: str
      sample: calc-fix-1.so
    library_path:
      description: The library's path on the host.
      type: str
      sample: /var/lib/rpatch/manifests/calc-fix-1/calc-fix-1.so
    library_sha256:
      description: SHA-256 of the library, as the manifest records and the host's copy has.
      type: str
files_installed:
  description: Whether the manifest or library was (re)written under O(remote_dir).
  returned: always
  type: bool
processes:
  description:
    - One entry per matched process, as in rpatch's report (C(pid), C(exe), C(build_id),
      C(result), C(patch_ids), and C(reason)/C(error) for skipped and failed ones).
    - C(result) is C(applied), C(already_applied), C(skipped) or C(failed) for attach;
      C(rolled_back), C(not_applied), C(skipped) or C(failed) for rollback; in check mode
      C(would_apply) or C(would_roll_back) for those that would change.
    - Either operation may also report C(shared_mm) (a process sharing another's address
      space, done with that one; not a failure) and C(inconsistent) (a child forked while a
      library loaded into its parent, never patched; attach then fails with
      C(some_processes_failed)), each with its C(reason).
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 4242
      exe: /usr/bin/calcapp
      build_id: 3f2c
      result: applied
      patch_ids: [1]
counts:
  description: How many processes ended with each result word.
  returned: always
  type: dict
  sample: {"applied": 3, "already_applied": 1, "skipped": 0, "failed": 0}
error:
  description: rpatch's error when the task failed.
  returned: failure
  type: dict
  contains:
    kind:
      description: The stable error kind, e.g. C(busy), C(some_processes_failed).
      type: str
    exit_code:
      description: rpatch's exit code for that kind.
      type: int
    message:
      description: rpatch's message.
      type: str
rpatch_command:
  description: The rpatch command line that ran.
  returned: always
  type: list
  elements: str
report:
  description: rpatch's whole JSON report (its C(schema_version) tells its format).
  returned: when rpatch printed one
  type: dict
"""

import json
import os
import re
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.rpatch.live.plugins.module_utils.rpatch import (
    find_rpatch,
    run_json,
    sha256_file,
)

# Options passed to rpatch as flags when set: option -> (flag, attach, rollback).
FLAGS = {
    "timeout": ("--timeout", True, True),
    "load_timeout": ("--load-timeout", True, False),
    "jobs": ("--jobs", True, True),
    "allow_active": ("--allow-active", True, True),
    "allow_stopped": ("--allow-stopped", True, False),
    "allow_seccomp": ("--allow-seccomp", True, False),
    "allow_insecure_lib": ("--allow-insecure-lib", True, False),
    "force": ("--force", True, False),
    "strict": ("--strict", True, False),
    "all_matches": ("--all-matches", True, False),
    "cascade": ("--cascade", False, True),
}

# The result words that mean "this process changed (or would)".
CHANGED_WORDS = {
    "applied": ("applied", "would_apply"),
    "rolled_back": ("rolled_back", "would_roll_back"),
}

# The kinds of the exit codes rpatch reports with a report rather than an error object.
EXIT_KINDS = {25: "some_processes_failed", 26: "no_process_matched"}

# Beside the manifest on the host, written by the action plugin (plugins/action/patch.py).
SIDECAR = ".rpatch-manifest.json"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def rpatch_flags(module, state):
    """rpatch's flags for the options set; options of the other operation are warned about."""
    flags = []
    for option, (flag, for_attach, for_rollback) in FLAGS.items():
        value = module.params[option]
        if value is None or value is False:
            continue
        if not (for_attach if state == "applied" else for_rollback):
            module.warn("%s applies to %s only; ignored with state=%s" % (
                option, "attach" if for_attach else "rollback", state))
            continue
        if value is True:
            flags.append(flag)
        else:
            flags.extend([flag, str(value)])
    return flags


def install_files(module, pairs):
    """Copies each staged ``(source, destination)`` into place: root-owned, not writable by
    others (rpatch refuses insecure libraries), each with an atomic rename, the manifest last."""
    for src, dest in pairs:
        parent = os.path.dirname(dest)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        staged = dest + ".new"
        shutil.copyfile(src, staged)
        os.chmod(staged, 0o644)
        module.atomic_move(staged, dest)


def read_sidecar(module, manifest):
    """What the action plugin read from the manifest: name, manifest_file, library,
    library_sha256 (JSON beside the manifest on the host)."""
    path = os.path.join(os.path.dirname(manifest), SIDECAR)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        module.fail_json(msg="%s: %s; rpatch.live.patch runs through its action plugin, which "
                             "reads the manifest on the controller and puts it there" % (path, e))
    missing = [k for k in ("name", "manifest_file", "library", "library_sha256")
               if not isinstance(info.get(k), str) or not info.get(k)]
    if missing:
        module.fail_json(msg="%s lacks %s" % (path, ", ".join(missing)))
    return info


def describe(process):
    """One line naming a process, for diffs and messages."""
    return "pid %s (%s)" % (process.get("pid"), process.get("exe") or "?")


def make_diff(processes, state, name):
    """Before/after text listing the processes whose state changes."""
    words = CHANGED_WORDS[state]
    before, after = [], []
    for process in processes:
        if process.get("result") not in words:
            continue
        if state == "applied":
            before.append("%s: %s not applied\n" % (describe(process), name))
            after.append("%s: %s applied\n" % (describe(process), name))
        else:
            before.append("%s: %s applied\n" % (describe(process), name))
            after.append("%s: %s rolled back\n" % (describe(process), name))
    return {
        "before_header": "processes before",
        "after_header": "processes after",
        "before": "".join(before),
        "after": "".join(after),
    }


def failed_summary(processes):
    """``pid N (exe): kind: message`` for each failed process, and ``pid N (exe):
    inconsistent: reason`` for each child rpatch never patches (forked while a library loaded
    into its parent: rpatch exits 25 for those too)."""
    lines = []
    for process in processes:
        if process.get("result") == "inconsistent":
            lines.append("%s: inconsistent: %s" % (describe(process), process.get("reason")))
            continue
        if process.get("result") != "failed":
            continue
        error = process.get("error") or {}
        lines.append("%s: %s: %s" % (
            describe(process),
            error.get("kind") or "internal",
            error.get("message") or process.get("reason") or "failed",
        ))
    return lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            state=dict(type="str", default="applied", choices=["applied", "rolled_back"]),
            pids=dict(type="list", elements="int"),
            allow_no_match=dict(type="bool", default=False),
            timeout=dict(type="float"),
            load_timeout=dict(type="float"),
            jobs=dict(type="int"),
            allow_active=dict(type="bool", default=False),
            allow_stopped=dict(type="bool", default=False),
            allow_seccomp=dict(type="bool", default=False),
            allow_insecure_lib=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            strict=dict(type="bool", default=False),
            all_matches=dict(type="bool", default=False),
            cascade=dict(type="bool", default=False),
            remote_dir=dict(type="path", default="/var/lib/rpatch/manifests"),
            rpatch_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    state = params["state"]
    # The action plugin passes the manifest's path on the host: staged in the task's temporary
    # directory (new or changed files) or the copy kept under remote_dir. Beside it, what the
    # plugin read from the manifest on the controller.
    manifest_here = params["manifest"]
    info = read_sidecar(module, manifest_here)
    name = info["name"]
    if not NAME_RE.match(name):
        module.fail_json(msg="manifest name %r cannot name a directory" % name)
    dest_dir = os.path.join(params["remote_dir"], name)
    dest_manifest = os.path.join(dest_dir, info["manifest_file"])
    dest_library = os.path.join(dest_dir, info["library"])
    want_sha = info["library_sha256"].lower()
    result = dict(
        changed=False,
        state=state,
        manifest=dict(name=name, path=dest_manifest, library=info["library"],
                      library_path=dest_library, library_sha256=want_sha),
        files_installed=False,
        processes=[],
        counts={},
    )

    # The hash is checked on the host, on the copy rpatch will read.
    staged_dir = os.path.dirname(manifest_here)
    staged = os.path.normpath(staged_dir) != os.path.normpath(dest_dir)
    library_here = os.path.join(staged_dir, info["library"])
    if not os.path.isfile(library_here):
        result["error"] = dict(kind="library_missing", exit_code=6,
                               message="%s is missing on the host" % library_here)
        module.fail_json(msg="library_missing: %s is missing on the host" % library_here, **result)
    have_sha = sha256_file(library_here)
    if have_sha != want_sha:
        message = "library %s has sha256 %s on the host, the manifest wants %s" % (
            library_here, have_sha, want_sha)
        result["error"] = dict(kind="library_invalid", exit_code=7, message=message)
        module.fail_json(msg="library_invalid: " + message, **result)

    manifest_path = dest_manifest
    if staged:
        if module.check_mode:
            # Nothing is installed in check mode: rpatch plans with the staged copy, whose
            # library sits beside it as in the manifest.
            manifest_path = manifest_here
        else:
            install_files(module, [
                (library_here, dest_library),
                (os.path.join(staged_dir, SIDECAR), os.path.join(dest_dir, SIDECAR)),
                (manifest_here, dest_manifest),
            ])
            result["files_installed"] = True

    argv = [find_rpatch(module, params["rpatch_path"]),
            "attach" if state == "applied" else "rollback",
            "--manifest", manifest_path]
    if params["pids"]:
        argv.extend(str(pid) for pid in params["pids"])
    else:
        argv.append("--all")
    argv.append("--json")
    if module.check_mode:
        argv.append("--dry-run")
    argv.extend(rpatch_flags(module, state))
    result["rpatch_command"] = argv

    rc, report, error, stderr = run_json(module, argv)
    if report is not None:
        result["report"] = report
    if stderr:
        result["stderr"] = stderr
    processes = (report or {}).get("processes") or []
    result["processes"] = processes
    result["counts"] = (report or {}).get("counts") or {}
    words = CHANGED_WORDS[state]
    result["changed"] = any(p.get("result") in words for p in processes)
    if module._diff:
        result["diff"] = make_diff(processes, state, name)

    failed = failed_summary(processes)
    if error is None and rc != 0:
        # Exits 25 and 26 come with the report, not an error object.
        error = dict(kind=EXIT_KINDS.get(rc, "internal"), exit_code=rc,
                     message="rpatch exited with %d" % rc)
    if error is None:
        module.exit_json(**result)
    if error["kind"] == "no_process_matched":
        skipped = ["%s: %s" % (describe(p), p.get("reason") or "skipped")
                   for p in processes if p.get("result") == "skipped"]
        error["message"] = "no process on the host maps the module build %s is for%s" % (
            name, ("; " + "; ".join(skipped)) if skipped else "")
        if state == "rolled_back" or params["allow_no_match"]:
            result["msg"] = error["message"]
            module.exit_json(**result)
    result["error"] = error
    if failed:
        error["message"] = "%d of %d processes failed: %s" % (
            len(failed), len(processes), "; ".join(failed))
    module.fail_json(msg="rpatch %s --manifest %s: %s: %s" % (
        argv[1], name, error["kind"], error["message"]), **result)


if __name__ == "__main__":
    main()
