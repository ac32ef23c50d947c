//! Names a person may type for a function, and the index from those names to functions.
//!
//! A function (one entry address) collects names from every symbol-table entry and DWARF
//! subprogram at that address: raw linkage names, their demangled forms (Rust without hash;
//! C++ with and without the parameter list), and DWARF qualified names. The index maps each
//! name to the functions carrying it and remembers what kind of name it is, because the kind
//! decides what the caller is shown (a raw or stripped match is shown under the function's
//! canonical human name; a fully spelled demangled name is shown as typed).

use cpp_demangle::DemangleOptions;

use super::CloneSymbol;
use super::FunctionSymbol;
use super::dwarf::{DwarfIndex, Subprogram};
use super::elf::{ElfInfo, SymKind};
use super::hash::{FxHashMap, FxHashSet};
use super::pattern::Pattern;

/// How a name was derived. Ordered: when one function carries the same string under several
/// kinds, the greatest is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// A linkage name as stored (symbol table or `DW_AT_linkage_name`).
    Raw,
    /// A C++ demangled name without parameter list, shared by all overloads.
    Stripped,
    /// A C++ demangled name with its parameters but without the method's cv/ref qualifiers
    /// (`ns::C::m(int)` for `ns::C::m(int) const`): what people type, shared by the `const` and
    /// non-`const` overloads of one parameter list.
    Unqualified,
    /// A DWARF qualified name (`scope::name`), also shared by overloads.
    Qualified,
    /// A full demangled name (Rust without hash, C++ with parameters).
    Demangled,
    /// A Rust generic instance in expression syntax (`f::<u32>`), unique per instance.
    Generic,
}

impl Kind {
    /// Whether a match on this kind names one function precisely enough to be shown as typed.
    pub(super) fn shown_as_typed(self) -> bool {
        self >= Kind::Demangled
    }
}

/// One function of the name index: everything at one entry address.
#[derive(Debug)]
pub(super) struct Func {
    pub address: u64,
    pub size: u64,
    pub linkage: Option<Box<str>>,
    pub display: Box<str>,
    /// A DWARF subprogram at this address, for the location.
    pub dwarf: Option<u32>,
}

/// Name -> functions, over the whole file. Built on the first `resolve`.
pub(super) struct NameIndex {
    pub funcs: Vec<Func>,
    pub by_name: FxHashMap<Box<str>, Vec<(u32, Kind)>>,
}

/// All names of one function and the values derived from them.
pub(super) struct FuncNames {
    pub names: Vec<(String, Kind)>,
    pub display: String,
    pub linkage: Option<String>,
    pub size: u64,
}

/// A demangled linkage name.
enum Demangled {
    Rust(String),
    Cpp {
        /// As c++filt prints it (template functions start with their return type).
        full: String,
        /// Without the return type: `max<int>(int, int)`, `ns::C::m(int) const`.
        no_return: String,
        /// Without parameters and qualifiers: `ns::C::m`. None for GCC clones
        /// (`foo(int) [clone .cold]`), which must not take over the name of the real function.
        stripped: Option<String>,
    },
}

/// Demangles Rust (legacy `_ZN..17h<hash>E` and v0 `_R`) and Itanium C++ names.
fn demangle(raw: &str) -> Option<Demangled> {
    if (raw.starts_with("_R") || raw.starts_with("_ZN"))
        && let Ok(d) = rustc_demangle::try_demangle(raw)
    {
        return Some(Demangled::Rust(format!("{d:#}")));
    }
    if !raw.starts_with("_Z") {
        return None;
    }
    let symbol = cpp_demangle::Symbol::new(raw).ok()?;
    let full = symbol.demangle().ok()?;
    let no_return = symbol
        .demangle_with_options(&DemangleOptions::new().no_return_type())
        .unwrap_or_else(|_| full.clone());
    let stripped = if full.contains(" [clone ") {
        None
    } else {
        symbol
            .demangle_with_options(&DemangleOptions::new().no_params().no_return_type())
            .ok()
            .map(|s| trim_qualifiers(&s).to_string())
            .filter(|s| !s.is_empty() && *s != no_return)
    };
    Some(Demangled::Cpp {
        full,
        no_return,
        stripped,
    })
}

