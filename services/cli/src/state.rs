//! `concord state`: shared documents through the state service's subjects
//! (`<root>.state.*`, docs/PROTOCOL.md "State").

use std::process::ExitCode;
use std::time::Duration;

use concord_bus::{Bus, ServiceError};
use concord_wire::json::{from_wire_value, to_wire_value};
use concord_wire::v1::{
    CreateDocument, DeleteDocument, Document, DocumentChange, ErrorCode, Fence, GetDocument,
    GetHistory, GetSnapshot, HistoryReply, ListDocuments, ListDocumentsReply, ListSnapshots,
    ListSnapshotsReply, PatchDocument, PutDocument, RestoreReply, RestoreSnapshot, Snapshot,
    TakeSnapshot,
};
use concord_wire::{ContentType, WireMessage};
use futures::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Print a document (key, value, version, last writer and time) as JSON.
    Get { key: String },
    /// Create a document; fails with ALREADY_EXISTS if the key holds one.
    Create {
        key: String,
        /// The value, as JSON (`'{"title":"Q4"}'`, `'"text"'`, `3`).
        value: String,
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// Replace a document's value (creates it when absent and no --expect).
    Put {
        key: String,
        /// The value, as JSON.
        value: String,
        /// Only if the document is at this version (0: must not exist);
        /// CONFLICT otherwise, with the current document on stderr.
        #[arg(long)]
        expect: Option<u64>,
        #[arg(long, default_value = "")]
        actor: String,
        /// Fence the write with a lock token, `RESOURCE:TOKEN`: refused
        /// when a newer token of that lock has been granted.
        #[arg(long, value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Apply a JSON merge patch (RFC 7386): `'{"owner":"b","draft":null}'`.
    Patch {
        key: String,
        /// The patch, a JSON object.
        patch: String,
        #[arg(long)]
        expect: Option<u64>,
        #[arg(long, default_value = "")]
        actor: String,
        /// Fence the write with a lock token, `RESOURCE:TOKEN`: refused
        /// when a newer token of that lock has been granted.
        #[arg(long, value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Delete a document (a tombstone keeps its version).
    Delete {
        key: String,
        #[arg(long)]
        expect: Option<u64>,
        #[arg(long, default_value = "")]
        actor: String,
        /// Fence the write with a lock token, `RESOURCE:TOKEN`: refused
        /// when a newer token of that lock has been granted.
        #[arg(long, value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// List live documents under a prefix (`team/`, `team/plans/q`).
    List {
        prefix: String,
        /// Most documents to show (all pages are read up to this many).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON document per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a document's kept changes, oldest first.
    History {
        key: String,
        /// Only changes after this version.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// One JSON change per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's (or, ending in `/`, a prefix's) current value, then
    /// every change as it is committed, one JSON line each, until Ctrl-C.
    Watch { key_or_prefix: String },
    /// Workflow stage records: stages in order, scores, iterations.
    #[command(subcommand)]
    Workflow(crate::stages::WorkflowCommand),
    /// Take, show and list snapshots of a namespace.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Bring a namespace back to a snapshot (one transaction; each document
    /// that differs gets a new version, those it does not hold are deleted).
    Restore {
        /// The snapshot's id.
        id: String,
        #[arg(long, default_value = "")]
        actor: String,
        /// One JSON reply instead of a table of the changes.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot every live document of a namespace; print its id.
    Take {
        namespace: String,
        #[arg(long, default_value = "")]
        actor: String,
        /// Print the snapshot as JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Print a snapshot with every document's key and version (and value
    /// with --values), as JSON.
    Show {
        id: String,
        #[arg(long)]
        values: bool,
    },
    /// List a namespace's snapshots, newest first.
    List {
        namespace: String,
        /// One JSON snapshot per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `RESOURCE:TOKEN` (the resource may itself hold `:`).
fn parse_fence(text: &str) -> Result<Fence, String> {
    let (resource, token) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not RESOURCE:TOKEN"))?;
    let token = token
        .parse()
        .map_err(|_| format!("{token:?} is not a token number"))?;
    Ok(Fence {
        resource: resource.to_string(),
        token,
    })
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{what} is not valid JSON: {e}"))
}

async fn call<Q: WireMessage, R: WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
) -> Result<R, ServiceError> {
    request(bus, name, message, TIMEOUT).await
}

/// A request to the state service's endpoint `name` (`put`, `lock.acquire`,
/// `barrier.arrive` ...), answered within `timeout`.
pub(crate) async fn request<Q: WireMessage, R: WireMessage>(
    bus: &Bus,
    name: &str,
    message: &Q,
    timeout: Duration,
) -> Result<R, ServiceError> {
    bus.request(bus.subjects.endpoint("state", name), message, timeout)
        .await
}

/// A request the state service refused, as an error. A refusal that
/// carries the current `what` (a conflict, an existing one) shows it on
/// stderr; no state service at all says so.
pub(crate) fn refused(what: &str, error: ServiceError) -> anyhow::Error {
    if let Some(details) = &error.details {
        eprintln!("current {what}: {details}");
    }
    let unreachable =
        error.code == ErrorCode::Unavailable && error.message.contains("no responders");
    let error = crate::tasks::failed(error);
    if unreachable {
        error.context("is concord-state running?")
    } else {
        error
    }
}

fn failed(error: ServiceError) -> anyhow::Error {
    refused("document", error)
}

pub async fn run(bus: &Bus, command: StateCommand) -> anyhow::Result<ExitCode> {
    let document: Document = match command {
        StateCommand::Get { key } => call(bus, "get", &GetDocument { key })
            .await
            .map_err(failed)?,
        StateCommand::Create { key, value, actor } => {
            let value = Some(to_wire_value(parse_json("the value", &value)?));
            call(bus, "create", &CreateDocument { key, value, actor })
                .await
                .map_err(failed)?
        }
        StateCommand::Put {
            key,
            value,
            expect,
            actor,
            fence,
        } => {
            let value = Some(to_wire_value(parse_json("the value", &value)?));
            let message = PutDocument {
                key,
                value,
                expected_version: expect,
                actor,
                fence,
            };
            call(bus, "put", &message).await.map_err(failed)?
        }
        StateCommand::Patch {
            key,
            patch,
            expect,
            actor,
            fence,
        } => {
            let patch = Some(to_wire_value(parse_json("the patch", &patch)?));
            let message = PatchDocument {
                key,
                patch,
                expected_version: expect,
                actor,
                fence,
            };
            call(bus, "patch", &message).await.map_err(failed)?
        }
        StateCommand::Delete {
            key,
            expect,
            actor,
            fence,
        } => {
            let message = DeleteDocument {
                key,
                expected_version: expect,
                actor,
                fence,
            };
            call(bus, "delete", &message).await.map_err(failed)?
        }
        StateCommand::List {
            prefix,
            limit,
            json,
        } => return list(bus, prefix, limit, json).await,
        StateCommand::History { key, since, json } => return history(bus, key, since, json).await,
        StateCommand::Watch { key_or_prefix } => return watch(bus, &key_or_prefix).await,
        StateCommand::Snapshot(command) => return snapshot(bus, command).await,
        StateCommand::Workflow(command) => return crate::stages::run(bus, command).await,
        StateCommand::Restore { id, actor, json } => return restore(bus, id, actor, json).await,
    };
    println!("{}", crate::json::pretty(&document)?);
    Ok(ExitCode::SUCCESS)
}

fn value_text(value: Option<&concord_wire::pbjson_types::Value>) -> String {
    let text = value
        .map(|v| from_wire_value(v).to_string())
        .unwrap_or_default();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

fn time_text(at: Option<&concord_wire::pbjson_types::Timestamp>) -> String {
    at.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

async fn list(bus: &Bus, prefix: String, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let mut documents = Vec::new();
    let mut after = String::new();
    while documents.len() < limit {
        let page = (limit - documents.len()).min(1000) as u32;
        let message = ListDocuments {
            prefix: prefix.clone(),
            limit: page,
            after,
        };
        let reply: ListDocumentsReply = call(bus, "list", &message).await.map_err(failed)?;
        documents.extend(reply.documents);
        if reply.next.is_empty() {
            break;
        }
        after = reply.next;
    }
    if json {
        for document in &documents {
            println!("{}", crate::json::compact(document)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>8}  {:<16} {:<23}  VALUE",
        "KEY", "VERSION", "UPDATED BY", "UPDATED AT"
    );
    for d in &documents {
        println!(
            "{:<40} {:>8}  {:<16} {:<23}  {}",
            d.key,
            d.version,
            d.updated_by,
            time_text(d.updated_at.as_ref()),
            value_text(d.value.as_ref())
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(bus: &Bus, key: String, since: u64, json: bool) -> anyhow::Result<ExitCode> {
    let mut changes: Vec<DocumentChange> = Vec::new();
    let mut from = since;
    loop {
        let message = GetHistory {
            key: key.clone(),
            since_version: from,
            limit: 1000,
        };
        let reply: HistoryReply = call(bus, "history", &message).await.map_err(failed)?;
        let more = reply.more;
        from = reply.changes.last().map_or(from, |c| c.version);
        changes.extend(reply.changes);
        if !more {
            break;
        }
    }
    if json {
        for change in &changes {
            println!("{}", crate::json::compact(change)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:<8} {:<16} {:<23}  VALUE / PATCH",
        "VERSION", "KIND", "ACTOR", "AT"
    );
    for c in &changes {
        let shown = if c.kind == "patched" {
            c.patch.as_ref()
        } else {
            c.value.as_ref()
        };
        println!(
            "{:>8}  {:<8} {:<16} {:<23}  {}",
            c.version,
            c.kind,
            c.actor,
            time_text(c.at.as_ref()),
            value_text(shown)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Subscribes, then reads, then prints changes newer than what was read:
/// no change is missed between the read and the subscription.
async fn watch(bus: &Bus, target: &str) -> anyhow::Result<ExitCode> {
    let prefix = target.ends_with('/');
    let tail = target.trim_end_matches('/').replace('/', ".");
    let subject = if prefix {
        bus.subjects.join(&format!("state.changed.{tail}.>"))
    } else {
        bus.subjects.join(&format!("state.changed.{tail}"))
    };
    let mut changes = bus.client.subscribe(subject).await?;
    bus.client.flush().await?;
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    if prefix {
        let message = ListDocuments {
            prefix: target.to_string(),
            limit: 1000,
            after: String::new(),
        };
        let reply: ListDocumentsReply = call(bus, "list", &message).await.map_err(failed)?;
        for document in reply.documents {
            seen.insert(document.key.clone(), document.version);
            println!("{}", crate::json::compact(&document)?);
        }
    } else {
        match call::<_, Document>(
            bus,
            "get",
            &GetDocument {
                key: target.to_string(),
            },
        )
        .await
        {
            Ok(document) => {
                seen.insert(document.key.clone(), document.version);
                println!("{}", crate::json::compact(&document)?);
            }
            Err(error) if error.code == ErrorCode::NotFound => eprintln!("note: {}", error.message),
            Err(error) => return Err(failed(error)),
        }
    }
    while let Some(message) = changes.next().await {
        let change: DocumentChange = match concord_wire::decode(ContentType::Json, &message.payload)
        {
            Ok(change) => change,
            Err(error) => {
                eprintln!("note: unreadable change on {}: {error}", message.subject);
                continue;
            }
        };
        let last = seen.get(&change.key).copied().unwrap_or(0);
        if change.version <= last {
            continue;
        }
        if last > 0 && change.version > last + 1 {
            eprintln!(
                "note: {} jumped from version {last} to {} (missed changes: `concord state history {} --since {last}`)",
                change.key, change.version, change.key
            );
        }
        seen.insert(change.key.clone(), change.version);
        println!("{}", crate::json::compact(&change)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot(bus: &Bus, command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Take {
            namespace,
            actor,
            json,
        } => {
            let taken: Snapshot = call(bus, "snapshot.take", &TakeSnapshot { namespace, actor })
                .await
                .map_err(failed)?;
            if json {
                println!("{}", crate::json::pretty(&taken)?);
            } else {
                println!("{}", taken.id);
                eprintln!("{} documents of {}", taken.count, taken.namespace);
            }
        }
        SnapshotCommand::Show { id, values } => {
            // Every page, gathered into one snapshot.
            let mut whole: Option<Snapshot> = None;
            let mut after = String::new();
            loop {
                let message = GetSnapshot {
                    id: id.clone(),
                    values,
                    limit: 1000,
                    after,
                };
                let page: Snapshot = call(bus, "snapshot.get", &message).await.map_err(failed)?;
                after = page.next.clone();
                match &mut whole {
                    None => whole = Some(page),
                    Some(whole) => whole.documents.extend(page.documents),
                }
                if after.is_empty() {
                    break;
                }
            }
            let mut whole = whole.expect("one page at least");
            whole.next.clear();
            println!("{}", crate::json::pretty(&whole)?);
        }
        SnapshotCommand::List { namespace, json } => {
            let mut snapshots = Vec::new();
            let mut after = String::new();
            loop {
                let message = ListSnapshots {
                    namespace: namespace.clone(),
                    limit: 1000,
                    after,
                };
                let reply: ListSnapshotsReply =
                    call(bus, "snapshot.list", &message).await.map_err(failed)?;
                snapshots.extend(reply.snapshots);
                if reply.next.is_empty() {
                    break;
                }
                after = reply.next;
            }
            if json {
                for snapshot in &snapshots {
                    println!("{}", crate::json::compact(snapshot)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<23}  {:>9}  ACTOR",
                "ID", "TAKEN AT", "DOCUMENTS"
            );
            for s in &snapshots {
                println!(
                    "{:<36}  {:<23}  {:>9}  {}",
                    s.id,
                    time_text(s.taken_at.as_ref()),
                    s.count,
                    s.actor
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(bus: &Bus, id: String, actor: String, json: bool) -> anyhow::Result<ExitCode> {
    let reply: RestoreReply = call(bus, "snapshot.restore", &RestoreSnapshot { id, actor })
        .await
        .map_err(failed)?;
    if json {
        println!("{}", crate::json::pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} {:>8}  KIND", "KEY", "VERSION");
    for c in &reply.changes {
        println!("{:<40} {:>8}  {}", c.key, c.version, c.kind);
    }
    eprintln!(
        "{}: {} changed, {} already as in the snapshot",
        reply.namespace,
        reply.changes.len(),
        reply.unchanged
    );
    Ok(ExitCode::SUCCESS)
}
