//! The ends of a channel: encoding and the checked reading of frames, blocking and async.

use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::Error;

/// Bytes of the length prefix.
const HEADER: usize = 4;

/// The blocking sending end of a channel of `T`.
#[derive(Debug)]
pub struct Sender<T> {
    stream: UnixStream,
    max_frame: u32,
    // `fn(T)`: the end neither owns nor shares a `T`, so it stays `Send`/`Sync` for any `T`.
    _message: PhantomData<fn(T)>,
}

/// The blocking receiving end of a channel of `T`.
#[derive(Debug)]
pub struct Receiver<T> {
    stream: UnixStream,
    max_frame: u32,
    _message: PhantomData<fn() -> T>,
}

/// The async sending end of a channel of `T` (tokio).
#[derive(Debug)]
pub struct AsyncSender<T> {
    stream: tokio::net::UnixStream,
    max_frame: u32,
    _message: PhantomData<fn(T)>,
}

/// The async receiving end of a channel of `T` (tokio). Reads are buffered: under load one
/// read takes in many frames, and each costs no system call of its own.
#[derive(Debug)]
pub struct AsyncReceiver<T> {
    stream: tokio::io::BufReader<tokio::net::UnixStream>,
    max_frame: u32,
    _message: PhantomData<fn() -> T>,
}

impl<T: Serialize> Sender<T> {
    /// Wraps a connected stream; messages encoded over `max_frame` bytes are refused.
    pub fn new(stream: UnixStream, max_frame: u32) -> Self {
        Sender {
            stream,
            max_frame,
            _message: PhantomData,
        }
    }

