//! The one body type that flows through the pipeline, in both directions.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body: hyper's `Incoming` from either side, or a small body of our own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Wraps hyper's streaming body without buffering it.
pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.map_err(BoxError::from).boxed_unsync()
}
