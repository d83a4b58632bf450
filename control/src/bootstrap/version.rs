//! Build versions of installed files: which of two is newer, and the
//! version a conflist carries.
//!
//! The conflist carries the version of the `sluice-bootstrap` that wrote
//! it in its top-level key [`VERSION_KEY`] (as NSX's `10-nsx.conflist`
//! carries `nsxBuildVersion`; container runtimes ignore unknown top-level
//! keys of a conflist). A version is compared as NSX's bootstrap compares
//! `nsxBuildVersion`: dotted components from the left, numerically where
//! both are numbers (`0.10.0` is newer than `0.9.3`, `1.0` equals
//! `1.0.0`); a textual component (`-rc1`) sorts before a release.
//!
//! Pure functions; thread-safe.

use std::cmp::Ordering;

use serde_json::Value;

/// The conflist's top-level key holding the build version.
pub const VERSION_KEY: &str = "sluiceBuildVersion";

/// This build's version, stamped into the conflist it installs:
/// `SLUICE_BUILD_VERSION` at compile time (e.g. `0.1.0.1234` from CI), or
/// the crate version.
pub fn build_version() -> &'static str {
    option_env!("SLUICE_BUILD_VERSION").unwrap_or(env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, PartialEq, Eq)]
enum Part<'a> {
    Num(u64),
    Text(&'a str),
}

fn parts(v: &str) -> Vec<Part<'_>> {
    v.trim()
        .trim_start_matches(['v', 'V'])
        .split(['.', '-', '+', '_', '~'])
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u64>() {
            Ok(n) => Part::Num(n),
            Err(_) => Part::Text(p),
        })
        .collect()
}

/// Compares two build versions (`a` against `b`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (parts(a), parts(b));
    for i in 0..a.len().max(b.len()) {
        let o = match (a.get(i), b.get(i)) {
            (Some(Part::Num(x)), Some(Part::Num(y))) => x.cmp(y),
            (Some(Part::Text(x)), Some(Part::Text(y))) => x.cmp(y),
            (Some(Part::Num(_)), Some(Part::Text(_))) => Ordering::Greater,
            (Some(Part::Text(_)), Some(Part::Num(_))) => Ordering::Less,
            // A missing component is a zero, and a release: after any
            // pre-release text, equal to a zero.
            (None, Some(Part::Num(y))) => 0.cmp(y),
            (Some(Part::Num(x)), None) => x.cmp(&0),
            (None, Some(Part::Text(_))) => Ordering::Greater,
            (Some(Part::Text(_)), None) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The build version a conflist carries, if it is JSON with a string
/// [`VERSION_KEY`].
pub fn of_conflist(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get(VERSION_KEY)?.as_str().map(str::to_string)
}

/// `conflist` with [`VERSION_KEY`] set to `version`, pretty-printed.
///
/// # Errors
/// A sentence when `conflist` is not a JSON object.
pub fn stamp(conflist: &str, version: &str) -> Result<String, String> {
    let mut v: Value =
        serde_json::from_str(conflist).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| "not a JSON object (a CNI conflist is one)".to_string())?;
    if !obj.get("plugins").is_some_and(Value::is_array) {
        return Err("it has no \"plugins\" list: not a CNI conflist".into());
    }
    obj.insert(VERSION_KEY.into(), Value::String(version.into()));
    let mut s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_component_by_component() {
        use Ordering::*;
        for (a, b, want) in [
            ("0.1.0", "0.1.0", Equal),
            ("1.0", "1.0.0", Equal),
            ("0.10.0", "0.9.3", Greater),
            ("0.1.0", "0.1.1", Less),
            ("3.2.1.19876543", "3.2.1.2", Greater),
            ("1.0.0-rc1", "1.0.0", Less),
            ("1.0.0-rc2", "1.0.0-rc1", Greater),
            ("1.0.0", "0.99.99.99", Greater),
            ("v2.0", "1.9", Greater),
        ] {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn stamp_sets_the_version_and_refuses_what_is_no_conflist() {
        let s = stamp(
            r#"{"cniVersion":"1.0.0","name":"sluice","plugins":[]}"#,
            "0.2.0",
        )
        .unwrap();
        assert_eq!(of_conflist(&s).as_deref(), Some("0.2.0"));
        let again = stamp(&s, "0.3.0").unwrap();
        assert_eq!(of_conflist(&again).as_deref(), Some("0.3.0"));
        assert!(stamp("[1]", "0.1.0").is_err());
        assert!(stamp("{", "0.1.0").is_err());
        assert!(stamp(r#"{"type":"sluice"}"#, "0.1.0").is_err());
        assert_eq!(of_conflist(r#"{"plugins":[]}"#), None);
    }
}
