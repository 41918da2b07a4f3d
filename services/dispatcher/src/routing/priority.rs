//! Backlog order: higher priority first, first come first served within a priority.
//!
//! Priority is strict: a task is never taken while one of higher priority
//! waits (CRITICAL never waits behind LOW). Under a sustained flood of
//! high-priority work, low-priority work waits; that is the point. Keep one
//! queue per capability, so urgent work for one capability does not hold
//! back work that other agents could do.

#[cfg(test)]
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

#[cfg(test)]
use crate::task_spec::TaskSpec;

/// Backlog order of two tasks: `Less` when `a` goes first. Higher priority
/// first; within a priority, lower [`TaskSpec::sequence`] (earlier arrival)
/// first; equal sequences by id, so the order is total.
#[cfg(test)]
pub fn priority_order(a: &TaskSpec, b: &TaskSpec) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.sequence.cmp(&b.sequence))
        .then_with(|| a.id.cmp(&b.id))
}

/// A backlog: [`pop`](PriorityQueue::pop) returns the oldest item of the
/// highest priority present.
///
/// One FIFO per priority in use: `push`, `push_front` and `pop` take
/// O(log p) for p priorities present (at most 11 for validated tasks).
#[derive(Debug, Clone)]
pub struct PriorityQueue<T> {
    queues: BTreeMap<u32, VecDeque<T>>,
    len: usize,
}

impl<T> Default for PriorityQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PriorityQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            queues: BTreeMap::new(),
            len: 0,
        }
    }

    /// Adds `item` behind everything of the same priority.
    pub fn push(&mut self, priority: u32, item: T) {
        self.queues.entry(priority).or_default().push_back(item);
        self.len += 1;
    }

    /// Puts `item` back ahead of everything of the same priority: for an item
    /// just popped that could not be placed (no agent free), so it keeps its turn.
    #[cfg(test)]
    pub fn push_front(&mut self, priority: u32, item: T) {
        self.queues.entry(priority).or_default().push_front(item);
        self.len += 1;
    }

    /// Removes and returns the oldest item of the highest priority, with its priority.
    pub fn pop_with_priority(&mut self) -> Option<(u32, T)> {
        let mut highest = self.queues.last_entry()?;
        let priority = *highest.key();
        let item = highest.get_mut().pop_front();
        if highest.get().is_empty() {
            highest.remove();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item.map(|item| (priority, item))
    }

    /// Removes and returns the oldest item of the highest priority.
    pub fn pop(&mut self) -> Option<T> {
        self.pop_with_priority().map(|(_, item)| item)
    }

    /// The item [`pop`](PriorityQueue::pop) would return.
    pub fn peek(&self) -> Option<&T> {
        self.queues.last_key_value()?.1.front()
    }

    /// Items in the queue.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items waiting at `priority` (for queue-depth metrics).
    #[cfg(test)]
    pub fn len_at(&self, priority: u32) -> usize {
        self.queues.get(&priority).map_or(0, VecDeque::len)
    }

    /// Keeps only the items for which `keep` is true (for example to drop a
    /// cancelled task), preserving order. O(n).
    #[cfg(test)]
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.queues.retain(|_, queue| {
            queue.retain(&mut keep);
            !queue.is_empty()
        });
        self.len = self.queues.values().map(VecDeque::len).sum();
    }
}
