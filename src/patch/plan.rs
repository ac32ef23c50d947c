//! Phase 2, *Plan*: resolve every `--func` in the target and in the patch library, and check that
//! each function can take an entry jump — all without stopping anything.

use crate::Error;
use crate::error::hex;
use crate::process::{LoadedModule, ModuleMap};
use crate::symbols::{FunctionSymbol, Resolution, SymbolIndex};
use rpatch_arch::x86_64 as isa;
use std::path::Path;

/// One `--func OLD[=NEW]` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRequest {
    /// Name of the function in the target.
    pub target: String,
    /// Name of the replacement in the library.
    pub replacement: String,
}

impl FunctionRequest {
    /// Parses `OLD` or `OLD=NEW`.
    pub fn parse(spec: &str) -> Self {
        match spec.split_once('=') {
            Some((old, new)) => Self {
                target: old.trim().into(),
                replacement: new.trim().into(),
            },
            None => Self {
                target: spec.trim().into(),
                replacement: spec.trim().into(),
            },
        }
    }
}

/// A function located in the target and in the library, ready to be patched.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedFunction {
    /// The request as typed.
    pub query: String,
    /// The function in its module (link-time address).
    pub function: FunctionSymbol,
    /// Module path.
    pub module: std::path::PathBuf,
    /// Runtime entry address.
    pub entry: u64,
    /// Runtime address of the first byte the jump overwrites (after a kept `endbr64`).
    pub write_at: u64,
    /// Bytes available for the jump from `write_at` to the end of the function.
    pub room: u64,
    /// The replacement in the library (link-time address in the library file).
    pub replacement: FunctionSymbol,
    /// The function's original bytes from the file, from `write_at`, at most 14 (the longest jump).
    #[serde(serialize_with = "ser_hex")]
    pub file_bytes: Vec<u8>,
    /// Whether the 14-byte absolute jump (the fallback when no island can be placed) fits: the
    /// function has room for it and no branch of its own targets those bytes.
    pub absolute_fits: bool,
}

fn ser_hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(b))
}

