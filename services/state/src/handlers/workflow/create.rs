//! `<root>.state.workflow.create`: a workflow record over stages in order
//! (the same id and stages again answer the existing record).

use concord_bus::{Reply, Request, ServiceError};
use concord_identity::purpose;
use concord_wire::v1::CreateWorkflowRecord;

use crate::app::State;
use crate::workflow::Workflow;
use crate::workflow_table::view;

pub async fn handle(state: State, request: Request) -> Result<Reply, ServiceError> {
    let message: CreateWorkflowRecord = request.decode()?;
    let id = if message.id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        super::id(&message.id)?;
        message.id.clone()
    };
    for stage in &message.stages {
        super::name("stages", stage)?;
    }
    for agent in message.assignees.values() {
        super::name("assignees", agent)?;
    }
    let actor = super::super::actor(&message.actor)?;
    state.check_identity(&request, purpose::STATE_WORKFLOW, &actor)?;
    let metadata = message
        .metadata
        .as_ref()
        .map(concord_wire::json::from_wire_value)
        .unwrap_or(serde_json::Value::Null);
    let workflow = Workflow::new(message.stages, message.assignees, metadata)
        .map_err(|e| ServiceError::invalid(e.field, e.message))?;
    let record = state.workflows().create(&id, workflow, &actor).await?;
    Reply::to(&request, &view(&record))
}
