//! An event's body as JSON text, serialized once.
//!
//! Every event goes to two places: a `jsonb` column in Postgres and the
//! `data` field of the JSON envelope published on NATS. Holding the body as a
//! tree (`serde_json::Value`) would serialize it twice and allocate a node
//! per field; [`EventData`] is the text itself, checked to be one JSON value
//! when it is made, and written as-is into both.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// One JSON value as compact text (see the [module docs](self)).
///
/// ```
/// use concord_wire::event_data::EventData;
///
/// let data = EventData::of(&serde_json::json!({"attempt": 1})).unwrap();
/// assert_eq!(data.get(), r#"{"attempt":1}"#);
/// let text = EventData::from_text(r#"{"task":{"id":"t-1"}}"#.to_string()).unwrap();
/// assert_eq!(text.to_value()["task"]["id"], "t-1");
/// assert!(EventData::from_text("{not json".to_string()).is_err());
/// ```
#[derive(Clone)]
pub struct EventData(Box<RawValue>);

impl EventData {
    /// Serializes `value` (compact JSON).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Takes JSON text that is already written, after checking that it is
    /// exactly one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The body parsed into a tree, for readers that inspect it.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("EventData holds valid JSON")
    }
}

impl From<serde_json::Value> for EventData {
    fn from(value: serde_json::Value) -> Self {
        Self::of(&value).expect("a JSON value always serializes")
    }
}

impl From<&serde_json::Value> for EventData {
    fn from(value: &serde_json::Value) -> Self {
        Self::of(value).expect("a JSON value always serializes")
    }
}

/// Equal when the texts are equal (bodies built the same way compare equal;
/// the same object with its keys in another order does not).
impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_as_the_value_itself_inside_an_envelope() {
        let data = EventData::from(json!({"b": [1, 2.5, "x"], "a": null}));
        let envelope = serde_json::to_string(&json!({"data": 1})).unwrap();
        assert_eq!(envelope, r#"{"data":1}"#);
        #[derive(Serialize)]
        struct Envelope<'a> {
            data: &'a EventData,
        }
        let text = serde_json::to_string(&Envelope { data: &data }).unwrap();
        assert_eq!(text, r#"{"data":{"a":null,"b":[1,2.5,"x"]}}"#);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["data"], data.to_value());
    }

    #[test]
    fn text_must_be_exactly_one_value() {
        assert!(EventData::from_text("{}".into()).is_ok());
        assert!(EventData::from_text("  [1]  ".into()).is_ok());
        for bad in ["", "{", "1 2", "{} {}", "nope", "{\"a\":}"] {
            assert!(EventData::from_text(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trips_through_deserialize() {
        let data = EventData::from(json!({"task": {"id": "t\"1", "n": 7}}));
        let text = serde_json::to_string(&data).unwrap();
        let back: EventData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data);
        assert_eq!(format!("{back:?}"), data.get());
    }
}
