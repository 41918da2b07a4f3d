//! Request/reply endpoints (service `concord-dispatcher`, queue group `q`),
//! one file per request, each `handle(dispatcher, request)`:
//!
//! - `<root>.tasks.run`: `Task` → `TaskResult` once the task is final ([`run`]);
//! - `<root>.tasks.get`: `GetTask` → `TaskResult`, with `history` on request ([`get`]);
//! - `<root>.tasks.cancel`: `CancelTask` → `TaskResult` after the cancellation ([`cancel`]);
//! - `<root>.deadletters.list|get|replay|purge` ([`deadletters`]).

pub mod cancel;
pub mod deadletters;
pub mod get;
pub mod run;

use concord_bus::ServiceError;

/// A task id as `tasks.get` and `tasks.cancel` accept it: what a submission
/// may use as its id.
fn check_id(task_id: &str, limits: &crate::task_spec::TaskLimits) -> Result<(), ServiceError> {
    concord_bus::validate::check_token("taskId", task_id, limits.max_id_chars)
}

fn not_found(task_id: &str) -> ServiceError {
    ServiceError::not_found(format!("no task with id {task_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_checked() {
        let limits = crate::task_spec::TaskLimits::default();
        assert!(check_id("", &limits).is_err());
        assert!(check_id("a b", &limits).is_err());
        assert!(check_id("t-1", &limits).is_ok());
    }
}