    /// Sends one message as one frame, blocking until it is all written.
    pub fn send(&mut self, message: &T) -> Result<(), Error> {
        let frame = encode(message, self.max_frame)?;
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// The stream, e.g. to hand its descriptor to a child.
    pub fn into_inner(self) -> UnixStream {
        self.stream
    }

    /// The same end, driven by tokio. Must be called inside a runtime.
    pub fn into_async(self) -> io::Result<AsyncSender<T>> {
        Ok(AsyncSender::new(to_tokio(self.stream)?, self.max_frame))
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Wraps a connected stream; frames claiming more than `max_frame` bytes are refused.
    pub fn new(stream: UnixStream, max_frame: u32) -> Self {
        Receiver {
            stream,
            max_frame,
            _message: PhantomData,
        }
    }

    /// Blocks for the next message. Any error leaves the stream at an unknown position:
    /// the channel is done (see the module's policy).
    pub fn recv(&mut self) -> Result<T, Error> {
        let body = read_frame(&mut self.stream, self.max_frame)?;
        decode(&body)
    }

    /// The stream, e.g. to hand its descriptor to a child.
    pub fn into_inner(self) -> UnixStream {
        self.stream
    }

    /// The same end, driven by tokio. Must be called inside a runtime.
    pub fn into_async(self) -> io::Result<AsyncReceiver<T>> {
        Ok(AsyncReceiver::new(to_tokio(self.stream)?, self.max_frame))
    }
}

impl<T: Serialize> AsyncSender<T> {
    /// Wraps a connected tokio stream; messages encoded over `max_frame` bytes are refused.
    pub fn new(stream: tokio::net::UnixStream, max_frame: u32) -> Self {
        AsyncSender {
            stream,
            max_frame,
            _message: PhantomData,
        }
    }

    /// Sends one message as one frame. Not cancel-safe: a frame dropped half-written leaves
    /// the peer with a truncated frame.
    pub async fn send(&mut self, message: &T) -> Result<(), Error> {
        let frame = encode(message, self.max_frame)?;
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends everything `queue` delivers until it closes (then `Ok`), or the first failure.
    /// The messages waiting at each turn go out in one write: with many calls in flight the
    /// peer wakes once for all of them instead of once per frame, which is most of the cost
    /// of a round trip when both ends share a core.
    pub async fn pump(
        &mut self,
        queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> Result<(), Error> {
        let mut batch = Vec::new();
        while let Some(first) = queue.recv().await {
            batch.clear();
            encode_into(&mut batch, &first, self.max_frame)?;
            let mut count = 1;
            while count < BATCH_FRAMES && batch.len() < BATCH_BYTES {
                let Ok(next) = queue.try_recv() else { break };
                encode_into(&mut batch, &next, self.max_frame)?;
                count += 1;
            }
            self.stream.write_all(&batch).await?;
            if batch.capacity() > BATCH_BYTES {
                batch = Vec::new(); // one large body does not keep its buffer
            }
        }
        Ok(())
    }
}

/// At most this many frames ...
const BATCH_FRAMES: usize = 64;
/// ... or about this many bytes go out in one write of [`AsyncSender::pump`].
const BATCH_BYTES: usize = 256 << 10;

/// Bytes an [`AsyncReceiver`] reads ahead.
const READ_AHEAD: usize = 64 << 10;

impl<T: DeserializeOwned> AsyncReceiver<T> {
    /// Wraps a connected tokio stream; frames claiming more than `max_frame` bytes are refused.
    pub fn new(stream: tokio::net::UnixStream, max_frame: u32) -> Self {
        AsyncReceiver {
            stream: tokio::io::BufReader::with_capacity(READ_AHEAD, stream),
            max_frame,
            _message: PhantomData,
        }
    }

    /// Waits for the next message. Not cancel-safe: bytes already read are lost if the
    /// future is dropped, so do not race it in `select!` against anything but the end of
    /// the channel's owner.
    pub async fn recv(&mut self) -> Result<T, Error> {
        let body = read_frame_async(&mut self.stream, self.max_frame).await?;
        decode(&body)
    }
}

/// Length prefix + JSON, refused when the body is over `max_frame`.
fn encode<T: Serialize>(message: &T, max_frame: u32) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::new();
    encode_into(&mut frame, message, max_frame)?;
    Ok(frame)
}

/// [`encode`] appending to `out`; on an error `out` is left as it was.
fn encode_into<T: Serialize>(out: &mut Vec<u8>, message: &T, max_frame: u32) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    if let Err(e) = serde_json::to_writer(&mut *out, message) {
        out.truncate(start);
        return Err(Error::Malformed(e));
    }
    let len = out.len() - start - HEADER;
    let Some(len32) = u32::try_from(len).ok().filter(|&n| n <= max_frame) else {
        out.truncate(start);
        return Err(Error::Oversized(len as u64));
    };
    out[start..start + HEADER].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// A blocking end's stream as a tokio one (which must be non-blocking). Must be called inside a
/// runtime.
fn to_tokio(stream: UnixStream) -> io::Result<tokio::net::UnixStream> {
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(Error::Malformed)
}

/// The body's length from a full header, checked against `max_frame` before anything is
/// allocated for the body.
fn checked_len(header: [u8; HEADER], max_frame: u32) -> Result<usize, Error> {
    let len = u32::from_be_bytes(header);
    if len > max_frame {
        return Err(Error::Oversized(u64::from(len)));
    }
    usize::try_from(len).map_err(|_| Error::Oversized(u64::from(len)))
}

/// Reads one frame's body. EOF before the first header byte is [`Error::Closed`]; EOF after
/// it is [`Error::Truncated`].
pub(super) fn read_frame(reader: &mut impl Read, max_frame: u32) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(Error::Closed),
            Ok(0) => return Err(Error::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    let mut body = vec![0u8; checked_len(header, max_frame)?];
    reader.read_exact(&mut body).map_err(eof_is_truncated)?;
    Ok(body)
}

/// [`read_frame`] for tokio streams.
pub(super) async fn read_frame_async(
    reader: &mut (impl AsyncRead + Unpin),
    max_frame: u32,
) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Err(Error::Closed),
            Ok(0) => return Err(Error::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    let mut body = vec![0u8; checked_len(header, max_frame)?];
    reader
        .read_exact(&mut body)
        .await
        .map_err(eof_is_truncated)?;
    Ok(body)
}

fn eof_is_truncated(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated
    } else {
        Error::Io(e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests;
