//! The Intercom error model.
//!
//! Owns [`ApiError`], the status/code/message triple every failing handler returns, which
//! `routes` renders as an `error.list` body. It does not decide which error applies.

/// One Intercom API error (rendered as `{"type":"error.list",...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// An error with any status.
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// A 400 error.
    pub(crate) fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    /// A 404 error.
    pub(crate) fn not_found(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(404, code, message)
    }

    /// 404 `not_found` "User Not Found" (contacts).
    pub(crate) fn user_not_found() -> ApiError {
        ApiError::not_found("not_found", "User Not Found")
    }

    /// 404 `not_found` "Resource Not Found".
    pub(crate) fn resource_not_found() -> ApiError {
        ApiError::not_found("not_found", "Resource Not Found")
    }

    /// 404 `company_not_found`.
    pub(crate) fn company_not_found() -> ApiError {
        ApiError::not_found("company_not_found", "Company Not Found")
    }

    /// 404 `ticket_not_found`.
    pub(crate) fn ticket_not_found() -> ApiError {
        ApiError::not_found("ticket_not_found", "Ticket not found")
    }
}
