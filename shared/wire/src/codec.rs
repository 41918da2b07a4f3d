//! Encoding and decoding of wire messages as canonical proto3 JSON or protobuf, chosen by `Content-Type`.
//!
//! JSON is the default: a missing or empty `Content-Type` header means JSON.
//! JSON decoding reports the dotted path of the offending field, so a
//! malformed request can be answered with an [`ErrorReply`] naming it
//! (see [`CodecError::to_reply`]).
//!
//! Unknown fields: JSON input with a field the schema does not know is
//! rejected ([`CodecError::Json`] naming that field), so typos do not pass
//! silently. Protobuf input follows protobuf's own rule and skips unknown
//! fields, which keeps old readers working with newer writers.
//!
//! ```
//! use concord_wire::{ContentType, decode, encode, v1::Task};
//!
//! let ct = ContentType::from_header(None)?;
//! let task: Task = decode(ct, br#"{"capability":"summarize","payload":{"text":"hi"}}"#)?;
//! assert_eq!(task.capability, "summarize");
//!
//! let bytes = encode(ContentType::Protobuf, &task)?;
//! assert_eq!(decode::<Task>(ContentType::Protobuf, &bytes)?, task);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{fmt, io};

use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};
use serde_path_to_error::{Path, Segment};

use crate::v1::{ErrorCode, ErrorReply};

/// The two encodings every wire message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentType {
    /// Canonical proto3 JSON (the default on public subjects).
    #[default]
    Json,
    /// Protobuf binary encoding.
    Protobuf,
}

impl ContentType {
    /// Name of the header that selects the encoding.
    pub const HEADER: &'static str = "Content-Type";
    /// Header value for [`ContentType::Json`].
    pub const JSON: &'static str = "application/json";
    /// Header value for [`ContentType::Protobuf`].
    pub const PROTOBUF: &'static str = "application/protobuf";
    /// Older alias for [`ContentType::PROTOBUF`], accepted on input.
    const X_PROTOBUF: &'static str = "application/x-protobuf";

    /// Parses a `Content-Type` header value.
    ///
    /// A missing or blank header means JSON. Matching is case-insensitive and
    /// ignores parameters after `;` (such as `charset=utf-8`). Accepted:
    /// `application/json`, `application/protobuf`, `application/x-protobuf`.
    pub fn from_header(value: Option<&str>) -> Result<Self, CodecError> {
        let value = value.unwrap_or_default();
        if value.trim().is_empty() {
            return Ok(Self::Json);
        }
        let essence = value.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(Self::JSON) {
            Ok(Self::Json)
        } else if essence.eq_ignore_ascii_case(Self::PROTOBUF)
            || essence.eq_ignore_ascii_case(Self::X_PROTOBUF)
        {
            Ok(Self::Protobuf)
        } else {
            Err(CodecError::UnsupportedContentType(value.to_owned()))
        }
    }

    /// The header value to send with a body in this encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => Self::JSON,
            Self::Protobuf => Self::PROTOBUF,
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that travels on the wire: protobuf plus canonical JSON.
///
/// Implemented for every type in [`crate::v1`] (and any other type with the
/// same capabilities).
pub trait WireMessage:
    prost::Message + serde::Serialize + serde::de::DeserializeOwned + Default
{
}

impl<T> WireMessage for T where
    T: prost::Message + serde::Serialize + serde::de::DeserializeOwned + Default
{
}

/// Why a request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The `Content-Type` header names an encoding other than JSON or protobuf.
    #[error(
        "unsupported content type `{0}`, expected `application/json` or `application/protobuf`"
    )]
    UnsupportedContentType(String),
    /// The body is not valid JSON for the expected message.
    #[error("invalid JSON{}: {message}", at_field(field))]
    Json {
        /// Dotted path of the offending field (`capabilities[0].name`);
        /// empty when the error is not about one field (syntax errors).
        field: String,
        /// What is wrong, without the field path.
        message: String,
    },
    /// The body is not a valid protobuf encoding of the expected message.
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
}

impl CodecError {
    /// Dotted path of the offending field, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Json { field, .. } if !field.is_empty() => Some(field),
            _ => None,
        }
    }

    /// The error reply to send back for a request that failed to decode.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            Self::UnsupportedContentType(_) => ErrorCode::UnsupportedContentType,
            Self::Json { .. } | Self::Protobuf(_) => ErrorCode::InvalidArgument,
        };
        ErrorReply::new(code, self.to_string()).with_field(self.field().unwrap_or_default())
    }
}

impl From<&CodecError> for ErrorReply {
    fn from(err: &CodecError) -> Self {
        err.to_reply()
    }
}

/// Why a message could not be encoded as JSON.
///
/// Protobuf encoding never fails. JSON encoding fails only for values the
/// JSON mapping cannot express, which a protobuf body can carry: a
/// `google.protobuf.Value` number that is NaN or infinite, or a `Timestamp`
/// beyond chrono's range (about ±262,000 years) or with nanos out of range.
/// (A NaN or infinite plain `double` field does not fail: it is written as
/// `null`, which pbjson then refuses to read back; validate such inputs.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode as JSON{}: {message}", at_field(field))]
pub struct EncodeError {
    /// Dotted path of the offending field; empty if not about one field.
    pub field: String,
    /// What cannot be expressed.
    pub message: String,
}

fn at_field(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" at `{field}`")
    }
}

