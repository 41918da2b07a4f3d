//! The rules of a versioned document: what a create, put, patch or delete
//! does to the stored document (or refuses), without I/O.
//!
//! A key's versions form one chain that only grows: a create makes version
//! 1 (or the next after a deleted document's last), each change adds one,
//! a delete leaves a tombstone with its own version, so history, watches
//! and `reconcile` never see a version twice. An expected version makes a
//! write conditional (compare-and-set); without one it applies to whatever
//! is there.

use serde_json::Value;

use crate::merge_patch;

/// A stored document (a tombstone once deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: u64,
    /// `None`: deleted at `version`.
    pub value: Option<Value>,
}

/// A requested change.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Fails if a live document exists.
    Create { value: Value },
    /// Replaces the value.
    Put { value: Value, expected: Option<u64> },
    /// Applies a JSON merge patch (an object).
    Patch { patch: Value, expected: Option<u64> },
    /// Deletes the document.
    Delete { expected: Option<u64> },
}

impl Write {
    /// The request's name in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Write::Create { .. } => "create",
            Write::Put { .. } => "put",
            Write::Patch { .. } => "patch",
            Write::Delete { .. } => "delete",
        }
    }
}

/// What a change records in the history: the new value, or the patch.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Created(Value),
    Put(Value),
    Patched(Value),
    /// Brought back to a snapshot's value.
    Restored(Value),
    Deleted,
}

impl Recorded {
    /// The change's kind as named in history, events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Recorded::Created(_) => "created",
            Recorded::Put(_) => "put",
            Recorded::Patched(_) => "patched",
            Recorded::Restored(_) => "restored",
            Recorded::Deleted => "deleted",
        }
    }
}

/// An accepted change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub version: u64,
    /// The value after it (`None`: deleted).
    pub value: Option<Value>,
    pub recorded: Recorded,
}

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Create of a live document.
    Exists { version: u64 },
    /// Put, patch or delete of a document that does not exist (or was
    /// deleted; `version` is the tombstone's, 0 if never created).
    NotFound { version: u64 },
    /// The expected version is not the current one.
    Conflict {
        expected: u64,
        current: u64,
        value: Option<Value>,
    },
    /// The patch is not a JSON object.
    PatchNotAnObject,
    /// The value after the change is larger than the limit.
    TooLarge { bytes: usize, limit: usize },
}

/// Applies `write` to `stored` (none: the key was never written). `limit`:
/// largest value in bytes of compact JSON.
pub fn apply(stored: Option<&Stored>, write: Write, limit: usize) -> Result<Change, Refusal> {
    let version = stored.map_or(0, |s| s.version);
    let live = stored.and_then(|s| s.value.as_ref());
    let check_expected = |expected: Option<u64>| match expected {
        Some(expected) if expected != version => Err(Refusal::Conflict {
            expected,
            current: version,
            value: live.cloned(),
        }),
        _ => Ok(()),
    };
    let (value, recorded) = match write {
        Write::Create { value } => {
            if live.is_some() {
                return Err(Refusal::Exists { version });
            }
            (Some(value.clone()), Recorded::Created(value))
        }
        Write::Put { value, expected } => {
            check_expected(expected)?;
            if live.is_none() && expected.is_none() {
                // An unconditional put creates.
                (Some(value.clone()), Recorded::Created(value))
            } else if live.is_none() {
                return Err(Refusal::NotFound { version });
            } else {
                (Some(value.clone()), Recorded::Put(value))
            }
        }
        Write::Patch { patch, expected } => {
            if !patch.is_object() {
                return Err(Refusal::PatchNotAnObject);
            }
            check_expected(expected)?;
            let Some(current) = live else {
                return Err(Refusal::NotFound { version });
            };
            (
                Some(merge_patch::merged(current, &patch)),
                Recorded::Patched(patch),
            )
        }
        Write::Delete { expected } => {
            check_expected(expected)?;
            if live.is_none() {
                return Err(Refusal::NotFound { version });
            }
            (None, Recorded::Deleted)
        }
    };
    if let Some(value) = &value {
        let bytes = encoded_len(value);
        if bytes > limit {
            return Err(Refusal::TooLarge { bytes, limit });
        }
    }
    Ok(Change {
        version: version + 1,
        value,
        recorded,
    })
}

