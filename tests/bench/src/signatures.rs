//! The cost of signed heartbeats: ed25519 signing (the agent's side) and
//! verification (the registry's and each dispatcher replica's side) of a
//! heartbeat, next to the raw baseline of the same shape, parsing the
//! heartbeat's JSON, which every heartbeat costs anyway. Single-threaded,
//! in this process; the projection says what N agents heartbeating once a
//! second cost each verifying service.

use std::hint::black_box;
use std::time::{Duration, Instant};

use concord_identity::{AgentKey, Verifier, purpose};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct SignatureArgs {
    /// Agents heartbeating once a second, for the projection.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u64,
    /// Seconds each measurement loop runs.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
}

impl Default for SignatureArgs {
    fn default() -> Self {
        Self {
            agents: 10_000,
            seconds: 3,
        }
    }
}

/// One loop's result.
#[derive(Debug, Serialize)]
pub struct Rate {
    pub name: &'static str,
    pub per_second: f64,
    pub micros_each: f64,
}

#[derive(Debug, Serialize)]
pub struct SignatureReport {
    pub agents: u64,
    pub rates: Vec<Rate>,
    /// Cores one service spends verifying `agents` heartbeats a second.
    pub verify_cores: f64,
    /// The same for parsing them (the baseline).
    pub parse_cores: f64,
    /// Verification cost / parse cost per heartbeat.
    pub verify_over_parse: f64,
}

fn measure(name: &'static str, seconds: u64, mut op: impl FnMut(u64)) -> Rate {
    let window = Duration::from_secs(seconds.max(1));
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            op(done);
            done += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Rate {
        name,
        per_second: done as f64 / elapsed,
        micros_each: elapsed * 1e6 / done as f64,
    }
}

pub fn run(args: &SignatureArgs) -> SignatureReport {
    let key = AgentKey::from_seed([42; 32]);
    let public = key.public_key_base64();
    let payload =
        br#"{"agentId":"agent-00042","inFlight":3,"capacity":8,"health":"HEALTHY","performance":{"latency_ms_p50":12.5}}"#;
    let at = 1_764_720_000_000;
    let signed = key.sign(purpose::HEARTBEAT, "agent-00042", at, payload);
    let verifier = Verifier::default();

    eprintln!("bench: signatures, {} s per loop", args.seconds);
    let parse = measure("parse heartbeat JSON (baseline)", args.seconds, |_| {
        let value: serde_json::Value = serde_json::from_slice(black_box(payload)).expect("json");
        black_box(value);
    });
    let sign = measure("sign a heartbeat (agent)", args.seconds, |n| {
        black_box(key.sign(
            purpose::HEARTBEAT,
            "agent-00042",
            at + n,
            black_box(payload),
        ));
    });
    let verify = measure(
        "verify a heartbeat (registry, dispatcher)",
        args.seconds,
        |_| {
            verifier
                .verify_as(
                    "agent-00042",
                    &public,
                    purpose::HEARTBEAT,
                    black_box(payload),
                    &signed.as_claim(),
                    at,
                )
                .expect("valid");
        },
    );
    let per_second = args.agents as f64;
    let verify_cores = per_second * verify.micros_each / 1e6;
    let parse_cores = per_second * parse.micros_each / 1e6;
    SignatureReport {
        agents: args.agents,
        verify_over_parse: verify.micros_each / parse.micros_each,
        rates: vec![parse, sign, verify],
        verify_cores,
        parse_cores,
    }
}

impl SignatureReport {
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "## Signed heartbeats (ed25519)\n\n| operation | per second, one core | µs each |\n| --- | --- | --- |\n",
        );
        for rate in &self.rates {
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} |\n",
                rate.name, rate.per_second, rate.micros_each
            ));
        }
        out.push_str(&format!(
            "\n{} agents heartbeating once a second: verifying costs each verifying service \
             {:.3} core (parsing the same heartbeats: {:.3} core; verify/parse = {:.1}x).\n",
            self.agents, self.verify_cores, self.parse_cores, self.verify_over_parse
        ));
        out
    }
}
