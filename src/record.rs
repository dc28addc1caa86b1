//! Record: a polled record kept as the JSON text the API sent, plus the few fields the runtime
//! reads from every record (id, cursor value, dedupe-key fields).
//!
//! Building a `serde_json::Value` tree for every record was the largest cost of a cycle (an
//! Intercom contact has about fifty keys, each an allocation). Most records of a cycle are
//! only keyed, deduped and committed, or emitted as they are, so a record is read in one pass
//! that keeps its text and parses just the named top-level fields; the whole value is parsed
//! when a template first needs it. Also reads pages: the records list and the next-page token
//! are found without parsing the records.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One record as polled.
#[derive(Debug)]
pub struct Record {
    raw: Box<RawValue>,
    fields: Value,
    /// Its cursor value.
    pub ts: i64,
    /// A scanned record whose id the scan had never listed before although its cursor value
    /// is older than the poll's start (Intercom lists a company only once it has a contact):
    /// it fires all the same.
    pub late: bool,
}

impl Record {
    /// A record from its JSON text, an object of the fields picked out of it (see [`pick`])
    /// and its cursor value.
    pub fn new(raw: Box<RawValue>, fields: Value, ts: i64) -> Record {
        Record {
            raw,
            fields,
            ts,
            late: false,
        }
    }

    /// The record's JSON text, exactly as the API sent it.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// Takes the JSON text.
    pub fn into_raw(self) -> Box<RawValue> {
        self.raw
    }

    /// An object holding only the record's picked top-level fields (id, cursor, key fields).
    pub fn fields(&self) -> &Value {
        &self.fields
    }

    /// The whole record as a JSON value.
    pub fn to_value(&self) -> Result<Value, String> {
        parse_raw(&self.raw)
    }
}

/// Parses JSON text known to be valid (a `RawValue` always is). It can still fail: a value
/// nested deeper than 128 levels is valid JSON that `serde_json` will not build.
pub fn parse_raw(raw: &RawValue) -> Result<Value, String> {
    serde_json::from_str(raw.get()).map_err(|e| format!("the record cannot be read: {e}"))
}

/// Writes `raw` as one line of JSON: the API's text as it is, except that line breaks (in
/// valid JSON they can only be whitespace between tokens; inside strings they are escaped)
/// become spaces, so a pretty-printed record still takes one line.
pub fn write_line(w: &mut (impl std::io::Write + ?Sized), raw: &RawValue) -> std::io::Result<()> {
    let mut text = raw.get().as_bytes();
    while let Some(i) = memchr::memchr2(b'\n', b'\r', text) {
        w.write_all(&text[..i])?;
        w.write_all(b" ")?;
        text = &text[i + 1..];
    }
    w.write_all(text)?;
    w.write_all(b"\n")
}

