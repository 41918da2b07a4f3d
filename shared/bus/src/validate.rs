//! Field checks shared by every service's request validation. Each failure
//! is an `INVALID_ARGUMENT` [`ServiceError`] naming the field.

use std::collections::BTreeMap;

use crate::ServiceError;

/// Whether a value is one subject token (ASCII letters, digits, `-`, `_`).
pub use concord_wire::ids::is_token;

/// A non-empty subject token of at most `max_chars`.
pub fn check_token(field: &str, value: &str, max_chars: usize) -> Result<(), ServiceError> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if !is_token(value) {
        return Err(ServiceError::invalid(
            field,
            "must contain only ASCII letters, digits, '-' and '_'",
        ));
    }
    // All ASCII now, so bytes are characters.
    if value.len() > max_chars {
        return Err(too_long(field, max_chars, value.len()));
    }
    Ok(())
}

/// Free text of at most `max_chars`, without control characters.
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ServiceError> {
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(too_long(field, max_chars, chars));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A map key of allowed ASCII characters. A bad key cannot make a usable
/// field path (and may be long or unprintable), so the error names the map
/// and quotes a prefix of the key.
pub fn check_map_key(
    map_field: &str,
    key: &str,
    max_chars: usize,
    allowed: impl Fn(char) -> bool,
    allowed_text: &str,
) -> Result<(), ServiceError> {
    let problem = if key.is_empty() {
        "must not be empty".to_string()
    } else if !key.chars().all(allowed) {
        format!("must contain only {allowed_text}")
    } else if key.len() > max_chars {
        // The allowed characters are all ASCII.
        format!("must be at most {max_chars} characters, got {}", key.len())
    } else {
        return Ok(());
    };
    let shown: String = key.chars().take(64).collect();
    let ellipsis = if shown.len() < key.len() { "..." } else { "" };
    Err(ServiceError::invalid(
        map_field,
        format!("key {shown:?}{ellipsis} {problem}"),
    ))
}

/// Limits on a `labels` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    pub max_labels: usize,
    pub max_key_chars: usize,
    pub max_value_chars: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        Self {
            max_labels: 32,
            max_key_chars: 63,
            max_value_chars: 256,
        }
    }
}

/// Labels as agents and tasks carry them: bounded count, keys of lowercase
/// ASCII letters, digits, `_`, `.`, `-`, `/`, values free text.
pub fn check_labels(
    labels: &BTreeMap<String, String>,
    limits: &LabelLimits,
) -> Result<(), ServiceError> {
    if labels.len() > limits.max_labels {
        return Err(ServiceError::invalid(
            "labels",
            format!(
                "must have at most {} entries, got {}",
                limits.max_labels,
                labels.len()
            ),
        ));
    }
    for (key, value) in labels {
        check_map_key(
            "labels",
            key,
            limits.max_key_chars,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-' | '/'),
            "lowercase ASCII letters, digits, '_', '.', '-' and '/'",
        )?;
        check_text(&format!("labels.{key}"), value, limits.max_value_chars)?;
    }
    Ok(())
}

/// "must be at most N characters, got M" for `field`.
pub fn too_long(field: &str, max_chars: usize, chars: usize) -> ServiceError {
    ServiceError::invalid(
        field,
        format!("must be at most {max_chars} characters, got {chars}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("agent-1_X"));
        assert!(!is_token(""));
        assert!(!is_token("a.b"));
        assert!(!is_token("a b"));
        assert_eq!(
            check_token("id", "", 8).unwrap_err().field.as_deref(),
            Some("id")
        );
        assert!(
            check_token("id", "abcdefghi", 8)
                .unwrap_err()
                .message
                .contains("at most 8")
        );
        assert!(check_token("id", "abc", 8).is_ok());
    }

    #[test]
    fn text_and_labels() {
        assert!(check_text("name", "ok", 4).is_ok());
        assert!(check_text("name", "a\nb", 4).is_err());
        assert!(check_text("name", "héllo", 4).is_err());
        let mut labels = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        assert!(check_labels(&labels, &LabelLimits::default()).is_ok());
        labels.insert("Bad Key".into(), "x".into());
        let error = check_labels(&labels, &LabelLimits::default()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("labels"));
        assert!(error.message.contains("Bad Key"), "{}", error.message);
        let long = BTreeMap::from([("k".to_string(), "v".repeat(300))]);
        let error = check_labels(&long, &LabelLimits::default()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("labels.k"));
    }
}
