//! `resolve`: list every function matching a pattern in a process's modules (or one file), with
//! what DWARF knows about each: size, file:line, signature, generic instance, aliases, compiler
//! clones, and every place it was inlined. Reads files only: the process is not stopped or
//! traced.

use crate::Error;
use crate::error::SearchPlace;
use crate::log::Log;
use crate::process::{self, LoadedModule, ModuleMap};
use crate::symbols::{
    DebugInfoSource, FunctionSymbol, InlineSite, Pattern, Signature, SymbolIndex,
};
use serde::Serialize;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

/// What to resolve, and where.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Search the modules mapped by this process (runtime addresses)...
    pub pid: Option<i32>,
    /// ...or this one file (link-time addresses).
    pub exe: Option<PathBuf>,
    /// An exact name, a glob (`crate::*::calc`), or a substring (used when nothing has the
    /// exact name).
    pub pattern: String,
    /// Scan all of DWARF for inlined copies (the slow part on a large binary).
    pub inlined: bool,
}

/// One place a function was inlined, with runtime addresses.
#[derive(Debug, Clone, Serialize)]
pub struct InlinedAt {
    /// The function holding the copy (keeps the old code after a patch).
    pub caller: String,
    /// Entry address of that function.
    #[serde(serialize_with = "crate::hex::serialize_opt_address")]
    pub caller_address: Option<u64>,
    /// `file:line` of the inlined call.
    pub location: Option<String>,
    /// Start of the copy, when recorded.
    #[serde(serialize_with = "crate::hex::serialize_opt_address")]
    pub address: Option<u64>,
}

/// A compiler clone, with its runtime address.
#[derive(Debug, Clone, Serialize)]
pub struct CloneAt {
    /// Symbol (`f.constprop.0`).
    pub symbol: String,
    /// `constprop`, `isra`, `part`, `cold`...
    pub kind: String,
    /// Address.
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One matching function.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedFunction {
    /// Demangled name.
    pub name: String,
    /// Symbol-table (linkage) name.
    pub symbol: Option<String>,
    /// Entry address: runtime with a PID (module bias applied), else link-time.
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub address: u64,
    /// Link-time address in the module's file.
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub file_address: u64,
    /// Size in bytes.
    pub size: u64,
    /// `file:line` of the definition.
    pub location: Option<String>,
    /// Module (path as mapped, or the file given).
    pub module: PathBuf,
    /// A generic (template) instance.
    pub generic: bool,
    /// DWARF name.
    pub dwarf_name: Option<String>,
    /// Parameter and return types with sizes, when DWARF describes them.
    pub signature: Option<Signature>,
    /// The signature as text.
    pub signature_text: Option<String>,
    /// Other names at the same address (patching it changes them all).
    pub aliases: Vec<String>,
    /// Compiler clones (separate code callers may enter).
    pub clones: Vec<CloneAt>,
    /// Every place it was inlined (None when not scanned).
    pub inlined: Option<Vec<InlinedAt>>,
}

/// A matching function that exists only as inlined copies.
#[derive(Debug, Clone, Serialize)]
pub struct InlinedOnlyFunction {
    /// DWARF name.
    pub name: String,
    /// Module.
    pub module: PathBuf,
    /// Where it was inlined.
    pub inlined: Vec<InlinedAt>,
}

/// Where a module's DWARF came from.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    /// Module path.
    pub module: PathBuf,
    /// Embedded, separate (path and how it was found) or missing.
    pub debug_info: DebugInfoSource,
    /// `.comment`: compilers that built it.
    pub compilers: Vec<String>,
}

/// Timings of one resolve.
#[derive(Debug, Clone, Serialize)]
pub struct ResolveTimings {
    /// Opening modules and finding the matches with their size, location and signature.
    pub resolve_ms: f64,
    /// The scan for inlined copies (0 when not run).
    pub inline_scan_ms: f64,
    /// Bytes of `.debug_info` scanned for inlined copies.
    pub debug_info_bytes: u64,
}

/// Result of `resolve`.
#[derive(Debug, Clone, Serialize)]
pub struct ResolveReport {
    /// Version of this report's JSON layout (docs/schemas/resolve.schema.json).
    pub schema_version: u32,
    /// The pattern as given.
    pub pattern: String,
    /// How it matched: `exact`, `glob` or `substring`.
    pub match_kind: &'static str,
    /// The process searched, if any.
    pub pid: Option<i32>,
    /// Matching functions, main executable first, by address.
    pub matches: Vec<ResolvedFunction>,
    /// Matching functions that exist only inlined.
    pub inlined_only: Vec<InlinedOnlyFunction>,
    /// Modules with matches: where their DWARF came from.
    pub modules: Vec<ModuleInfo>,
    /// What could not be known (modules without DWARF).
    pub notes: Vec<String>,
    /// Time spent.
    pub timings: ResolveTimings,
}

