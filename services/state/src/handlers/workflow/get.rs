//! `<root>.state.workflow.get`: a workflow record as it stands.

use concord_bus::{Reply, Request, ServiceError};
use concord_wire::v1::GetWorkflowRecord;

use crate::app::State;
use crate::workflow_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: GetWorkflowRecord = request.decode()?;
    super::id(&message.id)?;
    let record = state
        .workflows()
        .get(&message.id)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no workflow record {}", message.id)))?;
    Reply::to(&request, &view(&record))
}
