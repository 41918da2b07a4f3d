//! `<root>.state.workflow.list`: workflow records by id, optionally of one
//! status, a page at a time.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::{ListWorkflowRecords, ListWorkflowRecordsReply, WorkflowStatus};

use crate::app::State;
use crate::workflow::Status;
use crate::workflow_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: ListWorkflowRecords = request.decode()?;
    let status = match WorkflowStatus::try_from(message.status) {
        Ok(WorkflowStatus::Unspecified) => None,
        Ok(WorkflowStatus::WorkflowCreated) => Some(Status::Created),
        Ok(WorkflowStatus::WorkflowRunning) => Some(Status::Running),
        Ok(WorkflowStatus::WorkflowFinished) => Some(Status::Finished),
        Err(_) => {
            return Err(ServiceError::invalid(
                "status",
                format!("{} is not a workflow status", message.status),
            ));
        }
    };
    let limit = super::super::page("limit", message.limit)? as u32;
    let (records, more) = state
        .workflows()
        .list(status, &message.after, limit)
        .await?;
    let next = if more {
        records.last().map(|r| r.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let reply = ListWorkflowRecordsReply {
        workflows: records.iter().map(view).collect(),
        next,
    };
    Reply::to(&request, &reply)
}