/// Opens the patch library and checks it is a shared object for this machine.
pub fn open_library(path: &Path) -> Result<SymbolIndex, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::LibraryMissing {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(Error::LibraryMissing {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    std::fs::File::open(path).map_err(|e| Error::LibraryMissing {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let index = SymbolIndex::open(path).map_err(|e| Error::LibraryInvalid {
        path: path.into(),
        reason: format!("{e}: build it as a shared object (-shared -fPIC, or a Rust cdylib)"),
    })?;
    let ours = if cfg!(target_arch = "x86_64") {
        object::Architecture::X86_64
    } else {
        object::Architecture::Aarch64
    };
    if index.architecture() != ours {
        return Err(Error::LibraryInvalid {
            path: path.into(),
            reason: format!(
                "it is built for {:?}, the target runs {ours:?}: build it for the target's architecture",
                index.architecture()
            ),
        });
    }
    if !index.is_position_independent() {
        return Err(Error::LibraryInvalid {
            path: path.into(),
            reason: "it is an executable, not a shared object: link it with -shared".into(),
        });
    }
    Ok(index)
}

/// Where a name was found.
struct Located {
    module: LoadedModule,
    function: FunctionSymbol,
    index: std::rc::Rc<SymbolIndex>,
}

/// Resolves `name` in the target: the main executable first (a `crate::` path only there), then
/// every other mapped module.
fn locate(modules: &mut ModuleMap, name: &str) -> Result<Located, Error> {
    let pid = modules.pid();
    let main = modules.main_executable().cloned();
    let mut order: Vec<LoadedModule> = main.iter().cloned().collect();
    if !name.starts_with("crate::") {
        order.extend(
            modules
                .modules
                .iter()
                .filter(|m| Some(&m.path) != main.as_ref().map(|x| &x.path))
                .cloned(),
        );
    }
    let mut suggestions: Vec<String> = Vec::new();
    let mut found: Vec<Located> = Vec::new();
    for module in order {
        let Ok(index) = modules.symbols(&module) else {
            continue;
        };
        match index.resolve(name) {
            Resolution::Found(function) => {
                found.push(Located {
                    module: module.clone(),
                    function,
                    index: index.clone(),
                });
            }
            Resolution::Ambiguous(candidates) => {
                let bias = module.bias(index.load_segments());
                return Err(Error::Ambiguous {
                    name: name.into(),
                    pid,
                    candidates: describe_candidates(&candidates, bias, &module),
                });
            }
            Resolution::NotFound { suggestions: s } => {
                if suggestions.len() < 5 {
                    suggestions.extend(s.into_iter().take(5 - suggestions.len()));
                }
            }
        }
        // The main executable wins: a library's function of the same name is interposed by it.
        if !found.is_empty()
            && main
                .as_ref()
                .is_some_and(|m| m.path == found[0].module.path)
        {
            break;
        }
    }
    match found.len() {
        0 => Err(Error::FunctionNotFound {
            name: name.into(),
            pid,
            hint: if suggestions.is_empty() {
                " (searched the executable and every mapped library)".into()
            } else {
                format!(": did you mean {}?", suggestions.join(", "))
            },
        }),
        1 => Ok(found.pop().expect("one")),
        _ => Err(Error::Ambiguous {
            name: name.into(),
            pid,
            candidates: found
                .iter()
                .map(|l| {
                    let bias = l.module.bias(l.index.load_segments());
                    describe_candidates(std::slice::from_ref(&l.function), bias, &l.module)
                })
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

fn describe_candidates(candidates: &[FunctionSymbol], bias: u64, module: &LoadedModule) -> String {
    candidates
        .iter()
        .map(|c| {
            format!(
                "{} at {:#x} in {}{}",
                c.linkage_name.as_deref().unwrap_or(&c.name),
                c.address.wrapping_add(bias),
                module.file_name(),
                c.location
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Plans every request against the target's modules and the library.
pub fn plan(
    modules: &mut ModuleMap,
    library: &SymbolIndex,
    requests: &[FunctionRequest],
) -> Result<Vec<PlannedFunction>, Error> {
    let mut planned: Vec<PlannedFunction> = Vec::new();
    for request in requests {
        let located = locate(modules, &request.target)?;
        let replacement = match library.resolve(&request.replacement) {
            Resolution::Found(f) => f,
            Resolution::Ambiguous(c) => {
                return Err(Error::ReplacementMissing {
                    name: request.replacement.clone(),
                    library: library.path().into(),
                    hint: format!(
                        ": the name is ambiguous there ({}); name one exactly with --func OLD=NEW",
                        c.iter()
                            .map(|f| f.linkage_name.clone().unwrap_or_else(|| f.name.clone()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            Resolution::NotFound { suggestions } => {
                return Err(Error::ReplacementMissing {
                    name: request.replacement.clone(),
                    library: library.path().into(),
                    hint: if suggestions.is_empty() {
                        ": define it in the library (Rust: #[no_mangle]; C++: same namespace and signature), or name it with --func OLD=NEW".into()
                    } else {
                        format!(
                            ": did you mean {}? (name it with --func OLD=NEW)",
                            suggestions.join(", ")
                        )
                    },
                });
            }
        };
        let f = &located.function;
        let bias = located.module.bias(located.index.load_segments());
        let head = located
            .index
            .file_bytes(f.address, (f.size as usize).min(4096))
            .ok_or_else(|| Error::Unpatchable {
                function: f.name.clone(),
                reason: "its code is not backed by the file".into(),
            })?;
        let prefix = isa::entry_prefix_len(&head) as u64;
        let room = f.size.saturating_sub(prefix);
        if room < isa::JMP_REL32_LEN as u64 {
            return Err(Error::Unpatchable {
                function: f.name.clone(),
                reason: rpatch_arch::Unpatchable::TooSmall {
                    available: room,
                    needed: isa::JMP_REL32_LEN as u64,
                }
                .to_string(),
            });
        }
        let entry = f.address.wrapping_add(bias);
        let write_at = entry + prefix;
        isa::check_branches(&head, entry, write_at..write_at + isa::JMP_REL32_LEN as u64).map_err(
            |e| Error::Unpatchable {
                function: f.name.clone(),
                reason: e.to_string(),
            },
        )?;
        let absolute_fits = room >= isa::JMP_ABS_LEN as u64
            && isa::check_branches(&head, entry, write_at..write_at + isa::JMP_ABS_LEN as u64)
                .is_ok();
        let span = if absolute_fits {
            isa::JMP_ABS_LEN
        } else {
            isa::JMP_REL32_LEN
        };
        if planned.iter().any(|p| p.entry == entry) {
            return Err(Error::Unpatchable {
                function: f.name.clone(),
                reason: "named twice in one attach".into(),
            });
        }
        planned.push(PlannedFunction {
            query: request.target.clone(),
            function: f.clone(),
            module: located.module.path.clone(),
            entry,
            write_at,
            room,
            replacement,
            file_bytes: head[prefix as usize..prefix as usize + span].to_vec(),
            absolute_fits,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parses_rename() {
        assert_eq!(
            FunctionRequest::parse("a::b=c"),
            FunctionRequest {
                target: "a::b".into(),
                replacement: "c".into()
            }
        );
        assert_eq!(FunctionRequest::parse("f").replacement, "f");
    }
}
