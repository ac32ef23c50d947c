//! Name patterns for `rpatch resolve`: an exact path, a glob with `*` inside path segments
//! (`crate::*::calc`), or a substring.

/// A pattern over function names (demangled, qualified, generic instance forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// The whole name, spelled as `resolve` accepts it (`crate::` stands for any crate).
    Exact(String),
    /// `::`-separated segments matched one to one; `*` in a segment matches any characters of
    /// that segment, a segment `**` matches any number of segments, a first segment `crate`
    /// matches any crate. A segment without generic arguments or a parameter list also
    /// matches one that has them (`calc` matches `calc::<u32>` and `calc(int)`).
    Glob(String),
    /// Any name containing the text.
    Substring(String),
}

impl Pattern {
    /// `Glob` when the text has a `*`, else `Exact` (the caller may fall back to `Substring`).
    pub fn parse(text: &str) -> Pattern {
        let text = text.trim();
        if text.contains('*') {
            Pattern::Glob(text.to_string())
        } else {
            Pattern::Exact(text.to_string())
        }
    }

    /// `exact`, `glob` or `substring`.
    pub fn kind(&self) -> &'static str {
        match self {
            Pattern::Exact(_) => "exact",
            Pattern::Glob(_) => "glob",
            Pattern::Substring(_) => "substring",
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(p) => {
                name == p
                    || p.strip_prefix("crate::").is_some_and(|rest| {
                        !rest.is_empty()
                            && name
                                .split_once("::")
                                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest)
                    })
            }
            Pattern::Substring(p) => name.contains(p.as_str()),
            Pattern::Glob(p) => {
                let pattern = segments(p);
                let name = segments(name);
                glob_segments(&pattern, &name, true)
            }
        }
    }
}

impl Pattern {
    /// A test on a DIE's unqualified name (`DW_AT_name`: `calc`, `widen<u32>`, `method`) that
    /// every match must pass, so most DIEs are rejected without building their qualified name.
    pub(super) fn name_filter(&self) -> NameFilter {
        let last = |p: &str| -> String {
            let seg = segments(p).last().copied().unwrap_or("").to_string();
            // People write `f::<u32>`; DWARF names the instance `f<u32>`.
            seg.replacen("::<", "<", 1)
        };
        match self {
            Pattern::Exact(p) => {
                let seg = last(p);
                let base = seg.find('(').map_or(seg.as_str(), |i| &seg[..i]);
                NameFilter::Base(base.as_bytes().to_vec())
            }
            Pattern::Glob(p) => {
                let seg = last(p);
                if seg == "**" {
                    NameFilter::Any
                } else {
                    NameFilter::Glob(seg.into_bytes())
                }
            }
            // Text after the last `::` starts the function's own name; text without `:` lies
            // within one segment, the name or a scope's.
            Pattern::Substring(p) => {
                let segs = segments(p);
                match segs.as_slice() {
                    [.., last] if segs.len() > 1 && !last.is_empty() => {
                        NameFilter::Prefix(last.replacen("::<", "<", 1).into_bytes())
                    }
                    [one] if !one.is_empty() && !one.contains(':') => {
                        NameFilter::Contains(one.as_bytes().to_vec())
                    }
                    _ => NameFilter::Any,
                }
            }
        }
    }
}

/// See `Pattern::name_filter`.
#[derive(Debug, Clone)]
pub(super) enum NameFilter {
    /// The name, or the name followed by generic arguments (`f` accepts `f<u32>`).
    Base(Vec<u8>),
    /// A wildcard segment (matched like `Glob` segments).
    Glob(Vec<u8>),
    /// Names starting with this.
    Prefix(Vec<u8>),
    /// This text in the name or in the name of an enclosing scope.
    Contains(Vec<u8>),
    /// Anything.
    Any,
}

impl NameFilter {
    /// Whether a DIE named `name` may match.
    pub(super) fn accepts(&self, name: &[u8]) -> bool {
        match self {
            NameFilter::Any => true,
            NameFilter::Base(base) => {
                name.starts_with(base) && (name.len() == base.len() || name[base.len()] == b'<')
            }
            NameFilter::Prefix(p) => name.starts_with(p),
            NameFilter::Contains(c) => memchr::memmem::find(name, c).is_some(),
            NameFilter::Glob(g) => {
                let base = name
                    .iter()
                    .position(|&c| c == b'<' || c == b'(')
                    .map_or(name, |i| &name[..i]);
                wildcard(g, name) || wildcard(g, base)
            }
        }
    }
}

