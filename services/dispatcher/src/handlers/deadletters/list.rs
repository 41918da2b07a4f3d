//! `<root>.deadletters.list`: a page of dead letters, most recently failed
//! first, filtered by reason, source and whether they were replayed.

use concord_bus::ServiceError;
use concord_bus::service::{Reply, Request};
use concord_store::DeadLetterFilter;
use concord_wire::v1::{DeadLetterList, ListDeadLetters};

use super::{page_token, parse_page_token, to_wire, unavailable};
use crate::app::Dispatcher;

/// Page size when the request sets none.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page.
const MAX_LIMIT: u32 = 1000;

pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let query: ListDeadLetters = request.decode()?;
    let filter = filter(&query)?;
    let letters = dispatcher
        .store
        .dead_letters()
        .list(&filter)
        .await
        .map_err(unavailable)?;
    // A full page may have more after it.
    let next = match letters.last() {
        Some(last) if letters.len() as i64 == filter.limit => page_token(last.cursor()),
        _ => String::new(),
    };
    let list = DeadLetterList {
        dead_letters: letters.into_iter().map(to_wire).collect(),
        next,
    };
    Reply::to(&request, &list)
}

/// The store filter a request asks for.
fn filter(query: &ListDeadLetters) -> Result<DeadLetterFilter, ServiceError> {
    let limit = match query.limit {
        0 => DEFAULT_LIMIT,
        limit if limit > MAX_LIMIT => {
            return Err(ServiceError::invalid(
                "limit",
                format!("must be at most {MAX_LIMIT}, got {limit}"),
            ));
        }
        limit => limit,
    };
    let text = |value: &str| Some(value.trim().to_string()).filter(|v| !v.is_empty());
    Ok(DeadLetterFilter {
        reason: text(&query.reason),
        source: text(&query.source),
        pending_only: query.pending_only,
        after: match query.after.trim() {
            "" => None,
            token => Some(parse_page_token(token)?),
        },
        limit: i64::from(limit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_are_bounded() {
        let query = ListDeadLetters::default();
        assert_eq!(filter(&query).unwrap().limit, 50);
        let query = ListDeadLetters {
            limit: 1000,
            ..ListDeadLetters::default()
        };
        assert_eq!(filter(&query).unwrap().limit, 1000);
        let query = ListDeadLetters {
            limit: 1001,
            ..ListDeadLetters::default()
        };
        assert_eq!(filter(&query).unwrap_err().field.as_deref(), Some("limit"));
    }

    #[test]
    fn empty_filters_match_everything() {
        let query = ListDeadLetters {
            reason: " ".into(),
            source: "concord-registry".into(),
            pending_only: true,
            ..ListDeadLetters::default()
        };
        let filter = filter(&query).unwrap();
        assert_eq!(filter.reason, None);
        assert_eq!(filter.source.as_deref(), Some("concord-registry"));
        assert!(filter.pending_only);
        assert_eq!(filter.after, None);
    }
}
