//! Entity keys such as `event/42`: the unit of ownership and placement.

use std::fmt;

/// The key of one entity: its kind (one registered at node start) and its id within that kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    kind: &'static str,
    id: String,
}

/// Why a string is not an entity key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The string has no `/` between kind and id.
    #[error("an entity key looks like kind/id")]
    Malformed,
    /// The kind is not one registered on this node.
    #[error("unknown entity kind `{0}`")]
    UnknownKind(String),
    /// The id is empty or longer than 200 bytes.
    #[error("entity id must be 1 to 200 bytes")]
    BadId,
}

impl EntityKey {
    /// A key of `kind` for `id`. Entity modules wrap this in typed helpers (`event::key(42)`).
    pub fn new(kind: &'static str, id: impl fmt::Display) -> Self {
        Self {
            kind,
            id: id.to_string(),
        }
    }

    /// The kind part of the key.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The id part of the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id part parsed as an integer, for kinds whose ids are numbers.
    pub fn numeric_id(&self) -> Option<i64> {
        self.id.parse().ok()
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

impl EntityKey {
    /// Parses `kind/id`, where `kind` must be one of `kinds` (the kinds registered on a node:
    /// see [`crate::Cluster::parse_key`]).
    pub fn parse<'k>(
        s: &str,
        kinds: impl IntoIterator<Item = &'k &'static str>,
    ) -> Result<Self, KeyError> {
        let (kind, id) = s.split_once('/').ok_or(KeyError::Malformed)?;
        let kind = *kinds
            .into_iter()
            .find(|k| **k == kind)
            .ok_or_else(|| KeyError::UnknownKind(kind.to_owned()))?;
        if id.is_empty() || id.len() > 200 {
            return Err(KeyError::BadId);
        }
        Ok(Self {
            kind,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [&str; 2] = ["order", "item"];

    #[test]
    fn keys_round_trip_through_text() {
        let key = EntityKey::parse("item/42", &KINDS).unwrap();
        assert_eq!(key, EntityKey::new("item", 42));
        assert_eq!(key.to_string(), "item/42");
        assert_eq!(key.numeric_id(), Some(42));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let parse = |s| EntityKey::parse(s, &KINDS);
        assert_eq!(parse("item42"), Err(KeyError::Malformed));
        assert_eq!(
            parse("planet/1"),
            Err(KeyError::UnknownKind("planet".into()))
        );
        assert_eq!(parse("order/"), Err(KeyError::BadId));
    }
}
