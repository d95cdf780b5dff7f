//! The flow file as written, with source spans so every problem can be
//! reported as `path:line`. Validation in [`super::load`] turns it into the
//! model in [`super`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlowFile {
    pub name: Option<Spanned<String>>,
    #[allow(dead_code)] // documentation for readers of the file
    pub description: Option<String>,
    pub status: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub trigger: Spanned<TriggerFile>,
    pub response: Option<ResponseFile>,
    pub runs: Option<RunsFile>,
    /// `[[steps]]`, each a table read by [`super::step`].
    #[serde(default)]
    pub steps: Vec<Spanned<Node>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsFile {
    pub keep: Option<Spanned<String>>,
    pub max: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerFile {
    #[serde(rename = "ref")]
    pub ref_id: Spanned<String>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub mode: Option<Spanned<String>>,
    pub auth: Option<Spanned<Vec<Spanned<String>>>>,
    pub signature: Option<Spanned<SignatureFile>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub accept_any: Option<bool>,
    pub cors_origins: Option<Vec<Spanned<String>>>,
    pub redact_headers: Option<Vec<String>>,
    pub redact_query: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignatureFile {
    pub scheme: Spanned<String>,
    pub secret_env: Spanned<String>,
    pub tolerance: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResponseFile {
    pub status: Option<Spanned<Node>>,
    pub body: Option<Spanned<String>>,
    pub body_inline: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub on_error: Option<Box<ResponseFile>>,
}

/// A TOML value that remembers where each part of it was written.
#[derive(Debug)]
pub(in crate::flow) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with("$__toml_private") {
                return Err(de::Error::custom(
                    "dates and times are not supported here; write them as strings",
                ));
            }
            entries.push((key, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(entries))
    }
}
