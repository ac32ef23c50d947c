#!/usr/bin/python
# Copyright: rpatch developers
# SPDX-License-Identifier: MIT OR Apache-2.0
"""The processes of a managed host that carry rpatch patches."""

DOCUMENTATION = r"""
---
module: status_info
short_description: List the processes on a host that carry rpatch patches
version_added: 0.1.0
description:
  - Runs C(rpatch status --all --json) on the host and returns every process with recorded
    patches, each patch's state verified against the process's memory (C(applied), C(missing),
    C(tampered), C(rolled_back), C(abandoned)) and the manifests it came from.
  - It only reads; no process is stopped or traced.
author:
  - rpatch developers (!UNKNOWN)
requirements:
  - rpatch with manifest support (C(rpatch status --all)) on the managed host, run as root.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: It only reads, so it runs in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux only (/proc).
options:
  manifest_name:
    description:
      - Only processes carrying a patch of this manifest (by the manifest's C(name)).
    type: str
  rpatch_path:
    description:
      - The rpatch executable on the host. Omitted, it is looked up in PATH,
        C(/usr/local/bin), C(/usr/local/sbin), C(/usr/bin) and C(/usr/sbin).
    type: path
seealso:
  - module: rpatch.live.patch
"""

EXAMPLES = r"""
- name: What is patched on each host
  rpatch.live.status_info:
  register: rpatch_status

- name: Processes carrying calc-fix-1 with it applied
  ansible.builtin.debug:
    msg: "{{ rpatch_status.applied['calc-fix-1'] | default([]) }}"
"""

RETURN = r"""
processes:
  description:
    - Every process with recorded patches, as C(rpatch status --all --json) reports it
      (C(pid), C(exe), C(patches), C(manifest_names)).
    - Each patch has its C(state) checked against memory and the C(manifest) it came from
      (or null).
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 4242
      exe: /usr/bin/calcapp
      manifest_names: [calc-fix-1]
      patches:
        - id: 1
          function: calcapp::pricing::calc
          state: applied
          manifest: calc-fix-1
applied:
  description: For each manifest name, the PIDs where a patch of it is C(applied).
  returned: always
  type: dict
  sample: {"calc-fix-1": [4242, 4250]}
schema_version:
  description: The C(schema_version) of rpatch's report.
  returned: always
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.rpatch.live.plugins.module_utils.rpatch import find_rpatch, run_json


def applied_by_manifest(processes):
    """Manifest name -> sorted PIDs where one of its patches is applied."""
    applied = {}
    for process in processes:
        for patch in process.get("patches") or []:
            name = patch.get("manifest")
            if name and patch.get("state") == "applied":
                pids = applied.setdefault(name, [])
                if process.get("pid") not in pids:
                    pids.append(process.get("pid"))
    return dict((name, sorted(pids)) for name, pids in applied.items())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest_name=dict(type="str"),
            rpatch_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    argv = [find_rpatch(module, module.params["rpatch_path"]), "status", "--all", "--json"]
    rc, report, error, stderr = run_json(module, argv)
    if error is not None or report is None:
        error = error or dict(kind="internal", exit_code=rc, message="no report")
        module.fail_json(msg="rpatch status --all: %s: %s" % (error["kind"], error["message"]),
                         error=error, rpatch_command=argv, stderr=stderr)
    processes = report.get("processes") or []
    name = module.params["manifest_name"]
    if name:
        processes = [
            p for p in processes
            if name in (p.get("manifest_names") or [])
            or any(patch.get("manifest") == name for patch in p.get("patches") or [])
        ]
    module.exit_json(
        changed=False,
        processes=processes,
        applied=applied_by_manifest(processes),
        schema_version=report.get("schema_version"),
    )


if __name__ == "__main__":
    main()
