//! Phase 2, *Plan*: resolve every `--func` in the target and in the patch library, and check that
//! each function can take an entry jump — all without stopping anything.

use crate::Error;
use crate::cache::Cache;
use crate::error::{
    AmbiguityScope, Candidate, LibraryAccess, LibraryProblem, Policy, ReplacementMiss,
    UnpatchableReason,
};
use crate::hex::hex;
use crate::isa;
use crate::process::{LoadedModule, ModuleMap};
use crate::symbols::{
    DebugInfoSource, FunctionDetails, FunctionSymbol, InlineSite, InlineSites, Knowledge, Pattern,
    Resolution, Signature,
};
use std::path::Path;
use std::rc::Rc;

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
    /// The separator is the first `=` that is not part of a C++ operator name (`operator=`,
    /// `operator==`, `operator<=`, `operator+=`...), so those can be named too.
    pub fn parse(spec: &str) -> Self {
        let in_operator_name = |i: usize| {
            let before = spec[..i].trim_end_matches(|c| "=!<>+-*/%^&|~".contains(c));
            before.trim_end().ends_with("operator")
        };
        let split = spec
            .char_indices()
            .find(|&(i, c)| c == '=' && !in_operator_name(i))
            .map(|(i, _)| (&spec[..i], &spec[i + 1..]));
        match split {
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
    /// The function's DWARF signature, when known.
    pub signature: Option<Signature>,
    /// The replacement's DWARF signature, when known.
    pub replacement_signature: Option<Signature>,
    /// Where the function was inlined (those copies keep the old code); empty when it was not,
    /// or when the module has no DWARF to tell.
    pub inlined: Vec<InlineSite>,
}

/// The checks `plan` makes beyond resolution, and their overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// `--force`: a signature mismatch is a warning, not an error.
    pub force: bool,
    /// `--strict`: inlined copies are an error, not a warning.
    pub strict: bool,
    /// `--all-matches`: a name matching several functions plans each of them.
    pub all_matches: bool,
}

/// The planned functions, and what the user should know about them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// In request order (a request with `--all-matches` may give several).
    pub functions: Vec<PlannedFunction>,
    /// Inlined copies, clones, aliases, unchecked signatures, compiler version differences.
    pub warnings: Vec<String>,
}

fn ser_hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(b))
}