/// `app::Type::m` for a v0-demangled inherent method `<app::Type>::m` (a qualified path
/// without `as Trait`); None for anything else.
fn inherent_path(demangled: &str) -> Option<String> {
    let inner_and_rest = demangled.strip_prefix('<')?;
    let mut depth = 0usize;
    let close = inner_and_rest.char_indices().find_map(|(i, c)| match c {
        '<' => {
            depth += 1;
            None
        }
        '>' if depth == 0 => Some(i),
        '>' => {
            depth -= 1;
            None
        }
        _ => None,
    })?;
    let (inner, rest) = inner_and_rest.split_at(close);
    let rest = &rest[1..];
    (rest.starts_with("::")
        && !inner.contains(" as ")
        && !inner.contains("->")
        && !inner.starts_with(['&', '*', '[', '(']))
    .then(|| format!("{inner}{rest}"))
}

/// Drops trailing cv/ref qualifiers that cpp_demangle keeps on some names without parameters
/// (lambdas: `main::{lambda()#1}::operator() const`).
fn trim_qualifiers(mut s: &str) -> &str {
    loop {
        let before = s;
        for q in [" const", " volatile", " &&", " &", " noexcept"] {
            s = s.strip_suffix(q).unwrap_or(s);
        }
        if s == before {
            return s;
        }
    }
}

/// Collects the names of the function at one address from its symbols (`syms`, indices into
/// `info.symbols`) and DWARF subprograms (`subs`, those with their entry there).
pub(super) fn describe(info: &ElfInfo, syms: &[u32], subs: &[Subprogram]) -> FuncNames {
    let mut names: Vec<(String, Kind)> = Vec::new();
    let mut cpp_display = None;
    let mut rust_display: Option<String> = None;
    let mut qualified: Option<String> = None;
    let mut generic: Option<String> = None;
    let mut linkage: Option<String> = None;
    let mut size = 0;

    let mut add_linkage = |raw: &str, names: &mut Vec<(String, Kind)>| {
        names.push((raw.to_string(), Kind::Raw));
        match demangle(raw) {
            Some(Demangled::Rust(d)) => {
                // v0 spells an inherent method `<app::Type>::m`; people write `app::Type::m`.
                match inherent_path(&d) {
                    Some(path) => {
                        rust_display.get_or_insert_with(|| path.clone());
                        names.push((path, Kind::Demangled));
                    }
                    None => {
                        rust_display.get_or_insert_with(|| d.clone());
                    }
                }
                names.push((d, Kind::Demangled));
            }
            Some(Demangled::Cpp {
                full,
                no_return,
                stripped,
            }) => {
                cpp_display.get_or_insert_with(|| no_return.clone());
                if full != no_return {
                    names.push((full, Kind::Demangled));
                }
                let unqualified = trim_qualifiers(&no_return);
                if unqualified != no_return && unqualified.ends_with(')') {
                    names.push((unqualified.to_string(), Kind::Unqualified));
                }
                names.push((no_return, Kind::Demangled));
                if let Some(s) = stripped {
                    names.push((s, Kind::Stripped));
                }
            }
            None => {}
        }
    };

    // Global symbols first: they give the linkage name and display name to prefer.
    let mut syms = syms.to_vec();
    syms.sort_by_key(|&i| !info.symbols[i as usize].global);
    for &i in &syms {
        let sym = &info.symbols[i as usize];
        add_linkage(&sym.name, &mut names);
        linkage.get_or_insert_with(|| sym.name.to_string());
        size = size.max(sym.size);
    }
    for sub in subs {
        if let Some(name) = &sub.name {
            qualified.get_or_insert_with(|| name.to_string());
            names.push((name.to_string(), Kind::Qualified));
        }
        if let Some(name) = &sub.generic_name {
            generic.get_or_insert_with(|| name.to_string());
            names.push((name.to_string(), Kind::Generic));
        }
        if let Some(l) = &sub.linkage {
            if !names.iter().any(|(n, k)| *k == Kind::Raw && **n == **l) {
                add_linkage(l, &mut names);
            }
            linkage.get_or_insert_with(|| l.to_string());
        }
        if size == 0 {
            size = sub.high - sub.low;
        }
    }

    // Legacy Rust mangling drops generic arguments (`app::f` for every instance); DWARF keeps
    // them, so an instance is shown as `app::f::<u32>` when that is the same path.
    let rust_display = match (rust_display, &generic) {
        (Some(d), Some(g)) if g.starts_with(&format!("{d}::<")) => Some(g.clone()),
        (d, _) => d,
    };
    let display = cpp_display
        .or(rust_display)
        .or(generic)
        .or(qualified)
        .or_else(|| names.first().map(|(n, _)| n.clone()))
        .unwrap_or_default();

    // A function in a C++ anonymous namespace is file-local like a C `static` one, and is
    // typed the same way: without the `(anonymous namespace)::` segment.
    const ANONYMOUS: &str = "(anonymous namespace)::";
    let local: Vec<(String, Kind)> = names
        .iter()
        .filter(|(n, _)| n.contains(ANONYMOUS))
        .map(|(n, k)| (n.replace(ANONYMOUS, ""), *k))
        .collect();
    names.extend(local);

    // One entry per distinct string, with its greatest kind (sorted first, kept by dedup).
    names.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    names.dedup_by(|later, earlier| later.0 == earlier.0);
    FuncNames {
        names,
        display,
        linkage,
        size,
    }
}

