//! Intake: JetStream deliveries become held tasks (new, resumed, replayed
//! from a dead letter) or are settled at once (invalid, duplicate, finished).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use async_nats::jetstream;
use concord_bus::headers;
use concord_bus::service::header_map;
use concord_store::NewDeadLetter;
use concord_wire::v1::RoutingStrategy;

use super::{Engine, Held};
use crate::lifecycle::{Admission, Arrival, Input, Phase, Task, admission, arrival};
use crate::projection::{TaskEvent, TaskView};
use crate::submission::{self, Origin};
use crate::task_spec::TaskSpec;

/// A valid submission waiting for its stored state.
pub struct Intake {
    spec: TaskSpec,
    message: jetstream::Message,
    replay_of: Option<String>,
    /// When JetStream delivered it.
    received: Instant,
}

/// What the store holds for looked-up ids: task views, and for ids without
/// one the queued cancellations (task id → reason).
pub(super) type Stored = (HashMap<String, TaskView>, HashMap<String, String>);

/// The answer of a lookup: the intakes and what the store holds for them.
pub(super) type Looked = (Vec<Intake>, anyhow::Result<Stored>);

/// Namespace of dead-letter ids derived from a submission's stream position.
const DEAD_LETTER_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x2b1d_7f0e_5c44_4e0a_9a61_0d8e_47c3_b915);

impl Engine {
    pub(super) async fn on_pulled(&mut self, batch: Vec<jetstream::Message>) {
        let mut lookups: Vec<Intake> = Vec::new();
        let now_ms = self.clock.unix_ms();
        let now = self.clock.instant();
        for message in batch {
            let Ok(info) = message.info() else {
                // Not a JetStream delivery (cannot happen on a pull consumer).
                continue;
            };
            let (sequence, delivered) = (info.stream_sequence, info.delivered);
            // Validated as of its publication: a deadline that passed while it
            // waited in the stream (or while a crashed replica held it) makes
            // a dead letter with reason `deadline_exceeded`, not invalid input.
            let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            let header = |name: &str| headers::get(message.headers.as_ref(), name);
            let origin = Origin {
                content_type: header(headers::CONTENT_TYPE),
                msg_id: header("Nats-Msg-Id"),
                stream_identity: &self.stream_identity,
                stream_sequence: sequence,
                now_unix_ms: published_ms.min(now_ms),
            };
            let spec = match submission::parse(&message.payload, &origin, &self.config.limits) {
                Ok(spec) => spec,
                Err(error) => {
                    self.reject(message, sequence, &error).await;
                    continue;
                }
            };
            let replay_of = header(headers::REPLAY_OF).map(str::to_string);
            let held_at = self.tasks.get(&spec.id).map(|held| {
                held.message
                    .info()
                    .map(|info| info.stream_sequence)
                    .unwrap_or(0)
            });
            // An id derived from its own stream position is never known to
            // the store on a first delivery; the known-ids filter answers
            // for the others.
            let from_position =
                header("Nats-Msg-Id").is_none() && spec.id_generated && delivered == 1;
            let known = &self.known;
            let verdict = arrival(held_at, sequence, delivered == 1, from_position, || {
                known.may_be_known(&spec.id)
            });
            let intake = Intake {
                spec,
                message,
                replay_of,
                received: now,
            };
            match verdict {
                Arrival::Redelivered => {
                    let held = self.tasks.get_mut(&intake.spec.id).expect("held");
                    held.message = intake.message;
                    held.extended_at = now;
                }
                Arrival::Duplicate => {
                    self.metrics.duplicates.inc();
                    concord_bus::jetstream::ack(&intake.message).await;
                }
                Arrival::New => {
                    self.metrics.lookups_skipped.inc();
                    self.admit(intake, Admission::New, None).await;
                }
                Arrival::LookUp => {
                    self.metrics.lookups.inc();
                    lookups.push(intake);
                }
            }
        }
        for intake in &lookups {
            self.hold_placeholder(intake);
        }
        self.awaiting_lookup.extend(lookups);
        self.start_lookup();
    }

    /// Looks up everything waiting, in one query, unless a lookup is under
    /// way (its answer starts the next): one query at a time keeps the
    /// submissions in their arrival order and batches them under load.
    pub(super) fn start_lookup(&mut self) {
        if self.lookup_running || self.awaiting_lookup.is_empty() {
            return;
        }
        self.lookup_running = true;
        let lookups = std::mem::take(&mut self.awaiting_lookup);
        let ids: Vec<String> = lookups.iter().map(|i| i.spec.id.clone()).collect();
        let store = self.store.clone();
        let answer = self.looked.0.clone();
        self.background.spawn(async move {
            let result = async {
                let views = store.lookup(&ids).await?;
                let unseen: Vec<String> = ids
                    .into_iter()
                    .filter(|id| !views.contains_key(id))
                    .collect();
                let cancellations = store.queued_cancellations(&unseen).await?;
                Ok((views, cancellations))
            }
            .await;
            let _ = answer.send((lookups, result));
        });
    }

    /// Marks a task id as taken while its lookup runs, so a second delivery
    /// of the same id in the meantime is recognised as a duplicate.
    fn hold_placeholder(&mut self, intake: &Intake) {
        let view = TaskView::submitted(intake.spec.to_task(), 0, self.clock.now());
        let held = self.new_held(
            intake.spec.clone(),
            intake.message.clone(),
            view,
            0,
            intake.received,
        );
        self.tasks.insert(intake.spec.id.clone(), held);
    }

