//! Which task ids the store may already hold, so that the first delivery of
//! an id nobody used before skips the store lookup (a Postgres round trip
//! on every task's path otherwise).
//!
//! A Bloom filter answers "maybe known" or "certainly new". It never gives
//! a false "new" as long as it has seen every id in the store:
//!
//! - it is loaded from the `tasks` table at start (until then, and while a
//!   reload after a NATS disconnect runs, every id counts as maybe known);
//! - this replica adds every id it admits, before anything is written;
//! - other replicas' ids arrive as their `task.submitted` events, which are
//!   published after the commit; a NATS disconnect (events may have been
//!   missed) drops the filter and loads it again.
//!
//! A "maybe" costs the lookup the dispatcher always did before. The filter
//! is sized for twice the stored ids; when it fills up it is rebuilt twice
//! as large (up to [`MAX_BITS`]; beyond that, the false-positive rate grows
//! slowly and more lookups happen, nothing else changes).

/// Bits per expected id (about 1% false positives with [`HASHES`]).
const BITS_PER_ID: usize = 10;
/// Probes per id.
const HASHES: u32 = 7;
/// Ids a filter is sized for at least.
pub const MIN_CAPACITY: usize = 1 << 20;
/// Largest filter: 2^32 bits = 512 MiB is far beyond need; 2^29 = 64 MiB
/// holds about 50 million ids at 1%.
pub const MAX_BITS: usize = 1 << 29;

/// A fixed-size Bloom filter over task ids.
#[derive(Debug, Clone)]
pub struct Bloom {
    words: Vec<u64>,
    /// Bits - 1 (the size is a power of two).
    mask: u64,
    capacity: usize,
    count: usize,
}