/// JSON formatting that writes whole floating-point numbers without a
/// fractional part (`3`, not `3.0`), laid out by `L`: serde_json's
/// `CompactFormatter` or `PrettyFormatter`.
///
/// `google.protobuf.Value` holds every number as a double, so without this a
/// payload `{"n":3}` would come back as `{"n":3.0}`: equal as JSON numbers,
/// but surprising to anyone comparing text. Numbers beyond 2^53 keep the
/// float form, where the double cannot represent every integer anyway.
///
/// Only the layout of arrays and objects is passed on to `L`: that is all
/// serde_json's two formatters differ in; the rest is the trait's default.
#[derive(Clone)]
struct WholeNumbers<L>(L);

impl<L: Formatter> Formatter for WholeNumbers<L> {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        if crate::json::is_whole(value) {
            // Exact: the value is an integer that an i64 holds without loss.
            self.0.write_i64(writer, value as i64)
        } else {
            self.0.write_f64(writer, value)
        }
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_key(writer)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

/// Decodes a message from a body in the given encoding.
///
/// An empty protobuf body is the default message (protobuf has no other way
/// to say "all fields default"); an empty JSON body is an error, since JSON
/// has `{}` for that.
pub fn decode<M: WireMessage>(ct: ContentType, bytes: &[u8]) -> Result<M, CodecError> {
    match ct {
        ContentType::Protobuf => M::decode(bytes).map_err(|e| CodecError::Protobuf(e.to_string())),
        ContentType::Json => decode_json(bytes),
    }
}

/// Encodes a message in the given encoding.
///
/// JSON output uses lowerCamelCase field names, enum value names, strings
/// for 64-bit integers, base64 for bytes, and omits fields at their default.
pub fn encode<M: WireMessage>(ct: ContentType, msg: &M) -> Result<Vec<u8>, EncodeError> {
    match ct {
        ContentType::Protobuf => Ok(msg.encode_to_vec()),
        ContentType::Json => encode_json(msg, WholeNumbers(CompactFormatter)),
    }
}

/// Encodes a message as JSON like [`encode`], but indented for people to
/// read: two spaces a level, fields in schema order.
///
/// ```
/// use concord_wire::{ContentType, codec, decode, v1::Task};
///
/// let task: Task = decode(ContentType::Json, br#"{"capability":"echo","payload":{"n":3}}"#)?;
/// let text = String::from_utf8(codec::encode_json_pretty(&task)?)?;
/// assert_eq!(text, "{\n  \"capability\": \"echo\",\n  \"payload\": {\n    \"n\": 3\n  }\n}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_json_pretty<M: WireMessage>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    encode_json(msg, WholeNumbers(PrettyFormatter::new()))
}

fn encode_json<M: WireMessage, F: Formatter + Clone>(
    msg: &M,
    formatter: F,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(msg.encoded_len() * 2);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter.clone());
    if serde::Serialize::serialize(msg, &mut ser).is_ok() {
        return Ok(out);
    }
    // Rare (a float JSON cannot hold): serialize again, tracking the path
    // this time, to name the field. Tracking it on every call would cost a
    // good part of the encoding.
    out.clear();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde_path_to_error::serialize(msg, &mut ser).map_err(|err| EncodeError {
        field: field_path(err.path()),
        message: err.inner().to_string(),
    })?;
    Ok(out)
}

fn decode_json<M: WireMessage>(bytes: &[u8]) -> Result<M, CodecError> {
    // Checked up front because serde's messages for these cases ("EOF while
    // parsing a value", "invalid type: sequence, expected struct ...") do not
    // tell a sender what to send instead.
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let found = match first {
        None => return Err(json_error("", "empty body, expected a JSON object")),
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        // Not JSON at all: let the parser report where.
        Some(_) => None,
    };
    if let Some(found) = found {
        return Err(json_error(
            "",
            &format!("expected a JSON object, found {found}"),
        ));
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let msg = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = field_path(err.path());
        from_json_error(field, err.inner())
    })?;
    de.end()
        .map_err(|err| from_json_error(String::new(), &err))?;
    Ok(msg)
}

fn json_error(field: &str, message: &str) -> CodecError {
    CodecError::Json {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

fn from_json_error(field: String, err: &serde_json::Error) -> CodecError {
    if !err.is_data() {
        // Syntax or truncation: the position is what helps, not a field.
        return CodecError::Json {
            field: String::new(),
            message: err.to_string(),
        };
    }
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    // The field path says where; the position would only repeat it.
    let message = text.strip_suffix(&position).unwrap_or(&text);
    CodecError::Json {
        field,
        message: clarify(message),
    }
}

/// Rewords messages from pbjson's generated code that do not help a sender.
fn clarify(message: &str) -> String {
    // pbjson reads numeric fields through an untagged enum (number or numeric
    // string), so every bad number (null, negative for an unsigned field,
    // fractional for an integer one) reports the enum's name.
    if message == "data did not match any variant of untagged enum Content" {
        return "invalid value: expected a number in the field's range, or the same as a string"
            .to_owned();
    }
    // Numbers sent as strings fail in `str::parse`, whose messages do not say
    // that a number was expected.
    const PARSE_ERRORS: [&str; 6] = [
        "cannot parse integer from empty string",
        "invalid digit found in string",
        "number too large to fit in target type",
        "number too small to fit in target type",
        "cannot parse float from empty string",
        "invalid float literal",
    ];
    if PARSE_ERRORS.contains(&message) {
        return format!("invalid number: {message}");
    }
    // Its enum visitors say "expected one of", which serde prefixes with another "expected".
    message.replace("expected expected one of", "expected one of")
}

/// Renders a serde path as `a.b[2].c`; the empty path is "".
fn field_path(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}
