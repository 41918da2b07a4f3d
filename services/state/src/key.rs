//! Document keys: `<namespace>/<key>`. The namespace is one NATS subject
//! token; the key is one or more tokens separated by `/`, so a key maps to
//! the watch subject `<root>.state.changed.<namespace>.<key with / as .>`
//! and a prefix to a wildcard.

use std::fmt;

/// Longest full key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// A valid `<namespace>/<key>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey {
    full: String,
    split: usize,
}

/// Why a key, namespace or prefix is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One token: letters, digits, `-` and `_` (what a NATS subject token and
/// a SQL prefix search both take without escaping).
fn check_token(token: &str, what: &str, whole: &str) -> Result<(), KeyError> {
    if token.is_empty() {
        return Err(KeyError(format!("{what} {whole:?} has an empty segment")));
    }
    if let Some(bad) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(KeyError(format!(
            "{what} {whole:?} has {bad:?}; segments take letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

/// Checks a namespace (one segment).
pub fn check_namespace(namespace: &str) -> Result<(), KeyError> {
    check_token(namespace, "namespace", namespace)
}

impl DocKey {
    /// Parses `<namespace>/<key>`.
    pub fn parse(full: &str) -> Result<Self, KeyError> {
        if full.len() > MAX_KEY_BYTES {
            return Err(KeyError(format!(
                "key is {} bytes, more than the {MAX_KEY_BYTES}-byte limit",
                full.len()
            )));
        }
        let Some(split) = full.find('/') else {
            return Err(KeyError(format!(
                "key {full:?} has no namespace; write <namespace>/<key>"
            )));
        };
        for token in full.split('/') {
            check_token(token, "key", full)?;
        }
        Ok(Self {
            full: full.to_string(),
            split,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn namespace(&self) -> &str {
        &self.full[..self.split]
    }

    /// The key within its namespace.
    pub fn name(&self) -> &str {
        &self.full[self.split + 1..]
    }

    /// The subject tokens after `<root>.state.changed.`: `<namespace>.<key>`.
    pub fn subject_tail(&self) -> String {
        self.full.replace('/', ".")
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// A prefix of keys: `<namespace>/` followed by whole or partial segments
/// (`team/` lists the namespace, `team/plans/` everything under it,
/// `team/pl` keys starting so). Returns it unchanged when valid.
pub fn check_prefix(prefix: &str) -> Result<&str, KeyError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(KeyError(format!(
            "prefix is {} bytes, more than the {MAX_KEY_BYTES}-byte limit",
            prefix.len()
        )));
    }
    let Some((namespace, rest)) = prefix.split_once('/') else {
        return Err(KeyError(format!(
            "prefix {prefix:?} has no namespace; write <namespace>/ or <namespace>/<start of key>"
        )));
    };
    check_token(namespace, "prefix", prefix)?;
    if !rest.is_empty() {
        let segments: Vec<&str> = rest.split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            // The last segment may be empty (`team/plans/`) or partial.
            if i + 1 == segments.len() && segment.is_empty() {
                break;
            }
            check_token(segment, "prefix", prefix)?;
        }
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_namespace_and_a_name_of_plain_segments() {
        let key = DocKey::parse("team-a/plans/q4_draft").unwrap();
        assert_eq!(key.namespace(), "team-a");
        assert_eq!(key.name(), "plans/q4_draft");
        assert_eq!(key.subject_tail(), "team-a.plans.q4_draft");
        assert_eq!(key.to_string(), "team-a/plans/q4_draft");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let refused = |key: &str| DocKey::parse(key).unwrap_err().0;
        assert!(refused("plans").contains("no namespace"));
        assert!(refused("team/").contains("empty segment"));
        assert!(refused("/plans").contains("empty segment"));
        assert!(refused("team//plans").contains("empty segment"));
        assert!(
            refused("team/a.b").contains("'.'"),
            "a dot would split the subject"
        );
        assert!(refused("team/a*").contains("'*'"));
        assert!(refused("team/a b").contains("' '"));
        assert!(refused("team/caf\u{e9}").contains("'\u{e9}'"));
        let long = format!("team/{}", "k".repeat(MAX_KEY_BYTES));
        assert!(refused(&long).contains("512-byte limit"));
    }

    #[test]
    fn prefixes_take_a_namespace_and_any_start_of_a_key() {
        for prefix in ["team/", "team/plans/", "team/pl", "team/plans/q"] {
            assert_eq!(check_prefix(prefix), Ok(prefix));
        }
        for prefix in ["team", "/plans", "te%m/", "team//x", "team/a.b"] {
            assert!(check_prefix(prefix).is_err(), "{prefix}");
        }
    }

    #[test]
    fn namespaces_are_one_segment() {
        assert!(check_namespace("team").is_ok());
        assert!(check_namespace("team/x").is_err());
        assert!(check_namespace("").is_err());
    }
}
