//! `concord ping` and `concord services`: who answers on the NATS service API.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use concord_bus::Bus;
use futures::StreamExt;

#[derive(clap::Args)]
pub struct PingArgs {
    /// Keep asking for up to this many seconds until every --expect'ed service answered.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// A service that must answer, e.g. concord-registry (repeatable).
    #[arg(long = "expect")]
    expect: Vec<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ServicesArgs {
    /// Print the raw `$SRV.INFO` replies as JSON lines.
    #[arg(long)]
    json: bool,
}

/// Sends `subject` and gathers every reply until none came for a short while.
async fn gather(bus: &Bus, subject: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let inbox = bus.client.new_inbox();
    let mut replies = bus.client.subscribe(inbox.clone()).await?;
    bus.client
        .publish_with_reply(subject.to_string(), inbox, bytes::Bytes::new())
        .await?;
    bus.client.flush().await?;
    let mut out = Vec::new();
    let mut quiet = Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout(quiet, replies.next()).await {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
            out.push(value);
        }
        quiet = Duration::from_millis(150);
    }
    Ok(out)
}

fn is_concord(reply: &serde_json::Value) -> bool {
    reply["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("concord-"))
}

pub async fn ping(bus: &Bus, args: PingArgs) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        let replies: Vec<_> = gather(bus, "$SRV.PING")
            .await?
            .into_iter()
            .filter(is_concord)
            .collect();
        let missing: Vec<&String> = args
            .expect
            .iter()
            .filter(|name| !replies.iter().any(|r| r["name"] == name.as_str()))
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            let mut by_name: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
            for reply in &replies {
                by_name
                    .entry(reply["name"].as_str().unwrap_or("?").to_string())
                    .or_default()
                    .push(reply);
            }
            for (name, instances) in &by_name {
                for instance in instances {
                    if args.json {
                        println!("{instance}");
                    } else {
                        println!(
                            "{name:<22} {:<8} {}",
                            instance["version"].as_str().unwrap_or("?"),
                            instance["id"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                eprintln!("concord: not answering $SRV.PING: {}", names.join(", "));
                return Ok(ExitCode::FAILURE);
            }
            if by_name.is_empty() && !args.json {
                eprintln!("concord: no Concord service answered $SRV.PING");
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn services(bus: &Bus, args: ServicesArgs) -> anyhow::Result<ExitCode> {
    let mut replies: Vec<_> = gather(bus, "$SRV.INFO")
        .await?
        .into_iter()
        .filter(is_concord)
        .collect();
    replies.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    for reply in &replies {
        if args.json {
            println!("{reply}");
            continue;
        }
        println!(
            "{} {} ({})",
            reply["name"].as_str().unwrap_or("?"),
            reply["version"].as_str().unwrap_or("?"),
            reply["description"].as_str().unwrap_or("")
        );
        for endpoint in reply["endpoints"].as_array().into_iter().flatten() {
            println!(
                "    {:<16} {}",
                endpoint["name"].as_str().unwrap_or("?"),
                endpoint["subject"].as_str().unwrap_or("?")
            );
        }
    }
    if replies.is_empty() {
        eprintln!("concord: no Concord service answered $SRV.INFO");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