/// What a JSON text is, for error messages: "an object", "a list", "text"…
pub fn kind_of_raw(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "a list",
        Some(b'"') => "text",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A JSON object key, borrowed from the input unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level entries of a JSON object, values left as text.
pub struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Entries<'a> {
    /// Reads the entries of the object `text`; `None` when it is not an object.
    pub fn of(text: &'a str) -> Result<Option<Entries<'a>>, serde_json::Error> {
        if !text.trim_start().starts_with('{') {
            return Ok(None);
        }
        serde_json::from_str(text).map(Some)
    }

    /// The value at `path` (object keys, or list indexes), as text.
    pub fn at(&self, path: &[String]) -> Result<Option<&'a RawValue>, serde_json::Error> {
        let Some((head, rest)) = path.split_first() else {
            return Ok(None);
        };
        let Some(mut cur) = self.0.iter().find(|(k, _)| k == head).map(|(_, v)| *v) else {
            return Ok(None);
        };
        for seg in rest {
            match child(cur, seg)? {
                Some(v) => cur = v,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PageSeed(None).deserialize(d).map(|page| page.top)
    }
}

/// A page of records: its top-level entries (for the next-page token, totals…) and the
/// records list, read in one pass when the list is a top-level member.
pub struct Page<'a> {
    /// The top-level members other than a top-level records list.
    pub top: Entries<'a>,
    /// The records, or what stands where they should be (`"missing"`, `"null"`, `"text"`…).
    pub records: Result<Vec<&'a RawValue>, &'static str>,
}

impl<'a> Page<'a> {
    /// Reads a response body whose records sit at `records` (a path of keys); `None` when the
    /// body is not an object.
    pub fn read(text: &'a str, records: &[String]) -> Result<Option<Page<'a>>, serde_json::Error> {
        if records.is_empty() {
            // `records: ""`: the body itself is the list.
            let raw: &RawValue = serde_json::from_str(text)?;
            return Ok(Some(Page {
                top: Entries(Vec::new()),
                records: split_list(raw)?.ok_or_else(|| kind_of_raw(raw)),
            }));
        }
        if !text.trim_start().starts_with('{') {
            return Ok(None);
        }
        let [key] = records else {
            // A nested list: find it through the entries, then split it.
            let top = Entries::of(text)?.unwrap_or(Entries(Vec::new()));
            let records = match top.at(records)? {
                None => Err("missing"),
                Some(raw) => split_list(raw)?.ok_or_else(|| kind_of_raw(raw)),
            };
            return Ok(Some(Page { top, records }));
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let page = PageSeed(Some(key)).deserialize(&mut de)?;
        de.end()?;
        Ok(Some(page))
    }
}

/// Reads an object's members as text; the member named (if any) as a list of records.
struct PageSeed<'k>(Option<&'k str>);

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = Page<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = Page<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
        let mut top = Vec::new();
        let mut records = Err("missing");
        while let Some(Key(k)) = m.next_key()? {
            if self.0 == Some(k.as_ref()) {
                records = m.next_value_seed(ListSeed)?;
            } else {
                top.push((k, m.next_value::<&'de RawValue>()?));
            }
        }
        Ok(Page {
            top: Entries(top),
            records,
        })
    }
}

/// A list's elements as text, or what kind of value stands there instead.
struct ListSeed;

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Result<Vec<&'de RawValue>, &'static str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Result<Vec<&'de RawValue>, &'static str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of records")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Self::Value, S::Error> {
        let mut out = Vec::with_capacity(s.size_hint().unwrap_or(0).max(16));
        while let Some(r) = s.next_element::<&'de RawValue>()? {
            out.push(r);
        }
        Ok(Ok(out))
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("an object"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("text"))
    }
}

/// The member `seg` of an object, or the element at index `seg` of a list, as text.
fn child<'a>(raw: &'a RawValue, seg: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => Ok(Entries::of(text)?
            .and_then(|e| e.0.into_iter().find(|(k, _)| k == seg).map(|(_, v)| v))),
        Some(b'[') => {
            let Ok(i) = seg.parse::<usize>() else {
                return Ok(None);
            };
            Ok(split_list(raw)?.and_then(|l| l.get(i).copied()))
        }
        _ => Ok(None),
    }
}

/// The elements of a JSON list, as text; `None` when it is not a list.
pub fn split_list(raw: &RawValue) -> Result<Option<Vec<&RawValue>>, serde_json::Error> {
    if !raw.get().starts_with('[') {
        return Ok(None);
    }
    serde_json::from_str(raw.get()).map(Some)
}

