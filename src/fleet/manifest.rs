//! Patch manifests: a TOML file naming a patch, its library (with its SHA-256) and, per target
//! module, the build-id it was made for and the functions it replaces (docs/manifest.md).
//!
//! The build-id is the contract: a process is patched only where it maps a module of that very
//! build. The library's hash is checked before anything else, so a library changed after the
//! manifest was made is never loaded anywhere.

use crate::Error;
use crate::error::{LibraryAccess, LibraryProblem, SearchPlace};
use crate::hex::hex;
use crate::patch::{FunctionRequest, ManifestTag};
use crate::symbols::{Resolution, SymbolIndex};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// A manifest file's content (docs/manifest.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The patch's name: recorded in each process's journal with the library's hash, so a later
    /// run finds the patch applied (`already_applied`) and `rollback --manifest` finds it.
    pub name: String,
    /// The patch library, relative to the manifest's directory (or absolute).
    pub library: PathBuf,
    /// SHA-256 (hex) of the library's content.
    pub library_sha256: String,
    /// The modules (executables or shared libraries) the patch is for.
    #[serde(rename = "target")]
    pub targets: Vec<ManifestTarget>,
}

/// One module a manifest patches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTarget {
    /// File name of the module, for people (and to tell a process mapping another build of it,
    /// which is skipped): matching is by `build_id` alone.
    pub module: String,
    /// GNU build-id (hex) of the module build the patch was made for.
    pub build_id: String,
    /// The functions to replace.
    pub functions: Vec<ManifestFunction>,
}

/// One function a manifest replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFunction {
    /// The function, named as `attach --func` takes it.
    pub name: String,
    /// The replacement's name in the library, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

impl ManifestFunction {
    /// The `--func` request this stands for.
    pub fn request(&self) -> FunctionRequest {
        FunctionRequest {
            target: self.name.clone(),
            replacement: self
                .replacement
                .clone()
                .unwrap_or_else(|| self.name.clone()),
        }
    }
}

/// What is wrong with a manifest.
#[derive(Debug)]
pub enum ManifestProblem {
    /// The file cannot be read.
    Unreadable(std::io::Error),
    /// It is not valid TOML, or not the manifest's layout.
    Syntax(String),
    /// A field holds a value a manifest cannot have.
    Field {
        /// The field (`name`, `target[1].build_id`).
        field: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `manifest new`: the module has no GNU build-id to match processes by.
    NoBuildId(PathBuf),
    /// `manifest new`: the manifest cannot be written.
    Unwritable(std::io::Error),
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestProblem::Unreadable(e) => write!(f, "cannot be read: {e}"),
            ManifestProblem::Syntax(e) => write!(f, "is not a valid manifest: {e}"),
            ManifestProblem::Field { field, problem } => write!(f, "{field} {problem}"),
            ManifestProblem::NoBuildId(module) => write!(
                f,
                "cannot describe {}: it has no GNU build-id, which is what processes are matched by (link it with -Wl,--build-id)",
                module.display()
            ),
            ManifestProblem::Unwritable(e) => write!(f, "cannot be written: {e}"),
        }
    }
}

/// A manifest as loaded: its file, its content (build-ids and hash in lowercase) and where its
/// library is.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// The manifest file, absolute.
    pub path: PathBuf,
    /// Its content, checked.
    pub manifest: Manifest,
    /// The library, resolved against the manifest's directory.
    pub library: PathBuf,
}

impl LoadedManifest {
    /// Reads and checks the manifest at `path` (the library is not read: see
    /// [`LoadedManifest::verify_library`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let invalid = |problem| Error::Manifest {
            path: path.clone(),
            problem,
        };
        let text = crate::files::open_host(&path)
            .and_then(|f| crate::files::read_capped(&f, MAX_MANIFEST_SIZE))
            .map_err(|e| invalid(ManifestProblem::Unreadable(e)))?;
        let text = String::from_utf8(text)
            .map_err(|_| invalid(ManifestProblem::Syntax("it is not UTF-8 text".into())))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| invalid(ManifestProblem::Syntax(e.to_string())))?;
        let manifest = check(manifest).map_err(invalid)?;
        let library = path
            .parent()
            .unwrap_or(Path::new("/"))
            .join(&manifest.library);
        Ok(Self {
            path,
            manifest,
            library,
        })
    }

    /// The tag the journal records for this manifest's patches.
    pub fn tag(&self) -> ManifestTag {
        ManifestTag {
            name: self.manifest.name.clone(),
            library_sha256: self.manifest.library_sha256.clone(),
            keep_rolled_back: false,
            build_ids: self
                .manifest
                .targets
                .iter()
                .map(|t| t.build_id.clone())
                .collect(),
        }
    }

    /// Checks the library's content hashes to the manifest's `library_sha256` (before anything
    /// is touched: a mismatch names both hashes).
    pub fn verify_library(&self) -> Result<(), Error> {
        let bytes = read_library(&self.library)?;
        let found = sha256(&bytes);
        if found != self.manifest.library_sha256 {
            return Err(Error::LibraryInvalid {
                path: self.library.clone(),
                problem: LibraryProblem::HashMismatch {
                    expected: self.manifest.library_sha256.clone(),
                    found,
                },
            });
        }
        Ok(())
    }
}

