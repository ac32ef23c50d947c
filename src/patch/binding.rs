//! Binding a patch library's references to the target's *private* globals and functions.
//!
//! A patch that reads `counter` must read the target's `counter`, not a copy of its own. When the
//! patch leaves such a name undefined (`extern int counter;`, or in Rust an `extern "Rust"`
//! static with a `#[link_name]`), the dynamic linker can only bind it if some loaded object
//! exports it, and an executable's globals and every `static` are exported by none. So before the
//! patch is loaded, rpatch looks each undefined name up in the target's symbol tables (`.symtab`
//! included, local symbols included), and writes a *binding shim* (see `shim`) that defines the
//! name as an absolute symbol at the live address (ASLR applied). The shim is loaded with
//! `RTLD_GLOBAL` first, so the patch's references bind to it.
//!
//! What is left alone: names some module exports in `.dynsym` (the loader binds those itself, and
//! binding them to a private copy would differ from what the target's own code sees), weak
//! references (optional by definition; `__gmon_start__` and friends), and names found nowhere
//! (`dlopen` then fails naming them, as without rpatch).
//!
//! A Rust patch may name a static by its demangled path without hash
//! (`#[link_name = "calcapp::state::COUNTER"]`): the hash changes with every build of the target,
//! the path does not.

use super::shim::{self, AbsoluteSymbol};
use crate::Error;
use crate::error::{LibraryProblem, Unsupported};
use crate::hex::hex;
use crate::log::Log;
use crate::process::{LoadedModule, ModuleMap};
use crate::symbols::Knowledge;
use std::path::{Path, PathBuf};

/// The first glibc that leaves absolute symbols unrelocated (BZ 19818, fixed in 2.28).
const MIN_GLIBC: (u32, u32) = (2, 28);

/// One undefined reference of the patch library bound to a private object of the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Binding {
    /// The name as the patch references it (the shim defines this name).
    pub name: String,
    /// The target's symbol it binds to (differs from `name` for a Rust path without hash).
    pub symbol: String,
    /// The module holding it.
    pub module: PathBuf,
    /// Runtime address in the target.
    pub address: u64,
    /// st_size of the target's symbol.
    pub size: u64,
    /// Whether it is a function (else data).
    pub function: bool,
}

/// The non-weak undefined dynamic symbols of the library (opened by the plan): what it expects
/// some other loaded object to define.
pub fn undefined_references(library: &Knowledge) -> Result<Vec<String>, Error> {
    library
        .undefined_references()
        .map_err(|e| Error::LibraryInvalid {
            path: library.path().into(),
            problem: LibraryProblem::Unreadable(e),
        })
}

/// Finds, for each name in `names`, the private object of the target it must bind to; names the
/// loader resolves anyway, or that exist nowhere, are not returned. The main executable is
/// searched first, then the other modules in address order.
///
/// A name that several different private symbols of one module carry (two `static int counter`
/// in two files) cannot be bound unambiguously: refused, naming the addresses.
pub fn find_bindings(
    modules: &mut ModuleMap,
    names: &[String],
    library: &Path,
) -> Result<Vec<Binding>, Error> {
    let mut order: Vec<LoadedModule> = modules.main_executable().cloned().into_iter().collect();
    for m in &modules.modules {
        if !order.iter().any(|o| o.path == m.path) {
            order.push(m.clone());
        }
    }
    // Unreadable modules are skipped: they cannot be searched, and the loader reports a name
    // left unbound.
    let indexes: Vec<_> = order
        .iter()
        .filter_map(|m| modules.symbols(m).ok().map(|index| (m, index)))
        .collect();
    let mut bindings = Vec::new();
    'names: for name in names {
        let found: Vec<_> = indexes
            .iter()
            .map(|(m, index)| (m, index, index.defined_symbols(name)))
            .collect();
        if found
            .iter()
            .any(|(_, _, defs)| defs.iter().any(|d| d.exported && d.name == *name))
        {
            continue; // the loader binds it by itself
        }
        for (module, index, mut defs) in found {
            defs.retain(|d| d.plain_address);
            let mut addresses: Vec<u64> = defs.iter().map(|d| d.address).collect();
            addresses.sort_unstable();
            addresses.dedup();
            match addresses.len() {
                0 => continue,
                1 => {}
                _ => {
                    return Err(Error::LibraryInvalid {
                        path: library.into(),
                        problem: LibraryProblem::AmbiguousPrivateSymbol {
                            name: name.clone(),
                            module: module.path.clone(),
                            symbols: defs.iter().map(|d| (d.name.clone(), d.address)).collect(),
                        },
                    });
                }
            }
            let def = &defs[0];
            let bias = module.bias(index.load_segments());
            bindings.push(Binding {
                name: name.clone(),
                symbol: def.name.clone(),
                module: module.path.clone(),
                address: def.address.wrapping_add(bias),
                size: def.size,
                function: def.function,
            });
            continue 'names;
        }
    }
    Ok(bindings)
}

