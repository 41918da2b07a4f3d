//! Wire messages as JSON values and back, with the codec's number rule:
//! whole numbers stay integers (`google.protobuf.Value` holds every number
//! as a double, so `1` would otherwise come back as `1.0`).

use serde_json::Value;

use crate::codec::{self, ContentType, WireMessage};

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A wire message's canonical JSON as text.
pub fn wire_text<M: WireMessage>(message: &M) -> String {
    let bytes = codec::encode(ContentType::Json, message).expect("wire messages encode as JSON");
    String::from_utf8(bytes).expect("the codec writes UTF-8 JSON")
}

/// The canonical JSON of a wire message as a `serde_json::Value`.
pub fn wire_json<M: WireMessage>(message: &M) -> Value {
    let bytes = codec::encode(ContentType::Json, message).expect("wire messages encode as JSON");
    serde_json::from_slice(&bytes).expect("the codec writes valid JSON")
}

/// A wire message from its canonical JSON.
pub fn from_wire_json<M: WireMessage>(value: &Value) -> Result<M, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    codec::decode(ContentType::Json, &bytes).map_err(|e| e.to_string())
}

/// A JSON value as a `google.protobuf.Value`.
pub fn to_wire_value(value: Value) -> pbjson_types::Value {
    serde_json::from_value(value).expect("every JSON value is a protobuf Value")
}

/// A protobuf `Value` as JSON, whole numbers as integers.
pub fn from_wire_value(value: &pbjson_types::Value) -> Value {
    let text = serde_json::to_string(value).expect("protobuf values serialize");
    let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
    integers(parsed)
}

/// Whether the codec writes `value` as an integer: no fraction, and within
/// 2^53, where a double still holds every integer exactly.
pub(crate) fn is_whole(value: f64) -> bool {
    value.fract() == 0.0 && value.abs() <= MAX_EXACT_INTEGER
}

/// Rewrites floats with no fraction into integers.
fn integers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && is_whole(f) => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integers).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, integers(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_come_back_with_whole_numbers() {
        let value = json!({"n": 1, "f": 1.5, "list": [2, {"deep": 3}], "s": "x", "null": null});
        assert_eq!(from_wire_value(&to_wire_value(value.clone())), value);
    }

    #[test]
    fn messages_round_trip_through_json_values() {
        let cancel = crate::v1::CancelTask {
            task_id: "t-1".into(),
            reason: "no longer needed".into(),
        };
        let json = wire_json(&cancel);
        assert_eq!(json, json!({"taskId": "t-1", "reason": "no longer needed"}));
        assert_eq!(
            from_wire_json::<crate::v1::CancelTask>(&json).unwrap(),
            cancel
        );
        let text: serde_json::Value = serde_json::from_str(&wire_text(&cancel)).unwrap();
        assert_eq!(text, json);
        assert!(from_wire_json::<crate::v1::CancelTask>(&json!({"taskId": 5})).is_err());
    }
}