/// The largest manifest read.
const MAX_MANIFEST_SIZE: u64 = 1 << 20;

fn read_library(path: &Path) -> Result<Vec<u8>, Error> {
    crate::files::open_host(path)
        .and_then(|f| crate::files::read_capped(&f, crate::files::max_file_size()))
        .map_err(|e| Error::LibraryMissing {
            path: path.into(),
            problem: LibraryAccess::Io(e),
        })
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A name may be recorded in journals and printed in one log line: letters, digits and
/// `._:+@-`, at most 128 of them.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:+@-".contains(c))
}

/// Hex digits (either case), an even number of them, at least `min` bytes' worth.
fn valid_hex(text: &str, min: usize) -> bool {
    text.len() >= 2 * min
        && text.len().is_multiple_of(2)
        && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Checks every field and brings hex values to lowercase.
fn check(mut m: Manifest) -> Result<Manifest, ManifestProblem> {
    let bad = |field: String, problem| Err(ManifestProblem::Field { field, problem });
    if !valid_name(&m.name) {
        return bad(
            "name".into(),
            "must be 1 to 128 letters, digits or ._:+@- characters",
        );
    }
    if m.library.as_os_str().is_empty() {
        return bad("library".into(), "is empty");
    }
    if m.library_sha256.len() != 64 || !valid_hex(&m.library_sha256, 32) {
        return bad("library_sha256".into(), "must be 64 hex digits");
    }
    m.library_sha256.make_ascii_lowercase();
    if m.targets.is_empty() {
        return bad("target".into(), "is missing: name at least one [[target]]");
    }
    for (i, t) in m.targets.iter_mut().enumerate() {
        if t.module.is_empty() {
            return bad(format!("target[{i}].module"), "is empty");
        }
        if !valid_hex(&t.build_id, 1) {
            return bad(
                format!("target[{i}].build_id"),
                "must be a build-id in hex (readelf -n MODULE)",
            );
        }
        t.build_id.make_ascii_lowercase();
        if t.functions.is_empty() {
            return bad(format!("target[{i}].functions"), "is empty");
        }
        for (j, f) in t.functions.iter().enumerate() {
            if f.name.trim().is_empty()
                || f.replacement.as_ref().is_some_and(|r| r.trim().is_empty())
            {
                return bad(
                    format!("target[{i}].functions[{j}]"),
                    "has an empty name or replacement",
                );
            }
        }
    }
    let mut ids: Vec<&str> = m.targets.iter().map(|t| t.build_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return bad(
            "target".into(),
            "names one build-id twice: list its functions in one [[target]]",
        );
    }
    Ok(m)
}

/// What `rpatch manifest new` writes.
#[derive(Debug, Clone)]
pub struct NewManifestOptions {
    /// The patch library.
    pub library: PathBuf,
    /// The module (executable or shared library) the patch is for: its build-id is read from it.
    pub module: PathBuf,
    /// The functions to replace.
    pub functions: Vec<FunctionRequest>,
    /// The patch's name (default: the library's file stem).
    pub name: Option<String>,
    /// The manifest file to write.
    pub output: PathBuf,
}

/// The manifest `rpatch manifest new` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct NewManifestReport {
    /// The file written.
    pub path: PathBuf,
    /// What it holds.
    pub manifest: Manifest,
}

