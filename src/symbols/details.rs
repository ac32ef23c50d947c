//! What DWARF says about one function beyond its name: parameter and return types with their
//! sizes (the signature rpatch compares between a function and its replacement), and whether
//! it is a generic instance. Reads the function's DIE and the type DIEs it refers to, in the
//! one unit that holds it.

use gimli::{AttributeValue, UnitOffset};

use super::dwarf::{self, Dwarf, Subprogram, Unit};

/// A type as DWARF names it, with its size in bytes when known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TypeInfo {
    /// Type name as the compiler spells it (`int`, `const char *`, `u64`, `&str`).
    pub name: String,
    /// `DW_AT_byte_size` (through typedefs and qualifiers; pointers: the address size).
    pub size: Option<u64>,
}

impl std::fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.size {
            Some(size) => write!(f, "{} [{size}]", self.name),
            None => write!(f, "{} [?]", self.name),
        }
    }
}

/// One formal parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parameter {
    /// Its name in the source, when recorded.
    pub name: Option<String>,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: TypeInfo,
}

/// Parameter and return types of a function, in order, as DWARF records them (C++ `this` and
/// Rust `self` included: they are passed like any other parameter).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    /// Formal parameters in order.
    pub params: Vec<Parameter>,
    /// Return type; None for `void` / `()`.
    pub returns: Option<TypeInfo>,
    /// Takes `...` (C variadic).
    pub variadic: bool,
}

impl Signature {
    /// `(int x [4], char * p [8]) -> int [4]`: types with their sizes.
    pub fn render(&self) -> String {
        let mut params: Vec<String> = self
            .params
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{n}: {}", p.ty),
                None => p.ty.to_string(),
            })
            .collect();
        if self.variadic {
            params.push("...".into());
        }
        let returns = self
            .returns
            .as_ref()
            .map_or_else(|| "void".to_string(), |r| r.to_string());
        format!("({}) -> {returns}", params.join(", "))
    }

    /// The differences that make a call through one signature wrong for the other (types by
    /// name and size, in order; parameter names do not matter), or None when they agree.
    pub fn mismatch(&self, other: &Signature) -> Option<String> {
        let mut diffs = Vec::new();
        if self.params.len() != other.params.len() {
            diffs.push(format!(
                "{} parameters vs {}",
                self.params.len(),
                other.params.len()
            ));
        }
        for (i, (a, b)) in self.params.iter().zip(&other.params).enumerate() {
            if a.ty != b.ty {
                diffs.push(format!("parameter {}: {} vs {}", i + 1, a.ty, b.ty));
            }
        }
        if self.returns != other.returns {
            let show = |t: &Option<TypeInfo>| t.as_ref().map_or("void".into(), |t| t.to_string());
            diffs.push(format!(
                "return type: {} vs {}",
                show(&self.returns),
                show(&other.returns)
            ));
        }
        if self.variadic != other.variadic {
            diffs.push("variadic vs not".into());
        }
        (!diffs.is_empty()).then(|| diffs.join("; "))
    }
}

/// What DWARF knows about a function.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionDetails {
    /// The DWARF qualified name (`app::pricing::calc`, `app::gen<u32>`), when it has DWARF.
    pub dwarf_name: Option<String>,
    /// Parameter and return types, when DWARF describes the function.
    pub signature: Option<Signature>,
    /// A generic (template) instance: Rust monomorphisation or C++ template instance.
    pub generic: bool,
    /// The function was compiled from Rust.
    pub rust: bool,
}

/// Reads the details of `sub` (never fails: what cannot be read is left out).
pub(super) fn of(dwarf: &Dwarf<'_>, sub: &Subprogram) -> FunctionDetails {
    let mut details = FunctionDetails {
        dwarf_name: sub
            .generic_name
            .as_ref()
            .or(sub.name.as_ref())
            .map(|n| n.to_string()),
        signature: None,
        generic: sub.generic_name.is_some(),
        rust: sub.rust,
    };
    let Some(unit) = dwarf
        .unit_header(gimli::DebugInfoOffset(sub.unit as usize))
        .ok()
        .and_then(|h| dwarf::open_unit(dwarf, h, false).ok())
    else {
        return details;
    };
    let Some(die) = sub.die.checked_sub(sub.unit) else {
        return details;
    };
    let reader = Reader {
        dwarf,
        unit: &unit,
        base: sub.unit,
    };
    // With link-time optimisation the code DIE is in a unit of its own and its parameters only
    // refer to the DIE that declares them, in the function's original unit: read it there.
    let home = reader
        .foreign_origin(UnitOffset(die as usize))
        .filter(|_| sub.home_unit != sub.unit)
        .and_then(|target| {
            let unit = dwarf
                .unit_header(gimli::DebugInfoOffset(sub.home_unit as usize))
                .ok()
                .and_then(|h| dwarf::open_unit(dwarf, h, false).ok())?;
            let offset = target.checked_sub(sub.home_unit)?;
            Some((unit, offset))
        });
    let found = match &home {
        Some((unit, offset)) => Reader {
            dwarf,
            unit,
            base: sub.home_unit,
        }
        .signature(UnitOffset(*offset as usize)),
        None => reader.signature(UnitOffset(die as usize)),
    };
    if let Some((signature, generic)) = found {
        details.signature = Some(signature);
        details.generic |= generic;
    }
    details
}

