//! `<root>.state.lock.*`: exclusive and shared locks with leases and
//! fencing tokens ([`crate::lock`] holds the rules, [`crate::lock_table`] the
//! rows).

pub mod acquire;
pub mod check;
pub mod get;
pub mod list;
pub mod release;
pub mod renew;

use concord_bus::ServiceError;
use concord_wire::v1::LockMode;

use crate::lock::Mode;

/// Longest resource name.
const MAX_RESOURCE_CHARS: usize = 256;
/// Longest owner.
const MAX_OWNER_CHARS: usize = 128;
/// Lease when the request names none.
const DEFAULT_TTL_MS: u64 = 30_000;
/// Shortest and longest lease.
const TTL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Longest wait in line.
const MAX_WAIT_MS: u64 = 3_600_000;

/// The request's `resource`, checked: letters, digits and `-_./:`.
pub(crate) fn resource(name: &str) -> Result<String, ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::invalid("resource", "required"));
    }
    let chars = name.chars().count();
    if chars > MAX_RESOURCE_CHARS {
        return Err(concord_bus::validate::too_long(
            "resource",
            MAX_RESOURCE_CHARS,
            chars,
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_./:".contains(*c)))
    {
        return Err(ServiceError::invalid(
            "resource",
            format!("{bad:?} is not allowed: use letters, digits and - _ . / :"),
        ));
    }
    Ok(name.to_string())
}

/// The request's `owner`, checked.
pub(crate) fn owner(owner: &str) -> Result<(), ServiceError> {
    concord_bus::validate::check_token("owner", owner, MAX_OWNER_CHARS)
}

/// The request's `mode` (unset: exclusive).
pub(crate) fn mode(mode: i32) -> Result<Mode, ServiceError> {
    match LockMode::try_from(mode) {
        Ok(LockMode::Unspecified | LockMode::Exclusive) => Ok(Mode::Exclusive),
        Ok(LockMode::Shared) => Ok(Mode::Shared),
        Err(_) => Err(ServiceError::invalid(
            "mode",
            format!("{mode} is not a lock mode (EXCLUSIVE or SHARED)"),
        )),
    }
}

/// The request's `ttlMs` (0: the default; `keep` allows 0 to mean "as
/// before" for renewals).
pub(crate) fn ttl(ttl_ms: u64, keep: bool) -> Result<u64, ServiceError> {
    match ttl_ms {
        0 if keep => Ok(0),
        0 => Ok(DEFAULT_TTL_MS),
        ms if TTL_MS.contains(&ms) => Ok(ms),
        ms => Err(ServiceError::invalid(
            "ttlMs",
            format!(
                "a lease of {ms} ms is outside {}..={} ms",
                TTL_MS.start(),
                TTL_MS.end()
            ),
        )),
    }
}

/// The request's `waitMs`.
pub(crate) fn wait(wait_ms: u64) -> Result<u64, ServiceError> {
    if wait_ms > MAX_WAIT_MS {
        return Err(ServiceError::invalid(
            "waitMs",
            format!("{wait_ms} ms is more than the {MAX_WAIT_MS} ms a request may wait"),
        ));
    }
    Ok(wait_ms)
}

/// The request's `token`, which must be set.
pub(crate) fn token(token: u64) -> Result<u64, ServiceError> {
    if token == 0 {
        return Err(ServiceError::invalid(
            "token",
            "required: the token of the grant",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_checked() {
        assert!(resource("printers/floor-2:a.b_c").is_ok());
        for bad in ["", "has space", "star*", &"r".repeat(257)] {
            assert_eq!(
                resource(bad).unwrap_err().field.as_deref(),
                Some("resource")
            );
        }
    }

    #[test]
    fn leases_and_waits_are_bounded() {
        assert_eq!(ttl(0, false).unwrap(), DEFAULT_TTL_MS);
        assert_eq!(ttl(0, true).unwrap(), 0);
        assert_eq!(ttl(100, false).unwrap(), 100);
        assert!(ttl(99, false).is_err());
        assert!(ttl(3_600_001, false).is_err());
        assert!(wait(3_600_000).is_ok());
        assert_eq!(
            wait(3_600_001).unwrap_err().field.as_deref(),
            Some("waitMs")
        );
        assert_eq!(token(0).unwrap_err().field.as_deref(), Some("token"));
    }

    #[test]
    fn an_unset_mode_is_exclusive_and_an_unknown_one_refused() {
        assert_eq!(mode(0).unwrap(), Mode::Exclusive);
        assert_eq!(mode(2).unwrap(), Mode::Shared);
        assert_eq!(mode(9).unwrap_err().field.as_deref(), Some("mode"));
    }
}
