//! Task priorities: numbers 0..=10, higher first, with four names a JSON
//! submission may use instead (`"priority": "HIGH"`).

/// Priority of `"LOW"`.
pub const LOW: u32 = 2;
/// Priority of `"NORMAL"`.
pub const NORMAL: u32 = 5;
/// Priority of `"HIGH"`.
pub const HIGH: u32 = 8;
/// Priority of `"CRITICAL"`, the highest.
pub const CRITICAL: u32 = 10;
/// Highest priority a task may have.
pub const MAX: u32 = CRITICAL;

/// The number for a priority name (`LOW`, `NORMAL`, `HIGH`, `CRITICAL`,
/// any case), or `None`.
pub fn from_name(name: &str) -> Option<u32> {
    [
        ("LOW", LOW),
        ("NORMAL", NORMAL),
        ("HIGH", HIGH),
        ("CRITICAL", CRITICAL),
    ]
    .into_iter()
    .find(|(known, _)| known.eq_ignore_ascii_case(name))
    .map(|(_, priority)| priority)
}

/// Rewrites a priority name in a JSON task (`"priority": "high"`) as its
/// number (`"priority": 8`), so the JSON decodes into the `uint32` field.
///
/// Call it on the parsed JSON before decoding it as a `Task`. Numbers,
/// numeric strings (proto3 JSON allows `"8"`), `null`, a missing field and a
/// non-object document are left for the decoder to judge. Any other string
/// fails with what the `priority` field must be.
pub fn normalize_names(json: &mut serde_json::Value) -> Result<(), String> {
    let Some(priority) = json.get_mut("priority") else {
        return Ok(());
    };
    let serde_json::Value::String(text) = priority else {
        return Ok(());
    };
    if let Some(number) = from_name(text) {
        *priority = number.into();
        return Ok(());
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let shown: String = text.chars().take(32).collect();
    let ellipsis = if shown.len() < text.len() { "..." } else { "" };
    Err(format!(
        "must be a number from 0 to {MAX} or one of LOW, NORMAL, HIGH, CRITICAL, got {shown:?}{ellipsis}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_map_to_numbers_in_any_case() {
        assert_eq!(from_name("high"), Some(HIGH));
        assert_eq!(from_name("Critical"), Some(MAX));
        assert_eq!(from_name("urgent"), None);
    }

    #[test]
    fn only_names_are_rewritten() {
        let mut task = json!({"priority": "low"});
        normalize_names(&mut task).unwrap();
        assert_eq!(task, json!({"priority": 2}));
        for untouched in [
            json!({"priority": 7}),
            json!({"priority": "7"}),
            json!({}),
            json!([1]),
        ] {
            let mut copy = untouched.clone();
            normalize_names(&mut copy).unwrap();
            assert_eq!(copy, untouched);
        }
        let error = normalize_names(&mut json!({"priority": "urgent"})).unwrap_err();
        assert!(
            error.contains("\"urgent\"") && error.contains("LOW, NORMAL"),
            "{error}"
        );
    }
}