/// Writes a manifest for `options`: the library's hash and the module's build-id are read from
/// the files, each function must exist in the module and each replacement in the library.
pub fn new_manifest(options: &NewManifestOptions) -> Result<NewManifestReport, Error> {
    let output = std::path::absolute(&options.output).unwrap_or_else(|_| options.output.clone());
    let invalid = |problem| Error::Manifest {
        path: output.clone(),
        problem,
    };
    let library = crate::patch::open_library(
        &options.library,
        &std::rc::Rc::new(crate::cache::Cache::disabled()),
    )?;
    let library_sha256 = sha256(&read_library(&options.library)?);
    let module = SymbolIndex::open(&options.module).map_err(Error::Symbols)?;
    let build_id = module
        .build_id()
        .map(hex)
        .ok_or_else(|| invalid(ManifestProblem::NoBuildId(options.module.clone())))?;
    let mut functions = Vec::new();
    for request in &options.functions {
        if let Resolution::NotFound { suggestions } = module.resolve(&request.target) {
            return Err(Error::NoMatch {
                pattern: request.target.clone(),
                place: SearchPlace::File(options.module.clone()),
                suggestions,
            });
        }
        if let Resolution::NotFound { suggestions } = library.resolve(&request.replacement) {
            return Err(Error::NoMatch {
                pattern: request.replacement.clone(),
                place: SearchPlace::File(options.library.clone()),
                suggestions,
            });
        }
        functions.push(ManifestFunction {
            name: request.target.clone(),
            replacement: (request.replacement != request.target)
                .then(|| request.replacement.clone()),
        });
    }
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| stem(&options.library));
    let manifest = check(Manifest {
        name,
        library: library_path_for(&output, &options.library),
        library_sha256,
        targets: vec![ManifestTarget {
            module: options
                .module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            build_id,
            functions,
        }],
    })
    .map_err(invalid)?;
    std::fs::write(&output, render(&manifest))
        .map_err(|e| invalid(ManifestProblem::Unwritable(e)))?;
    Ok(NewManifestReport {
        path: output,
        manifest,
    })
}

/// The library as a manifest at `manifest` names it: relative to the manifest's directory when
/// it is inside it (the two can be moved together), else absolute.
fn library_path_for(manifest: &Path, library: &Path) -> PathBuf {
    let library = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let dir = manifest
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok());
    match dir.and_then(|d| library.strip_prefix(d).ok().map(Path::to_path_buf)) {
        Some(relative) => relative,
        None => library,
    }
}

/// The manifest as TOML, laid out as docs/manifest.md shows it.
pub fn render(m: &Manifest) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!(
        "# Made by `rpatch manifest new`; see docs/manifest.md.\nname = {}\nlibrary = {}\nlibrary_sha256 = {}\n",
        quote(&m.name),
        quote(&m.library.to_string_lossy()),
        quote(&m.library_sha256)
    );
    for t in &m.targets {
        out.push_str(&format!(
            "\n[[target]]\nmodule = {}\nbuild_id = {}\nfunctions = [\n",
            quote(&t.module),
            quote(&t.build_id)
        ));
        for f in &t.functions {
            match &f.replacement {
                Some(r) => out.push_str(&format!(
                    "  {{ name = {}, replacement = {} }},\n",
                    quote(&f.name),
                    quote(r)
                )),
                None => out.push_str(&format!("  {{ name = {} }},\n", quote(&f.name))),
            }
        }
        out.push_str("]\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            name: "calc-fix-1".into(),
            library: "fix.so".into(),
            library_sha256: "AB".repeat(32),
            targets: vec![ManifestTarget {
                module: "calcapp".into(),
                build_id: "0123ABcd".into(),
                functions: vec![
                    ManifestFunction {
                        name: "crate::pricing::calc".into(),
                        replacement: None,
                    },
                    ManifestFunction {
                        name: "calc \"v1\"".into(),
                        replacement: Some("calc_v2".into()),
                    },
                ],
            }],
        }
    }

    #[test]
    fn rendered_manifests_read_back_with_lowercase_hex() {
        let text = render(&sample());
        let back: Manifest = toml::from_str(&text).unwrap();
        let checked = check(back).unwrap();
        assert_eq!(checked.library_sha256, "ab".repeat(32));
        assert_eq!(checked.targets[0].build_id, "0123abcd");
        assert_eq!(checked.targets[0].functions, sample().targets[0].functions);
        assert_eq!(
            checked.targets[0].functions[1].request(),
            FunctionRequest {
                target: "calc \"v1\"".into(),
                replacement: "calc_v2".into()
            }
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let field_of = |m: Manifest| match check(m) {
            Err(ManifestProblem::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut m = sample();
        m.name = "two words".into();
        assert_eq!(field_of(m), "name");
        let mut m = sample();
        m.library_sha256 = "12".into();
        assert_eq!(field_of(m), "library_sha256");
        let mut m = sample();
        m.targets[0].build_id = "xyz".into();
        assert_eq!(field_of(m), "target[0].build_id");
        let mut m = sample();
        m.targets[0].functions.clear();
        assert_eq!(field_of(m), "target[0].functions");
        let mut m = sample();
        m.targets.push(m.targets[0].clone());
        assert_eq!(field_of(m), "target");
        let mut m = sample();
        m.targets.clear();
        assert_eq!(field_of(m), "target");
        assert!(toml::from_str::<Manifest>(&(render(&sample()) + "surprise = 1\n")).is_err());
    }
}
