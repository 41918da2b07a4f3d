//! Hand-written helpers on the generated `ErrorCode` and `ErrorReply` types.

use crate::v1::{ErrorCode, ErrorReply};

impl ErrorCode {
    /// The code's short name for people: the schema name without the
    /// `ERROR_CODE_` prefix that proto3 needs on three of them
    /// (`UNAVAILABLE`, `CANCELLED`, `DEAD_LETTERED`, `NOT_FOUND`, ...).
    pub fn label(self) -> &'static str {
        let name = self.as_str_name();
        name.strip_prefix("ERROR_CODE_").unwrap_or(name)
    }

    /// The HTTP-like status carried in [`ErrorReply::status`] for this code.
    ///
    /// `Cancelled` maps to 499 (the "client closed request" status gRPC
    /// gateways use); `Unspecified` is treated as an internal error.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AgentRemoved => 410,
            Self::AlreadyExists | Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedContentType => 415,
            Self::Cancelled => 499,
            Self::Unspecified | Self::Internal | Self::DeadLettered => 500,
            Self::Unavailable | Self::NoEligibleAgent => 503,
            Self::Timeout => 504,
        }
    }
}

impl ErrorReply {
    /// An error reply with `code`, its status, and `message`; no field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            field: String::new(),
            status: code.status().into(),
            details: None,
        }
    }

    /// Names the offending request field (dotted path).
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code, found by walking the wire values until one is unknown,
    /// so a code added to the schema without a status fails this test.
    fn all_codes() -> Vec<ErrorCode> {
        (0..).map_while(|n| ErrorCode::try_from(n).ok()).collect()
    }

    #[test]
    fn status_covers_every_code() {
        let expected = [
            (ErrorCode::Unspecified, 500),
            (ErrorCode::InvalidArgument, 400),
            (ErrorCode::NotFound, 404),
            (ErrorCode::AlreadyExists, 409),
            (ErrorCode::Conflict, 409),
            (ErrorCode::PermissionDenied, 403),
            (ErrorCode::UnsupportedContentType, 415),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Internal, 500),
            (ErrorCode::Cancelled, 499),
            (ErrorCode::DeadLettered, 500),
            (ErrorCode::NoEligibleAgent, 503),
            (ErrorCode::AgentRemoved, 410),
        ];
        let all = all_codes();
        assert_eq!(
            all.len(),
            expected.len(),
            "a code is missing from this table"
        );
        for (code, status) in expected {
            assert!(all.contains(&code));
            assert_eq!(code.status(), status, "{}", code.as_str_name());
        }
    }

    #[test]
    fn error_reply_carries_the_status_of_its_code() {
        for code in all_codes() {
            let reply = ErrorReply::new(code, "x");
            assert_eq!(reply.code(), code);
            assert_eq!(reply.status, u32::from(code.status()));
            assert_eq!(reply.field, "");
        }
        let reply = ErrorReply::new(ErrorCode::InvalidArgument, "bad").with_field("payload.text");
        assert_eq!(reply.field, "payload.text");
    }

    #[test]
    fn clashing_codes_are_prefixed_on_the_wire_only() {
        // Liveness and TaskStatus own the bare names in the package scope.
        assert_eq!(
            ErrorCode::Unavailable.as_str_name(),
            "ERROR_CODE_UNAVAILABLE"
        );
        assert_eq!(ErrorCode::Cancelled.as_str_name(), "ERROR_CODE_CANCELLED");
        assert_eq!(
            ErrorCode::DeadLettered.as_str_name(),
            "ERROR_CODE_DEAD_LETTERED"
        );
        assert_eq!(ErrorCode::NotFound.as_str_name(), "NOT_FOUND");
        assert_eq!(ErrorCode::DeadLettered.label(), "DEAD_LETTERED");
        assert_eq!(ErrorCode::Unavailable.label(), "UNAVAILABLE");
        assert_eq!(ErrorCode::NotFound.label(), "NOT_FOUND");
        assert_eq!(ErrorCode::Unspecified.label(), "UNSPECIFIED");
    }
}
