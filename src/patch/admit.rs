//! The safety policies that refuse a target or a library before anything is read or changed,
//! each with the flag that overrides it (see [`Allowances`]).

use super::attach::Allowances;
use crate::Error;
use crate::error::{Exposure, Policy, Unsupported};
use crate::process::{self, ProcessInfo};
use std::path::Path;

/// Refuses what the policies forbid unless `allow` overrides them: x86 shadow stacks (never), a
/// stopped process, seccomp filters, a library others could have written.
pub(super) fn admit(info: &ProcessInfo, library: &Path, allow: Allowances) -> Result<(), Error> {
    let pid = info.pid;
    if !info.shadow_stack_threads.is_empty() {
        return Err(Error::Unsupported {
            reason: Unsupported::ShadowStack {
                pid,
                threads: info.shadow_stack_threads.clone(),
            },
        });
    }
    if info.state == 'T' && !allow.stopped {
        return Err(Error::Refused {
            policy: Policy::Stopped { pid },
        });
    }
    if !info.seccomp_threads.is_empty() && !allow.seccomp {
        return Err(Error::Refused {
            policy: Policy::Seccomp {
                pid,
                threads: info.seccomp_threads.clone(),
            },
        });
    }
    if !allow.insecure_lib {
        library_trusted(pid, library)?;
    }
    Ok(())
}

/// A library runs with the target's privileges: refuse one that someone other than root or the
/// target's owner could have written. Only a regular file is judged: anything else (missing, a
/// directory) is reported by the plan, which names what it is.
fn library_trusted(pid: i32, library: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(library) else {
        return Ok(());
    };
    if !meta.is_file() {
        return Ok(());
    }
    let target_uid: u32 = process::status_field(pid, pid, "Uid")
        .and_then(|v| v.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        .unwrap_or(0);
    let exposure = if meta.mode() & 0o002 != 0 {
        Some(Exposure::WritableByEveryone)
    } else if meta.mode() & 0o020 != 0 {
        Some(Exposure::WritableByGroup)
    } else if meta.uid() != 0 && meta.uid() != target_uid {
        Some(Exposure::ForeignOwner {
            uid: meta.uid(),
            target_uid,
        })
    } else {
        None
    };
    match exposure {
        Some(exposure) => Err(Error::Refused {
            policy: Policy::InsecureLibrary {
                path: library.to_path_buf(),
                pid,
                exposure,
            },
        }),
        None => Ok(()),
    }
}
