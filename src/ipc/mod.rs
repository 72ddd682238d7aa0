//! The framed channel between the host and its child processes (the supervisor's workers
//! today, tenant processes later).
//!
//! A frame is a `u32` big-endian length followed by that many bytes of JSON: one typed message
//! (`serde`). Both ends are generic over the message type, so each use names its own protocol
//! enum and the compiler keeps the two sides in step.
//!
//! # Socket type
//! [`pair`] uses `socketpair(AF_UNIX, SOCK_STREAM, SOCK_CLOEXEC)` (what std's
//! `UnixStream::pair` does on Linux). `SOCK_SEQPACKET` would keep message boundaries in the
//! kernel, but tokio has no seqpacket type, so the async end would need hand-written readiness
//! code; with a stream the length prefix is the boundary and both std and tokio `UnixStream`
//! work as they are. `CLOEXEC` matters: a descriptor must only reach the child it is handed to
//! on purpose (SPEC §9: control descriptors never reach plugin code).
//!
//! # Policy
//! The host treats any [`Error`] read from a child — a short frame, an oversized length, a
//! message that does not parse, even a clean close when one was expected — as fatal for that
//! child: it stops talking to it and kills it (SPEC §11.8). There is no resynchronisation: after
//! a bad frame the stream position is unknown. The receiver never panics on input and never
//! allocates more than the maximum frame size given at construction; a length over it is
//! refused before any of the body is read.

mod frame;

pub use frame::{AsyncReceiver, AsyncSender, Receiver, Sender};

use std::io;
use std::os::unix::net::UnixStream;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the channel between frames.
    #[error("the peer closed the channel")]
    Closed,
    /// The peer closed the channel inside a frame (its length or its body).
    #[error("the peer closed the channel in the middle of a frame")]
    Truncated,
    /// A frame's length is over the channel's maximum.
    #[error("a frame of {0} bytes is over the channel's limit")]
    Oversized(u64),
    /// The body is not JSON for the expected message type.
    #[error("a malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A connected pair of blocking ends, both closed on exec: messages `T` go from the
/// [`Sender`] to the [`Receiver`]. Frames over `max_frame` bytes are refused on both sides.
///
/// For a channel in both directions, build two pairs, or use [`socket_pair`] and wrap each
/// stream (`try_clone` gives the second half of one socket).
pub fn pair<T: serde::Serialize + serde::de::DeserializeOwned>(
    max_frame: u32,
) -> io::Result<(Sender<T>, Receiver<T>)> {
    let (a, b) = socket_pair()?;
    Ok((Sender::new(a, max_frame), Receiver::new(b, max_frame)))
}

/// The raw connected sockets behind [`pair`]: `AF_UNIX`, `SOCK_STREAM`, `SOCK_CLOEXEC`.
pub fn socket_pair() -> io::Result<(UnixStream, UnixStream)> {
    // std calls socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC) on Linux.
    UnixStream::pair()
}