/// Opens the patch library and checks it is a shared object for this machine; what is known
/// about it is remembered in `cache`.
pub fn open_library(path: &Path, cache: &Rc<Cache>) -> Result<Knowledge, Error> {
    let missing = |problem| Error::LibraryMissing {
        path: path.into(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| missing(LibraryAccess::Io(e)))?;
    if let Some(problem) = LibraryAccess::not_a_file(meta.file_type()) {
        return Err(missing(problem));
    }
    std::fs::File::open(path).map_err(|e| missing(LibraryAccess::Io(e)))?;
    let invalid = |problem| Error::LibraryInvalid {
        path: path.into(),
        problem,
    };
    let index =
        Knowledge::open_host(path, cache).map_err(|e| invalid(LibraryProblem::NotElf(e)))?;
    let ours = isa::OBJECT_ARCHITECTURE;
    if index.architecture() != ours {
        return Err(invalid(LibraryProblem::WrongArchitecture {
            found: index.architecture(),
            ours,
        }));
    }
    if !index.is_position_independent() {
        return Err(invalid(LibraryProblem::Executable));
    }
    Ok(index)
}

/// Where a name was found.
struct Located {
    module: LoadedModule,
    function: FunctionSymbol,
    index: Rc<Knowledge>,
}

/// Resolves `name` in the target: the main executable first (a `crate::` path only there), then
/// every other mapped module. Several functions match only with `all_matches` (else that is an
/// ambiguity error); a name that matches nothing but generic instances (`app::f` for
/// `app::f::<u32>` and `app::f::<u64>`) is treated as matching those instances.
fn locate(modules: &mut ModuleMap, name: &str, all_matches: bool) -> Result<Vec<Located>, Error> {
    let pid = modules.pid();
    let order = search_order(modules, name);
    let mut suggestions: Vec<String> = Vec::new();
    let mut found: Vec<Located> = Vec::new();
    let main = modules.main_executable().cloned();
    for module in &order {
        let Ok(index) = modules.symbols(module) else {
            continue;
        };
        let mut candidates = match index.resolve(name) {
            Resolution::Found(function) => vec![function],
            Resolution::Ambiguous(candidates) => candidates,
            Resolution::NotFound { suggestions: s } => {
                if suggestions.len() < 5 {
                    suggestions.extend(s.into_iter().take(5 - suggestions.len()));
                }
                Vec::new()
            }
        };
        if candidates.is_empty() {
            candidates = generic_instances(&index, name);
        }
        if candidates.len() > 1 && !all_matches {
            let bias = module.bias(index.load_segments());
            let generic = candidates.iter().all(|c| index.details(c).generic);
            return Err(Error::Ambiguous {
                name: name.into(),
                pid,
                candidates: candidates
                    .iter()
                    .map(|c| candidate(c, bias, module))
                    .collect(),
                scope: AmbiguityScope::OneModule { generic },
            });
        }
        found.extend(candidates.into_iter().map(|function| Located {
            module: module.clone(),
            function,
            index: index.clone(),
        }));
        // The main executable wins: a library's function of the same name is interposed by it.
        if !found.is_empty()
            && main
                .as_ref()
                .is_some_and(|m| m.path == found[0].module.path)
        {
            break;
        }
    }
    let modules_found = {
        let mut paths: Vec<&std::path::PathBuf> = found.iter().map(|l| &l.module.path).collect();
        paths.dedup();
        paths.len()
    };
    if found.is_empty() {
        if let Some(e) = only_inlined(modules, &order, name) {
            return Err(e);
        }
        return Err(Error::FunctionNotFound {
            name: name.into(),
            pid,
            suggestions,
        });
    }
    if modules_found > 1 {
        return Err(Error::Ambiguous {
            name: name.into(),
            pid,
            candidates: found
                .iter()
                .map(|l| {
                    candidate(
                        &l.function,
                        l.module.bias(l.index.load_segments()),
                        &l.module,
                    )
                })
                .collect(),
            scope: AmbiguityScope::SeveralModules,
        });
    }
    Ok(found)
}

/// The modules to search for `name`, main executable first.
fn search_order(modules: &ModuleMap, name: &str) -> Vec<LoadedModule> {
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
    order
}

/// The generic instances of `name` (`name::<...>`), when it names a generic function.
fn generic_instances(index: &Knowledge, name: &str) -> Vec<FunctionSymbol> {
    if name.contains('<') || !index.has_dwarf() {
        return Vec::new();
    }
    let prefix = format!("{}::<", name.strip_prefix("crate::").unwrap_or(name));
    index
        .search(&Pattern::Glob(name.to_string()))
        .into_iter()
        .filter(|f| {
            let n = f.name.as_str();
            if name.starts_with("crate::") {
                n.split_once("::")
                    .is_some_and(|(_, tail)| tail.starts_with(&prefix))
            } else {
                n.starts_with(&prefix)
            }
        })
        .collect()
}

/// For a name with no out-of-line code: the error naming the callers it was inlined into,
/// when DWARF shows it exists only inlined.
fn only_inlined(modules: &mut ModuleMap, order: &[LoadedModule], name: &str) -> Option<Error> {
    for module in order {
        let Ok(index) = modules.symbols(module) else {
            continue;
        };
        if !index.has_dwarf() {
            continue;
        }
        let (_, only) = index.inline_scan(&[], Some(&Pattern::Exact(name.to_string())));
        let Some(found) = only.into_iter().next() else {
            continue;
        };
        return Some(Error::Unpatchable {
            function: found.name.clone(),
            reason: UnpatchableReason::OnlyInlined {
                module: module.file_name().to_string(),
                sites: found.sites,
            },
        });
    }
    None
}

/// A function a name matches, with its runtime address, as an ambiguity lists it.
fn candidate(f: &FunctionSymbol, bias: u64, module: &LoadedModule) -> Candidate {
    Candidate {
        name: f.name.clone(),
        address: f.address.wrapping_add(bias),
        module: module.path.clone(),
        location: f.location.clone(),
    }
}

/// Plans every request against the target's modules and the library, and checks each function
/// against its replacement (signature), its inlined copies, clones and aliases.
pub fn plan(
    modules: &mut ModuleMap,
    library: &Knowledge,
    requests: &[FunctionRequest],
    checks: Checks,
) -> Result<Plan, Error> {
    let mut warnings: Vec<String> = Vec::new();
    let targets = locate_requests(modules, library, requests, checks, &mut warnings)?;
    let inlined = inline_sites(&targets);
    let mut planned: Vec<PlannedFunction> = Vec::new();
    let mut notes_given: Vec<std::path::PathBuf> = Vec::new();
    for (target, inlined) in targets.into_iter().zip(inlined) {
        let (signature, replacement_signature) = check_function(
            &target,
            library,
            &inlined,
            checks,
            &mut warnings,
            &mut notes_given,
        )?;
        let Target {
            located,
            replacement,
            query,
        } = target;
        planned.push(prepare(
            query,
            &located,
            replacement,
            &planned,
            signature,
            replacement_signature,
            inlined,
        )?);
    }
    Ok(Plan {
        functions: planned,
        warnings,
    })
}

/// A function found in the target, its replacement in the library, and the request as typed.
struct Target {
    located: Located,
    replacement: FunctionSymbol,
    query: String,
}

/// Every request resolved in the target (a name with `--all-matches` may give several
/// functions) and in the library. A closure or async body, or a function returning one, is
/// refused here, before anything else is looked at (unless `--force`).
fn locate_requests(
    modules: &mut ModuleMap,
    library: &Knowledge,
    requests: &[FunctionRequest],
    checks: Checks,
    warnings: &mut Vec<String>,
) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    for request in requests {
        let located = locate(modules, &request.target, checks.all_matches)?;
        let several = located.len() > 1;
        for l in located {
            if let Some(generated) = refusal(&l.function, &l.index.details(&l.function)) {
                if !checks.force {
                    return Err(Error::Refused {
                        policy: Policy::GeneratedCode(generated),
                    });
                }
                warnings.push(format!("{generated}; patched anyway (--force)"));
            }
            // Each instance of a generic finds its own instance in the library, unless the
            // request names the replacement explicitly.
            let replacement_name = if several && request.replacement == request.target {
                l.function.name.clone()
            } else {
                request.replacement.clone()
            };
            let replacement = find_replacement(library, &replacement_name)?;
            targets.push(Target {
                located: l,
                replacement,
                query: request.target.clone(),
            });
        }
    }
    Ok(targets)
}