impl NameIndex {
    /// Groups symbols and DWARF subprograms by entry address and indexes all their names.
    pub(super) fn build(info: &ElfInfo, dwarf: &DwarfIndex) -> Self {
        let mut groups: FxHashMap<u64, (Vec<u32>, Option<std::ops::Range<usize>>)> =
            FxHashMap::default();
        for &i in &info.functions_by_address {
            let address = info.symbols[i as usize].address;
            groups.entry(address).or_default().0.push(i);
        }
        for sub in &dwarf.subprograms {
            groups
                .entry(sub.low)
                .or_default()
                .1
                .get_or_insert_with(|| dwarf.at(sub.low));
        }
        let mut addresses: Vec<u64> = groups.keys().copied().collect();
        addresses.sort_unstable();

        let mut funcs = Vec::with_capacity(addresses.len());
        let mut by_name: FxHashMap<Box<str>, Vec<(u32, Kind)>> = FxHashMap::default();
        // About three names per function (raw, demangled, qualified): avoid rehashing.
        by_name.reserve(addresses.len() * 3);
        for address in addresses {
            let (syms, subs) = &groups[&address];
            let subs = subs.clone().unwrap_or(0..0);
            let described = describe(info, syms, &dwarf.subprograms[subs.clone()]);
            let index = funcs.len() as u32;
            for (name, kind) in described.names {
                let entry = by_name.entry(name.into_boxed_str()).or_default();
                match entry.iter_mut().find(|(f, _)| *f == index) {
                    Some((_, k)) => *k = (*k).max(kind),
                    None => entry.push((index, kind)),
                }
            }
            funcs.push(Func {
                address,
                size: described.size,
                linkage: described.linkage.map(Into::into),
                display: described.display.into(),
                dwarf: (!subs.is_empty()).then_some(subs.start as u32),
            });
        }
        NameIndex { funcs, by_name }
    }

    /// Functions matching `query` (rules 3 and 4 of the contract), each with the name to show,
    /// sorted by address.
    pub(super) fn lookup(&self, query: &str) -> Vec<(u32, String)> {
        let mut hits: Vec<(u32, Kind, &str)> = Vec::new();
        if let Some((key, funcs)) = self.by_name.get_key_value(query) {
            hits.extend(funcs.iter().map(|&(f, k)| (f, k, &**key)));
        }
        // `crate::a::b` stands for `<any crate>::a::b`: the name a person writes inside the crate.
        if let Some(rest) = query.strip_prefix("crate::")
            && !rest.is_empty()
        {
            for (key, funcs) in &self.by_name {
                if let Some((first, tail)) = key.split_once("::")
                    && tail == rest
                    && !first.is_empty()
                {
                    hits.extend(funcs.iter().map(|&(f, k)| (f, k, &**key)));
                }
            }
        }
        // Best kind first, so the first hit per function is the one that names it.
        hits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        hits.dedup_by_key(|h| h.0);
        // A typed name shared by several functions (legacy Rust mangling omits generic
        // arguments) does not tell them apart: show each under its own display name.
        let unique = hits.len() == 1;
        hits.into_iter()
            .map(|(f, kind, key)| {
                let name = if unique && kind.shown_as_typed() {
                    key.to_string()
                } else {
                    self.funcs[f as usize].display.to_string()
                };
                (f, name)
            })
            .collect()
    }

