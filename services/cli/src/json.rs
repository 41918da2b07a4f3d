//! Printing wire messages as canonical proto3 JSON (the `concord_wire`
//! codec: whole numbers without `.0`), pretty or compact.

use concord_wire::codec::{self, ContentType, WireMessage};
use serde_json::ser::{Formatter, PrettyFormatter};

/// The message as the codec encodes it, on one line.
pub fn compact<M: WireMessage>(message: &M) -> anyhow::Result<String> {
    let bytes = codec::encode(ContentType::Json, message)
        .map_err(|e| anyhow::anyhow!("cannot encode the reply as JSON: {e}"))?;
    Ok(String::from_utf8(bytes)?)
}

/// The message as the codec encodes it, indented (fields in schema order).
pub fn pretty<M: WireMessage>(message: &M) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, PrettyWholeNumbers::default());
    message
        .serialize(&mut serializer)
        .map_err(|e| anyhow::anyhow!("cannot encode the reply as JSON: {e}"))?;
    Ok(String::from_utf8(out)?)
}

/// Largest integer a double holds exactly (2^53).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// serde_json's pretty layout, with whole doubles written as integers like
/// the codec does (`google.protobuf.Value` holds every number as a double).
#[derive(Default)]
struct PrettyWholeNumbers(PrettyFormatter<'static>);

impl Formatter for PrettyWholeNumbers {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        if value.fract() == 0.0 && value.abs() <= MAX_EXACT_INTEGER {
            self.0.write_i64(writer, value as i64)
        } else {
            self.0.write_f64(writer, value)
        }
    }

    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        self.0.end_object_value(writer)
    }
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
