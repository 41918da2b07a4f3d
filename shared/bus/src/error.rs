//! Error replies: a stable code, the numeric status and the name of the bad field.

use concord_wire::codec::CodecError;
use concord_wire::v1::{ErrorCode, ErrorReply};

/// What a handler returns when it cannot do what was asked.
///
/// Expected outcomes (bad input, unknown id, a conflict) are values of this
/// type, not log lines; the service scaffold turns them into an [`ErrorReply`]
/// body plus `Nats-Service-Error`/`Nats-Service-Error-Code` headers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.label())]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// Dotted path of the offending field, when one is to blame.
    pub field: Option<String>,
    /// Facts a caller can act on (`ErrorReply.details`), e.g. the current
    /// document of a conflict.
    pub details: Option<serde_json::Value>,
}

impl ServiceError {
    /// Any code with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    /// Bad input in `field`; the message is prefixed with the field name.
    pub fn invalid(field: impl Into<String>, message: impl AsRef<str>) -> Self {
        let field = field.into();
        Self {
            code: ErrorCode::InvalidArgument,
            message: format!("{field}: {}", message.as_ref()),
            field: Some(field),
            details: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The caller may not do this (a bad or missing signature); `field`
    /// names the header or field to blame.
    pub fn permission_denied(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::PermissionDenied,
            message: message.into(),
            field: Some(field.into()),
            details: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The numeric status sent in `Nats-Service-Error-Code`.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// Whether the request itself was at fault (and so is kept as a dead letter):
    /// retrying the same bytes can never succeed. A refused signature counts:
    /// the forged or broken request is kept for the operator.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::InvalidArgument
                | ErrorCode::PermissionDenied
                | ErrorCode::UnsupportedContentType
                | ErrorCode::PayloadTooLarge
        )
    }

    /// The same error carrying `details` (see [`ServiceError::details`]).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The wire form of this error.
    pub fn to_reply(&self) -> ErrorReply {
        let mut reply = ErrorReply::new(self.code, self.message.clone())
            .with_field(self.field.clone().unwrap_or_default());
        reply.details = self.details.clone().map(concord_wire::json::to_wire_value);
        reply
    }
}

impl From<CodecError> for ServiceError {
    fn from(error: CodecError) -> Self {
        match &error {
            CodecError::UnsupportedContentType(_) => {
                Self::new(ErrorCode::UnsupportedContentType, error.to_string())
            }
            _ => Self {
                code: ErrorCode::InvalidArgument,
                field: error.field().filter(|f| !f.is_empty()).map(str::to_string),
                message: error.to_string(),
                details: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_the_field_in_message_and_reply() {
        let error = ServiceError::invalid("capabilities[0].level", "must be within 0..1, got 3");
        assert_eq!(
            error.message,
            "capabilities[0].level: must be within 0..1, got 3"
        );
        let reply = error.to_reply();
        assert_eq!(reply.field, "capabilities[0].level");
        assert_eq!(reply.status, 400);
        assert_eq!(reply.code, ErrorCode::InvalidArgument as i32);
        assert!(error.is_bad_input());
        assert_eq!(
            error.to_string(),
            "INVALID_ARGUMENT: capabilities[0].level: must be within 0..1, got 3"
        );
    }

    #[test]
    fn server_side_errors_are_not_bad_input() {
        assert!(!ServiceError::unavailable("db down").is_bad_input());
        assert!(!ServiceError::not_found("no such agent").is_bad_input());
        assert_eq!(ServiceError::not_found("x").status(), 404);
        assert_eq!(ServiceError::unavailable("x").status(), 503);
    }
}