/// Brings `stored` back to a snapshot's `target` (none: the snapshot does
/// not hold the key, so it is deleted): a change with the next version, or
/// none when the document already is as in the snapshot. Never refused: the
/// snapshot's values were accepted once.
pub fn restore(stored: Option<&Stored>, target: Option<&Value>) -> Option<Change> {
    let version = stored.map_or(0, |s| s.version);
    let live = stored.and_then(|s| s.value.as_ref());
    if live == target {
        return None;
    }
    let recorded = match target {
        Some(value) => Recorded::Restored(value.clone()),
        None => Recorded::Deleted,
    };
    Some(Change {
        version: version + 1,
        value: target.cloned(),
        recorded,
    })
}

/// Length of `value` as compact JSON.
pub fn encoded_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a JSON value serializes");
    counter.0
}

/// Which history entries to drop after a change at `version`, keeping the
/// newest `keep`: every version at or below the returned one (0: none).
pub fn history_cutoff(version: u64, keep: u64) -> u64 {
    version.saturating_sub(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1024;

    fn live(version: u64, value: Value) -> Stored {
        Stored {
            version,
            value: Some(value),
        }
    }

    fn tombstone(version: u64) -> Stored {
        Stored {
            version,
            value: None,
        }
    }

    #[test]
    fn a_create_starts_the_chain_at_one_and_refuses_a_live_document() {
        let change = apply(None, Write::Create { value: json!(1) }, LIMIT).unwrap();
        assert_eq!(change.version, 1);
        assert_eq!(change.value, Some(json!(1)));
        assert_eq!(change.recorded, Recorded::Created(json!(1)));
        let stored = live(4, json!("x"));
        assert_eq!(
            apply(Some(&stored), Write::Create { value: json!(2) }, LIMIT),
            Err(Refusal::Exists { version: 4 })
        );
    }

    #[test]
    fn a_create_after_a_delete_continues_the_chain() {
        let change = apply(
            Some(&tombstone(7)),
            Write::Create { value: json!({}) },
            LIMIT,
        )
        .unwrap();
        assert_eq!(change.version, 8);
    }

    #[test]
    fn a_put_with_the_current_version_replaces_the_value() {
        let stored = live(3, json!({"a": 1}));
        let write = Write::Put {
            value: json!({"b": 2}),
            expected: Some(3),
        };
        let change = apply(Some(&stored), write, LIMIT).unwrap();
        assert_eq!(change.version, 4);
        assert_eq!(change.value, Some(json!({"b": 2})));
        assert_eq!(change.recorded.kind(), "put");
    }

    #[test]
    fn a_stale_expected_version_is_a_conflict_carrying_the_current_document() {
        let stored = live(5, json!({"a": 1}));
        for write in [
            Write::Put {
                value: json!(0),
                expected: Some(4),
            },
            Write::Patch {
                patch: json!({}),
                expected: Some(6),
            },
            Write::Delete { expected: Some(1) },
        ] {
            let Err(Refusal::Conflict { current, value, .. }) =
                apply(Some(&stored), write.clone(), LIMIT)
            else {
                panic!("{write:?} is not a conflict");
            };
            assert_eq!((current, value), (5, Some(json!({"a": 1}))));
        }
        // Expecting version 0 means "does not exist yet".
        let write = Write::Put {
            value: json!(1),
            expected: Some(0),
        };
        assert!(matches!(
            apply(Some(&stored), write, LIMIT),
            Err(Refusal::Conflict {
                expected: 0,
                current: 5,
                ..
            })
        ));
    }

    #[test]
    fn an_unconditional_put_applies_to_whatever_is_there_and_creates() {
        let put = |stored: Option<&Stored>| {
            apply(
                stored,
                Write::Put {
                    value: json!("v"),
                    expected: None,
                },
                LIMIT,
            )
            .unwrap()
        };
        assert_eq!(put(Some(&live(9, json!(0)))).version, 10);
        let created = put(None);
        assert_eq!((created.version, created.recorded.kind()), (1, "created"));
        assert_eq!(put(Some(&tombstone(2))).version, 3);
    }

    #[test]
    fn a_conditional_put_on_a_missing_document_is_not_found() {
        let write = Write::Put {
            value: json!(1),
            expected: Some(2),
        };
        assert_eq!(
            apply(Some(&tombstone(2)), write, LIMIT),
            Err(Refusal::NotFound { version: 2 })
        );
    }

    #[test]
    fn a_patch_merges_and_records_the_patch() {
        let stored = live(1, json!({"title": "draft", "tags": ["a"], "n": 1}));
        let patch = json!({"title": "final", "n": null});
        let write = Write::Patch {
            patch: patch.clone(),
            expected: Some(1),
        };
        let change = apply(Some(&stored), write, LIMIT).unwrap();
        assert_eq!(change.value, Some(json!({"title": "final", "tags": ["a"]})));
        assert_eq!(change.recorded, Recorded::Patched(patch));
    }

    #[test]
    fn a_patch_must_be_an_object_and_needs_a_document() {
        let stored = live(1, json!({}));
        for patch in [json!([1]), json!("x"), json!(null), json!(3)] {
            let write = Write::Patch {
                patch,
                expected: None,
            };
            assert_eq!(
                apply(Some(&stored), write, LIMIT),
                Err(Refusal::PatchNotAnObject)
            );
        }
        let write = Write::Patch {
            patch: json!({}),
            expected: None,
        };
        assert_eq!(
            apply(None, write, LIMIT),
            Err(Refusal::NotFound { version: 0 })
        );
    }

    #[test]
    fn a_delete_leaves_a_tombstone_with_its_own_version() {
        let change = apply(
            Some(&live(2, json!(1))),
            Write::Delete { expected: Some(2) },
            LIMIT,
        )
        .unwrap();
        assert_eq!((change.version, change.value), (3, None));
        assert_eq!(change.recorded, Recorded::Deleted);
        assert_eq!(
            apply(Some(&tombstone(3)), Write::Delete { expected: None }, LIMIT),
            Err(Refusal::NotFound { version: 3 })
        );
    }

    #[test]
    fn a_value_over_the_limit_is_refused_with_its_size() {
        let big = json!("x".repeat(LIMIT));
        assert_eq!(
            apply(None, Write::Create { value: big }, LIMIT),
            Err(Refusal::TooLarge {
                bytes: LIMIT + 2,
                limit: LIMIT
            })
        );
        // A patch is judged by the value it makes.
        let stored = live(1, json!({"a": "x".repeat(LIMIT - 20)}));
        let write = Write::Patch {
            patch: json!({"b": "y".repeat(40)}),
            expected: None,
        };
        assert!(matches!(
            apply(Some(&stored), write, LIMIT),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn encoded_len_is_the_compact_json_length() {
        for value in [json!(null), json!({"a": [1, 2.5, "é"]}), json!("")] {
            assert_eq!(
                encoded_len(&value),
                serde_json::to_vec(&value).unwrap().len()
            );
        }
    }

    #[test]
    fn history_keeps_the_newest_entries() {
        assert_eq!(history_cutoff(3, 100), 0);
        assert_eq!(history_cutoff(150, 100), 50);
        assert_eq!(history_cutoff(100, 100), 0);
    }

    /// Any sequence of writes, each applied to the result of the last,
    /// makes versions that grow by exactly one per accepted change.
    #[test]
    fn accepted_changes_form_one_chain_of_versions() {
        let writes = [
            Write::Create {
                value: json!({"n": 0}),
            },
            Write::Patch {
                patch: json!({"n": 1}),
                expected: Some(1),
            },
            Write::Put {
                value: json!({"n": 9}),
                expected: Some(1),
            }, // conflict
            Write::Delete { expected: None },
            Write::Delete { expected: None }, // not found
            Write::Create { value: json!(2) },
            Write::Put {
                value: json!(3),
                expected: None,
            },
        ];
        let mut stored: Option<Stored> = None;
        let mut versions = Vec::new();
        for write in writes {
            if let Ok(change) = apply(stored.as_ref(), write, LIMIT) {
                versions.push(change.version);
                stored = Some(Stored {
                    version: change.version,
                    value: change.value,
                });
            }
        }
        assert_eq!(versions, [1, 2, 3, 4, 5]);
        assert_eq!(stored.unwrap().value, Some(json!(3)));
    }

    #[test]
    fn a_restore_changes_only_what_differs_and_versions_go_on() {
        let stored = Stored {
            version: 4,
            value: Some(json!({"n": 2})),
        };
        assert_eq!(restore(Some(&stored), Some(&json!({"n": 2}))), None);
        let back = restore(Some(&stored), Some(&json!({"n": 1}))).unwrap();
        assert_eq!(back.version, 5);
        assert_eq!(back.value, Some(json!({"n": 1})));
        assert_eq!(back.recorded.kind(), "restored");
        let gone = restore(Some(&stored), None).unwrap();
        assert_eq!(
            (gone.version, gone.value, gone.recorded),
            (5, None, Recorded::Deleted)
        );
        let tombstone = Stored {
            version: 7,
            value: None,
        };
        assert_eq!(
            restore(Some(&tombstone), None),
            None,
            "deleted stays deleted"
        );
        let revived = restore(Some(&tombstone), Some(&json!("v"))).unwrap();
        assert_eq!((revived.version, revived.recorded.kind()), (8, "restored"));
    }
}