/// Splits a path at top-level `::` (not inside `<>`, `()`, `[]`, `{}`); a turbofish (`::<u32>`)
/// stays attached to the segment before it.
pub(super) fn segments(name: &str) -> Vec<&str> {
    let bytes = name.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0
                && bytes.get(i + 1) == Some(&b':')
                && bytes.get(i + 2) != Some(&b'<')
                && i > start =>
            {
                out.push(&name[start..i]);
                start = i + 2;
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&name[start..]);
    out
}

fn glob_segments(pattern: &[&str], name: &[&str], first: bool) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            (0..=name.len()).any(|skip| glob_segments(&pattern[1..], &name[skip..], false))
        }
        (Some(p), Some(n)) => {
            let ok = (first && *p == "crate") || segment_matches(p, n);
            ok && glob_segments(&pattern[1..], &name[1..], false)
        }
        _ => false,
    }
}

/// One segment: wildcard match of the whole segment, or of its base name (without generic
/// arguments and parameters) when the pattern segment has none.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    if wildcard(pattern.as_bytes(), segment.as_bytes()) {
        return true;
    }
    if pattern.contains(['<', '(']) {
        return false;
    }
    let base = segment
        .find(['<', '('])
        .map_or(segment, |i| segment[..i].trim_end_matches("::"));
    base.len() < segment.len() && wildcard(pattern.as_bytes(), base.as_bytes())
}

/// `*` matches any run of bytes, `?` one byte.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_per_segment() {
        let g = Pattern::parse("crate::*::calc");
        assert!(g.matches("calcapp::pricing::calc"));
        assert!(!g.matches("calcapp::calc"));
        assert!(!g.matches("calcapp::a::b::calc"));
        assert!(g.matches("app::m::calc::<u32>"));
        assert!(Pattern::parse("ns::*::method").matches("ns::Calc::method(int)"));
        assert!(Pattern::parse("**::calc").matches("a::b::c::calc"));
        assert!(Pattern::parse("app::ca*").matches("app::calc"));
        assert!(!Pattern::parse("app::ca*").matches("app::x::calc"));
        assert!(Pattern::parse("*::gen::<u32>").matches("app::gen::<u32>"));
        assert!(!Pattern::parse("*::gen::<u32>").matches("app::gen::<u64>"));
    }

    #[test]
    fn name_filters() {
        let f = Pattern::parse("app::widen::<u32>").name_filter();
        assert!(f.accepts(b"widen<u32>") && !f.accepts(b"widen2"));
        let f = Pattern::parse("ns::Calc::method(int)").name_filter();
        assert!(f.accepts(b"method"));
        let f = Pattern::parse("crate::*::ca*").name_filter();
        assert!(f.accepts(b"calc") && f.accepts(b"calc<u8>") && !f.accepts(b"xcalc"));
        let f = Pattern::Substring("ptr::wri".into()).name_filter();
        assert!(f.accepts(b"write<u8>") && !f.accepts(b"rewrite"));
        let f = Pattern::Substring("ller_".into()).name_filter();
        assert!(f.accepts(b"caller_a") && !f.accepts(b"call"));
        assert!(Pattern::Substring("a::".into()).name_filter().accepts(b"x"));
        let f = Pattern::Substring("mem::replace::<&[u8]>".into()).name_filter();
        assert!(f.accepts(b"replace<&[u8]>"));
    }

    #[test]
    fn exact_and_substring() {
        assert!(Pattern::parse("crate::pricing::calc").matches("calcapp::pricing::calc"));
        assert!(Pattern::parse("compute").matches("compute"));
        assert!(Pattern::Substring("ricing::ca".into()).matches("calcapp::pricing::calc"));
        assert_eq!(
            segments("<a::B as c::D>::fmt"),
            vec!["<a::B as c::D>", "fmt"]
        );
        assert_eq!(segments("app::f::<u32>"), vec!["app", "f::<u32>"]);
    }
}
