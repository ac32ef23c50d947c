//! Which processes a manifest is for: every module a process maps, with its build-id read from
//! the process's memory (`process::build_id_in_memory`), against the manifest's targets.
//!
//! Processes are found through the host's `/proc`, so those in other PID, mount and user
//! namespaces (containers) are seen with their host PIDs; nothing is stopped or traced here.

use super::manifest::Manifest;
use crate::hex::hex;
use crate::patch::FunctionRequest;
use crate::process::{self, ModuleMap, ProcMem, ProcessError, build_id_in_memory};
use std::path::PathBuf;

/// One process and the build of every module it maps.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Its executable, as the kernel reports it.
    pub exe: PathBuf,
    /// Each mapped module's file name and build-id (hex; `None` when it has none in memory).
    pub modules: Vec<(String, Option<String>)>,
}

/// How a process relates to a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// It maps a module of a build the manifest is for, and no other build of one of its
    /// modules: these functions are to be patched.
    Matched {
        /// The build-id of the first target module found.
        build_id: String,
        /// The functions of every target module it maps, in manifest order.
        functions: Vec<FunctionRequest>,
    },
    /// It maps one of the manifest's modules, of another build: never patched.
    OtherBuild {
        /// The build-id found (`None`: the module has none).
        build_id: Option<String>,
        /// One line naming the module and both build-ids.
        reason: String,
    },
    /// It maps none of the manifest's modules.
    Unrelated,
}

/// Every process id in `/proc` but rpatch's own.
pub fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&pid| pid != me)
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Reads which modules `pid` maps and their build-ids from its memory. A kernel thread or a
/// process without executable mappings has no modules.
pub fn scan(pid: i32) -> Result<Scanned, ProcessError> {
    if pid <= 0 {
        return Err(ProcessError::NoSuchProcess { pid });
    }
    let dir = process::proc_dir(pid);
    let exe = std::fs::read_link(dir.join("exe")).unwrap_or_default();
    let maps = process::read_maps(pid)?;
    let map = ModuleMap::new(pid, &maps, &exe);
    if map.modules.is_empty() {
        return Ok(Scanned {
            exe,
            modules: Vec::new(),
        });
    }
    let mem = ProcMem::open(pid)?;
    let modules = map
        .modules
        .iter()
        .map(|m| {
            (
                m.file_name().to_string(),
                build_id_in_memory(&mem, m).map(|b| hex(&b)),
            )
        })
        .collect();
    Ok(Scanned { exe, modules })
}

/// How `scanned` relates to `manifest`.
pub fn classify(manifest: &Manifest, scanned: &Scanned) -> Match {
    let mut matched: Option<String> = None;
    let mut functions = Vec::new();
    for target in &manifest.targets {
        let has_build = scanned
            .modules
            .iter()
            .any(|(_, id)| id.as_deref() == Some(target.build_id.as_str()));
        if has_build {
            matched.get_or_insert_with(|| target.build_id.clone());
            functions.extend(target.functions.iter().map(|f| f.request()));
            continue;
        }
        // The same module (by file name) of another build.
        if let Some((name, id)) = scanned
            .modules
            .iter()
            .find(|(name, _)| *name == target.module)
        {
            return Match::OtherBuild {
                build_id: id.clone(),
                reason: format!(
                    "maps {name} with {}, manifest wants build-id {}",
                    id.as_deref()
                        .map_or("no build-id".into(), |id| format!("build-id {id}")),
                    target.build_id
                ),
            };
        }
    }
    match matched {
        Some(build_id) => Match::Matched {
            build_id,
            functions,
        },
        None => Match::Unrelated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::manifest::{ManifestFunction, ManifestTarget};

    fn manifest() -> Manifest {
        let target = |module: &str, id: &str, f: &str| ManifestTarget {
            module: module.into(),
            build_id: id.into(),
            functions: vec![ManifestFunction {
                name: f.into(),
                replacement: None,
            }],
        };
        Manifest {
            name: "m".into(),
            library: "l.so".into(),
            library_sha256: "00".repeat(32),
            targets: vec![target("app", "aa", "f"), target("libx.so", "bb", "g")],
        }
    }

    fn process(modules: &[(&str, Option<&str>)]) -> Scanned {
        Scanned {
            exe: "/app".into(),
            modules: modules
                .iter()
                .map(|(n, id)| (n.to_string(), id.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn matches_by_build_id_whatever_the_name() {
        let m = manifest();
        let got = classify(
            &m,
            &process(&[("renamed", Some("aa")), ("libc.so.6", Some("cc"))]),
        );
        let Match::Matched {
            build_id,
            functions,
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(build_id, "aa");
        assert_eq!(functions.len(), 1);
        let both = classify(
            &m,
            &process(&[("app", Some("aa")), ("libx.so", Some("bb"))]),
        );
        assert!(matches!(both, Match::Matched { functions, .. } if functions.len() == 2));
    }

    #[test]
    fn another_build_of_a_module_is_never_matched() {
        let m = manifest();
        let got = classify(
            &m,
            &process(&[("app", Some("aa")), ("libx.so", Some("b0"))]),
        );
        let Match::OtherBuild { build_id, reason } = got else {
            panic!("{got:?}")
        };
        assert_eq!(build_id.as_deref(), Some("b0"));
        assert!(reason.contains("b0") && reason.contains("bb"), "{reason}");
        assert!(matches!(
            classify(&m, &process(&[("app", None)])),
            Match::OtherBuild { build_id: None, .. }
        ));
        assert_eq!(
            classify(&m, &process(&[("other", Some("aa0"))])),
            Match::Unrelated
        );
    }
}