/// Where each target function was inlined: one scan of a module's DWARF for all its functions.
fn inline_sites(targets: &[Target]) -> Vec<Vec<InlineSite>> {
    let mut inlined: Vec<Vec<InlineSite>> = vec![Vec::new(); targets.len()];
    let mut done: Vec<bool> = vec![false; targets.len()];
    for i in 0..targets.len() {
        if done[i] {
            continue;
        }
        let path = &targets[i].located.module.path;
        let group: Vec<usize> = (i..targets.len())
            .filter(|&j| targets[j].located.module.path == *path)
            .collect();
        let index = targets[i].located.index.clone();
        let functions: Vec<FunctionSymbol> = group
            .iter()
            .map(|&j| targets[j].located.function.clone())
            .collect();
        let (sites, _) = index.inline_scan(&functions, None);
        for (&j, s) in group.iter().zip(sites) {
            inlined[j] = s;
            done[j] = true;
        }
    }
    inlined
}

/// The checks of one function against its replacement: the signatures (a difference is refused
/// unless `--force`), its inlined copies (refused with `--strict`), its clones and aliases, and
/// the compilers that built both sides. What is not refused becomes a warning. Returns both
/// signatures when DWARF gave them.
fn check_function(
    target: &Target,
    library: &Knowledge,
    inlined: &[InlineSite],
    checks: Checks,
    warnings: &mut Vec<String>,
    notes_given: &mut Vec<std::path::PathBuf>,
) -> Result<(Option<Signature>, Option<Signature>), Error> {
    let located = &target.located;
    let replacement = &target.replacement;
    let f = &located.function;
    let index = &located.index;

    // Signature.
    let signature = index.details(f).signature;
    let replacement_signature = library.details(replacement).signature;
    match (&signature, &replacement_signature) {
        (Some(old), Some(new)) => {
            if let Some(differences) = old.mismatch(new) {
                if !checks.force {
                    return Err(Error::SignatureMismatch {
                        function: f.name.clone(),
                        target: Box::new(old.clone()),
                        replacement_name: replacement.name.clone(),
                        replacement: Box::new(new.clone()),
                    });
                }
                warnings.push(format!(
                    "{}: signature differs from the replacement's ({differences}), patched anyway (--force)",
                    f.name
                ));
            }
        }
        _ => {
            let missing: Vec<String> = [
                (
                    signature.is_none(),
                    &located.module.path,
                    index.debug_info(),
                ),
                (
                    replacement_signature.is_none(),
                    &library.path().to_path_buf(),
                    library.debug_info(),
                ),
            ]
            .into_iter()
            .filter(|(missing, _, _)| *missing)
            .map(|(_, path, source)| match source {
                DebugInfoSource::Missing { .. } => format!("{} has no DWARF", path.display()),
                _ => format!("{} describes no parameters for it", path.display()),
            })
            .collect();
            warnings.push(format!(
                "{}: signature not checked ({}); build with -g, or install the debug file (see RPATCH_DEBUG_ROOT)",
                f.name,
                missing.join(", ")
            ));
        }
    }
    if !index.has_dwarf() && !notes_given.contains(&located.module.path) {
        notes_given.push(located.module.path.clone());
        warnings.push(format!(
            "{}: no DWARF: inlined copies of {} cannot be found",
            located.module.path.display(),
            f.name
        ));
    }

    // Inlined copies.
    if !inlined.is_empty() {
        if checks.strict {
            return Err(Error::InlinedCopies {
                function: f.name.clone(),
                sites: inlined.to_vec(),
            });
        }
        warnings.push(format!(
            "{} was inlined into {} place(s) that keep the old code: {} (--strict refuses this)",
            f.name,
            inlined.len(),
            InlineSites(inlined)
        ));
    }

    // Clones and aliases.
    let bias = located.module.bias(index.load_segments());
    let clones: Vec<String> = index
        .clones(f)
        .into_iter()
        .filter(|c| c.is_entry_point())
        .map(|c| format!("{} at {:#x}", c.symbol, c.address.wrapping_add(bias)))
        .collect();
    if !clones.is_empty() {
        warnings.push(format!(
            "{} has compiler clones that callers enter directly and that keep the old code: {}; a clone may take other arguments (constants folded in, parameters dropped): patch its callers, or the clone with a replacement built for its interface (--func 'CLONE=REPLACEMENT')",
            f.name,
            clones.join(", ")
        ));
    }
    let aliases = index.aliases(f);
    if !aliases.is_empty() {
        warnings.push(format!(
            "{} at {:#x} is also {}: patching it changes them all",
            f.name,
            f.address.wrapping_add(bias),
            aliases.join(", ")
        ));
    }

    // Rust has no stable ABI: both sides should come from one compiler.
    if let (Some(a), Some(b)) = (index.rustc_version(), library.rustc_version())
        && a != b
    {
        let w = format!(
            "{} was built by {a}, the patch library by {b}: Rust has no stable ABI, build the patch with the target's compiler",
            located.module.file_name()
        );
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }

    Ok((signature, replacement_signature))
}