    /// Functions with a name matching `pattern`, each with its display name, sorted by
    /// address. Mangled spellings are not matched (their demangled forms are).
    pub(super) fn search(&self, pattern: &Pattern) -> Vec<(u32, String)> {
        let mut hits: Vec<u32> = Vec::new();
        for (key, funcs) in &self.by_name {
            if looks_mangled(key) || !pattern.matches(key) {
                continue;
            }
            hits.extend(funcs.iter().map(|&(f, _)| f));
        }
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter()
            .map(|f| (f, self.funcs[f as usize].display.to_string()))
            .collect()
    }

    /// Up to five names close to `query`, each the display name of a function (so typing it
    /// resolves): same function name first (last path segment without generic arguments or
    /// parameters, so `gen` finds `app::gen::<u32>` and `m` finds `ns::C::m(int)`), then by
    /// edit distance (of those function names or of whole names), within a distance that
    /// still suggests a typo rather than an unrelated name.
    pub(super) fn suggest(&self, query: &str) -> Vec<String> {
        let query = query.strip_prefix("crate::").unwrap_or(query);
        let q_base = base_name(last_segment(query));
        let q_segments = segments(query);
        let threshold = (q_base.chars().count() / 3).max(2);

        let mut seen: FxHashSet<&str> = FxHashSet::default();
        let mut same: Vec<&str> = Vec::new();
        let mut scored: Vec<(usize, &str)> = Vec::new();
        // The edit distance is at least the length difference: most names are rejected
        // without computing it (byte lengths; names are ASCII in practice).
        let within = |a: &str, b: &str| {
            (a.len().abs_diff(b.len()) <= threshold)
                .then(|| levenshtein(a, b))
                .filter(|&d| d <= threshold)
        };
        for func in &self.funcs {
            let name: &str = &func.display;
            if name == query || looks_mangled(name) || !seen.insert(name) {
                continue;
            }
            let base = base_name(last_segment(name));
            if base == q_base {
                same.push(name);
                continue;
            }
            let best = match (within(q_base, base), within(query, name)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(best) = best {
                scored.push((best, name));
            }
        }
        // Names sharing more of the typed path's segments (`geo`, `Square`) come first: a
        // method of the class typed beats a function of the same name elsewhere.
        let shared = |name: &str| {
            let theirs = segments(name);
            std::cmp::Reverse(q_segments.iter().filter(|s| theirs.contains(s)).count())
        };
        same.sort_by_key(|n| (shared(n), n.len(), *n));
        scored.sort_by_key(|&(d, n)| (shared(n), d, n.len(), n));
        same.into_iter()
            .chain(scored.into_iter().map(|(_, n)| n))
            .take(5)
            .map(str::to_string)
            .collect()
    }
}

/// A path segment without generic arguments, turbofish or parameter list: the bare function
/// name people type (`gen` for `gen::<u32>`, `m` for `m(int) const`, `max` for `max<int>`).
pub(super) fn base_name(segment: &str) -> &str {
    let end = segment
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '<' || c == '(')
        .map_or(segment.len(), |(i, _)| i);
    segment[..end].trim_end_matches("::")
}

/// The bare names of a path's segments (`["geo", "Square", "area"]` for
/// `geo::Square::area(int) const`), generic arguments and parameters left out.
pub(super) fn segments(name: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = name;
    loop {
        let last = last_segment(rest);
        let base = base_name(last);
        if !base.is_empty() {
            out.push(base);
        }
        let Some(before) = rest.len().checked_sub(last.len() + 2) else {
            break;
        };
        if before == 0 || !rest[before..].starts_with("::") {
            break;
        }
        rest = &rest[..before];
    }
    out.reverse();
    out
}

/// Raw Itanium / Rust symbol spellings are not worth suggesting to a person.
fn looks_mangled(name: &str) -> bool {
    name.starts_with("_Z") || name.starts_with("_R")
}

