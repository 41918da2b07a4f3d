//! Printing wire messages as canonical proto3 JSON (the `concord_wire`
//! codec: whole numbers without `.0`), pretty or compact.

use concord_wire::codec::{self, ContentType, WireMessage};

/// The message as the codec encodes it, on one line.
pub fn compact<M: WireMessage>(message: &M) -> anyhow::Result<String> {
    let bytes = codec::encode(ContentType::Json, message)
        .map_err(|e| anyhow::anyhow!("cannot encode the reply as JSON: {e}"))?;
    Ok(String::from_utf8(bytes)?)
}

/// The message as the codec encodes it, indented (fields in schema order).
pub fn pretty<M: WireMessage>(message: &M) -> anyhow::Result<String> {
    let bytes = codec::encode_json_pretty(message)
        .map_err(|e| anyhow::anyhow!("cannot encode the reply as JSON: {e}"))?;
    Ok(String::from_utf8(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::v1::TaskResult;

    #[test]
    fn whole_numbers_print_as_integers_pretty_and_compact() {
        let result: TaskResult = codec::decode(
            ContentType::Json,
            br#"{"taskId":"t","status":"COMPLETED","output":{"n":3,"x":0.5,"big":1e300}}"#,
        )
        .unwrap();
        let pretty = pretty(&result).unwrap();
        assert!(
            pretty.contains("\"n\": 3\n") || pretty.contains("\"n\": 3,"),
            "{pretty}"
        );
        assert!(pretty.contains("0.5"), "{pretty}");
        assert!(pretty.starts_with("{\n  \"taskId\": \"t\""), "{pretty}");
        let compact = compact(&result).unwrap();
        assert!(compact.contains("\"n\":3"), "{compact}");
        let again: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(&compact).unwrap()
        );
    }
}