struct Reader<'d, 'a> {
    dwarf: &'d Dwarf<'a>,
    unit: &'d Unit<'a>,
    base: u64,
}

/// A subprogram DIE's own parts: return type, parameters, generic parameters, and the DIE it
/// refers to (specification / abstract origin).
#[derive(Default)]
struct Parts {
    returns: Option<UnitOffset>,
    params: Vec<(Option<String>, Option<UnitOffset>, Option<UnitOffset>)>,
    variadic: bool,
    template: bool,
    refers: Option<UnitOffset>,
}

impl<'a> Reader<'_, 'a> {
    /// A reference attribute as an offset in this unit (references into other units are not
    /// followed: compilers emit them only for LTO and DWZ-compressed files).
    fn local_ref(&self, value: AttributeValue<dwarf::Reader<'a>>) -> Option<UnitOffset> {
        match value {
            AttributeValue::UnitRef(o) => Some(o),
            AttributeValue::DebugInfoRef(o) => {
                let o = (o.0 as u64).checked_sub(self.base)?;
                let len = self.unit.header.length_including_self() as u64;
                (o < len).then_some(UnitOffset(o as usize))
            }
            _ => None,
        }
    }

    /// The `.debug_info` offset the DIE at `offset` refers to by its abstract origin or
    /// specification, when that is in another unit.
    fn foreign_origin(&self, offset: UnitOffset) -> Option<u64> {
        let entry = self.unit.entry(offset).ok()?;
        for attr in entry.attrs() {
            if matches!(
                attr.name(),
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification
            ) && let AttributeValue::DebugInfoRef(o) = attr.value()
                && self.local_ref(attr.value()).is_none()
            {
                return Some(o.0 as u64);
            }
        }
        None
    }

    fn string(&self, value: AttributeValue<dwarf::Reader<'a>>) -> Option<String> {
        self.dwarf
            .attr_string(self.unit, value)
            .ok()
            .map(|s| String::from_utf8_lossy(s.slice()).into_owned())
    }

    fn parts(&self, offset: UnitOffset) -> Option<Parts> {
        let mut tree = self.unit.entries_tree(Some(offset)).ok()?;
        let root = tree.root().ok()?;
        let mut parts = Parts::default();
        for attr in root.entry().attrs() {
            match attr.name() {
                gimli::DW_AT_type => parts.returns = self.local_ref(attr.value()),
                gimli::DW_AT_specification | gimli::DW_AT_abstract_origin => {
                    parts.refers = self.local_ref(attr.value());
                }
                _ => {}
            }
        }
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let entry = child.entry();
            match entry.tag() {
                gimli::DW_TAG_formal_parameter => {
                    let mut name = None;
                    let mut ty = None;
                    let mut origin = None;
                    for attr in entry.attrs() {
                        match attr.name() {
                            gimli::DW_AT_name => name = self.string(attr.value()),
                            gimli::DW_AT_type => ty = self.local_ref(attr.value()),
                            gimli::DW_AT_abstract_origin => origin = self.local_ref(attr.value()),
                            _ => {}
                        }
                    }
                    parts.params.push((name, ty, origin));
                }
                gimli::DW_TAG_unspecified_parameters => parts.variadic = true,
                gimli::DW_TAG_template_type_parameter | gimli::DW_TAG_template_value_parameter => {
                    parts.template = true;
                }
                _ => {}
            }
        }
        Some(parts)
    }

    /// The signature of the subprogram at `offset`, and whether it is a template instance.
    fn signature(&self, offset: UnitOffset) -> Option<(Signature, bool)> {
        let mut chain = vec![self.parts(offset)?];
        while chain.len() < 8 {
            let Some(next) = chain.last().and_then(|p| p.refers) else {
                break;
            };
            match self.parts(next) {
                Some(p) => chain.push(p),
                None => break,
            }
        }
        let template = chain.iter().any(|p| p.template);
        let returns = chain.iter().find_map(|p| p.returns);
        // The first DIE along the chain that lists parameters (a concrete out-of-line copy
        // lists them with origins; a declaration lists them with types).
        let own = chain.iter().find(|p| !p.params.is_empty());
        let variadic = chain.iter().any(|p| p.variadic);
        let mut params = Vec::new();
        for (name, ty, origin) in own.map(|p| p.params.clone()).unwrap_or_default() {
            let (mut name, mut ty) = (name, ty);
            if (name.is_none() || ty.is_none())
                && let Some(origin) = origin
                && let Ok(entry) = self.unit.entry(origin)
            {
                for attr in entry.attrs() {
                    match attr.name() {
                        gimli::DW_AT_name if name.is_none() => name = self.string(attr.value()),
                        gimli::DW_AT_type if ty.is_none() => ty = self.local_ref(attr.value()),
                        _ => {}
                    }
                }
            }
            params.push(Parameter {
                name,
                ty: ty.map_or_else(unknown, |t| self.type_info(t, 0)),
            });
        }
        Some((
            Signature {
                params,
                returns: returns.map(|t| self.type_info(t, 0)),
                variadic,
            },
            template,
        ))
    }

    /// Name and size of the type DIE at `offset`.
    fn type_info(&self, offset: UnitOffset, depth: usize) -> TypeInfo {
        if depth > 12 {
            return unknown();
        }
        let Ok(entry) = self.unit.entry(offset) else {
            return unknown();
        };
        let mut name = None;
        let mut size = None;
        let mut inner = None;
        let mut has_children = false;
        for attr in entry.attrs() {
            match attr.name() {
                gimli::DW_AT_name => name = self.string(attr.value()),
                gimli::DW_AT_byte_size => size = attr.udata_value(),
                gimli::DW_AT_type => inner = self.local_ref(attr.value()),
                _ => {}
            }
        }
        if entry.has_children() {
            has_children = true;
        }
        let inner_info = |this: &Self| {
            inner.map_or_else(
                || TypeInfo {
                    name: "void".into(),
                    size: None,
                },
                |t| this.type_info(t, depth + 1),
            )
        };
        let address_size = Some(u64::from(self.unit.header.address_size()));
        match entry.tag() {
            gimli::DW_TAG_pointer_type => TypeInfo {
                name: name.unwrap_or_else(|| format!("{} *", inner_info(self).name)),
                size: size.or(address_size),
            },
            gimli::DW_TAG_reference_type => TypeInfo {
                name: name.unwrap_or_else(|| format!("{} &", inner_info(self).name)),
                size: size.or(address_size),
            },
            gimli::DW_TAG_rvalue_reference_type => TypeInfo {
                name: name.unwrap_or_else(|| format!("{} &&", inner_info(self).name)),
                size: size.or(address_size),
            },
            gimli::DW_TAG_const_type | gimli::DW_TAG_volatile_type | gimli::DW_TAG_atomic_type => {
                let qualifier = match entry.tag() {
                    gimli::DW_TAG_const_type => "const",
                    gimli::DW_TAG_volatile_type => "volatile",
                    _ => "_Atomic",
                };
                let i = inner_info(self);
                // `int *const` is a constant pointer, `const int *` a pointer to constant.
                let name = if i.name.ends_with(['*', '&']) {
                    format!("{} {qualifier}", i.name)
                } else {
                    format!("{qualifier} {}", i.name)
                };
                TypeInfo { name, size: i.size }
            }
            gimli::DW_TAG_restrict_type => inner_info(self),
            gimli::DW_TAG_typedef => TypeInfo {
                name: name.unwrap_or_else(|| inner_info(self).name),
                size: size.or_else(|| inner_info(self).size),
            },
            gimli::DW_TAG_array_type => {
                let i = inner_info(self);
                let count = if has_children {
                    self.array_count(offset)
                } else {
                    None
                };
                TypeInfo {
                    name: match count {
                        Some(n) => format!("{}[{n}]", i.name),
                        None => format!("{}[]", i.name),
                    },
                    size: size.or_else(|| Some(count? * i.size?)),
                }
            }
            gimli::DW_TAG_subroutine_type => TypeInfo {
                name: name.unwrap_or_else(|| "function".into()),
                size,
            },
            gimli::DW_TAG_structure_type => TypeInfo {
                name: name.unwrap_or_else(|| "struct <anonymous>".into()),
                size,
            },
            gimli::DW_TAG_union_type => TypeInfo {
                name: name.unwrap_or_else(|| "union <anonymous>".into()),
                size,
            },
            gimli::DW_TAG_enumeration_type => TypeInfo {
                name: name.unwrap_or_else(|| "enum <anonymous>".into()),
                size: size.or_else(|| {
                    inner
                        .map(|t| self.type_info(t, depth + 1))
                        .and_then(|t| t.size)
                }),
            },
            _ => TypeInfo {
                name: name.unwrap_or_else(|| "?".into()),
                size,
            },
        }
    }

    /// Element count of an array type from its `DW_TAG_subrange_type` children.
    fn array_count(&self, offset: UnitOffset) -> Option<u64> {
        let mut tree = self.unit.entries_tree(Some(offset)).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        let mut total: Option<u64> = None;
        while let Ok(Some(child)) = children.next() {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_subrange_type {
                continue;
            }
            let count = entry
                .attr(gimli::DW_AT_count)
                .and_then(|a| a.udata_value())
                .or_else(|| {
                    entry
                        .attr(gimli::DW_AT_upper_bound)
                        .and_then(|a| a.udata_value())
                        .map(|u| u + 1)
                })?;
            total = Some(total.unwrap_or(1) * count);
        }
        total
    }
}

fn unknown() -> TypeInfo {
    TypeInfo {
        name: "?".into(),
        size: None,
    }
}
