//! Separate debug files: where a stripped file's DWARF lives, found the way gdb finds it, and
//! verified to belong to that exact build.
//!
//! Search order, first verified match wins:
//! 1. `ROOT/.build-id/xx/yyyy.debug` for each debug root (`xx` the first byte of the
//!    build-id in hex, `yyyy` the rest);
//! 2. a debuginfod client cache: `$DEBUGINFOD_CACHE_PATH/<build-id>/debuginfo` (default
//!    `$XDG_CACHE_HOME/debuginfod_client`, else `~/.cache/debuginfod_client`);
//! 3. the `.gnu_debuglink` name: beside the file, in `.debug/` beside it, and under each
//!    debug root at the file's directory (`ROOT/usr/bin/name`). The name must be a plain file
//!    name (the file's builder chose it); beside a target's module means inside the target's
//!    root (see [`Location`]).
//!
//! Debug roots: `$RPATCH_DEBUG_ROOT` (colon-separated), else `/usr/lib/debug`.
//! A candidate found by build-id must carry the same build-id; one found by debuglink must have
//! the same build-id when both files have one, else the CRC-32 the link records.

use crate::hex::hex;
use std::path::{Path, PathBuf};

use super::FileData;
use super::elf::{self, ElfInfo};
use crate::cache::FileIdentity;
use crate::files::Root;

/// Where a file's DWARF comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Where a candidate debug file was looked for: on rpatch's side, or inside the target's root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Place {
    /// A path on rpatch's side (debug roots, debuginfod cache, beside a host file).
    Host(PathBuf),
    /// A path inside the target's root (beside a module of the target).
    InRoot(PathBuf),
}

/// One candidate the search looked at, and what was there: the identity of the file found
/// (`None`: nothing, or nothing that could be opened). The debug file a search finds depends on
/// exactly these, so a result remembered from an earlier search holds while each candidate
/// still has the same identity (see [`unchanged`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Visited {
    /// The candidate.
    pub place: Place,
    /// What was there.
    pub identity: Option<FileIdentity>,
}

/// Whether every candidate a search visited still holds what it held (`root`: the target's
/// root, for candidates inside it): then the search would find the same debug file again.
pub fn unchanged(visited: &[Visited], root: Option<&Root>) -> bool {
    visited.iter().all(|v| {
        let file = match &v.place {
            Place::Host(path) => crate::files::open_host(path),
            Place::InRoot(path) => match root {
                Some(root) => root.open(path),
                None => return false,
            },
        };
        file.and_then(|f| FileIdentity::of(&f)).ok() == v.identity
    })
}

/// The facts besides the module's own file that decide which debug file a search finds: the
/// debug roots and debuginfod caches (from the environment), as text for a cache key.
pub fn search_config() -> String {
    let join = |paths: Vec<PathBuf>| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    format!(
        "roots={} debuginfod={}",
        join(debug_roots()),
        join(debuginfod_caches())
    )
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

/// Where a file is, for looking up its debug file *beside* it (its own directory and the
/// `.debug/` in it). Lookups under the debug roots and in the debuginfod cache are always on
/// rpatch's side.
pub enum Location<'a> {
    /// A file rpatch was pointed at on its own side (the patch library, `resolve --exe`).
    Host(&'a Path),
    /// A file of a target, at `path` in the target's file system: the neighbours are opened
    /// inside the target's root (a container's `/usr/bin/.debug` is the container's, and a
    /// symlink there must not lead rpatch to its own files).
    InRoot {
        /// The target's root.
        root: &'a Root,
        /// The file's path as the target sees it (from /proc/PID/maps).
        path: &'a Path,
    },
    /// Bytes with no file behind them: no separate debug file is looked for.
    Nowhere,
}

/// A `.gnu_debuglink` name is a file name chosen by whoever built the file, which may be the
/// target's owner: only a plain name (no `/`, not `.` or `..`) is looked up, never a path.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Finds and verifies the separate debug file of the file at `location` (facts in `info`);
/// on failure, the places searched. `visited` receives every candidate looked at, in order, with
/// what was there.
pub(super) fn find(
    location: &Location<'_>,
    info: &ElfInfo,
    visited: &mut Vec<Visited>,
) -> Result<DebugFile, Vec<String>> {
    let mut searched = Vec::new();
    if matches!(location, Location::Nowhere) {
        return Err(searched);
    }
    let roots = debug_roots();

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
            match verify(&candidate, Candidate::Host(&candidate), info, None, visited) {
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
        if !plain_file_name(name) {
            searched.push(format!(
                ".gnu_debuglink {name:?} (not a plain file name: ignored)"
            ));
            return Err(searched);
        }
        let own = match location {
            Location::Host(path) => std::fs::canonicalize(path).unwrap_or(path.to_path_buf()),
            Location::InRoot { path, .. } => path.to_path_buf(),
            Location::Nowhere => unreachable!("returned above"),
        };
        let dir = own.parent().unwrap_or(Path::new("/"));
        let beside = [dir.join(name), dir.join(".debug").join(name)];
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        let under_roots = roots.iter().map(|r| r.join(relative).join(name));
        let candidates = beside
            .into_iter()
            .map(|p| (p, true))
            .chain(under_roots.map(|p| (p, false)));
        for (candidate, is_beside) in candidates {
            if candidate == own {
                continue;
            }
            let (shown, how) = match location {
                Location::InRoot { root, .. } if is_beside => (
                    root.display(&candidate),
                    Candidate::InRoot(root, &candidate),
                ),
                _ => (candidate.clone(), Candidate::Host(&candidate)),
            };
            match verify(&shown, how, info, Some(*crc), visited) {
                Ok(Some((data, debug))) => {
                    return Ok(DebugFile {
                        path: shown,
                        found_by: "debuglink",
                        data,
                        info: debug,
                    });
                }
                Ok(None) => searched.push(shown.display().to_string()),
                Err(why) => searched.push(format!("{} ({why})", shown.display())),
            }
        }
    }
    Err(searched)
}

/// How a candidate debug file is opened.
enum Candidate<'a> {
    /// A path on rpatch's side (mapped: the debug roots are the host's).
    Host(&'a Path),
    /// A path in a target's root (read as a size-capped copy).
    InRoot(&'a Root, &'a Path),
}

impl Candidate<'_> {
    /// The candidate's bytes and its identity (taken on the descriptor read).
    fn open(&self) -> std::io::Result<(FileData, FileIdentity)> {
        match self {
            Candidate::Host(path) => {
                let file = crate::files::open_host(path)?;
                let identity = FileIdentity::of(&file)?;
                Ok((FileData::map(&file)?, identity))
            }
            Candidate::InRoot(root, path) => {
                let file = root.open(path)?;
                let identity = FileIdentity::of(&file)?;
                Ok((FileData::read(&file)?, identity))
            }
        }
    }

    fn place(&self) -> Place {
        match self {
            Candidate::Host(path) => Place::Host(path.to_path_buf()),
            Candidate::InRoot(_, path) => Place::InRoot(path.to_path_buf()),
        }
    }
}

/// Ok(None) when nothing is there; Err with the reason when a file is there but unusable.
fn verify(
    candidate: &Path,
    how: Candidate<'_>,
    info: &ElfInfo,
    crc: Option<u32>,
    visited: &mut Vec<Visited>,
) -> Result<Option<(FileData, ElfInfo)>, String> {
    let opened = how.open();
    visited.push(Visited {
        place: how.place(),
        identity: opened.as_ref().ok().map(|(_, id)| *id),
    });
    let data = match opened {
        Ok((data, _)) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
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