    pub(super) async fn on_looked(&mut self, (intakes, result): Looked) {
        self.lookup_running = false;
        self.start_lookup();
        let stored = match result {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), tasks = intakes.len(), "cannot read task state; submissions will be redelivered");
                for intake in intakes {
                    self.tasks.remove(&intake.spec.id);
                    concord_bus::jetstream::nak(
                        &intake.message,
                        Some(std::time::Duration::from_secs(1)),
                    )
                    .await;
                }
                return;
            }
        };
        let (mut stored, mut cancellations) = stored;
        for mut intake in intakes {
            // Drop the placeholder (keeping its newest delivery); admit()
            // holds the task for real.
            if let Some(placeholder) = self.tasks.remove(&intake.spec.id) {
                intake.message = placeholder.message;
            }
            let view = stored.remove(&intake.spec.id);
            let queued = cancellations.remove(&intake.spec.id);
            match admission(view.as_ref(), intake.replay_of.is_some(), queued) {
                Admission::AlreadyFinal => {
                    let view = view.expect("a final task is stored");
                    self.metrics.duplicates.inc();
                    crate::results::publish(&self.feed, &view.result(), true).await;
                    self.ack_after_result(&intake.message).await;
                }
                Admission::CancelledWhileWaiting { reason } => {
                    let id = intake.spec.id.clone();
                    self.admit(intake, Admission::New, None).await;
                    let (reply, _) = tokio::sync::oneshot::channel();
                    self.cancel(&id, &reason, reply).await;
                }
                admitted @ (Admission::New | Admission::Resume { .. } | Admission::Reopen) => {
                    self.admit(intake, admitted, view).await
                }
            }
        }
    }

    /// Holds a task as `admission` decided: new (`stored` is None), resumed
    /// with its attempts, or reopened with none; then queues it.
    async fn admit(&mut self, intake: Intake, admission: Admission, stored: Option<TaskView>) {
        let Intake {
            spec,
            message,
            replay_of,
            received,
        } = intake;
        let id = spec.id.clone();
        self.known.insert(&id);
        match stored {
            None => {
                // `record` replaces the empty view with the submitted task's.
                let task = spec.to_task();
                let view = TaskView::submitted(Default::default(), 0, self.clock.now());
                let held = self.new_held(spec, message, view, 0, received);
                self.tasks.insert(id.clone(), held);
                self.record(&id, TaskEvent::Submitted { task });
                self.metrics.submitted.inc();
            }
            Some(view) => {
                let attempts_run = match admission {
                    Admission::Resume { attempts_run } => attempts_run,
                    _ => 0,
                };
                let persisted = view.last_sequence;
                let mut held = self.new_held(spec, message, view, attempts_run, received);
                held.persisted = persisted;
                self.tasks.insert(id.clone(), held);
                if admission == Admission::Reopen {
                    let dead_letter_id = replay_of.unwrap_or_default();
                    self.record(&id, TaskEvent::Resubmitted { dead_letter_id });
                } else {
                    self.metrics.resumed.inc();
                }
            }
        }
        self.step(&id, Input::Queue).await;
    }

    /// An invalid submission: dead letter (id derived from the stream
    /// position, so a redelivery updates the same one), an event, an ack.
    async fn reject(
        &mut self,
        message: jetstream::Message,
        sequence: u64,
        error: &concord_bus::ServiceError,
    ) {
        self.metrics.rejected.inc();
        let name = format!("{}:{}", self.stream_identity, sequence);
        let id = uuid::Uuid::new_v5(&DEAD_LETTER_NAMESPACE, name.as_bytes());
        let letter = NewDeadLetter {
            id,
            subject: message.subject.to_string(),
            headers: header_map(message.headers.as_ref()),
            payload: message.payload.to_vec(),
            reason: concord_wire::codes::INVALID_INPUT.to_string(),
            error: error.message.clone(),
            attempts: 1,
            source: self.events.source().to_string(),
            history: serde_json::json!([]),
        };
        tracing::info!(error = %error.message, dead_letter = %id, "invalid task submission dead-lettered");
        let keeper = self.dead_letters.clone();
        let field = error.field.clone();
        let stop = self.background.token();
        self.background.spawn(async move {
            // Acknowledged only once kept: a replica stopped before that
            // leaves it to be delivered again (to the same dead letter).
            if keeper.keep_retrying(&letter, field.as_deref(), &stop).await {
                concord_bus::jetstream::ack(&message).await;
            }
        });
    }
}

impl Engine {
    /// A held task, its stored history `view` (`attempts_run` of its
    /// attempts count against its limit), waiting for its stored state or
    /// its queue.
    fn new_held(
        &self,
        spec: TaskSpec,
        message: jetstream::Message,
        view: TaskView,
        attempts_run: u32,
        received: Instant,
    ) -> Box<Held> {
        let fan_out = matches!(
            self.router.strategy_for(&spec),
            RoutingStrategy::Broadcast | RoutingStrategy::Multicast
        );
        let life = Task::new(&spec, Phase::Looking, view.attempts, attempts_run, fan_out);
        Box::new(Held {
            spec,
            message,
            view,
            persisted: 0,
            pending: Vec::new(),
            writing: false,
            dead_letter: None,
            life,
            extended_at: received,
            waiters: Vec::new(),
            received,
            stage_since: Some(received),
            result_json: None,
        })
    }
}

/// Headers of a message as a map, for dead letters.
pub(super) fn headers_of(message: &jetstream::Message) -> BTreeMap<String, String> {
    header_map(message.headers.as_ref())
}