/// Parses the top-level members named in `wanted` out of the JSON object `raw`, skipping the
/// rest without building anything, and stopping once every one has been found. Errors when
/// `raw` is not an object. (`raw` was checked to be valid JSON when the page was split, so
/// stopping early accepts nothing that a full parse would refuse. With a key given twice the
/// first one counts here, where `serde_json` keeps the last when it parses the whole record.)
pub fn pick(raw: &RawValue, wanted: &[String]) -> Result<Map<String, Value>, String> {
    struct Pick<'w, 'o> {
        wanted: &'w [String],
        out: &'o mut Map<String, Value>,
    }
    impl<'de> DeserializeSeed<'de> for Pick<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Pick<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
            while let Some(Key(k)) = m.next_key()? {
                if self.wanted.iter().any(|w| *w == k) && !self.out.contains_key(k.as_ref()) {
                    self.out.insert(k.into_owned(), m.next_value()?);
                    if self.out.len() == self.wanted.len() {
                        // Everything wanted is here: stop reading (see `pick`).
                        return Err(de::Error::custom("all wanted fields read"));
                    }
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    if !raw.get().starts_with('{') {
        return Err(format!("is {}, not an object", kind_of_raw(raw)));
    }
    let mut out = Map::new();
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let read = Pick {
        wanted,
        out: &mut out,
    }
    .deserialize(&mut de);
    match read {
        Ok(()) => Ok(out),
        Err(_) if out.len() == wanted.len() => Ok(out),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn pick_keeps_only_named_fields_including_escaped_keys() {
        let r = raw(r#"{"id":"a","big":{"x":[1,2,3]},"upd\u0061ted_at":7,"s":"q\"uote"}"#);
        let m = pick(&r, &["id".into(), "updated_at".into()]).unwrap();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"id": "a", "updated_at": 7})
        );
        assert_eq!(
            pick(&raw("[1]"), &["id".into()]).unwrap_err(),
            "is a list, not an object"
        );
        // A wanted field that is missing: the whole record is read, the rest is returned.
        let m = pick(
            &raw(r#"{"id":"a","x":[{"y":1}]}"#),
            &["id".into(), "updated_at".into()],
        )
        .unwrap();
        assert_eq!(Value::Object(m), serde_json::json!({"id": "a"}));
    }

    #[test]
    fn write_line_keeps_text_and_folds_pretty_json() {
        let mut out = Vec::new();
        write_line(&mut out, &raw(r#"{"a": 1,"b":"x y"}"#)).unwrap();
        write_line(&mut out, &raw("{\n  \"a\": [1,\r\n \"x\\ny\"]\n}")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\": 1,\"b\":\"x y\"}\n{   \"a\": [1,   \"x\\ny\"] }\n"
        );
        // Deeper than serde_json builds values: still written, and `to_value` says why not.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let mut out = Vec::new();
        write_line(&mut out, &raw(&deep)).unwrap();
        assert_eq!(out.len(), deep.len() + 1);
        let rec = Record::new(raw(&deep), Value::Null, 0);
        assert!(rec.to_value().unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn page_reads_records_in_one_pass_and_names_what_else_is_there() {
        let body = r#"{"data":[{"id":1},{"id":2}],"pages":{"next":"t"}}"#;
        let p = Page::read(body, &["data".into()]).unwrap().unwrap();
        let recs: Vec<&str> = p.records.unwrap().iter().map(|r| r.get()).collect();
        assert_eq!(recs, [r#"{"id":1}"#, r#"{"id":2}"#]);
        assert_eq!(
            p.top
                .at(&["pages".into(), "next".into()])
                .unwrap()
                .unwrap()
                .get(),
            r#""t""#
        );
        let kind = |body: &str| {
            Page::read(body, &["data".into()])
                .unwrap()
                .unwrap()
                .records
                .unwrap_err()
        };
        assert_eq!(kind(r#"{"data":null}"#), "null");
        assert_eq!(kind(r#"{"data":{"a":[1]}}"#), "an object");
        assert_eq!(kind(r#"{"data":"x"}"#), "text");
        assert_eq!(kind(r#"{"other":1}"#), "missing");
        let nested = Page::read(
            r#"{"r":{"items":[{"id":3}]}}"#,
            &["r".into(), "items".into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(nested.records.unwrap()[0].get(), r#"{"id":3}"#);
        assert!(Page::read("[]", &["data".into()]).unwrap().is_none());
        let whole = Page::read(r#" [{"id":4}] "#, &[]).unwrap().unwrap();
        assert_eq!(whole.records.unwrap()[0].get(), r#"{"id":4}"#);
        assert_eq!(
            Page::read("{}", &[]).unwrap().unwrap().records.unwrap_err(),
            "an object"
        );
        assert!(Page::read(r#"{"data":[1,}"#, &["data".into()]).is_err());
    }

    #[test]
    fn entries_find_nested_paths_without_parsing_records() {
        let body = r#"{"type":"list","data":[{"id":1},{"id":2}],"pages":{"next":{"starting_after":"tok"}}}"#;
        let e = Entries::of(body).unwrap().unwrap();
        let data = e.at(&["data".into()]).unwrap().unwrap();
        let list = split_list(data).unwrap().unwrap();
        assert_eq!(
            list.iter().map(|r| r.get()).collect::<Vec<_>>(),
            [r#"{"id":1}"#, r#"{"id":2}"#]
        );
        let tok = e
            .at(&["pages".into(), "next".into(), "starting_after".into()])
            .unwrap()
            .unwrap();
        assert_eq!(tok.get(), r#""tok""#);
        assert!(e.at(&["pages".into(), "prev".into()]).unwrap().is_none());
        assert_eq!(
            e.at(&["data".into(), "1".into()]).unwrap().unwrap().get(),
            r#"{"id":2}"#
        );
        assert!(Entries::of("[1]").unwrap().is_none());
        assert!(Entries::of("{\"a\":").is_err());
    }
}