/// Parses the highest `GLIBC_X.Y` among version names.
fn glibc_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<(u32, u32)> {
    versions
        .into_iter()
        .filter_map(|v| {
            let (major, minor) = v.strip_prefix("GLIBC_")?.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .max()
}

/// Refuses a target whose C library would misplace absolute symbols: glibc before 2.28 added the
/// shim's load address to them (BZ 19818), and another libc is not known to be safe. Read from
/// the version names libc's symbols carry, so nothing runs in the target.
fn check_libc(modules: &mut ModuleMap, pid: i32) -> Result<(), Error> {
    let libc = modules.c_library().cloned();
    let version = libc
        .as_ref()
        .and_then(|m| modules.symbols(m).ok())
        .and_then(|index| glibc_version(index.symbol_versions().iter().map(String::as_str)));
    match version {
        Some(v) if v >= MIN_GLIBC => Ok(()),
        found => Err(Error::Unsupported {
            reason: Unsupported::AbsoluteSymbolsRelocated {
                pid,
                libc: libc.map(|m| m.path),
                glibc: found,
            },
        }),
    }
}

/// The private objects of the target that the library at `library` references and the loader
/// would not bind by itself (part of the plan, so `--dry-run` shows them). Refused on a libc
/// that would relocate the absolute symbols of the shim.
pub fn plan_bindings(modules: &mut ModuleMap, library: &Knowledge) -> Result<Vec<Binding>, Error> {
    let names = undefined_references(library)?;
    let bindings = find_bindings(modules, &names, library.path())?;
    if !bindings.is_empty() {
        check_libc(modules, modules.pid())?;
    }
    Ok(bindings)
}

/// Builds the shim defining `bindings` (its bytes, loaded like the library: see `delivery`), or
/// `None` when there are none.
pub fn prepare_shim(bindings: &[Binding], log: &Log) -> Option<Vec<u8>> {
    if bindings.is_empty() {
        return None;
    }
    for b in bindings {
        log.step(
            "bind",
            format!(
                "{} -> {} at {:#x} in {}",
                b.name,
                b.symbol,
                b.address,
                b.module.display()
            ),
        );
    }
    let symbols: Vec<AbsoluteSymbol> = bindings
        .iter()
        .map(|b| AbsoluteSymbol {
            name: b.name.clone(),
            value: b.address,
            size: b.size,
            function: b.function,
        })
        .collect();
    // The soname only has to be unique per content; the file name is the content hash anyway.
    let tag = bindings
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            b.name
                .bytes()
                .chain(b.address.to_le_bytes())
                .fold(h, |h, byte| {
                    (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
                })
        })
        .to_le_bytes();
    let tag = hex(&tag);
    Some(shim::build(&format!("rpatch-bind-{tag}.so"), &symbols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_version_is_the_highest_glibc_node() {
        let v = [
            "GLIBC_2.2.5",
            "GLIBC_2.28",
            "GLIBC_2.9",
            "GLIBC_PRIVATE",
            "GLIBC_2.34",
        ];
        assert_eq!(glibc_version(v), Some((2, 34)));
        assert_eq!(glibc_version(["GLIBC_2.2.5", "GLIBC_2.27"]), Some((2, 27)));
        assert_eq!(glibc_version(["LIBC", "GLIBC_PRIVATE"]), None);
        assert!(glibc_version(["GLIBC_2.27"]).unwrap() < MIN_GLIBC);
        assert!(glibc_version(["GLIBC_2.28"]).unwrap() >= MIN_GLIBC);
    }
}
