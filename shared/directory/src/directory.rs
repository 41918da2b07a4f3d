//! An in-memory agent directory with discovery indexes, as a registry replica, a discovery reader or the dispatcher keeps it.
//!
//! Records are keyed by id and indexed by capability, by label (key and
//! value) and by liveness, each index an ordered map of ids to the shared
//! record (walking an index reads records without looking them up). Discovery walks
//! the smallest index set that the query constrains (or all agents when it
//! constrains none), in id order, starting after the page token, and checks
//! each candidate against the whole query; it stops one match past the page
//! size. So a capability query over 10,000 agents touches only that
//! capability's agents, and usually only the first page of them.
//!
//! # Queries ([`DiscoverAgents`])
//!
//! - `capability`: exact, case-sensitive name; empty for any.
//! - `minLevel`: within 0..=1; needs `capability` when above 0.
//! - `liveness`: the agent's liveness must be one of these; **empty means any
//!   state**, as the schema says. Routing callers ask for `[ALIVE]` explicitly.
//! - `labels`: every pair must equal the agent's label.
//! - `limit`: 0 means [`DEFAULT_PAGE_SIZE`]; above [`MAX_PAGE_SIZE`] is
//!   lowered to it.
//! - `pageToken`: opaque to clients; it is the URL-safe base64 (no padding)
//!   of the last id of the previous page, so paging is stable while agents
//!   come and go: each agent appears at most once, in id order.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use concord_bus::ServiceError;
use concord_wire::v1::{AgentRecord, DiscoverAgents, DiscoverAgentsReply, Liveness};

/// Page size when the query gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger `limit`s are lowered to this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// An index set: the agents with one property, by id. Entries share the
/// record with [`Directory::agents`], so walking an index needs no lookup.
type Ids = BTreeMap<String, Arc<AgentRecord>>;

/// Agents by id, with the indexes discovery needs.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    agents: BTreeMap<String, Arc<AgentRecord>>,
    by_capability: HashMap<String, Ids>,
    by_label: HashMap<String, HashMap<String, Ids>>,
    by_liveness: HashMap<i32, Ids>,
    /// Revision at which each deregistered agent was removed: an older
    /// record arriving late must not bring it back.
    tombstones: HashMap<String, u64>,
}

