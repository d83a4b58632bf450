//! Reading a text command's arguments straight from the request's JSON text,
//! without decoding the whole `params` into a [`Value`].
//!
//! A command takes at most `max_args` strings, so only that many are kept;
//! every further element is counted and skipped ([`IgnoredAny`] allocates
//! nothing), and so is any non-string argument. A hostile `[0,0,…]` of
//! 64 MiB sent to `version` therefore costs its text and nothing more,
//! instead of the ~1 GB a decoded `Value` array would take. The outcome
//! ([`ArgScan`]) carries what the registry needs to give the same replies as
//! for a decoded array: the element count, the kept strings, and whether a
//! kept element was not a string.
//!
//! Thread-safety: plain functions over borrowed text.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A command's arguments as counted and (up to a bound) collected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ArgScan {
    /// How many elements the argument array has.
    pub len: usize,
    /// The first `keep` elements, if all of them are strings.
    pub strings: Vec<String>,
    /// One of the first `keep` elements is not a string.
    pub non_string: bool,
}

impl ArgScan {
    /// The scan of already decoded arguments.
    pub fn from_values(args: &[Value], keep: usize) -> Self {
        let mut scan = Self {
            len: args.len(),
            ..Self::default()
        };
        for arg in args.iter().take(keep) {
            match arg {
                Value::String(s) if !scan.non_string => scan.strings.push(s.clone()),
                Value::String(_) => {}
                _ => scan.non_string = true,
            }
        }
        scan
    }
}

/// What the `args` member of an object `params` held.
pub(crate) enum ObjectArgs {
    /// `args` missing or null: no arguments.
    Missing,
    /// `args` is an array.
    List(ArgScan),
    /// `args` is something else.
    NotAList,
}

/// Scans `raw`, which must be a JSON array, keeping at most `keep` strings.
pub(crate) fn scan_array(raw: &RawValue, keep: usize) -> Result<ArgScan, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    ArgsSeed { keep }
        .deserialize(&mut de)
        .and_then(|scan| de.end().map(|()| scan))
        .map_err(|e| format!("malformed JSON in request: {e}"))
}

/// Scans `raw`, which must be a JSON object, for its `args` member (the
/// last one if repeated, as a decoded object would keep).
pub(crate) fn scan_object_args(raw: &RawValue, keep: usize) -> Result<ObjectArgs, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    ObjectSeed { keep }
        .deserialize(&mut de)
        .and_then(|args| de.end().map(|()| args))
        .map_err(|e| format!("malformed JSON in request: {e}"))
}

struct ArgsSeed {
    keep: usize,
}

impl<'de> DeserializeSeed<'de> for ArgsSeed {
    type Value = ArgScan;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ArgScan, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArgsSeed {
    type Value = ArgScan;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of arguments")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgScan, A::Error> {
        let mut scan = ArgScan::default();
        loop {
            let more = if scan.len < self.keep && !scan.non_string {
                match seq.next_element::<MaybeString>()? {
                    None => false,
                    Some(MaybeString(Some(s))) => {
                        scan.strings.push(s);
                        true
                    }
                    Some(MaybeString(None)) => {
                        scan.non_string = true;
                        true
                    }
                }
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(scan);
            }
            scan.len += 1;
        }
    }
}

/// A string, or `None` for any other JSON value (skipped without
/// allocating).
struct MaybeString(Option<String>);

impl<'de> de::Deserialize<'de> for MaybeString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaybeStringVisitor)
    }
}

struct MaybeStringVisitor;

impl<'de> Visitor<'de> for MaybeStringVisitor {
    type Value = MaybeString;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<MaybeString, E> {
        Ok(MaybeString(Some(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<MaybeString, E> {
        Ok(MaybeString(Some(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeString, E> {
        Ok(MaybeString(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeString, E> {
        Ok(MaybeString(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<MaybeString, E> {
        Ok(MaybeString(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeString, E> {
        Ok(MaybeString(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<MaybeString, E> {
        Ok(MaybeString(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MaybeString, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(MaybeString(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MaybeString, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(MaybeString(None))
    }
}

struct ObjectSeed {
    keep: usize,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = ObjectArgs;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ObjectArgs, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = ObjectArgs;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of named parameters")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectArgs, A::Error> {
        let mut args = ObjectArgs::Missing;
        while let Some(key) = map.next_key::<String>()? {
            if key == "args" {
                args = map.next_value_seed(ArgsMemberSeed { keep: self.keep })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(args)
    }
}

struct ArgsMemberSeed {
    keep: usize,
}

impl<'de> DeserializeSeed<'de> for ArgsMemberSeed {
    type Value = ObjectArgs;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ObjectArgs, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ArgsMemberSeed {
    type Value = ObjectArgs;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of arguments")
    }
    fn visit_unit<E: de::Error>(self) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::Missing)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ObjectArgs, A::Error> {
        ArgsSeed { keep: self.keep }
            .visit_seq(seq)
            .map(ObjectArgs::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectArgs, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(ObjectArgs::NotAList)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::NotAList)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::NotAList)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::NotAList)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::NotAList)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<ObjectArgs, E> {
        Ok(ObjectArgs::NotAList)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn scan_matches_the_decoded_arguments() {
        for (text, keep) in [
            (r#"[]"#, 3),
            (r#"["a","b"]"#, 3),
            (r#"["a","b","c","d"]"#, 2),
            (r#"["a",1,"c"]"#, 3),
            (r#"["a",[1,{"x":[]}],"c"]"#, 1),
            (r#"[{"a":"b"},"x"]"#, 0),
            (r#"[null,true,1.5,-3,"z\"q"]"#, 5),
        ] {
            let decoded: Value = serde_json::from_str(text).unwrap();
            let expect = ArgScan::from_values(decoded.as_array().unwrap(), keep);
            assert_eq!(scan_array(&raw(text), keep).unwrap(), expect, "{text}");
        }
    }

    #[test]
    fn object_args_member() {
        let scan = |t: &str| scan_object_args(&raw(t), 4).unwrap();
        assert!(matches!(scan(r#"{}"#), ObjectArgs::Missing));
        assert!(matches!(
            scan(r#"{"args":null,"x":[1]}"#),
            ObjectArgs::Missing
        ));
        assert!(matches!(scan(r#"{"args":"x"}"#), ObjectArgs::NotAList));
        assert!(matches!(scan(r#"{"args":{"a":1}}"#), ObjectArgs::NotAList));
        match scan(r#"{"args":["no"],"other":{"args":3},"args":["a","b"]}"#) {
            ObjectArgs::List(s) => assert_eq!(s.strings, vec!["a", "b"]),
            _ => panic!("args not found"),
        }
    }
}