/// What the compiler generated a body for, whose layout its callers share with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// A closure: its captured variables are laid out by the function that creates it.
    Closure,
    /// An async fn or block (or another coroutine): a state machine its callers allocate and
    /// poll.
    Async,
    /// A legacy-mangled `{{closure}}` without DWARF to tell which of the two.
    ClosureOrAsync,
}

/// Classifies one path segment as rustc names generated items: `{{closure}}` (legacy symbol
/// demangling), `{closure#0}` / `{async_fn#0}` / `{async_block#0}` / `{coroutine#0}`... (v0
/// demangling and DWARF), and with `env`, their types (`{closure_env#0}`, `{async_fn_env#0}`).
/// Other braced segments (`{impl#0}`, `{extern#0}`, `{constant#0}`) are not generated bodies.
fn generated_segment(segment: &str, env: bool) -> Option<Generated> {
    if !env && segment == "{{closure}}" {
        return Some(Generated::ClosureOrAsync);
    }
    let (kind, number) = segment
        .strip_prefix('{')?
        .strip_suffix('}')?
        .split_once('#')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = if env {
        kind.strip_suffix("_env")?
    } else {
        kind
    };
    if kind == "closure" {
        Some(Generated::Closure)
    } else if ["async", "gen", "coroutine"]
        .iter()
        .any(|k| kind.starts_with(k))
        || kind.ends_with("_closure")
    {
        Some(Generated::Async)
    } else {
        None
    }
}

