//! The JSON tree [`yaml11`](crate::yaml11) builds, in a compact form that
//! deserializes as [`serde_json::Value`] does.
//!
//! A `serde_json::Value` object is a `BTreeMap`, whose first node takes
//! 632 bytes however few entries it holds; a NetworkPolicy with 100,000
//! `- ipBlock: {cidr: …}` rules has 200,000 one-entry objects, so its tree
//! took 126 MB and set the agent's peak memory. Here an object is a boxed
//! slice of its entries, sorted by key as the `BTreeMap` had them (so
//! fields and unknown ones are met in the same order), about 40 bytes an
//! entry.

use serde::de::{
    self,
    value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer},
    IntoDeserializer, Visitor,
};
use serde_json::{Map, Number, Value};

/// One node of a converted document.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(Box<str>),
    Array(Box<[Node]>),
    /// Entries sorted by key, keys unique.
    Object(Box<[(Box<str>, Node)]>),
}

impl Node {
    /// An object from entries whose keys are unique and sorted (a
    /// `BTreeMap`'s iteration order).
    pub(crate) fn object(sorted: impl IntoIterator<Item = (String, Node)>) -> Self {
        Node::Object(
            sorted
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v))
                .collect(),
        )
    }
}

impl From<Node> for Value {
    fn from(node: Node) -> Self {
        match node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Number(n) => Value::Number(n),
            Node::String(s) => Value::String(s.into()),
            Node::Array(items) => {
                Value::Array(items.into_vec().into_iter().map(Into::into).collect())
            }
            Node::Object(entries) => Value::Object(
                entries
                    .into_vec()
                    .into_iter()
                    .map(|(k, v)| (String::from(k), Value::from(v)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Node {
    type Deserializer = Node;

    fn into_deserializer(self) -> Self::Deserializer {
        self
    }
}

/// The entries of an object as a map deserializer; each is dropped as it
/// is read, so the tree shrinks while the typed value grows.
fn entries(
    entries: Box<[(Box<str>, Node)]>,
) -> MapDeserializer<'static, impl Iterator<Item = (String, Node)>, serde_json::Error> {
    MapDeserializer::new(
        entries
            .into_vec()
            .into_iter()
            .map(|(k, v)| (String::from(k), v)),
    )
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Number(n) => n.deserialize_any(visitor),
            Node::String(s) => visitor.visit_string(s.into()),
            // Left over entries are reported in serde_json's words.
            Node::Array(items) => {
                let len = items.len();
                let mut seq = SeqDeserializer::new(items.into_vec().into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()
                    .map_err(|_| de::Error::invalid_length(len, &"fewer elements in array"))?;
                Ok(value)
            }
            Node::Object(pairs) => {
                let len = pairs.len();
                let mut map = entries(pairs);
                let value = visitor.visit_map(&mut map)?;
                map.end()
                    .map_err(|_| de::Error::invalid_length(len, &"fewer elements in map"))?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Node::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// As `serde_json::Value`: a unit variant is a string, any other a
    /// one-entry object.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Node::String(s) => visitor.visit_enum(
                IntoDeserializer::<serde_json::Error>::into_deserializer(String::from(s)),
            ),
            Node::Object(pairs) if pairs.len() == 1 => {
                visitor.visit_enum(MapAccessDeserializer::new(entries(pairs)))
            }
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        cidr: String,
        except: Option<Vec<String>>,
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Kind {
        Plain,
        With(u16),
    }

    fn node(value: Value) -> Node {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(b),
            Value::Number(n) => Node::Number(n),
            Value::String(s) => Node::String(s.into()),
            Value::Array(items) => Node::Array(items.into_iter().map(node).collect()),
            Value::Object(map) => Node::object(map.into_iter().map(|(k, v)| (k, node(v)))),
        }
    }

    /// Whatever `serde_json::Value` makes of a tree, the node makes too,
    /// errors included.
    fn same<T: for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(value: Value) {
        let from_value = T::deserialize(value.clone()).map_err(|e| e.to_string());
        let from_node = T::deserialize(node(value.clone())).map_err(|e| e.to_string());
        assert_eq!(from_node, from_value, "{value}");
        assert_eq!(Value::from(node(value.clone())), value);
    }

    #[test]
    fn deserializes_as_a_json_value_does() {
        use serde_json::json;
        same::<Rule>(json!({"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"], "port": 80}));
        same::<Rule>(json!({"cidr": "10.0.0.0/8", "except": null}));
        same::<Rule>(json!({"cidr": "10.0.0.0/8", "color": "red"}));
        same::<Rule>(json!({"cidr": 10}));
        same::<Rule>(json!({"port": 80}));
        same::<Rule>(json!({"cidr": "a", "port": 70000}));
        same::<Rule>(json!(["a"]));
        same::<Vec<Kind>>(json!(["Plain", {"With": 3}, "Other"]));
        same::<Vec<Kind>>(json!([{"With": "x"}]));
        same::<(u8, u8)>(json!([1, 2, 3]));
        same::<Option<bool>>(json!(null));
        same::<f64>(json!(1.5));
    }
}