/// One page of discovery results, borrowed from the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<'a> {
    /// Matching agents in id order.
    pub agents: Vec<&'a AgentRecord>,
    /// Token for the next page; empty when this is the last one.
    pub next_page_token: String,
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether there are no agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agent with this id.
    pub fn get(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(id).map(|record| &**record)
    }

    /// All agents in id order.
    pub fn iter(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values().map(|record| &**record)
    }

    /// Agents offering `capability` at any level and in any state, in id order
    /// (what a router filters itself, without paging).
    pub fn with_capability<'a>(
        &'a self,
        capability: &str,
    ) -> impl Iterator<Item = &'a AgentRecord> + 'a {
        self.by_capability
            .get(capability)
            .into_iter()
            .flat_map(|ids| ids.values().map(|record| &**record))
    }

    /// Number of agents offering `capability`.
    pub fn capability_count(&self, capability: &str) -> usize {
        self.by_capability.get(capability).map_or(0, Ids::len)
    }

    /// At most `limit` agents offering `capability`: those after `after` in
    /// id order, wrapping around to the first ones (all of them, from the
    /// start, when `after` is `None`). A caller that passes the last id it
    /// got each time walks the whole set in windows, O(log n + limit) each.
    pub fn capability_window<'a>(
        &'a self,
        capability: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<&'a AgentRecord> {
        use std::ops::Bound::{Excluded, Unbounded};
        let Some(ids) = self.by_capability.get(capability) else {
            return Vec::new();
        };
        let tail: Box<dyn Iterator<Item = (&String, &Arc<AgentRecord>)>> = match after {
            Some(after) => Box::new(
                ids.range::<str, _>((Excluded(after), Unbounded))
                    .chain(ids.range::<str, _>((Unbounded, std::ops::Bound::Included(after)))),
            ),
            None => Box::new(ids.iter()),
        };
        tail.take(limit).map(|(_, record)| &**record).collect()
    }

    /// Inserts or replaces the record with `record.id`, returning the one it
    /// replaced.
    pub fn upsert(&mut self, record: AgentRecord) -> Option<AgentRecord> {
        let previous = self.remove(&record.id);
        let record = Arc::new(record);
        self.index(&record);
        self.agents.insert(record.id.clone(), record);
        previous
    }

    /// Like [`upsert`](Self::upsert), but only if the directory has no record
    /// with this id or an older one (lower `revision`): what a copy fed by an
    /// update stream uses, so a late or repeated update cannot roll it back.
    /// Returns whether the record was stored.
    /// A record with `deregistered` set removes the agent (see
    /// [`remove_at`](Self::remove_at)).
    pub fn upsert_if_newer(&mut self, record: AgentRecord) -> bool {
        if let Some(current) = self.agents.get(&record.id)
            && current.revision >= record.revision
        {
            return false;
        }
        if self
            .tombstones
            .get(&record.id)
            .is_some_and(|removed_at| *removed_at >= record.revision)
        {
            return false;
        }
        if record.deregistered {
            self.remove_at(&record.id, record.revision);
            return true;
        }
        self.tombstones.remove(&record.id);
        self.upsert(record);
        true
    }

    /// Removes the agent deregistered at `revision`, and remembers it so that
    /// records up to that revision are refused by
    /// [`upsert_if_newer`](Self::upsert_if_newer).
    pub fn remove_at(&mut self, id: &str, revision: u64) -> Option<AgentRecord> {
        let removed_at = self.tombstones.entry(id.to_string()).or_default();
        *removed_at = (*removed_at).max(revision);
        self.remove(id)
    }

    /// Removes the agent with this id, returning its record.
    pub fn remove(&mut self, id: &str) -> Option<AgentRecord> {
        let record = self.agents.remove(id)?;
        self.unindex(&record);
        // The indexes let go of it: no copy.
        Some(Arc::unwrap_or_clone(record))
    }

    /// One page of the agents matching `query` (see the module docs), or an
    /// `INVALID_ARGUMENT` naming the bad query field.
    pub fn find<'a>(&'a self, query: &DiscoverAgents) -> Result<Page<'a>, ServiceError> {
        let query = Query::parse(query)?;
        let mut agents = Vec::with_capacity(query.limit.min(64));
        let mut more = false;
        let mut take = |record: &'a AgentRecord| -> bool {
            // Returns false to stop.
            if !query.matches(record) {
                return true;
            }
            if agents.len() == query.limit {
                more = true;
                return false;
            }
            agents.push(record);
            true
        };
        let after = query
            .after
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        match self.candidates(&query) {
            Candidates::None => {}
            Candidates::All => {
                for record in self
                    .agents
                    .range::<str, _>((after, Bound::Unbounded))
                    .map(|(_, r)| &**r)
                {
                    if !take(record) {
                        break;
                    }
                }
            }
            Candidates::Ids(ids) => {
                for (_, record) in ids.range::<str, _>((after, Bound::Unbounded)) {
                    if !take(record) {
                        break;
                    }
                }
            }
        }
        let next_page_token = match agents.last() {
            Some(last) if more => encode_page_token(&last.id),
            _ => String::new(),
        };
        Ok(Page {
            agents,
            next_page_token,
        })
    }

    /// [`find`](Self::find), as the wire reply (records cloned).
    pub fn discover(&self, query: &DiscoverAgents) -> Result<DiscoverAgentsReply, ServiceError> {
        let page = self.find(query)?;
        Ok(DiscoverAgentsReply {
            agents: page.agents.into_iter().cloned().collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// The smallest index set the query constrains, if any.
    fn candidates(&self, query: &Query<'_>) -> Candidates<'_> {
        let mut sets: Vec<Option<&Ids>> = Vec::new();
        if let Some(capability) = query.capability {
            sets.push(self.by_capability.get(capability));
        }
        for (key, value) in query.labels {
            sets.push(self.by_label.get(key).and_then(|values| values.get(value)));
        }
        // Several states would need a merge of sets; the other constraints
        // (or a scan) serve those queries.
        if let [state] = query.liveness.as_slice() {
            sets.push(self.by_liveness.get(state));
        }
        // A constrained set that does not exist means nothing can match.
        if sets.iter().any(Option::is_none) {
            return Candidates::None;
        }
        match sets.into_iter().flatten().min_by_key(|ids| ids.len()) {
            Some(ids) => Candidates::Ids(ids),
            None => Candidates::All,
        }
    }

    fn index(&mut self, record: &Arc<AgentRecord>) {
        for capability in &record.capabilities {
            insert(
                self.by_capability
                    .entry(capability.name.clone())
                    .or_default(),
                record,
            );
        }
        for (key, value) in &record.labels {
            let values = self.by_label.entry(key.clone()).or_default();
            insert(values.entry(value.clone()).or_default(), record);
        }
        insert(self.by_liveness.entry(record.liveness).or_default(), record);
    }

    /// Removes `record` from the indexes, dropping sets left empty so that
    /// churn in capability or label names does not grow the maps.
    fn unindex(&mut self, record: &AgentRecord) {
        let id = record.id.as_str();
        for capability in &record.capabilities {
            remove_from(&mut self.by_capability, &capability.name, id);
        }
        for (key, value) in &record.labels {
            if let Some(values) = self.by_label.get_mut(key) {
                remove_from(values, value, id);
                if values.is_empty() {
                    self.by_label.remove(key);
                }
            }
        }
        remove_from(&mut self.by_liveness, &record.liveness, id);
    }
}

fn insert(ids: &mut Ids, record: &Arc<AgentRecord>) {
    ids.insert(record.id.clone(), record.clone());
}

fn remove_from<K, Q>(index: &mut HashMap<K, Ids>, key: &Q, id: &str)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

enum Candidates<'a> {
    /// Some constrained index is empty: no agent can match.
    None,
    /// No index applies: walk all agents.
    All,
    /// Walk these ids.
    Ids(&'a Ids),
}

/// A checked [`DiscoverAgents`].
struct Query<'q> {
    capability: Option<&'q str>,
    min_level: f64,
    /// Sorted, deduplicated; empty for any.
    liveness: Vec<i32>,
    labels: &'q BTreeMap<String, String>,
    limit: usize,
    after: Option<String>,
}

impl<'q> Query<'q> {
    fn parse(query: &'q DiscoverAgents) -> Result<Self, ServiceError> {
        let capability = (!query.capability.is_empty()).then_some(query.capability.as_str());
        let min_level = query.min_level;
        if !min_level.is_finite() || !(0.0..=1.0).contains(&min_level) {
            return Err(ServiceError::invalid(
                "minLevel",
                format!("must be between 0 and 1, got {min_level}"),
            ));
        }
        if min_level > 0.0 && capability.is_none() {
            return Err(ServiceError::invalid(
                "minLevel",
                "needs `capability`: a level is per capability",
            ));
        }
        let mut liveness = Vec::with_capacity(query.liveness.len());
        for (i, &state) in query.liveness.iter().enumerate() {
            if Liveness::try_from(state).is_err() {
                return Err(ServiceError::invalid(
                    format!("liveness[{i}]"),
                    format!("unknown value {state}"),
                ));
            }
            liveness.push(state);
        }
        liveness.sort_unstable();
        liveness.dedup();
        let limit = match usize::try_from(query.limit).unwrap_or(usize::MAX) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if query.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&query.page_token)?)
        };
        Ok(Self {
            capability,
            min_level,
            liveness,
            labels: &query.labels,
            limit,
            after,
        })
    }

    fn matches(&self, record: &AgentRecord) -> bool {
        if let Some(capability) = self.capability
            && !record
                .capabilities
                .iter()
                .any(|c| c.name == capability && c.level >= self.min_level)
        {
            return false;
        }
        if !self.liveness.is_empty() && self.liveness.binary_search(&record.liveness).is_err() {
            return false;
        }
        self.labels
            .iter()
            .all(|(key, value)| record.labels.get(key) == Some(value))
    }
}

