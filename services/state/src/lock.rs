//! The rules of one resource's lock, without I/O: exclusive and shared
//! holders with leases, a FIFO queue of waiters, and fencing tokens that
//! only grow.
//!
//! - An exclusive grant needs no holder and nobody waiting ahead; a shared
//!   grant needs no exclusive holder and nobody waiting ahead. So a shared
//!   request behind a waiting exclusive one waits: writers are not starved.
//! - Every grant takes the next token of the resource; [`Lock::fence`]
//!   refuses a token older than the newest granted, so a holder whose lease
//!   ran out cannot write after its successor started.
//! - Times are milliseconds on the caller's clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Exclusive,
    Shared,
}

/// A grant in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub owner: String,
    pub mode: Mode,
    pub token: u64,
    pub granted_ms: u64,
    pub expires_ms: u64,
    pub ttl_ms: u64,
}

/// A request waiting in line. `reply` is opaque here (the shell keeps where
/// to send the grant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    pub owner: String,
    pub mode: Mode,
    pub ttl_ms: u64,
    pub queued_ms: u64,
    /// Gives up waiting then.
    pub give_up_ms: u64,
    pub reply: String,
}

/// An acquire request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    pub owner: String,
    pub mode: Mode,
    pub ttl_ms: u64,
    /// How long it may wait in line (0: grant now or refuse).
    pub wait_ms: u64,
    pub reply: String,
}

/// One resource's lock. Empty (no holder, nobody waiting) is the same as
/// never locked, except for the last token, which is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lock {
    pub last_token: u64,
    pub holders: Vec<Holder>,
    pub waiters: VecDeque<Waiter>,
}

/// What an acquire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Granted now (or already held by this owner in this mode: the same
    /// grant, for a retried request).
    Granted(Holder),
    /// Waiting at this position (1: next).
    Queued { position: usize },
    /// Not grantable now and the request would not wait.
    Busy,
}

/// Why a lock request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// Renew or release by someone who does not hold it with that token.
    NotHolder { owner: String, token: u64 },
    /// The owner holds it in the other mode (no upgrades or downgrades).
    HeldInOtherMode { mode: Mode },
    /// The owner waits for it in the other mode.
    WaitingInOtherMode { mode: Mode },
}

/// What a release, an expiry or a lost owner changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Grants that ended (released, expired, owner lost).
    pub ended: Vec<Holder>,
    /// Waiters that gave up (their wait ran out, or their owner was lost).
    pub gave_up: Vec<Waiter>,
    /// Waiters granted as a result, with their grant.
    pub granted: Vec<(Waiter, Holder)>,
}

/// What a fencing token is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Held now by this grant.
    Held(Holder),
    /// Not held any more, and no newer token was granted.
    Released,
    /// A newer token was granted since.
    Superseded { latest: u64 },
    /// Never granted.
    Unknown { latest: u64 },
}

impl Lock {
    /// Nobody holds it and nobody waits (the row may go).
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Acquires for `request` at `now`.
    pub fn acquire(&mut self, request: Acquire, now: u64) -> Result<Acquired, LockError> {
        if let Some(held) = self.holders.iter().find(|h| h.owner == request.owner) {
            return if held.mode == request.mode {
                Ok(Acquired::Granted(held.clone()))
            } else {
                Err(LockError::HeldInOtherMode { mode: held.mode })
            };
        }
        if let Some(index) = self.waiters.iter().position(|w| w.owner == request.owner) {
            let waiting = &mut self.waiters[index];
            if waiting.mode != request.mode {
                return Err(LockError::WaitingInOtherMode { mode: waiting.mode });
            }
            // A retried request: it waits where it was, answered on the
            // newest reply.
            waiting.reply = request.reply;
            return Ok(Acquired::Queued {
                position: index + 1,
            });
        }
        if self.waiters.is_empty() && self.compatible(request.mode) {
            let holder = self.grant(&request.owner, request.mode, request.ttl_ms, now);
            return Ok(Acquired::Granted(holder));
        }
        if request.wait_ms == 0 {
            return Ok(Acquired::Busy);
        }
        self.waiters.push_back(Waiter {
            owner: request.owner,
            mode: request.mode,
            ttl_ms: request.ttl_ms,
            queued_ms: now,
            give_up_ms: now.saturating_add(request.wait_ms),
            reply: request.reply,
        });
        Ok(Acquired::Queued {
            position: self.waiters.len(),
        })
    }

