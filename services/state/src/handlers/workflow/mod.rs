//! `<root>.state.workflow.*`: workflow stage records (seed 003);
//! [`crate::workflow`] holds the rules, [`crate::workflow_table`] the rows.

pub mod create;
pub mod get;
pub mod list;
pub mod step;

use concord_bus::ServiceError;

/// Longest record id, stage name and agent id.
const MAX_ID_CHARS: usize = 128;

/// The request's record `id`, checked.
pub(crate) fn id(id: &str) -> Result<(), ServiceError> {
    concord_bus::validate::check_token("id", id, MAX_ID_CHARS)
}

/// A stage name or agent id in `field`: 1..=128 characters without
/// control characters.
pub(crate) fn name(field: &str, name: &str) -> Result<(), ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::invalid(field, "required"));
    }
    concord_bus::validate::check_text(field, name, MAX_ID_CHARS)
}
