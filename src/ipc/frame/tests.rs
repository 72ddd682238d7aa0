use std::io::{Cursor, Write};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;
use crate::ipc::{pair, socket_pair};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Hello { worker: usize },
    Blob(String),
}

const MAX: u32 = 1 << 16;

fn raw_frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A receiver fed `bytes` then EOF, through a real socket.
fn recv_from(bytes: &[u8], max: u32) -> Result<Msg, Error> {
    let (mut a, b) = socket_pair().map_err(Error::Io)?;
    a.write_all(bytes).map_err(Error::Io)?;
    drop(a);
    Receiver::<Msg>::new(b, max).recv()
}

#[test]
fn round_trip() {
    let (mut tx, mut rx) = pair::<Msg>(MAX).unwrap();
    tx.send(&Msg::Hello { worker: 3 }).unwrap();
    tx.send(&Msg::Blob("é\n\0".into())).unwrap();
    assert_eq!(rx.recv().unwrap(), Msg::Hello { worker: 3 });
    assert_eq!(rx.recv().unwrap(), Msg::Blob("é\n\0".into()));
    drop(tx);
    assert!(matches!(rx.recv(), Err(Error::Closed)));
}

#[test]
fn closed_between_frames() {
    assert!(matches!(recv_from(&[], MAX), Err(Error::Closed)));
}

#[test]
fn truncated_header_and_body() {
    assert!(matches!(recv_from(&[0, 0], MAX), Err(Error::Truncated)));
    assert!(matches!(
        recv_from(&raw_frame(10, b"{\"Bl"), MAX),
        Err(Error::Truncated)
    ));
}

#[test]
fn oversized_is_refused_before_the_body() {
    // No body follows: the error must come from the length alone, not from a short read.
    assert!(matches!(
        recv_from(&u32::MAX.to_be_bytes(), MAX),
        Err(Error::Oversized(n)) if n == u64::from(u32::MAX)
    ));
    assert!(matches!(
        recv_from(&(MAX + 1).to_be_bytes(), MAX),
        Err(Error::Oversized(n)) if n == u64::from(MAX) + 1
    ));
    // The sender refuses too, and writes nothing.
    let (mut tx, mut rx) = pair::<Msg>(8).unwrap();
    assert!(matches!(
        tx.send(&Msg::Blob("0123456789".into())),
        Err(Error::Oversized(_))
    ));
    drop(tx);
    assert!(matches!(rx.recv(), Err(Error::Closed)));
}

#[test]
fn malformed() {
    assert!(matches!(
        recv_from(&raw_frame(3, b"{{{"), MAX),
        Err(Error::Malformed(_))
    ));
    // Valid JSON, wrong type.
    assert!(matches!(
        recv_from(&raw_frame(2, b"42"), MAX),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        recv_from(&raw_frame(0, b""), MAX),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn io_error_is_io() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
    }
    assert!(matches!(read_frame(&mut Broken, MAX), Err(Error::Io(_))));
}

#[test]
fn a_frame_exactly_at_the_cap() {
    // `Blob("x…")` encodes as {"Blob":"x…"}: 11 bytes around the string.
    let max = 1 << 20;
    let blob = "x".repeat(max as usize - 11);
    let (tx, mut rx) = pair::<Msg>(max).unwrap();
    // The socket buffer is smaller than the frame: write from another thread.
    let writer = std::thread::spawn(move || {
        let mut tx = tx;
        tx.send(&Msg::Blob(blob)).map(|()| tx)
    });
    match rx.recv().unwrap() {
        Msg::Blob(s) => assert_eq!(s.len(), max as usize - 11),
        other => panic!("unexpected {other:?}"),
    }
    let mut tx = writer.join().unwrap().unwrap();
    assert!(matches!(
        tx.send(&Msg::Blob("x".repeat(max as usize - 10))),
        Err(Error::Oversized(n)) if n == u64::from(max) + 1
    ));
}

#[test]
fn partial_writes_byte_by_byte() {
    let (mut a, b) = socket_pair().unwrap();
    let mut bytes = encode(&Msg::Hello { worker: 7 }, MAX).unwrap();
    bytes.extend(encode(&Msg::Blob("two".into()), MAX).unwrap());
    let writer = std::thread::spawn(move || {
        for byte in bytes {
            a.write_all(&[byte])?;
            std::thread::sleep(Duration::from_micros(200));
        }
        io::Result::Ok(())
    });
    let mut rx = Receiver::<Msg>::new(b, MAX);
    assert_eq!(rx.recv().unwrap(), Msg::Hello { worker: 7 });
    assert_eq!(rx.recv().unwrap(), Msg::Blob("two".into()));
    writer.join().unwrap().unwrap();
    assert!(matches!(rx.recv(), Err(Error::Closed)));
}

#[tokio::test]
async fn async_round_trip_and_errors() {
    let (tx, rx) = pair::<Msg>(MAX).unwrap();
    let mut tx = tx.into_async().unwrap();
    let mut rx = rx.into_async().unwrap();
    tx.send(&Msg::Hello { worker: 1 }).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), Msg::Hello { worker: 1 });
    drop(tx);
    assert!(matches!(rx.recv().await, Err(Error::Closed)));

    let (mut a, b) = socket_pair().unwrap();
    a.write_all(&(MAX + 1).to_be_bytes()).unwrap();
    let mut rx = Receiver::<Msg>::new(b, MAX).into_async().unwrap();
    assert!(matches!(rx.recv().await, Err(Error::Oversized(_))));

    let mut short = Cursor::new(raw_frame(5, b"ab"));
    assert!(matches!(
        read_frame_async(&mut short, MAX).await,
        Err(Error::Truncated)
    ));
}

