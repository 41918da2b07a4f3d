//! Ids Concord derives rather than generates, so that anyone can compute
//! them: the task id of a submission that names none.

/// Namespace of task ids derived from a `Nats-Msg-Id` that is not itself a
/// usable id, or from a submission's stream position.
const TASK_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f0c_2a4e_91d3_4b7a_8c55_3e1f_7a90_d2b4);

/// Longest `Nats-Msg-Id` used as a task id as it is.
const MAX_ID_CHARS: usize = 128;

/// The task id of a submission without an `id` that carries `msg_id` as its
/// `Nats-Msg-Id`: the header itself when it is a token (ASCII letters,
/// digits, `-`, `_`; at most 128 characters), otherwise the UUIDv5 of it
/// (32 hex digits). `None` for a blank header.
pub fn task_id_from_msg_id(msg_id: &str) -> Option<String> {
    let msg_id = msg_id.trim();
    if msg_id.is_empty() {
        return None;
    }
    if is_token(msg_id) && msg_id.len() <= MAX_ID_CHARS {
        return Some(msg_id.to_string());
    }
    Some(
        uuid::Uuid::new_v5(&TASK_ID_NAMESPACE, msg_id.as_bytes())
            .simple()
            .to_string(),
    )
}

/// The task id of a submission with neither an `id` nor a `Nats-Msg-Id`:
/// the UUIDv5 of its intake stream's identity and its sequence there, the
/// same on every redelivery.
pub fn task_id_from_position(stream_identity: &str, stream_sequence: u64) -> String {
    let name = format!("{stream_identity}:{stream_sequence}");
    uuid::Uuid::new_v5(&TASK_ID_NAMESPACE, name.as_bytes())
        .simple()
        .to_string()
}

/// Whether `value` is a token: non-empty, only ASCII letters, digits, `-`
/// and `_` (what ids and capabilities may contain: one NATS subject token).
pub fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_msg_id_is_the_task_id() {
        assert_eq!(task_id_from_msg_id(" order-7 ").as_deref(), Some("order-7"));
        assert_eq!(task_id_from_msg_id("  "), None);
    }

    #[test]
    fn other_msg_ids_hash_to_a_stable_uuid() {
        let id = task_id_from_msg_id("order.7/β").unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(task_id_from_msg_id("order.7/β").unwrap(), id);
        let long = "x".repeat(129);
        assert_eq!(task_id_from_msg_id(&long).unwrap().len(), 32);
        assert_eq!(task_id_from_msg_id(&"x".repeat(128)).unwrap().len(), 128);
    }

    #[test]
    fn positions_hash_per_stream_and_sequence() {
        let a = task_id_from_position("stream-a", 1);
        assert_eq!(a, task_id_from_position("stream-a", 1));
        assert_ne!(a, task_id_from_position("stream-a", 2));
        assert_ne!(a, task_id_from_position("stream-b", 1));
    }
}