/// The page token that continues after the agent `last_id`.
pub fn encode_page_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id)
}

/// The agent id a page token continues after, or `INVALID_ARGUMENT` naming
/// `pageToken`.
pub fn decode_page_token(token: &str) -> Result<String, ServiceError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ServiceError::invalid("pageToken", "is not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_keep_older_records_out() {
        let mut directory = Directory::new();
        let mut record = AgentRecord {
            id: "a1".into(),
            revision: 3,
            ..Default::default()
        };
        assert!(directory.upsert_if_newer(record.clone()));
        let mut tombstone = record.clone();
        tombstone.revision = 4;
        tombstone.deregistered = true;
        assert!(directory.upsert_if_newer(tombstone));
        assert!(directory.get("a1").is_none());
        // A late record from before the deregistration is refused...
        assert!(!directory.upsert_if_newer(record.clone()));
        assert!(directory.get("a1").is_none());
        // ... a re-registration (newer revision) is not.
        record.revision = 5;
        assert!(directory.upsert_if_newer(record));
        assert!(directory.get("a1").is_some());
    }
    use concord_wire::v1::{Capability, ErrorCode};

    fn record(id: &str, capabilities: &[(&str, f64)], liveness: Liveness) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            name: format!("agent {id}"),
            capabilities: capabilities
                .iter()
                .map(|(name, level)| Capability {
                    name: (*name).into(),
                    level: *level,
                })
                .collect(),
            max_concurrency: 1,
            liveness: liveness as i32,
            revision: 1,
            ..Default::default()
        }
    }

    fn labelled(mut record: AgentRecord, labels: &[(&str, &str)]) -> AgentRecord {
        record.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        record
    }

    fn ids(page: &Page<'_>) -> Vec<String> {
        page.agents.iter().map(|r| r.id.clone()).collect()
    }

    fn query(change: impl FnOnce(&mut DiscoverAgents)) -> DiscoverAgents {
        let mut q = DiscoverAgents::default();
        change(&mut q);
        q
    }

    /// Every index entry points at a stored record that has that property,
    /// every record is in each index it belongs to, and no set is empty.
    fn assert_consistent(dir: &Directory) {
        let mut by_capability: HashMap<String, Ids> = HashMap::new();
        let mut by_label: HashMap<String, HashMap<String, Ids>> = HashMap::new();
        let mut by_liveness: HashMap<i32, Ids> = HashMap::new();
        for (id, record) in &dir.agents {
            assert_eq!(id, &record.id);
            for c in &record.capabilities {
                by_capability
                    .entry(c.name.clone())
                    .or_default()
                    .insert(id.clone(), record.clone());
            }
            for (k, v) in &record.labels {
                by_label
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .insert(id.clone(), record.clone());
            }
            by_liveness
                .entry(record.liveness)
                .or_default()
                .insert(id.clone(), record.clone());
        }
        assert_eq!(dir.by_capability, by_capability);
        assert_eq!(dir.by_label, by_label);
        assert_eq!(dir.by_liveness, by_liveness);
    }

    fn sample() -> Directory {
        let mut dir = Directory::new();
        for r in [
            labelled(
                record("a", &[("echo", 1.0), ("sum", 0.4)], Liveness::Alive),
                &[("region", "eu"), ("tier", "gold")],
            ),
            labelled(
                record("b", &[("echo", 0.5)], Liveness::Suspect),
                &[("region", "eu")],
            ),
            labelled(
                record("c", &[("sum", 0.9)], Liveness::Alive),
                &[("region", "us")],
            ),
            record("d", &[("echo", 0.7)], Liveness::Unavailable),
            record("e", &[("echo", 0.2)], Liveness::Alive),
        ] {
            assert!(dir.upsert(r).is_none());
        }
        assert_consistent(&dir);
        dir
    }

    #[test]
    fn get_len_and_iteration_order() {
        let dir = sample();
        assert_eq!(dir.len(), 5);
        assert!(!dir.is_empty());
        assert_eq!(dir.get("c").unwrap().name, "agent c");
        assert!(dir.get("zz").is_none());
        let order: Vec<&str> = dir.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c", "d", "e"]);
        let echo: Vec<&str> = dir.with_capability("echo").map(|r| r.id.as_str()).collect();
        assert_eq!(echo, ["a", "b", "d", "e"]);
        assert_eq!(dir.with_capability("nope").count(), 0);
        assert!(Directory::new().is_empty());
    }

    #[test]
    fn upsert_replaces_and_reindexes() {
        let mut dir = sample();
        let updated = labelled(
            record("a", &[("translate", 0.8)], Liveness::Suspect),
            &[("region", "us")],
        );
        let previous = dir.upsert(updated.clone()).unwrap();
        assert_eq!(previous.capabilities[0].name, "echo");
        assert_eq!(dir.get("a"), Some(&updated));
        assert_eq!(dir.len(), 5);
        assert_consistent(&dir);
        // The old capability, label and state no longer find it.
        let echo = dir.find(&query(|q| q.capability = "echo".into())).unwrap();
        assert_eq!(ids(&echo), ["b", "d", "e"]);
        let gold = dir
            .find(&query(|q| {
                q.labels.insert("tier".into(), "gold".into());
            }))
            .unwrap();
        assert!(gold.agents.is_empty());
        assert!(!dir.by_label.contains_key("tier"));
        let translate = dir
            .find(&query(|q| q.capability = "translate".into()))
            .unwrap();
        assert_eq!(ids(&translate), ["a"]);
    }

    #[test]
    fn remove_drops_the_record_and_empty_index_sets() {
        let mut dir = sample();
        assert_eq!(dir.remove("c").unwrap().id, "c");
        assert!(dir.remove("c").is_none());
        assert!(dir.get("c").is_none());
        assert_consistent(&dir);
        assert!(!dir.by_label["region"].contains_key("us"));
        for id in ["a", "b", "d", "e"] {
            dir.remove(id).unwrap();
        }
        assert!(dir.is_empty());
        assert!(dir.by_capability.is_empty());
        assert!(dir.by_label.is_empty());
        assert!(dir.by_liveness.is_empty());
    }

    #[test]
    fn duplicate_capability_names_in_a_record_are_harmless() {
        let mut dir = Directory::new();
        dir.upsert(record(
            "a",
            &[("echo", 0.2), ("echo", 0.9)],
            Liveness::Alive,
        ));
        assert_consistent(&dir);
        let q = query(|q| {
            q.capability = "echo".into();
            q.min_level = 0.5;
        });
        assert_eq!(ids(&dir.find(&q).unwrap()), ["a"]);
        dir.remove("a");
        assert!(dir.by_capability.is_empty());
    }

    #[test]
    fn upsert_if_newer_ignores_stale_and_repeated_updates() {
        let mut dir = Directory::new();
        let mut r = record("a", &[("echo", 1.0)], Liveness::Alive);
        r.revision = 5;
        assert!(dir.upsert_if_newer(r.clone()));
        assert!(!dir.upsert_if_newer(r.clone()), "same revision again");
        let mut stale = r.clone();
        stale.revision = 4;
        stale.name = "stale".into();
        assert!(!dir.upsert_if_newer(stale));
        assert_eq!(dir.get("a").unwrap().name, "agent a");
        let mut newer = r;
        newer.revision = 6;
        newer.capabilities[0].name = "sum".into();
        assert!(dir.upsert_if_newer(newer));
        assert_eq!(dir.get("a").unwrap().revision, 6);
        assert_consistent(&dir);
    }

    #[test]
    fn discovers_by_capability_and_level() {
        let dir = sample();
        let all_echo = dir.find(&query(|q| q.capability = "echo".into())).unwrap();
        assert_eq!(ids(&all_echo), ["a", "b", "d", "e"]);
        assert_eq!(all_echo.next_page_token, "");
        let good = dir
            .find(&query(|q| {
                q.capability = "echo".into();
                q.min_level = 0.5;
            }))
            .unwrap();
        assert_eq!(ids(&good), ["a", "b", "d"], "0.5 itself qualifies");
        let best = dir
            .find(&query(|q| {
                q.capability = "echo".into();
                q.min_level = 1.0;
            }))
            .unwrap();
        assert_eq!(ids(&best), ["a"]);
        // The level is the one for the asked capability, not any.
        let sum = dir
            .find(&query(|q| {
                q.capability = "sum".into();
                q.min_level = 0.5;
            }))
            .unwrap();
        assert_eq!(ids(&sum), ["c"]);
        let unknown = dir.find(&query(|q| q.capability = "nope".into())).unwrap();
        assert!(unknown.agents.is_empty());
        // Exact, case-sensitive names.
        assert!(
            dir.find(&query(|q| q.capability = "Echo".into()))
                .unwrap()
                .agents
                .is_empty()
        );
    }

    #[test]
    fn empty_query_lists_everyone() {
        let dir = sample();
        assert_eq!(
            ids(&dir.find(&DiscoverAgents::default()).unwrap()),
            ["a", "b", "c", "d", "e"]
        );
    }

    #[test]
    fn liveness_filter_empty_means_any() {
        let dir = sample();
        let state = |states: &[Liveness]| {
            let q = query(|q| {
                q.capability = "echo".into();
                q.liveness = states.iter().map(|s| *s as i32).collect();
            });
            ids(&dir.find(&q).unwrap())
        };
        assert_eq!(state(&[]), ["a", "b", "d", "e"]);
        assert_eq!(state(&[Liveness::Alive]), ["a", "e"]);
        assert_eq!(state(&[Liveness::Suspect]), ["b"]);
        assert_eq!(
            state(&[Liveness::Unavailable, Liveness::Alive]),
            ["a", "d", "e"]
        );
        assert_eq!(state(&[Liveness::Alive, Liveness::Alive]), ["a", "e"]);
        assert!(state(&[Liveness::Unspecified]).is_empty());
        // Without a capability the liveness index alone drives the walk.
        let suspects = dir
            .find(&query(|q| q.liveness = vec![Liveness::Suspect as i32]))
            .unwrap();
        assert_eq!(ids(&suspects), ["b"]);
    }

    #[test]
    fn label_selector_needs_every_pair() {
        let dir = sample();
        let select = |pairs: &[(&str, &str)]| {
            let q = query(|q| {
                q.labels = pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            });
            ids(&dir.find(&q).unwrap())
        };
        assert_eq!(select(&[("region", "eu")]), ["a", "b"]);
        assert_eq!(select(&[("region", "eu"), ("tier", "gold")]), ["a"]);
        assert!(select(&[("region", "eu"), ("tier", "silver")]).is_empty());
        assert!(select(&[("zone", "1")]).is_empty());
        assert!(select(&[("region", "EU")]).is_empty());
        let combined = dir
            .find(&query(|q| {
                q.capability = "echo".into();
                q.liveness = vec![Liveness::Alive as i32];
                q.labels.insert("region".into(), "eu".into());
            }))
            .unwrap();
        assert_eq!(ids(&combined), ["a"]);
    }

    #[test]
    fn pages_follow_id_order_and_end_with_an_empty_token() {
        let dir = sample();
        let mut token = String::new();
        let mut pages = Vec::new();
        loop {
            let page = dir
                .find(&query(|q| {
                    q.limit = 2;
                    q.page_token = token.clone();
                }))
                .unwrap();
            pages.push(ids(&page));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    }

    #[test]
    fn an_exactly_full_last_page_has_no_token() {
        let dir = sample();
        let page = dir.find(&query(|q| q.limit = 5)).unwrap();
        assert_eq!(page.agents.len(), 5);
        assert_eq!(page.next_page_token, "");
        let page = dir.find(&query(|q| q.limit = 4)).unwrap();
        assert_eq!(page.next_page_token, encode_page_token("d"));
    }

    #[test]
    fn paging_survives_changes_between_pages() {
        let mut dir = sample();
        let first = dir.discover(&query(|q| q.limit = 2)).unwrap();
        assert_eq!(first.agents.len(), 2);
        // The last agent of the page leaves, an earlier one and a later one join.
        dir.remove("b");
        dir.upsert(record("aa", &[("echo", 1.0)], Liveness::Alive));
        dir.upsert(record("f", &[("echo", 1.0)], Liveness::Alive));
        let rest = dir
            .find(&query(|q| q.page_token = first.next_page_token.clone()))
            .unwrap();
        assert_eq!(ids(&rest), ["c", "d", "e", "f"]);
    }

    #[test]
    fn limit_defaults_and_caps() {
        let mut dir = Directory::new();
        for i in 0..1_500 {
            dir.upsert(record(
                &format!("a{i:04}"),
                &[("echo", 1.0)],
                Liveness::Alive,
            ));
        }
        let sizes = |limit: u32| dir.find(&query(|q| q.limit = limit)).unwrap().agents.len();
        assert_eq!(sizes(0), DEFAULT_PAGE_SIZE);
        assert_eq!(sizes(1), 1);
        assert_eq!(sizes(1000), 1000);
        assert_eq!(sizes(1001), MAX_PAGE_SIZE);
        assert_eq!(sizes(u32::MAX), MAX_PAGE_SIZE);
    }

    #[test]
    fn bad_queries_name_the_field() {
        let dir = sample();
        let fails = |q: DiscoverAgents, field: &str| {
            let error = dir.find(&q).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
        };
        for bad in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            fails(
                query(|q| {
                    q.capability = "echo".into();
                    q.min_level = bad;
                }),
                "minLevel",
            );
        }
        fails(query(|q| q.min_level = 0.5), "minLevel");
        fails(query(|q| q.liveness = vec![1, 9]), "liveness[1]");
        fails(query(|q| q.liveness = vec![-1]), "liveness[0]");
        for token in ["***", "a=", "//8", "_w"] {
            // Not base64url, padded, or not UTF-8 once decoded.
            fails(query(|q| q.page_token = token.into()), "pageToken");
        }
        assert!(dir.discover(&query(|q| q.page_token = "!".into())).is_err());
    }

    #[test]
    fn page_tokens_round_trip() {
        for id in [
            "a",
            "agent-1",
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "ü/ß",
        ] {
            let token = encode_page_token(id);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(decode_page_token(&token).unwrap(), id);
        }
    }

    #[test]
    fn discover_returns_owned_records() {
        let dir = sample();
        let reply = dir
            .discover(&query(|q| {
                q.capability = "sum".into();
            }))
            .unwrap();
        assert_eq!(
            reply.agents,
            vec![dir.get("a").unwrap().clone(), dir.get("c").unwrap().clone()]
        );
        assert_eq!(reply.next_page_token, "");
    }

    /// 10,000 agents over 20 capabilities: every query, paged through to the
    /// end, returns exactly what a brute-force scan returns, in id order.
    #[test]
    fn ten_thousand_agents_over_twenty_capabilities() {
        const AGENTS: usize = 10_000;
        const CAPABILITIES: usize = 20;
        let regions = ["eu", "us", "ap"];
        let mut dir = Directory::new();
        for i in 0..AGENTS {
            let first = format!("cap{:02}", i % CAPABILITIES);
            let second = format!("cap{:02}", (i * 7 + 3) % CAPABILITIES);
            // Levels vary within each capability (0.1..=1.0).
            let level = |k: usize| ((i / CAPABILITIES + k) % 10 + 1) as f64 / 10.0;
            let mut caps = vec![(first.as_str(), level(0))];
            if second != first {
                caps.push((second.as_str(), level(5)));
            }
            let liveness = if i % 25 == 0 {
                Liveness::Unavailable
            } else if i % 10 == 0 {
                Liveness::Suspect
            } else {
                Liveness::Alive
            };
            let r = labelled(
                record(&format!("agent-{i:05}"), &caps, liveness),
                &[("region", regions[i % 3]), ("shard", &format!("{}", i % 7))],
            );
            dir.upsert(r);
        }
        assert_eq!(dir.len(), AGENTS);
        assert_eq!(dir.by_capability.len(), CAPABILITIES);
        assert_consistent(&dir);

        let brute = |q: &DiscoverAgents| -> Vec<String> {
            dir.iter()
                .filter(|r| {
                    (q.capability.is_empty()
                        || r.capabilities
                            .iter()
                            .any(|c| c.name == q.capability && c.level >= q.min_level))
                        && (q.liveness.is_empty() || q.liveness.contains(&r.liveness))
                        && q.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
                })
                .map(|r| r.id.clone())
                .collect()
        };
        let paged = |q: &DiscoverAgents| -> Vec<String> {
            let mut q = q.clone();
            let mut out = Vec::new();
            loop {
                let page = dir.find(&q).unwrap();
                let limit = if q.limit == 0 {
                    DEFAULT_PAGE_SIZE
                } else {
                    q.limit as usize
                };
                assert!(page.agents.len() <= limit);
                out.extend(ids(&page));
                if page.next_page_token.is_empty() {
                    return out;
                }
                assert_eq!(page.agents.len(), limit, "only the last page is short");
                q.page_token = page.next_page_token;
            }
        };

        let mut total_entries = 0;
        for c in 0..CAPABILITIES {
            let capability = format!("cap{c:02}");
            let any = query(|q| q.capability = capability.clone());
            let found = paged(&any);
            assert_eq!(found, brute(&any));
            assert!(
                found.len() >= AGENTS / CAPABILITIES,
                "{capability}: {}",
                found.len()
            );
            total_entries += found.len();

            let routed = query(|q| {
                q.capability = capability.clone();
                q.min_level = 0.6;
                q.liveness = vec![Liveness::Alive as i32];
                q.labels.insert("region".into(), "eu".into());
                q.limit = 37;
            });
            let found = paged(&routed);
            assert_eq!(found, brute(&routed));
            assert!(!found.is_empty(), "{capability}");
            let mut sorted = found.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, found, "id order, no repeats");
        }
        let entries: usize = dir.iter().map(|r| r.capabilities.len()).sum();
        assert_eq!(total_entries, entries);

        for q in [
            query(|q| q.liveness = vec![Liveness::Suspect as i32]),
            query(|q| q.liveness = vec![Liveness::Unavailable as i32, Liveness::Suspect as i32]),
            query(|q| {
                q.labels.insert("shard".into(), "3".into());
                q.labels.insert("region".into(), "ap".into());
                q.limit = 1000;
            }),
            query(|q| q.limit = 1000),
        ] {
            assert_eq!(paged(&q), brute(&q));
        }
        assert_eq!(paged(&query(|q| q.limit = 1000)).len(), AGENTS);
        assert_eq!(
            paged(&query(|q| q.liveness = vec![Liveness::Unavailable as i32])).len(),
            AGENTS / 25
        );

        // The walk for a capability query stays inside that capability's set.
        let q = query(|q| q.capability = "cap05".into());
        let parsed = Query::parse(&q).unwrap();
        match dir.candidates(&parsed) {
            Candidates::Ids(set) => assert!(set.len() < AGENTS / 5, "{}", set.len()),
            _ => panic!("expected the capability index"),
        }
    }

    #[test]
    fn capability_windows_walk_every_agent_and_wrap_around() {
        let mut directory = Directory::new();
        for id in ["a", "b", "c", "d", "e"] {
            directory.upsert(AgentRecord {
                id: id.into(),
                capabilities: vec![concord_wire::v1::Capability {
                    name: "x".into(),
                    level: 1.0,
                }],
                ..Default::default()
            });
        }
        let ids =
            |records: Vec<&AgentRecord>| records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(directory.capability_count("x"), 5);
        assert_eq!(ids(directory.capability_window("x", None, 2)), ["a", "b"]);
        assert_eq!(
            ids(directory.capability_window("x", Some("b"), 2)),
            ["c", "d"]
        );
        assert_eq!(
            ids(directory.capability_window("x", Some("d"), 3)),
            ["e", "a", "b"]
        );
        assert_eq!(
            ids(directory.capability_window("x", Some("c"), 10)),
            ["d", "e", "a", "b", "c"]
        );
        // An id that left the set still positions the window.
        assert_eq!(ids(directory.capability_window("x", Some("bb"), 1)), ["c"]);
        assert!(directory.capability_window("y", None, 3).is_empty());
    }
}
