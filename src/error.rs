//! The error classification shared by every domain module.
//!
//! Each module has its own `thiserror` enum; each enum says which [`ErrorKind`]
//! a variant is and which stable `code` names it. `http::error` is the only place
//! that turns a kind into an HTTP status.

/// What kind of failure happened, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Gone,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    /// Well-formed, but the content cannot be processed (a hostile or broken
    /// file asked for a preview): 422.
    Unprocessable,
    InsufficientStorage,
    Unavailable,
    Internal,
}

/// Implemented by every domain error so the HTTP layer can map it in one place.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
    /// Stable snake_case code for clients to match on (documented in README).
    fn code(&self) -> &'static str;
}
