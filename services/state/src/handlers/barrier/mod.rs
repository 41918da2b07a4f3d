//! `<root>.state.barrier.*`: sync points that release when enough
//! participants arrived ([`crate::barrier`] holds the rules,
//! [`crate::barrier_table`] the rows).

pub mod arrive;
pub mod create;
pub mod get;

use concord_bus::ServiceError;

/// Longest barrier id and participant id.
const MAX_ID_CHARS: usize = 128;

/// The request's barrier `id`, checked.
pub(crate) fn id(id: &str) -> Result<(), ServiceError> {
    concord_bus::validate::check_token("id", id, MAX_ID_CHARS)
}

/// The request's `participant`, checked.
pub(crate) fn participant(field: &str, participant: &str) -> Result<(), ServiceError> {
    concord_bus::validate::check_token(field, participant, MAX_ID_CHARS)
}
