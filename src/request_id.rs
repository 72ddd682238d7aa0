//! The request id: the client's own `X-Request-Id` when it is a safe token, else a new uuid.
//! It is echoed in the response, written in the access line and tags what the plugin prints,
//! so it must never carry anything that could forge a log line (SPEC §4).

use std::fmt;

use hyper::header::HeaderValue;

/// Longest client-supplied id that is kept (SPEC §4).
pub const MAX_CLIENT_ID: usize = 128;

/// A request id, held as the header value it is sent back as (a cheap, shared clone).
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh random id.
    pub fn generate() -> RequestId {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId(HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-")))
    }

    /// The client's id, when it is 1..=128 characters of `[A-Za-z0-9._:-]`.
    pub fn from_client(value: &HeaderValue) -> Option<RequestId> {
        valid_client_id(value.as_bytes()).then(|| RequestId(value.clone()))
    }

    /// The id as sent in `X-Request-Id`.
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `id` is a client id dpms keeps.
pub fn valid_client_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(valid_client_id(b"abc-123"));
        assert!(valid_client_id(b"trace:1.2_3"));
        assert!(valid_client_id("a".repeat(128).as_bytes()));
        assert!(!valid_client_id("a".repeat(129).as_bytes()));
        assert!(!valid_client_id(b""));
        assert!(!valid_client_id(b"has space"));
        assert!(!valid_client_id(b"line\nbreak"));
        assert!(!valid_client_id("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn generated_is_a_uuid() {
        let id = RequestId::generate();
        assert_eq!(id.as_str().len(), 36);
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
    }
}
