//! The `tasks` table checked against, and rebuilt from, the task events
//! (`concord-dispatcher --verify-projection | --rebuild-projection`), on a
//! real stack: a lost row and a changed one are named, the rebuild puts
//! both right.

use concord_dispatcher::projection_tool::differences;
use concord_echo_agent::EchoAgent;
use concord_tests::stack::{Stack, test_config};
use concord_wire::v1::TaskStatus;
use serde_json::json;

async fn run(stack: &Stack, body: serde_json::Value) -> Result<(), concord_bus::ServiceError> {
    stack.run(&body).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_lost_and_changed_rows_and_rebuild_restores_them() {
    let mut stack = Stack::start(test_config()).await;
    stack.agent("echo-p", EchoAgent, 4).await;
    for i in 0..3 {
        run(
            &stack,
            json!({"id": format!("t-proj-{i}"), "capability": "echo", "payload": i}),
        )
        .await
        .unwrap();
    }
    // One that ends dead-lettered: no agent has its capability.
    assert!(
        run(&stack, json!({"id": "t-proj-dead", "capability": "nobody"}))
            .await
            .is_err()
    );
    let view = stack.store.get("t-proj-dead").await.unwrap().unwrap();
    assert_eq!(view.status, TaskStatus::DeadLettered);

    let (tasks, differ) = differences(&stack.store).await.unwrap();
    assert_eq!(tasks, 4);
    assert!(differ.is_empty(), "{differ:?}");

    // A lost row and a changed one.
    let pool = stack.world.db.pool();
    sqlx::query("delete from tasks where task_id = 't-proj-1'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("update tasks set attempts = 7 where task_id = 't-proj-2'")
        .execute(pool)
        .await
        .unwrap();
    let (_, differ) = differences(&stack.store).await.unwrap();
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert_eq!(differ["t-proj-1"], "missing from the table");
    assert_eq!(differ["t-proj-2"], "row differs from its events: attempts");

    // The rebuild puts both right.
    assert_eq!(stack.store.rebuild().await.unwrap(), 4);
    let (_, differ) = differences(&stack.store).await.unwrap();
    assert!(differ.is_empty(), "{differ:?}");
    assert_eq!(
        stack.store.get("t-proj-2").await.unwrap().unwrap().attempts,
        1
    );
    stack.stop().await;
}
