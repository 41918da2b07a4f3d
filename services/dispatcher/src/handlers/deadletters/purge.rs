//! `<root>.deadletters.purge`: deletes dead letters by id, or all of them
//! (of one reason).

use concord_bus::ServiceError;
use concord_bus::service::{Reply, Request};
use concord_store::PurgeFilter;
use concord_wire::v1::{PurgeDeadLetters, PurgedDeadLetters};

use super::{parse_id, unavailable};
use crate::app::Dispatcher;

pub async fn handle(dispatcher: Dispatcher, request: Request) -> Result<Reply, ServiceError> {
    let query: PurgeDeadLetters = request.decode()?;
    let filter = filter(&query)?;
    let purged = dispatcher
        .store
        .dead_letters()
        .purge(&filter)
        .await
        .map_err(unavailable)?;
    tracing::info!(purged, all = query.all, "dead letters purged");
    Reply::to(&request, &PurgedDeadLetters { purged })
}

/// What a request deletes: its ids, or with `all` everything; `reason`
/// narrows either.
fn filter(query: &PurgeDeadLetters) -> Result<PurgeFilter, ServiceError> {
    let reason = Some(query.reason.trim().to_string()).filter(|r| !r.is_empty());
    let base = match (query.all, query.ids.is_empty()) {
        (true, true) => PurgeFilter::all(),
        (true, false) => {
            return Err(ServiceError::invalid(
                "all",
                "name dead letters in `ids` or set `all`, not both",
            ));
        }
        (false, true) => {
            return Err(ServiceError::invalid(
                "ids",
                "name the dead letters to purge, or set `all`",
            ));
        }
        (false, false) => PurgeFilter::ids(
            query
                .ids
                .iter()
                .map(|id| parse_id("ids", id))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(PurgeFilter { reason, ..base })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_names_its_letters_or_says_all() {
        let field = |query: PurgeDeadLetters| filter(&query).unwrap_err().field;
        assert_eq!(field(PurgeDeadLetters::default()).as_deref(), Some("ids"));
        assert_eq!(
            field(PurgeDeadLetters {
                all: true,
                ids: vec!["0190c0de-0000-7000-8000-000000000000".into()],
                ..PurgeDeadLetters::default()
            })
            .as_deref(),
            Some("all")
        );
        assert_eq!(
            field(PurgeDeadLetters {
                ids: vec!["nope".into()],
                ..PurgeDeadLetters::default()
            })
            .as_deref(),
            Some("ids")
        );
        let all = filter(&PurgeDeadLetters {
            all: true,
            reason: "invalid_input".into(),
            ..PurgeDeadLetters::default()
        })
        .unwrap();
        assert_eq!(all.reason.as_deref(), Some("invalid_input"));
        assert_eq!(all.ids, None);
    }
}