impl ResolveReport {
    /// The version of this report's JSON layout (`schema_version`): raised only when a field
    /// changes meaning or goes away; new fields may be added within a version (docs/json.md).
    pub const SCHEMA_VERSION: u32 = 1;
}

/// Lists the functions matching `options.pattern`.
pub fn resolve(options: &ResolveOptions, log: &Log) -> Result<ResolveReport, Error> {
    let start = Instant::now();
    let modules: Vec<(LoadedModule, Rc<SymbolIndex>, u64)> = match (options.pid, &options.exe) {
        (Some(pid), _) => {
            process::read_stat(pid, pid)?;
            process::refuse_kernel_thread(pid)?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
                process::ProcessError::PermissionDenied {
                    pid,
                    detail: format!("/proc/{pid}/exe: {e}"),
                    scope: std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "absent".into()),
                }
            })?;
            let maps = process::read_maps(pid)?;
            let mut map = ModuleMap::new(pid, &maps, &exe);
            let main = map.main_executable().cloned();
            let mut order: Vec<LoadedModule> = main.iter().cloned().collect();
            order.extend(
                map.modules
                    .iter()
                    .filter(|m| Some(&m.path) != main.as_ref().map(|x| &x.path))
                    .cloned(),
            );
            let mut out = Vec::new();
            for module in order {
                // Opened here (`resolve` reads all of a module's names), remembered nowhere.
                match map.symbols(&module).map(|known| known.index()) {
                    Ok(Some(index)) => {
                        let bias = module.bias(index.load_segments());
                        out.push((module, index, bias));
                    }
                    Ok(None) => log.step(
                        "resolve",
                        format!(
                            "skipping {}: it can no longer be read",
                            module.path.display()
                        ),
                    ),
                    Err(e) => log.step(
                        "resolve",
                        format!("skipping {}: {e}", module.path.display()),
                    ),
                }
            }
            out
        }
        (None, Some(exe)) => {
            let index = SymbolIndex::open(exe)?;
            let module = LoadedModule {
                path: exe.clone(),
                open_path: exe.clone(),
                start: 0,
                end: 0,
                first_offset: 0,
                ..Default::default()
            };
            vec![(module, Rc::new(index), 0)]
        }
        (None, None) => {
            return Err(Error::NoMatch {
                pattern: options.pattern.clone(),
                place: SearchPlace::Nothing,
                suggestions: Vec::new(),
            });
        }
    };
    log.step("resolve", format!("{} modules opened", modules.len()));

    let mut pattern = Pattern::parse(&options.pattern);
    let mut found: Vec<(usize, FunctionSymbol)> = Vec::new();
    let mut collected = None;
    if let Pattern::Exact(name) = &pattern {
        for (m, (_, index, _)) in modules.iter().enumerate() {
            found.extend(index.lookup(name).into_iter().map(|f| (m, f)));
        }
        if found.is_empty() && options.inlined {
            // Perhaps a function that exists only inlined, by its exact name.
            let c = collect(&modules, &found, &pattern, true);
            if !c.inlined_only.is_empty() {
                collected = Some(c);
            }
        }
        if found.is_empty() && collected.is_none() {
            pattern = Pattern::Substring(name.clone());
        }
    }
    if found.is_empty() && collected.is_none() {
        for (m, (_, index, _)) in modules.iter().enumerate() {
            found.extend(index.search(&pattern).into_iter().map(|f| (m, f)));
        }
    }
    log.step(
        "resolve",
        format!("{} matches ({})", found.len(), pattern.kind()),
    );
    let Collected {
        matches,
        inlined_only,
        infos,
        notes,
        scan_ms,
        debug_info_bytes,
    } = match collected {
        Some(c) => c,
        None => collect(&modules, &found, &pattern, options.inlined),
    };
    let inline_scan_ms = scan_ms;
    let resolve_ms = start.elapsed().as_secs_f64() * 1000.0 - scan_ms;
    log.step("resolve", format!("inline scan {inline_scan_ms:.1} ms"));

    if matches.is_empty() && inlined_only.is_empty() {
        let mut suggestions: Vec<String> = Vec::new();
        for (_, index, _) in &modules {
            for s in index.suggest(&options.pattern) {
                if suggestions.len() < 5 && !suggestions.contains(&s) {
                    suggestions.push(s);
                }
            }
        }
        let place = match (options.pid, &options.exe) {
            (Some(pid), _) => SearchPlace::Process(pid),
            (None, Some(exe)) => SearchPlace::File(exe.clone()),
            _ => SearchPlace::Nothing,
        };
        return Err(Error::NoMatch {
            pattern: options.pattern.clone(),
            place,
            suggestions,
        });
    }
    Ok(ResolveReport {
        schema_version: ResolveReport::SCHEMA_VERSION,
        pattern: options.pattern.clone(),
        match_kind: pattern.kind(),
        pid: options.pid,
        matches,
        inlined_only,
        modules: infos,
        notes,
        timings: ResolveTimings {
            resolve_ms,
            inline_scan_ms,
            debug_info_bytes,
        },
    })
}