/// The last segment of a Rust path, generic arguments left out: `b` for `a::b::<T>`, and
/// `{closure#0}` for `f::{closure#0}<u32>`; `::` inside `<...>` does not split.
fn last_segment(path: &str) -> &str {
    let mut segments: Vec<&str> = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let bytes = path.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth -= 1,
            b':' if depth == 0 && i > start && bytes.get(i + 1) == Some(&b':') => {
                segments.push(&path[start..i]);
                start = i + 2;
            }
            _ => {}
        }
    }
    segments.push(&path[start.min(path.len())..]);
    let last = segments
        .into_iter()
        .rev()
        .find(|s| !s.starts_with('<') && !s.is_empty())
        .unwrap_or("");
    // `name<T>` (a DWARF name of a generic instance): the name alone.
    last.find('<').map_or(last, |i| &last[..i]).trim()
}

/// Every braced token (`{async_fn_env#0}`) inside a type name.
fn braced_tokens(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('{').filter_map(|(i, _)| {
        let end = name[i..].find('}')?;
        Some(&name[i..=i + end])
    })
}

/// Why `f` must not be redirected to a plain replacement (see [`generated_code`]), from its DWARF
/// details when there are any.
fn refusal(f: &FunctionSymbol, details: &FunctionDetails) -> Option<GeneratedCode> {
    let signature = details.signature.as_ref();
    generated_code(
        &f.name,
        details.dwarf_name.as_deref(),
        signature
            .and_then(|s| s.params.first())
            .map(|p| p.ty.name.as_str()),
        signature
            .and_then(|s| s.returns.as_ref())
            .map(|t| t.name.as_str()),
    )
}

/// A function that must not be redirected to a plain replacement: the body of a closure or of an
/// async fn/block, or a function returning a closure or future type. Its callers allocate, lay
/// out and resume that exact type, which a replacement from another build cannot reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCode {
    /// The function.
    pub function: String,
    /// What it is the body of, when it is a generated body.
    pub body: Option<Generated>,
    /// Otherwise, the generated type it returns (its DWARF name) and what that type is.
    pub returns: Option<(String, Generated)>,
}

impl std::fmt::Display for GeneratedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let instead = "patch a plain function it calls instead (move the code to change into an #[inline(never)] fn and patch that)";
        let name = &self.function;
        if let Some(kind) = self.body {
            let what = match kind {
                Generated::Closure => {
                    "a closure body: its captured variables are laid out by the function that creates the closure"
                }
                Generated::Async => {
                    "the body of an async fn or block: a state machine that its callers allocate and poll with the layout of this build"
                }
                Generated::ClosureOrAsync => {
                    "a closure or async body: its state is laid out by the code that creates it"
                }
            };
            return write!(
                f,
                "{name} is {what}, which a replacement cannot reproduce; {instead}"
            );
        }
        if let Some((returns, kind)) = &self.returns {
            let what = match kind {
                Generated::Closure => "a closure",
                _ => "the state machine of an async fn or block (its future)",
            };
            return write!(
                f,
                "{name} returns {returns}, {what}: its callers allocate that exact type and then run its code, and a replacement's would differ in size and layout; {instead}"
            );
        }
        write!(f, "{name} is generated code; {instead}")
    }
}

/// Whether the function `name` is generated code (see [`GeneratedCode`]). `dwarf_name`, the
/// first parameter's type and the return type come from DWARF when there is any; without it the
/// demangled symbol name still shows closure and async bodies.
fn generated_code(
    name: &str,
    dwarf_name: Option<&str>,
    first_param: Option<&str>,
    returns: Option<&str>,
) -> Option<GeneratedCode> {
    // The body itself: named by its last path segment (a plain fn nested in a closure is not one).
    let by_dwarf = dwarf_name.and_then(|n| generated_segment(last_segment(n), false));
    let body = by_dwarf.or_else(|| match generated_segment(last_segment(name), false)? {
        // `{{closure}}` names closures and async bodies alike: an async body takes its state as
        // `Pin<&mut {async_fn_env#0}>`, a closure its captures as `&{closure_env#0}`.
        Generated::ClosureOrAsync => Some(
            first_param
                .and_then(|t| braced_tokens(t).find_map(|t| generated_segment(t, true)))
                .unwrap_or(Generated::ClosureOrAsync),
        ),
        other => Some(other),
    });
    if body.is_some() {
        return Some(GeneratedCode {
            function: name.to_string(),
            body,
            returns: None,
        });
    }
    let returns = returns?;
    let kind = braced_tokens(returns).find_map(|t| generated_segment(t, true))?;
    Some(GeneratedCode {
        function: name.to_string(),
        body: None,
        returns: Some((returns.to_string(), kind)),
    })
}