impl Bloom {
    /// A filter for about `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY);
        let bits = (capacity * BITS_PER_ID).next_power_of_two().min(MAX_BITS);
        Self {
            words: vec![0; bits / 64],
            mask: bits as u64 - 1,
            capacity: bits / BITS_PER_ID,
            count: 0,
        }
    }

    pub fn insert(&mut self, id: &str) {
        let (h1, h2) = hashes(id);
        for i in 0..u64::from(HASHES) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.count += 1;
    }

    pub fn contains(&self, id: &str) -> bool {
        let (h1, h2) = hashes(id);
        (0..u64::from(HASHES)).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    /// Insertions so far (repeated ids count again).
    pub fn count(&self) -> usize {
        self.count
    }

    /// More ids than it was sized for, and a larger filter is possible.
    pub fn is_full(&self) -> bool {
        self.count > self.capacity && (self.mask as usize + 1) < MAX_BITS
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Memory held, bytes.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Two independent 64-bit hashes (FNV-1a, then two different finalizers).
fn hashes(id: &str) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h1 = mix(h ^ 0x9e37_79b9_7f4a_7c15);
    // Odd, so the probes of one id never collapse onto one bit.
    let h2 = mix(h.rotate_left(32) ^ 0xd6e8_feb8_6659_fd93) | 1;
    (h1, h2)
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The filter and its (re)loading state.
#[derive(Debug, Default)]
pub struct KnownIds {
    /// None: not loaded (every id may be known).
    filter: Option<Bloom>,
    /// The load under way (its generation), with the ids added since it
    /// began (the load may not see them).
    loading: Option<(u64, Vec<String>)>,
    generation: u64,
}

impl KnownIds {
    /// Not loaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// False only when the id is certainly not in the store.
    pub fn may_be_known(&self, id: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.contains(id))
    }

    /// Records an id that is (or is about to be) in the store.
    pub fn insert(&mut self, id: &str) {
        if let Some(filter) = &mut self.filter {
            filter.insert(id);
        }
        if let Some((_, since)) = &mut self.loading {
            since.push(id.to_string());
        }
    }

    /// Starts a load: `Some(generation)` to pass to [`KnownIds::loaded`],
    /// or None when one is already under way. `forget` drops the current
    /// filter first (ids may have been missed).
    pub fn begin_load(&mut self, forget: bool) -> Option<u64> {
        if forget {
            self.filter = None;
            // A load under way may have started before the gap: superseded.
            self.loading = None;
        }
        if self.loading.is_some() {
            return None;
        }
        self.generation += 1;
        self.loading = Some((self.generation, Vec::new()));
        Some(self.generation)
    }

    /// A load finished: `filter` holds every id stored when it began. Ids
    /// added since are put in, then it replaces the current filter. A
    /// superseded load is ignored.
    pub fn loaded(&mut self, generation: u64, mut filter: Bloom) {
        match self.loading.take() {
            Some((current, since)) if current == generation => {
                for id in &since {
                    filter.insert(id);
                }
                self.filter = Some(filter);
            }
            other => self.loading = other,
        }
    }

    /// A load failed: the current filter (if any) stays; try again later.
    pub fn load_failed(&mut self, generation: u64) {
        if self.loading.as_ref().is_some_and(|(g, _)| *g == generation) {
            self.loading = None;
        }
    }

    /// Loaded, and its answers are used.
    pub fn is_loaded(&self) -> bool {
        self.filter.is_some()
    }

    /// Loaded and over capacity (time to load a larger one), or not loaded
    /// and no load under way.
    pub fn wants_load(&self) -> bool {
        self.loading.is_none() && self.filter.as_ref().is_none_or(Bloom::is_full)
    }

    /// Memory held by the filter, bytes.
    pub fn bytes(&self) -> usize {
        self.filter.as_ref().map_or(0, Bloom::bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::with_capacity(100_000);
        for i in 0..100_000 {
            bloom.insert(&format!("task-{i}"));
        }
        assert!((0..100_000).all(|i| bloom.contains(&format!("task-{i}"))));
        let false_positives = (0..100_000)
            .filter(|i| bloom.contains(&format!("other-{i}")))
            .count();
        // Sized for at least MIN_CAPACITY ids, so well under 1% here.
        assert!(false_positives < 100, "{false_positives}");
    }

    #[test]
    fn sized_to_a_power_of_two_and_full_past_capacity() {
        let mut bloom = Bloom::with_capacity(10);
        assert_eq!(
            bloom.capacity(),
            (MIN_CAPACITY * BITS_PER_ID).next_power_of_two() / BITS_PER_ID
        );
        assert_eq!(
            bloom.bytes() * 8,
            (MIN_CAPACITY * BITS_PER_ID).next_power_of_two()
        );
        for i in 0..=bloom.capacity() {
            bloom.insert(&i.to_string());
        }
        assert!(bloom.is_full());
        let largest = Bloom::with_capacity(usize::MAX / 64);
        assert_eq!(largest.bytes() * 8, MAX_BITS);
    }

    #[test]
    fn everything_may_be_known_until_loaded() {
        let mut known = KnownIds::new();
        assert!(known.may_be_known("a"));
        assert!(known.wants_load());
        let generation = known.begin_load(false).unwrap();
        assert!(!known.wants_load());
        assert_eq!(known.begin_load(false), None, "one load at a time");
        known.insert("admitted-while-loading");
        let mut filter = Bloom::with_capacity(0);
        filter.insert("stored");
        known.loaded(generation, filter);
        assert!(known.is_loaded());
        assert!(known.may_be_known("stored"));
        assert!(known.may_be_known("admitted-while-loading"));
        assert!(!known.may_be_known("new"));
        known.insert("new");
        assert!(known.may_be_known("new"));
    }

    #[test]
    fn a_gap_forgets_the_filter_and_supersedes_the_load_under_way() {
        let mut known = KnownIds::new();
        let first = known.begin_load(false).unwrap();
        known.loaded(first, Bloom::with_capacity(0));
        assert!(!known.may_be_known("x"));
        let stale = known.begin_load(false).unwrap();
        // NATS disconnected: events may be missed.
        let fresh = known.begin_load(true).unwrap();
        assert!(known.may_be_known("x"), "nothing is certain until reloaded");
        known.loaded(stale, Bloom::with_capacity(0));
        assert!(!known.is_loaded(), "a superseded load is ignored");
        let mut filter = Bloom::with_capacity(0);
        filter.insert("x");
        known.loaded(fresh, filter);
        assert!(known.may_be_known("x"));
        assert!(!known.may_be_known("y"));
    }

    #[test]
    fn a_failed_load_can_be_retried() {
        let mut known = KnownIds::new();
        let generation = known.begin_load(false).unwrap();
        known.load_failed(generation);
        assert!(known.wants_load());
        assert!(known.begin_load(false).is_some());
    }
}