fn at(site: &InlineSite, bias: u64) -> InlinedAt {
    InlinedAt {
        caller: site.caller.clone(),
        caller_address: site.caller_address.map(|a| a.wrapping_add(bias)),
        location: site.location.clone(),
        address: site.address.map(|a| a.wrapping_add(bias)),
    }
}

/// What `resolve` reports about the matches.
struct Collected {
    matches: Vec<ResolvedFunction>,
    inlined_only: Vec<InlinedOnlyFunction>,
    infos: Vec<ModuleInfo>,
    notes: Vec<String>,
    scan_ms: f64,
    debug_info_bytes: u64,
}

/// Details of every match, and (with `inlined`) one scan per module for their inlined copies
/// and for the functions matching `pattern` that exist only inlined.
fn collect(
    modules: &[(LoadedModule, Rc<SymbolIndex>, u64)],
    found: &[(usize, FunctionSymbol)],
    pattern: &Pattern,
    inlined: bool,
) -> Collected {
    let mut matches = Vec::new();
    let mut notes = Vec::new();
    let mut infos = Vec::new();
    for (m, f) in found {
        let (module, index, bias) = &modules[*m];
        let details = index.details(f);
        matches.push(ResolvedFunction {
            name: f.name.clone(),
            symbol: f.linkage_name.clone(),
            address: f.address.wrapping_add(*bias),
            file_address: f.address,
            size: f.size,
            location: f.location.clone(),
            module: module.path.clone(),
            generic: details.generic,
            dwarf_name: details.dwarf_name,
            signature_text: details.signature.as_ref().map(Signature::render),
            signature: details.signature,
            aliases: index.aliases(f),
            clones: index
                .clones(f)
                .into_iter()
                .map(|c| CloneAt {
                    symbol: c.symbol,
                    kind: c.kind,
                    address: c.address.wrapping_add(*bias),
                    size: c.size,
                })
                .collect(),
            inlined: None,
        });
    }
    let mut touched: Vec<usize> = found.iter().map(|(m, _)| *m).collect();
    touched.dedup();
    // Without matches, the functions that exist only inlined are looked for in the main
    // module (or the one file).
    if touched.is_empty() && !modules.is_empty() {
        touched.push(0);
    }
    for &m in &touched {
        let (module, index, _) = &modules[m];
        infos.push(ModuleInfo {
            module: module.path.clone(),
            debug_info: index.debug_info().clone(),
            compilers: index.compilers().to_vec(),
        });
        if !index.has_dwarf() {
            notes.push(format!(
                "{}: no DWARF{}: file:line, signatures and inlined copies are unknown; install its debug file (see RPATCH_DEBUG_ROOT)",
                module.path.display(),
                match index.debug_info() {
                    DebugInfoSource::Missing { searched } if !searched.is_empty() =>
                        format!(" (searched {})", searched.join(", ")),
                    _ => String::new(),
                }
            ));
        }
    }

    let scan_start = Instant::now();
    let mut inlined_only = Vec::new();
    let mut debug_info_bytes = 0;
    if inlined {
        for &m in &touched {
            let (module, index, bias) = &modules[m];
            if !index.has_dwarf() {
                continue;
            }
            let targets: Vec<(usize, FunctionSymbol)> = found
                .iter()
                .enumerate()
                .filter(|(_, (fm, _))| *fm == m)
                .map(|(i, (_, f))| (i, f.clone()))
                .collect();
            let symbols: Vec<FunctionSymbol> = targets.iter().map(|(_, f)| f.clone()).collect();
            let (sites, only) = index.inline_scan(&symbols, Some(pattern));
            debug_info_bytes += index.debug_info_size();
            for ((i, _), sites) in targets.iter().zip(sites) {
                matches[*i].inlined = Some(sites.iter().map(|s| at(s, *bias)).collect());
            }
            for o in only {
                // A name that also has out-of-line code is listed among the matches already.
                if !index.lookup(&o.name).is_empty() {
                    continue;
                }
                inlined_only.push(InlinedOnlyFunction {
                    name: o.name,
                    module: module.path.clone(),
                    inlined: o.sites.iter().map(|s| at(s, *bias)).collect(),
                });
            }
        }
    }
    let scan_ms = if inlined {
        scan_start.elapsed().as_secs_f64() * 1000.0
    } else {
        0.0
    };
    Collected {
        matches,
        inlined_only,
        infos,
        notes,
        scan_ms,
        debug_info_bytes,
    }
}