/// The last `::` segment of a path, ignoring `::` inside `<>`, `()`, `[]` and `{}`; a trailing
/// turbofish (`f::<u32>`) stays attached to its function.
pub(super) fn last_segment(name: &str) -> &str {
    let bytes = name.as_bytes();
    let (mut depth, mut start, mut previous) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                previous = start;
                start = i + 2;
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if name[start..].starts_with('<') && start > 0 {
        &name[previous..]
    } else {
        &name[start..]
    }
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by characters.
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The symbol-table half of `resolve`: the one function the symbol tables name `query`, with
/// the name to show when the query named it precisely (else its display name is used).
///
/// Only symbols whose raw name contains the query's function name are demangled: mangled names
/// spell every path segment out (`4calc`), so the others cannot match. None when no function or
/// several match, or when the query is a generic instance (legacy Rust mangling drops generic
/// arguments): the full index, with DWARF names, then decides.
pub(super) fn match_symbols(info: &ElfInfo, query: &str) -> Option<(u64, Option<String>)> {
    if query.contains("::<") || query.is_empty() {
        return None;
    }
    let crate_rest = query.strip_prefix("crate::").filter(|r| !r.is_empty());
    let base = base_name(last_segment(crate_rest.unwrap_or(query)));
    if base.is_empty() {
        return None;
    }
    let by_address = &info.functions_by_address;
    let mut addresses: Vec<u64> = by_address
        .iter()
        .map(|&i| &info.symbols[i as usize])
        .filter(|s| s.name.contains(base))
        .map(|s| s.address)
        .collect();
    addresses.dedup();
    if addresses.len() > 512 {
        return None;
    }
    let mut hits: Vec<(u64, Kind, String)> = Vec::new();
    for address in addresses {
        let start = by_address.partition_point(|&i| info.symbols[i as usize].address < address);
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= address);
        let described = describe(info, &by_address[start..end], &[]);
        let best = described
            .names
            .into_iter()
            .filter(|(name, _)| {
                name == query
                    || crate_rest.is_some_and(|rest| {
                        name.split_once("::")
                            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest)
                    })
            })
            .max_by_key(|(_, kind)| *kind);
        if let Some((name, kind)) = best {
            hits.push((address, kind, name));
        }
    }
    match hits.as_slice() {
        [(address, kind, name)] => Some((*address, kind.shown_as_typed().then(|| name.clone()))),
        _ => None,
    }
}

/// The other names of the code at one address (`syms`: the symbols there), as people write
/// them; a name that demangles like `f`'s own is shown raw (C++ C1/C2, D1/D2 variants).
pub(super) fn aliases(info: &ElfInfo, syms: &[u32], f: &FunctionSymbol) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for &i in syms {
        let sym = &info.symbols[i as usize];
        if f.linkage_name.as_deref() == Some(&*sym.name) {
            continue;
        }
        let described = describe(info, &[i], &[]);
        let shown = if described.display == f.name {
            sym.name.to_string()
        } else {
            described.display
        };
        if !out.contains(&shown) {
            out.push(shown);
        }
    }
    out
}

/// GCC clone suffixes: `f.constprop.0`, `f.isra.0`, `f.part.0`, `f.cold`, and their
/// combinations (`f.isra.0.cold`).
const CLONE_KINDS: &[&str] = &["constprop", "isra", "part", "cold", "clone", "specialized"];

/// Compiler clones of the function whose symbol is `linkage`.
pub(super) fn clones(info: &ElfInfo, linkage: &str) -> Vec<CloneSymbol> {
    let mut out: Vec<CloneSymbol> = info
        .symbols
        .iter()
        .filter(|s| s.kind == SymKind::Func)
        .filter_map(|s| {
            let suffix = s.name.strip_prefix(linkage)?.strip_prefix('.')?;
            let kind = suffix.split('.').next()?;
            CLONE_KINDS.contains(&kind).then(|| CloneSymbol {
                symbol: s.name.to_string(),
                kind: if suffix.ends_with("cold") {
                    "cold".to_string()
                } else {
                    kind.to_string()
                },
                address: s.address,
                size: s.size,
            })
        })
        .collect();
    out.sort_by_key(|c| c.address);
    out.dedup_by_key(|c| c.address);
    out
}