#[tokio::test]
async fn async_reads_what_the_blocking_end_writes_byte_by_byte() {
    let (mut a, b) = socket_pair().unwrap();
    let bytes = encode(&Msg::Blob("slow".into()), MAX).unwrap();
    let writer = std::thread::spawn(move || {
        for byte in bytes {
            a.write_all(&[byte])?;
        }
        io::Result::Ok(())
    });
    let mut rx = Receiver::<Msg>::new(b, MAX).into_async().unwrap();
    assert_eq!(rx.recv().await.unwrap(), Msg::Blob("slow".into()));
    writer.join().unwrap().unwrap();
}

#[tokio::test]
async fn pump_sends_every_queued_message_in_order_then_ends_with_the_queue() {
    let (tx, rx) = pair::<Msg>(MAX).unwrap();
    let mut tx = tx.into_async().unwrap();
    let mut rx = rx.into_async().unwrap();
    let (queue_tx, mut queue) = tokio::sync::mpsc::unbounded_channel();
    // More than one batch's worth, queued before the pump runs, so batches are cut.
    for worker in 0..(BATCH_FRAMES * 2 + 3) {
        queue_tx.send(Msg::Hello { worker }).unwrap();
    }
    drop(queue_tx);
    tx.pump(&mut queue).await.unwrap();
    drop(tx);
    for worker in 0..(BATCH_FRAMES * 2 + 3) {
        assert_eq!(rx.recv().await.unwrap(), Msg::Hello { worker });
    }
    assert!(matches!(rx.recv().await, Err(Error::Closed)));
}

#[tokio::test]
async fn pump_refuses_an_oversized_message_and_sends_nothing_of_its_batch() {
    let (tx, rx) = pair::<Msg>(MAX).unwrap();
    let mut tx = tx.into_async().unwrap();
    let mut rx = rx.into_async().unwrap();
    let (queue_tx, mut queue) = tokio::sync::mpsc::unbounded_channel();
    queue_tx.send(Msg::Hello { worker: 1 }).unwrap();
    queue_tx
        .send(Msg::Blob("x".repeat(MAX as usize + 1)))
        .unwrap();
    assert!(matches!(
        tx.pump(&mut queue).await,
        Err(Error::Oversized(_))
    ));
    drop(tx);
    assert!(matches!(rx.recv().await, Err(Error::Closed)));
}

proptest! {
    /// Any byte stream gives messages then one error, never a panic, and never a buffer
    /// over the cap (a small cap here, so a random length is mostly over it).
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut reader = Cursor::new(bytes);
        for _ in 0..512 {
            match read_frame(&mut reader, 256) {
                Ok(body) => {
                    prop_assert!(body.len() <= 256);
                    let _ = decode::<Msg>(&body);
                }
                Err(Error::Closed | Error::Truncated | Error::Oversized(_)) => break,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    /// Random framed bodies: a valid length with arbitrary content only ever gives a message
    /// or `Malformed`.
    #[test]
    fn random_bodies_are_message_or_malformed(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let len = u32::try_from(body.len()).unwrap();
        let mut reader = Cursor::new(raw_frame(len, &body));
        let read = read_frame(&mut reader, 256).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), body.len());
        match decode::<Msg>(&read) {
            Ok(_) | Err(Error::Malformed(_)) => {}
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
