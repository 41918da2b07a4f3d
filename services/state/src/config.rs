//! State service settings: document limits, history bound, write batching.

use std::sync::Arc;
use std::time::Duration;

use concord_runtime::{Clock, SystemClock};

/// Command-line / environment settings of the state service.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Largest document value, in bytes of compact JSON.
    #[arg(
        long = "max-document-bytes",
        env = "CONCORD_STATE_MAX_DOCUMENT_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_document_bytes: usize,
    /// History entries kept per key (older ones are trimmed on each change).
    #[arg(
        long = "history-keep",
        env = "CONCORD_STATE_HISTORY_KEEP",
        default_value_t = 100
    )]
    pub history_keep: u64,
    /// Most writes committed in one transaction.
    #[arg(
        long = "write-batch",
        env = "CONCORD_STATE_WRITE_BATCH",
        default_value_t = 200
    )]
    pub write_batch: usize,
    /// Writers committing side by side (each key always goes to the same one).
    #[arg(
        long = "write-shards",
        env = "CONCORD_STATE_WRITE_SHARDS",
        default_value_t = 4
    )]
    pub write_shards: usize,
}

/// Everything the state service needs besides its connections.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub max_document_bytes: usize,
    pub history_keep: u64,
    pub write_batch: usize,
    pub write_shards: usize,
    /// Writes wait at most this long to be committed before the request
    /// is answered UNAVAILABLE (storage trouble).
    pub write_timeout: Duration,
    /// How often lock leases, lock waits and barrier timeouts that ran out
    /// are swept.
    pub sweep_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl StateConfig {
    /// Validates the flags; errors name the flag to fix.
    pub fn from_args(args: &StateArgs) -> anyhow::Result<Self> {
        if args.max_document_bytes == 0 {
            anyhow::bail!("--max-document-bytes must be at least 1");
        }
        if args.history_keep == 0 {
            anyhow::bail!("--history-keep must be at least 1");
        }
        if !(1..=1000).contains(&args.write_batch) {
            anyhow::bail!("--write-batch must be 1..=1000, not {}", args.write_batch);
        }
        if !(1..=16).contains(&args.write_shards) {
            anyhow::bail!("--write-shards must be 1..=16, not {}", args.write_shards);
        }
        Ok(Self {
            max_document_bytes: args.max_document_bytes,
            history_keep: args.history_keep,
            write_batch: args.write_batch,
            write_shards: args.write_shards,
            ..Self::default()
        })
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 1_048_576,
            history_keep: 100,
            write_batch: 200,
            write_shards: 4,
            write_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_millis(100),
            clock: Arc::new(SystemClock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StateArgs {
        StateArgs {
            max_document_bytes: 10,
            history_keep: 5,
            write_batch: 50,
            write_shards: 2,
        }
    }

    #[test]
    fn flags_become_the_config() {
        let config = StateConfig::from_args(&args()).unwrap();
        assert_eq!(
            (
                config.max_document_bytes,
                config.history_keep,
                config.write_batch,
                config.write_shards
            ),
            (10, 5, 50, 2)
        );
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let error = |change: fn(&mut StateArgs)| {
            let mut args = args();
            change(&mut args);
            StateConfig::from_args(&args).unwrap_err().to_string()
        };
        assert!(error(|a| a.max_document_bytes = 0).contains("--max-document-bytes"));
        assert!(error(|a| a.history_keep = 0).contains("--history-keep"));
        assert!(error(|a| a.write_batch = 0).contains("--write-batch"));
        assert!(error(|a| a.write_batch = 1001).contains("--write-batch"));
        assert!(error(|a| a.write_shards = 0).contains("--write-shards"));
        assert!(error(|a| a.write_shards = 17).contains("--write-shards"));
    }
}
