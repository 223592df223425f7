//! Request bodies: held back until complete (bounded by the body limit), so the envelope is
//! known and an oversized body is refused before any of it reaches the upstream.

use crate::protocol::jsonrpc::{Envelope, EnvelopeError};
use bytes::{Bytes, BytesMut};

/// What a body chunk did to the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyProgress {
    /// More chunks expected; nothing goes upstream yet.
    Pending,
    /// The whole body, to send upstream in one piece.
    Complete(Bytes),
    /// Over the limit: answer 413.
    TooLarge,
}

/// Accumulates one request body.
#[derive(Debug, Default)]
pub struct BodyBuffer {
    buf: BytesMut,
}

impl BodyBuffer {
    /// Feeds one chunk. A body that arrives whole in its only chunk is passed on without a copy.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool, limit: usize) -> BodyProgress {
        let chunk = chunk.unwrap_or_default();
        if self.buf.len() + chunk.len() > limit {
            self.buf = BytesMut::new();
            return BodyProgress::TooLarge;
        }
        if !end {
            self.buf.extend_from_slice(&chunk);
            return BodyProgress::Pending;
        }
        if self.buf.is_empty() {
            BodyProgress::Complete(chunk)
        } else {
            self.buf.extend_from_slice(&chunk);
            BodyProgress::Complete(std::mem::take(&mut self.buf).freeze())
        }
    }
}

/// The envelope of a complete body, if it looks like JSON at all. Non-JSON bodies are the
/// upstream's business and pass through untouched.
pub fn envelope_of(body: &[u8]) -> Option<Result<Envelope, EnvelopeError>> {
    looks_like_json(body).then(|| Envelope::parse(body))
}

/// Whether a body starts as JSON does (an object or array after whitespace), without parsing.
pub fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_chunk_passes_through() {
        let mut b = BodyBuffer::default();
        let chunk = Bytes::from_static(b"{\"id\":1}");
        assert_eq!(
            b.push(Some(chunk.clone()), true, 100),
            BodyProgress::Complete(chunk)
        );
    }

    #[test]
    fn chunks_are_held_until_the_end() {
        let mut b = BodyBuffer::default();
        assert_eq!(
            b.push(Some(Bytes::from_static(b"ab")), false, 100),
            BodyProgress::Pending
        );
        assert_eq!(
            b.push(Some(Bytes::from_static(b"cd")), false, 100),
            BodyProgress::Pending
        );
        assert_eq!(
            b.push(None, true, 100),
            BodyProgress::Complete(Bytes::from_static(b"abcd"))
        );
    }

    #[test]
    fn limit_counts_the_whole_body() {
        let mut b = BodyBuffer::default();
        assert_eq!(
            b.push(Some(Bytes::from_static(b"abc")), false, 5),
            BodyProgress::Pending
        );
        assert_eq!(
            b.push(Some(Bytes::from_static(b"def")), true, 5),
            BodyProgress::TooLarge
        );
        let mut b = BodyBuffer::default();
        assert_eq!(
            b.push(Some(Bytes::from_static(b"abcde")), true, 5),
            BodyProgress::Complete(Bytes::from_static(b"abcde"))
        );
    }

    #[test]
    fn only_json_looking_bodies_are_parsed() {
        assert!(envelope_of(b"hello").is_none());
        assert!(envelope_of(b"  ").is_none());
        assert!(envelope_of(b" {\"id\":1,\"method\":\"ping\"}")
            .unwrap()
            .is_ok());
        assert!(envelope_of(b"{oops").unwrap().is_err());
    }
}