/// Finds the replacement in the library.
fn find_replacement(library: &Knowledge, name: &str) -> Result<FunctionSymbol, Error> {
    let missing = |miss| Error::ReplacementMissing {
        name: name.to_string(),
        library: library.path().into(),
        miss,
    };
    match library.resolve(name) {
        Resolution::Found(f) => Ok(f),
        Resolution::Ambiguous(c) => Err(missing(ReplacementMiss::Ambiguous(
            c.iter()
                .map(|f| f.linkage_name.clone().unwrap_or_else(|| f.name.clone()))
                .collect(),
        ))),
        Resolution::NotFound { suggestions } => {
            Err(missing(ReplacementMiss::NotFound(suggestions)))
        }
    }
}

/// The program-knowledge table of [`prepare`]'s branch checks: for a function's entry, whether
/// its own branches allow the near jump (only those that do are kept) and the absolute one. The
/// version changes with what `isa::check_branches` accepts.
const ENTRY_BRANCHES: &str = "entry-branches-v1";

/// Checks that the function can take an entry jump and computes where it goes.
fn prepare(
    query: String,
    located: &Located,
    replacement: FunctionSymbol,
    planned: &[PlannedFunction],
    signature: Option<Signature>,
    replacement_signature: Option<Signature>,
    inlined: Vec<InlineSite>,
) -> Result<PlannedFunction, Error> {
    let f = &located.function;
    let bias = located.module.bias(located.index.load_segments());
    let head = located
        .index
        .file_bytes(f.address, (f.size as usize).min(4096))
        .ok_or_else(|| Error::Unpatchable {
            function: f.name.clone(),
            reason: UnpatchableReason::NotInFile,
        })?;
    let prefix = isa::entry_prefix_len(&head) as u64;
    let room = f.size.saturating_sub(prefix);
    // The jump's form may depend on the instruction it replaces (arm64: a PAC-signing entry).
    let at_write = head.get(prefix as usize..).unwrap_or_default();
    let near_len = isa::jump::near_len(at_write) as u64;
    let far_len = isa::jump::far_len(at_write) as u64;
    if room < near_len {
        return Err(Error::Unpatchable {
            function: f.name.clone(),
            reason: UnpatchableReason::Code(rpatch_arch::Unpatchable::TooSmall {
                available: room,
                needed: near_len,
            }),
        });
    }
    let entry = f.address.wrapping_add(bias);
    let write_at = entry + prefix;
    // The verdicts depend only on the file's bytes (branch targets are relative), so what an
    // earlier run decoded is reused: decoding needs the decoder's tables, built on first use
    // at the cost of about a millisecond.
    let question = format!(
        "{:x}+{}:{prefix}:{near_len}:{far_len}:{room}",
        f.address,
        head.len()
    );
    let absolute_fits = match located.index.recall::<bool>(ENTRY_BRANCHES, &question) {
        Some(absolute_fits) => absolute_fits,
        None => {
            isa::check_branches(&head, entry, write_at..write_at + near_len).map_err(|e| {
                Error::Unpatchable {
                    function: f.name.clone(),
                    reason: UnpatchableReason::Code(e),
                }
            })?;
            let absolute_fits = room >= far_len
                && isa::check_branches(&head, entry, write_at..write_at + far_len).is_ok();
            located
                .index
                .learn(ENTRY_BRANCHES, &question, &absolute_fits);
            absolute_fits
        }
    };
    let span = if absolute_fits { far_len } else { near_len } as usize;
    if planned.iter().any(|p| p.entry == entry) {
        return Err(Error::Unpatchable {
            function: f.name.clone(),
            reason: UnpatchableReason::NamedTwice,
        });
    }
    Ok(PlannedFunction {
        query,
        function: f.clone(),
        module: located.module.path.clone(),
        entry,
        write_at,
        room,
        replacement,
        file_bytes: head[prefix as usize..prefix as usize + span].to_vec(),
        absolute_fits,
        signature,
        replacement_signature,
        inlined,
    })
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

    #[test]
    fn operator_names_keep_their_equals_signs() {
        let same = |s: &str| {
            FunctionRequest::parse(s)
                == FunctionRequest {
                    target: s.into(),
                    replacement: s.into(),
                }
        };
        assert!(same("ns::X::operator="));
        assert!(same("ns::X::operator=="));
        assert!(same("ns::X::operator<="));
        assert!(same("ns::X::operator+="));
        let r = FunctionRequest::parse("ns::X::operator=(ns::X const&)=fix::assign");
        assert_eq!(r.target, "ns::X::operator=(ns::X const&)");
        assert_eq!(r.replacement, "fix::assign");
        let t = FunctionRequest::parse("ns::f<int>=g");
        assert_eq!(
            (t.target.as_str(), t.replacement.as_str()),
            ("ns::f<int>", "g")
        );
    }

    /// `generated_code` for a symbol name alone (no DWARF).
    fn by_name(name: &str) -> Option<String> {
        generated_code(name, None, None, None).map(|g| g.to_string())
    }

    #[test]
    fn last_segments_skip_generic_arguments() {
        assert_eq!(last_segment("a::b::c"), "c");
        assert_eq!(last_segment("app::f::{closure#0}<u32>"), "{closure#0}");
        assert_eq!(last_segment("calcgen::calc::widen::<u32>"), "widen");
        assert_eq!(
            last_segment("core::ops::FnOnce::call_once::<app::f::{closure_env#0}, (u64)>"),
            "call_once"
        );
        assert_eq!(last_segment("<app::T as core::ops::Fn<()>>::call"), "call");
        assert_eq!(last_segment("compute"), "compute");
    }

    #[test]
    fn closure_and_async_bodies_are_recognised() {
        // By symbol only (no DWARF): legacy and v0 demangling.
        for name in [
            "app::f::{{closure}}",
            "app::handle::{{closure}}",
            "app::f::{closure#0}",
            "app::handle::{async_fn#0}",
            "app::main::{async_block#3}",
            "app::g::{coroutine#0}",
            "app::h::{async_closure#1}",
        ] {
            assert!(by_name(name).is_some(), "{name}");
        }
        // A plain fn nested in a closure, methods in impl blocks, generics: not generated bodies.
        for name in [
            "app::main::{{closure}}::helper",
            "app::{impl#0}::method",
            "app::f::<app::g::{closure_env#0}>",
            "app::pricing::quote",
        ] {
            assert!(by_name(name).is_none(), "{name}");
        }
        // `{{closure}}`: DWARF's first parameter tells a closure from an async body.
        let closure = generated_code(
            "app::f::{{closure}}",
            None,
            Some("&app::f::{closure_env#0}"),
            Some("String"),
        )
        .unwrap()
        .to_string();
        assert!(closure.contains("is a closure body"), "{closure}");
        let body = generated_code(
            "app::handle::{{closure}}",
            None,
            Some("Pin<&mut app::handle::{async_fn_env#0}>"),
            Some("Poll<u64>"),
        )
        .unwrap()
        .to_string();
        assert!(body.contains("async fn or block"), "{body}");
        // The DWARF name decides when there is one.
        let named = generated_code(
            "app::x::{{closure}}",
            Some("app::x::{async_block#0}"),
            None,
            None,
        )
        .unwrap()
        .to_string();
        assert!(named.contains("async fn or block"), "{named}");
    }

    #[test]
    fn functions_returning_futures_or_closures_are_recognised() {
        let future = generated_code(
            "app::handle",
            Some("app::handle"),
            Some("u64"),
            Some("{async_fn_env#0}"),
        )
        .unwrap()
        .to_string();
        assert!(future.contains("returns {async_fn_env#0}"), "{future}");
        assert!(future.contains("#[inline(never)]"), "{future}");
        let boxed = generated_code(
            "app::make",
            None,
            None,
            Some("alloc::boxed::Box<app::make::{closure_env#0}>"),
        )
        .unwrap()
        .to_string();
        assert!(boxed.contains("a closure"), "{boxed}");
        assert!(
            generated_code("app::quote", Some("app::quote"), Some("u64"), Some("u64")).is_none()
        );
        assert!(
            generated_code(
                "app::run",
                None,
                Some("Pin<&mut app::main::{async_block_env#0}>"),
                Some("()")
            )
            .is_none(),
            "a function taking a future is a plain function"
        );
    }
}