    /// Extends `owner`'s grant `token` by its `ttl_ms` from `now`.
    pub fn renew(
        &mut self,
        owner: &str,
        token: u64,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Holder, LockError> {
        let holder = self
            .holders
            .iter_mut()
            .find(|h| h.owner == owner && h.token == token)
            .ok_or_else(|| LockError::NotHolder {
                owner: owner.to_string(),
                token,
            })?;
        holder.ttl_ms = ttl_ms;
        holder.expires_ms = now.saturating_add(ttl_ms);
        Ok(holder.clone())
    }

    /// Ends `owner`'s grant `token` and grants whoever is next.
    pub fn release(&mut self, owner: &str, token: u64, now: u64) -> Result<Changed, LockError> {
        let index = self
            .holders
            .iter()
            .position(|h| h.owner == owner && h.token == token)
            .ok_or_else(|| LockError::NotHolder {
                owner: owner.to_string(),
                token,
            })?;
        let mut changed = Changed {
            ended: vec![self.holders.remove(index)],
            ..Changed::default()
        };
        changed.granted = self.grant_waiting(now);
        Ok(changed)
    }

    /// Ends the grants whose lease ran out and the waits that ran out by
    /// `now`, then grants whoever is next.
    pub fn expire(&mut self, now: u64) -> Changed {
        self.remove_where(now, |h| h.expires_ms <= now, |w| w.give_up_ms <= now)
    }

    /// Ends everything `owner` holds or waits for (its agent is gone).
    pub fn owner_lost(&mut self, owner: &str, now: u64) -> Changed {
        self.remove_where(now, |h| h.owner == owner, |w| w.owner == owner)
    }

    /// What `token` is worth now.
    pub fn check(&self, token: u64) -> TokenCheck {
        if let Some(holder) = self.holders.iter().find(|h| h.token == token) {
            return TokenCheck::Held(holder.clone());
        }
        if token == 0 || token > self.last_token {
            return TokenCheck::Unknown {
                latest: self.last_token,
            };
        }
        if token < self.last_token {
            return TokenCheck::Superseded {
                latest: self.last_token,
            };
        }
        TokenCheck::Released
    }

    /// Whether a write fenced by `token` may go: refused when a newer token
    /// has been granted (or the token was never granted).
    pub fn fence(&self, token: u64) -> Result<(), TokenCheck> {
        match self.check(token) {
            TokenCheck::Held(_) | TokenCheck::Released => Ok(()),
            refused => Err(refused),
        }
    }

    /// When something next expires (a lease or a wait), if anything can.
    pub fn next_deadline(&self) -> Option<u64> {
        let leases = self.holders.iter().map(|h| h.expires_ms);
        let waits = self.waiters.iter().map(|w| w.give_up_ms);
        leases.chain(waits).min()
    }

    fn compatible(&self, mode: Mode) -> bool {
        match mode {
            Mode::Exclusive => self.holders.is_empty(),
            Mode::Shared => self.holders.iter().all(|h| h.mode == Mode::Shared),
        }
    }

    fn grant(&mut self, owner: &str, mode: Mode, ttl_ms: u64, now: u64) -> Holder {
        self.last_token += 1;
        let holder = Holder {
            owner: owner.to_string(),
            mode,
            token: self.last_token,
            granted_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
            ttl_ms,
        };
        self.holders.push(holder.clone());
        holder
    }

    /// Grants waiters from the front while they fit: one exclusive alone,
    /// or every shared one up to the next exclusive.
    fn grant_waiting(&mut self, now: u64) -> Vec<(Waiter, Holder)> {
        let mut granted = Vec::new();
        while let Some(next) = self.waiters.front() {
            if !self.compatible(next.mode) {
                break;
            }
            let waiter = self.waiters.pop_front().expect("peeked");
            let holder = self.grant(&waiter.owner, waiter.mode, waiter.ttl_ms, now);
            granted.push((waiter, holder));
        }
        granted
    }

    fn remove_where(
        &mut self,
        now: u64,
        holder_ends: impl Fn(&Holder) -> bool,
        waiter_gives_up: impl Fn(&Waiter) -> bool,
    ) -> Changed {
        let (ended, kept): (Vec<Holder>, Vec<Holder>) = std::mem::take(&mut self.holders)
            .into_iter()
            .partition(|h| holder_ends(h));
        self.holders = kept;
        let (gave_up, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| waiter_gives_up(w));
        self.waiters = waiting.into();
        let granted = self.grant_waiting(now);
        Changed {
            ended,
            gave_up,
            granted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 10_000;

    fn request(owner: &str, mode: Mode, wait_ms: u64) -> Acquire {
        Acquire {
            owner: owner.into(),
            mode,
            ttl_ms: TTL,
            wait_ms,
            reply: format!("reply.{owner}"),
        }
    }

    fn granted(lock: &mut Lock, owner: &str, mode: Mode, now: u64) -> Holder {
        match lock.acquire(request(owner, mode, 0), now).unwrap() {
            Acquired::Granted(holder) => holder,
            other => panic!("{owner} not granted: {other:?}"),
        }
    }

    fn owners(granted: &[(Waiter, Holder)]) -> Vec<&str> {
        granted.iter().map(|(w, _)| w.owner.as_str()).collect()
    }

    use Mode::{Exclusive, Shared};

    #[test]
    fn an_exclusive_grant_excludes_everyone_else() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Exclusive, 0);
        assert_eq!((a.token, a.expires_ms), (1, TTL));
        assert_eq!(
            lock.acquire(request("b", Exclusive, 0), 1),
            Ok(Acquired::Busy)
        );
        assert_eq!(lock.acquire(request("c", Shared, 0), 1), Ok(Acquired::Busy));
    }

    #[test]
    fn shared_grants_go_together_and_exclude_an_exclusive_one() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Shared, 0);
        let b = granted(&mut lock, "b", Shared, 0);
        assert_eq!((a.token, b.token), (1, 2), "each grant its own token");
        assert_eq!(
            lock.acquire(request("c", Exclusive, 0), 1),
            Ok(Acquired::Busy)
        );
    }

    #[test]
    fn a_retried_acquire_gets_the_same_grant_or_place() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Exclusive, 0);
        assert_eq!(granted(&mut lock, "a", Exclusive, 5), a);
        assert_eq!(lock.last_token, 1);
        assert_eq!(
            lock.acquire(request("b", Exclusive, 1_000), 1),
            Ok(Acquired::Queued { position: 1 })
        );
        let mut again = request("b", Exclusive, 1_000);
        again.reply = "reply.b.2".into();
        assert_eq!(lock.acquire(again, 2), Ok(Acquired::Queued { position: 1 }));
        assert_eq!(lock.waiters.len(), 1);
        assert_eq!(
            lock.waiters[0].reply, "reply.b.2",
            "answered on the newest reply"
        );
    }

    #[test]
    fn no_upgrade_or_downgrade_in_place() {
        let mut lock = Lock::default();
        granted(&mut lock, "a", Shared, 0);
        assert_eq!(
            lock.acquire(request("a", Exclusive, 0), 1),
            Err(LockError::HeldInOtherMode { mode: Shared })
        );
        granted(&mut lock, "x", Shared, 0);
        let mut lock2 = Lock::default();
        granted(&mut lock2, "a", Exclusive, 0);
        lock2.acquire(request("b", Shared, 100), 0).unwrap();
        assert_eq!(
            lock2.acquire(request("b", Exclusive, 100), 0),
            Err(LockError::WaitingInOtherMode { mode: Shared })
        );
    }

    #[test]
    fn a_shared_request_behind_a_waiting_exclusive_one_waits() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Shared, 0);
        assert_eq!(
            lock.acquire(request("w", Exclusive, 5_000), 1),
            Ok(Acquired::Queued { position: 1 })
        );
        // Compatible with the shared holder, but the writer is first.
        assert_eq!(
            lock.acquire(request("r", Shared, 5_000), 2),
            Ok(Acquired::Queued { position: 2 })
        );
        assert_eq!(
            lock.acquire(request("r2", Shared, 0), 2),
            Ok(Acquired::Busy)
        );
        let changed = lock.release("a", a.token, 3).unwrap();
        assert_eq!(owners(&changed.granted), ["w"], "the writer alone");
        let w = &changed.granted[0].1;
        assert_eq!((w.token, w.mode, w.expires_ms), (2, Exclusive, 3 + TTL));
        let changed = lock.release("w", w.token, 4).unwrap();
        assert_eq!(owners(&changed.granted), ["r"]);
    }

    #[test]
    fn a_release_grants_every_shared_waiter_up_to_the_next_exclusive() {
        let mut lock = Lock::default();
        let x = granted(&mut lock, "x", Exclusive, 0);
        for (owner, mode) in [
            ("r1", Shared),
            ("r2", Shared),
            ("w", Exclusive),
            ("r3", Shared),
        ] {
            lock.acquire(request(owner, mode, 60_000), 1).unwrap();
        }
        let changed = lock.release("x", x.token, 2).unwrap();
        assert_eq!(owners(&changed.granted), ["r1", "r2"]);
        assert_eq!(changed.ended, [x]);
        let tokens: Vec<u64> = changed.granted.iter().map(|(_, h)| h.token).collect();
        assert_eq!(tokens, [2, 3]);
        assert_eq!(lock.waiters.len(), 2);
    }

    #[test]
    fn release_and_renew_need_the_holder_and_its_token() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Exclusive, 0);
        let not_holder = |owner: &str, token| LockError::NotHolder {
            owner: owner.into(),
            token,
        };
        assert_eq!(lock.release("b", a.token, 1), Err(not_holder("b", 1)));
        assert_eq!(lock.release("a", 7, 1), Err(not_holder("a", 7)));
        assert_eq!(lock.renew("b", a.token, TTL, 1), Err(not_holder("b", 1)));
        let renewed = lock.renew("a", a.token, 30_000, 5_000).unwrap();
        assert_eq!(renewed.expires_ms, 35_000);
        assert!(lock.release("a", a.token, 6).is_ok());
        assert_eq!(
            lock.release("a", a.token, 6),
            Err(not_holder("a", 1)),
            "once"
        );
        assert!(lock.is_idle());
    }

    #[test]
    fn an_expired_lease_frees_the_lock_for_the_next_waiter() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Exclusive, 0);
        lock.acquire(request("b", Exclusive, 60_000), 1).unwrap();
        assert_eq!(lock.next_deadline(), Some(TTL));
        assert_eq!(lock.expire(TTL - 1), Changed::default(), "not yet");
        let changed = lock.expire(TTL);
        assert_eq!(changed.ended, [a]);
        assert_eq!(owners(&changed.granted), ["b"]);
        assert!(changed.gave_up.is_empty());
    }

    #[test]
    fn a_waiter_whose_wait_ran_out_gives_up_without_a_grant() {
        let mut lock = Lock::default();
        granted(&mut lock, "a", Exclusive, 0);
        lock.acquire(request("b", Exclusive, 500), 0).unwrap();
        lock.acquire(request("c", Shared, 5_000), 0).unwrap();
        assert_eq!(lock.next_deadline(), Some(500));
        let changed = lock.expire(500);
        assert_eq!(changed.gave_up.len(), 1);
        assert_eq!(changed.gave_up[0].owner, "b");
        assert!(changed.granted.is_empty(), "a still holds it");
        assert_eq!(lock.waiters.len(), 1);
    }

    #[test]
    fn a_lost_owner_frees_what_it_held_and_leaves_the_queue() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Shared, 0);
        granted(&mut lock, "b", Shared, 0);
        lock.acquire(request("w", Exclusive, 60_000), 0).unwrap();
        let changed = lock.owner_lost("a", 10);
        assert_eq!(changed.ended, [a]);
        assert!(changed.granted.is_empty(), "b still holds it shared");
        let changed = lock.owner_lost("w", 11);
        assert_eq!(changed.gave_up.len(), 1);
        assert!(lock.waiters.is_empty());
    }

    #[test]
    fn tokens_only_grow_and_fence_out_an_old_holder() {
        let mut lock = Lock::default();
        let a = granted(&mut lock, "a", Exclusive, 0);
        assert_eq!(lock.check(a.token), TokenCheck::Held(a.clone()));
        assert_eq!(lock.fence(a.token), Ok(()));
        // a's lease runs out; b takes over.
        lock.expire(TTL);
        assert_eq!(lock.check(a.token), TokenCheck::Released);
        assert_eq!(lock.fence(a.token), Ok(()), "nobody newer yet");
        let b = granted(&mut lock, "b", Exclusive, TTL + 1);
        assert_eq!(b.token, 2);
        assert_eq!(
            lock.fence(a.token),
            Err(TokenCheck::Superseded { latest: 2 })
        );
        assert_eq!(lock.fence(b.token), Ok(()));
        assert_eq!(lock.check(9), TokenCheck::Unknown { latest: 2 });
        assert_eq!(lock.check(0), TokenCheck::Unknown { latest: 2 });
        // Released and idle, the token count is kept.
        lock.release("b", b.token, TTL + 2).unwrap();
        assert!(lock.is_idle());
        assert_eq!(granted(&mut lock, "c", Exclusive, TTL + 3).token, 3);
    }

    /// Whatever happens, there is never more than one exclusive holder, never
    /// an exclusive holder next to a shared one, and tokens of holders are
    /// distinct: a deterministic walk through many mixed operations.
    #[test]
    fn exclusivity_holds_through_any_sequence() {
        let owners = ["a", "b", "c", "d", "e"];
        let mut lock = Lock::default();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = 0;
        let mut last_token = 0;
        for _ in 0..5_000 {
            now += next(3_000);
            let owner = owners[next(owners.len() as u64) as usize];
            let mode = if next(2) == 0 { Exclusive } else { Shared };
            match next(5) {
                0 | 1 => {
                    let _ = lock.acquire(
                        Acquire {
                            owner: owner.into(),
                            mode,
                            ttl_ms: 1 + next(TTL),
                            wait_ms: next(20_000),
                            reply: String::new(),
                        },
                        now,
                    );
                }
                2 => {
                    if let Some(h) = lock.holders.iter().find(|h| h.owner == owner).cloned() {
                        lock.release(owner, h.token, now).unwrap();
                    }
                }
                3 => {
                    lock.expire(now);
                }
                _ => {
                    lock.owner_lost(owner, now);
                }
            }
            let exclusive = lock.holders.iter().filter(|h| h.mode == Exclusive).count();
            assert!(exclusive <= 1);
            assert!(
                exclusive == 0 || lock.holders.len() == 1,
                "{:?}",
                lock.holders
            );
            let mut tokens: Vec<u64> = lock.holders.iter().map(|h| h.token).collect();
            tokens.sort();
            tokens.dedup();
            assert_eq!(tokens.len(), lock.holders.len());
            assert!(lock.last_token >= last_token, "tokens only grow");
            last_token = lock.last_token;
            let mut seen: Vec<&str> = lock.holders.iter().map(|h| h.owner.as_str()).collect();
            seen.extend(lock.waiters.iter().map(|w| w.owner.as_str()));
            let count = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), count, "an owner holds or waits once");
        }
    }
}
