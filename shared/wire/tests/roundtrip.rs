//! Every `concord.v1` message survives a protobuf and a JSON round trip unchanged.

mod fixtures;

use std::{collections::BTreeSet, fmt::Debug};

use concord_wire::{ContentType, WireMessage, decode, encode};
use prost::Name;

/// Full names of all messages in the schema, written by build.rs.
const ALL_MESSAGES: &[&str] = include!(concat!(env!("OUT_DIR"), "/message_names.rs"));

#[derive(Default)]
struct Checked(BTreeSet<String>);

impl Checked {
    fn round_trip<M: WireMessage + Name + PartialEq + Debug>(&mut self, msg: M) {
        let name = M::full_name();
        assert_ne!(msg, M::default(), "{name}: fixture must set fields");

        let proto = encode(ContentType::Protobuf, &msg).expect("protobuf encoding cannot fail");
        let back: M = decode(ContentType::Protobuf, &proto)
            .unwrap_or_else(|e| panic!("{name}: protobuf decode: {e}"));
        assert_eq!(back, msg, "{name}: protobuf round trip");

        let json = encode(ContentType::Json, &msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back: M = decode(ContentType::Json, &json).unwrap_or_else(|e| {
            panic!(
                "{name}: JSON decode of {}: {e}",
                String::from_utf8_lossy(&json)
            )
        });
        assert_eq!(back, msg, "{name}: JSON round trip");

        // The default message is `{}` in JSON and nothing at all in protobuf.
        assert_eq!(encode(ContentType::Json, &M::default()).unwrap(), b"{}");
        assert!(
            encode(ContentType::Protobuf, &M::default())
                .unwrap()
                .is_empty()
        );

        self.0.insert(name);
    }
}

#[test]
fn every_message_round_trips_in_both_encodings() {
    let mut checked = Checked::default();

    checked.round_trip(fixtures::error_reply());

    checked.round_trip(fixtures::capability());
    checked.round_trip(fixtures::register_agent());
    checked.round_trip(fixtures::register_agent_reply());
    checked.round_trip(fixtures::deregister_agent());
    checked.round_trip(fixtures::heartbeat());
    checked.round_trip(fixtures::heartbeat_ack());
    checked.round_trip(fixtures::deregister_agent_reply());
    checked.round_trip(fixtures::remove_agent());
    checked.round_trip(fixtures::remove_agent_reply());
    checked.round_trip(fixtures::agent_record());
    checked.round_trip(fixtures::discover_agents());
    checked.round_trip(fixtures::discover_agents_reply());
    checked.round_trip(fixtures::get_agent());

    checked.round_trip(fixtures::task());
    checked.round_trip(fixtures::task_assignment());
    checked.round_trip(fixtures::task_progress());
    checked.round_trip(fixtures::task_error());
    checked.round_trip(fixtures::agent_result_output());
    checked.round_trip(fixtures::agent_result_error());
    checked.round_trip(fixtures::agent_output());
    checked.round_trip(fixtures::task_result());
    checked.round_trip(fixtures::submit_task_reply());
    checked.round_trip(fixtures::cancel_task());
    checked.round_trip(fixtures::get_task());

    checked.round_trip(fixtures::event());
    checked.round_trip(fixtures::dead_letter());
    checked.round_trip(fixtures::list_dead_letters());
    checked.round_trip(fixtures::dead_letter_list());
    checked.round_trip(fixtures::get_dead_letter());
    checked.round_trip(fixtures::replay_dead_letter());
    checked.round_trip(fixtures::replayed_dead_letter());
    checked.round_trip(fixtures::purge_dead_letters());
    checked.round_trip(fixtures::purged_dead_letters());

    checked.round_trip(fixtures::document());
    checked.round_trip(fixtures::create_document());
    checked.round_trip(fixtures::get_document());
    checked.round_trip(fixtures::put_document());
    checked.round_trip(fixtures::patch_document());
    checked.round_trip(fixtures::delete_document());
    checked.round_trip(fixtures::list_documents());
    checked.round_trip(fixtures::list_documents_reply());
    checked.round_trip(fixtures::document_change());
    checked.round_trip(fixtures::get_history());
    checked.round_trip(fixtures::history_reply());
    checked.round_trip(fixtures::reconcile());

    checked.round_trip(fixtures::fence());
    checked.round_trip(fixtures::acquire_lock());
    checked.round_trip(fixtures::lock_grant());
    checked.round_trip(fixtures::renew_lock());
    checked.round_trip(fixtures::release_lock());
    checked.round_trip(fixtures::lock_released());
    checked.round_trip(fixtures::check_lock());
    checked.round_trip(fixtures::lock_token_status());
    checked.round_trip(fixtures::lock_waiter());
    checked.round_trip(fixtures::get_lock());
    checked.round_trip(fixtures::lock_state());
    checked.round_trip(fixtures::list_locks());
    checked.round_trip(fixtures::list_locks_reply());
    checked.round_trip(fixtures::create_barrier());
    checked.round_trip(fixtures::barrier_arrival());
    checked.round_trip(fixtures::barrier());
    checked.round_trip(fixtures::arrive_at_barrier());
    checked.round_trip(fixtures::get_barrier());
    checked.round_trip(fixtures::take_snapshot());
    checked.round_trip(fixtures::snapshot_entry());
    checked.round_trip(fixtures::snapshot());
    checked.round_trip(fixtures::get_snapshot());
    checked.round_trip(fixtures::list_snapshots());
    checked.round_trip(fixtures::list_snapshots_reply());
    checked.round_trip(fixtures::restore_snapshot());
    checked.round_trip(fixtures::restore_reply());
    checked.round_trip(fixtures::create_workflow_record());
    checked.round_trip(fixtures::workflow_step());
    checked.round_trip(fixtures::workflow_record());
    checked.round_trip(fixtures::get_workflow_record());
    checked.round_trip(fixtures::list_workflow_records());
    checked.round_trip(fixtures::list_workflow_records_reply());

    let all: BTreeSet<String> = ALL_MESSAGES.iter().map(|s| (*s).to_owned()).collect();
    let missing: Vec<_> = all.difference(&checked.0).collect();
    assert!(
        missing.is_empty(),
        "messages without a round-trip test: {missing:?}"
    );
}

#[test]
fn protobuf_skips_unknown_fields() {
    // A reader with an older schema sees only the fields it knows: GetAgent
    // has just field 1 (`id`), RegisterAgent adds fields 2..7.
    let bytes = encode(ContentType::Protobuf, &fixtures::register_agent()).unwrap();
    let get: concord_wire::v1::GetAgent = decode(ContentType::Protobuf, &bytes).unwrap();
    assert_eq!(get.id, "agent-1");
}
