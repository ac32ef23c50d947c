//! Separate debug files: where a stripped file's DWARF lives, found the way gdb finds it, and
//! verified to belong to that exact build.
//!
//! Search order, first verified match wins:
//! 1. `ROOT/.build-id/xx/yyyy.debug` for each debug root (`xx` the first byte of the
//!    build-id in hex, `yyyy` the rest);
//! 2. a debuginfod client cache: `$DEBUGINFOD_CACHE_PATH/<build-id>/debuginfo` (default
//!    `$XDG_CACHE_HOME/debuginfod_client`, else `~/.cache/debuginfod_client`);
//! 3. the `.gnu_debuglink` name: beside the file, in `.debug/` beside it, and under each
//!    debug root at the file's directory (`ROOT/usr/bin/name`).
//!
//! Debug roots: `$RPATCH_DEBUG_ROOT` (colon-separated), else `/usr/lib/debug`.
//! A candidate found by build-id must carry the same build-id; one found by debuglink must have
//! the same build-id when both files have one, else the CRC-32 the link records.

use crate::error::hex;
use std::path::{Path, PathBuf};

use super::FileData;
use super::elf::{self, ElfInfo};

/// Where a file's DWARF comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DebugInfoSource {
    /// The file's own debug sections.
    Embedded,
    /// A separate debug file.
    Separate {
        /// Its path.
        path: PathBuf,
        /// `build-id`, `debuginfod cache` or `debuglink`.
        found_by: String,
    },
    /// No DWARF anywhere: only the symbol tables are known.
    Missing {
        /// Every place looked at, with why a file there was rejected.
        searched: Vec<String>,
    },
}

/// A verified separate debug file.
pub(super) struct DebugFile {
    pub path: PathBuf,
    pub found_by: &'static str,
    pub data: FileData,
    pub info: ElfInfo,
}

/// The debug roots: `$RPATCH_DEBUG_ROOT` (colon-separated list), else `/usr/lib/debug`.
pub fn debug_roots() -> Vec<PathBuf> {
    match std::env::var_os("RPATCH_DEBUG_ROOT") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![PathBuf::from("/usr/lib/debug")],
    }
}

fn debuginfod_caches() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("DEBUGINFOD_CACHE_PATH").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(v)];
    }
    if let Some(v) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(v).join("debuginfod_client")];
    }
    std::env::var_os("HOME")
        .map(|h| vec![PathBuf::from(h).join(".cache/debuginfod_client")])
        .unwrap_or_default()
}

/// The file a path really names: `/proc/PID/map_files/...` links are followed (the debug file
/// is beside the mapped file, not in /proc), then symlinks.
fn real_path(path: &Path) -> PathBuf {
    let linked = if path.starts_with("/proc") && path.to_string_lossy().contains("/map_files/") {
        std::fs::read_link(path).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    };
    std::fs::canonicalize(&linked).unwrap_or(linked)
}

/// Finds and verifies the separate debug file of the file at `path` (facts in `info`);
/// on failure, the places searched.
pub(super) fn find(path: &Path, info: &ElfInfo) -> Result<DebugFile, Vec<String>> {
    let mut searched = Vec::new();
    let roots = debug_roots();
    let own = real_path(path);

    if let Some(id) = info.build_id.as_deref().filter(|id| id.len() >= 2) {
        let (head, rest) = (hex(&id[..1]), hex(&id[1..]));
        let mut candidates: Vec<PathBuf> = roots
            .iter()
            .map(|r| {
                r.join(".build-id")
                    .join(&head)
                    .join(format!("{rest}.debug"))
            })
            .collect();
        candidates.extend(
            debuginfod_caches()
                .into_iter()
                .map(|c| c.join(hex(id)).join("debuginfo")),
        );
        for (i, candidate) in candidates.into_iter().enumerate() {
            let found_by = if i < roots.len() {
                "build-id"
            } else {
                "debuginfod cache"
            };
            match verify(&candidate, info, None) {
                Ok(Some((data, debug))) => {
                    return Ok(DebugFile {
                        path: candidate,
                        found_by,
                        data,
                        info: debug,
                    });
                }
                Ok(None) => searched.push(candidate.display().to_string()),
                Err(why) => searched.push(format!("{} ({why})", candidate.display())),
            }
        }
    }

    if let Some((name, crc)) = &info.debuglink {
        let dir = own.parent().unwrap_or(Path::new("/"));
        let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        candidates.extend(roots.iter().map(|r| r.join(relative).join(name)));
        for candidate in candidates {
            if candidate == own {
                continue;
            }
            match verify(&candidate, info, Some(*crc)) {
                Ok(Some((data, debug))) => {
                    return Ok(DebugFile {
                        path: candidate,
                        found_by: "debuglink",
                        data,
                        info: debug,
                    });
                }
                Ok(None) => searched.push(candidate.display().to_string()),
                Err(why) => searched.push(format!("{} ({why})", candidate.display())),
            }
        }
    }
    Err(searched)
}

/// Ok(None) when nothing is there; Err with the reason when a file is there but unusable.
fn verify(
    candidate: &Path,
    info: &ElfInfo,
    crc: Option<u32>,
) -> Result<Option<(FileData, ElfInfo)>, String> {
    if !candidate.is_file() {
        return Ok(None);
    }
    let data = FileData::open(candidate).map_err(|e| e.to_string())?;
    let debug = elf::parse(candidate, &data).map_err(|e| e.to_string())?;
    if !debug.has_dwarf() {
        return Err("no .debug_info".into());
    }
    match (&info.build_id, &debug.build_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("build-id {} is not {}", hex(b), hex(a)));
        }
        (Some(_), Some(_)) => {}
        _ => match crc {
            Some(want) => {
                let got = crc32fast::hash(&data);
                if got != want {
                    return Err(format!("CRC {got:08x} is not {want:08x}"));
                }
            }
            None => return Err("no build-id to compare".into()),
        },
    }
    Ok(Some((data, debug)))
}
