//! # Transport: a TCP connection as a capnp-rpc two-party network
//!
//! Every connection of the node (clients in, peers out) and of the Rust client is built
//! here, the same way: TCP_NODELAY, a buffered reader that enforces a *message deadline*,
//! and a *coalescing writer*. The byte stream is the TCP socket itself in insecure mode, or
//! a TLS 1.3 session over it (src/security); this module does not care which.
//!
//! ## The message deadline
//! capnp-rpc reads a message and waits as long as it takes for the rest of it. A peer that
//! sends part of a message and stalls, or dies half-way without the connection being reset,
//! would hold the connection (and its slot under `limits.connections_max`) forever. The
//! reader follows the stream's framing (segment table, then segments) as bytes pass, and
//! once a message has begun, the whole of it must arrive within the deadline
//! (`limits.message_read_timeout_ms`), or the read fails with `TimedOut` and the connection
//! closes. Between messages there is no deadline: idle connections stay open.
//!
//! ## Why a coalescing writer
//! capnp-rpc's write queue writes one message and flushes it before it takes the next, so
//! with a plain buffered writer every message is its own `write` system call, and on
//! loopback each such call also runs the receiver's TCP path. Under load a node produces
//! many messages per scheduler turn (answers to several clients, replicate calls to the
//! same peer), and those calls were a large part of its CPU time (docs/BENCHMARKS.md).
//!
//! ## The contract
//! - A flushed message is handed to a writer task of the connection, which sends everything
//!   handed to it in one `write_all`. The task runs after the tasks already queued on the
//!   node's thread, so the messages of one scheduler turn leave together; a message is never
//!   held back longer than that.
//! - Order is kept: bytes leave in the order they were written.
//! - Memory is bounded: past [`WRITE_BUFFER_BYTES_MAX`] waiting bytes, the write queue waits
//!   for the socket, and what waits is sent at once, flushed or not, so that a message
//!   written in pieces larger than the buffer gets through (one piece larger than that is
//!   still taken when nothing waits). A busy connection holds at most two such buffers (one
//!   waiting, one being sent); an idle one keeps at most [`WRITE_BUFFER_RETAINED_BYTES`] of
//!   each for the next burst.
//! - A socket error is kept and returned by every later write or flush, which ends the
//!   connection's RPC system as a failed plain writer would.
//! - Closing or dropping the writer sends what is waiting and then shuts the socket's write
//!   half down.
//!
//! Everything runs on one thread (`spawn_local`), so the shared state is an `Rc<RefCell>`.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty};
use futures::io::BufReader;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Bytes a connection's writer holds for the socket before the write queue waits. Coalescing
/// pays off for small messages, and 1 MiB of them is thousands per system call; a large
/// message (a value) is sent on its own either way. Every connection may hold two of these
/// (see the module doc), so this is also per-connection memory (src/node/server.rs).
pub const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;

/// Capacity a connection's writer keeps in each of its two buffers once a batch has been
/// sent; a larger one is freed, so a burst of large messages leaves no megabytes behind on
/// a connection that then idles.
pub const WRITE_BUFFER_RETAINED_BYTES: usize = 64 << 10;

/// The message deadline of connections that are not told another (the client's).
pub const MESSAGE_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// The reading half of a connection's byte stream.
pub type Reader = Box<dyn AsyncRead + Unpin>;

/// The writing half of a connection's byte stream.
pub type Writer = Box<dyn AsyncWrite + Unpin>;

/// The two-party network over one connection, as every connection here uses it.
pub type Network = twoparty::VatNetwork<BufReader<DeadlineReader<Compat<Reader>>>>;

/// A connection's byte stream: a TCP socket, or a TLS session over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> Stream for S {}

/// Set TCP_NODELAY (requests are small and latency-bound) and TCP keepalive (a peer that
/// vanished without a reset is found out, and its connection closed, within minutes).
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Build the network of a plain TCP `stream` for `side`, with the reader's `options` and
/// message deadline. Tunes the socket ([`tune`]) and spawns the connection's writer task;
/// must be called inside a `LocalSet`.
pub fn network(
    stream: TcpStream,
    side: rpc_twoparty_capnp::Side,
    options: capnp::message::ReaderOptions,
    message_read_timeout: Duration,
) -> io::Result<Network> {
    tune(&stream)?;
    let (reader, writer) = stream.into_split();
    Ok(network_of(Box::new(reader), Box::new(writer), side, options, message_read_timeout))
}

/// [`network`] over any byte stream (a TLS session); the socket under it is tuned already.
pub fn network_over(
    stream: impl Stream,
    side: rpc_twoparty_capnp::Side,
    options: capnp::message::ReaderOptions,
    message_read_timeout: Duration,
) -> Network {
    let (reader, writer) = tokio::io::split(stream);
    network_of(Box::new(reader), Box::new(writer), side, options, message_read_timeout)
}

fn network_of(
    reader: Reader,
    writer: Writer,
    side: rpc_twoparty_capnp::Side,
    options: capnp::message::ReaderOptions,
    message_read_timeout: Duration,
) -> Network {
    let reader = DeadlineReader::new(reader.compat(), message_read_timeout);
    let writer = CoalescingWriter::spawn(writer);
    twoparty::VatNetwork::new(BufReader::new(reader), writer, side, options)
}

/// Where a byte stream of capnp messages is: between messages, in a segment table, or in
/// the segments. Fed every byte in order.
#[derive(Debug, Default)]
struct Framing {
    state: FrameState,
    /// Messages begun so far.
    started: u64,
}

#[derive(Debug, Default)]
enum FrameState {
    #[default]
    Idle,
    /// In the segment table: `seen` of its `len` bytes, the u32 being read, the segment
    /// count (known after the first u32) and the body bytes announced so far.
    Table { seen: u64, len: u64, word: [u8; 4], count: u64, body: u64 },
    /// In the segments: bytes still to come.
    Body(u64),
}

impl Framing {
    fn in_message(&self) -> bool {
        !matches!(self.state, FrameState::Idle)
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(&byte) = bytes.first() {
            match &mut self.state {
                FrameState::Idle => {
                    self.started += 1;
                    // The table is at least one word; its length is known after 4 bytes.
                    self.state =
                        FrameState::Table { seen: 0, len: 8, word: [0; 4], count: 1, body: 0 };
                }
                FrameState::Table { seen, len, word, count, body } => {
                    word[(*seen % 4) as usize] = byte;
                    *seen += 1;
                    bytes = &bytes[1..];
                    if *seen % 4 == 0 {
                        let value = u64::from(u32::from_le_bytes(*word));
                        let index = *seen / 4 - 1;
                        if index == 0 {
                            // Segment count minus one, then one u32 size per segment,
                            // padded to a whole number of words.
                            *count = value + 1;
                            *len = (4 + 4 * *count).div_ceil(8) * 8;
                        } else if index <= *count {
                            *body += value * 8;
                        }
                    }
                    if *seen == *len {
                        self.state =
                            if *body == 0 { FrameState::Idle } else { FrameState::Body(*body) };
                    }
                }
                FrameState::Body(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = FrameState::Idle;
                    }
                }
            }
        }
    }
}

/// A reader that fails with `TimedOut` when a message it has begun does not arrive whole
/// within its deadline (see the module doc).
pub struct DeadlineReader<R> {
    inner: R,
    framing: Framing,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R> DeadlineReader<R> {
    fn new(inner: R, timeout: Duration) -> Self {
        Self { inner, framing: Framing::default(), timeout, deadline: None }
    }
}

impl<R: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for DeadlineReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => {
                let started = this.framing.started;
                this.framing.feed(&buf[..n]);
                if !this.framing.in_message() {
                    this.deadline = None;
                } else if this.framing.started != started || this.deadline.is_none() {
                    // A message began in these bytes: its deadline starts now.
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("a message was not completed within {:?}", this.timeout),
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Bytes written and not yet taken by the writer task.
    waiting: Vec<u8>,
    /// The writer task, asleep until there are bytes or the writer is closed.
    task: Option<Waker>,
    /// The write queue, asleep until there is room.
    queue: Option<Waker>,
    /// The first socket error; every later call fails with it.
    failed: Option<(io::ErrorKind, String)>,
    closed: bool,
}

impl Shared {
    fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }
}

/// The writing half of a connection; see the module doc.
pub struct CoalescingWriter {
    shared: Rc<RefCell<Shared>>,
}

impl CoalescingWriter {
    /// A writer whose bytes a spawned local task sends to `socket`.
    fn spawn(socket: Writer) -> Self {
        let shared = Rc::new(RefCell::new(Shared::default()));
        tokio::task::spawn_local(send_loop(Rc::clone(&shared), socket));
        Self { shared }
    }
}

/// The writer task: take everything waiting, send it in one `write_all`, repeat.
async fn send_loop(shared: Rc<RefCell<Shared>>, mut socket: Writer) {
    let mut sending = Vec::new();
    loop {
        let more = std::future::poll_fn(|cx| {
            let mut state = shared.borrow_mut();
            if !state.waiting.is_empty() {
                std::mem::swap(&mut sending, &mut state.waiting);
                if let Some(queue) = state.queue.take() {
                    queue.wake();
                }
                Poll::Ready(true)
            } else if state.closed {
                Poll::Ready(false)
            } else {
                state.task = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !more {
            let _ = socket.shutdown().await;
            return;
        }
        // The flush matters for TLS, whose session may keep records back until flushed.
        let sent = match socket.write_all(&sending).await {
            Ok(()) => socket.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            let mut state = shared.borrow_mut();
            state.failed = Some((e.kind(), e.to_string()));
            state.waiting = Vec::new();
            if let Some(queue) = state.queue.take() {
                queue.wake();
            }
            return;
        }
        sending.clear();
        if sending.capacity() > WRITE_BUFFER_RETAINED_BYTES {
            sending = Vec::new();
        }
    }
}

impl futures::io::AsyncWrite for CoalescingWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.borrow_mut();
        if let Some(e) = state.error() {
            return Poll::Ready(Err(e));
        }
        if !state.waiting.is_empty() && state.waiting.len() + bytes.len() > WRITE_BUFFER_BYTES_MAX {
            state.queue = Some(cx.waker().clone());
            // What waits may be the start of this very message, not flushed yet (a segment
            // table before a large segment): send it now, or nothing would make room.
            if let Some(task) = state.task.take() {
                task.wake();
            }
            return Poll::Pending;
        }
        state.waiting.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.borrow_mut();
        if let Some(e) = state.error() {
            return Poll::Ready(Err(e));
        }
        if !state.waiting.is_empty() {
            if let Some(task) = state.task.take() {
                task.wake();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        close(&self.shared);
        Poll::Ready(Ok(()))
    }
}

impl Drop for CoalescingWriter {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

/// Mark the writer closed and wake its task, which sends what waits and shuts down.
fn close(shared: &Rc<RefCell<Shared>>) {
    let mut state = shared.borrow_mut();
    state.closed = true;
    if let Some(task) = state.task.take() {
        task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncWriteExt as _;
    use tokio::io::AsyncReadExt;

    /// Messages flushed in one turn arrive whole and in order; closing ends the stream.
    #[test]
    fn flushed_bytes_arrive_in_order_and_close_ends_the_stream() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let reading = tokio::task::spawn_local(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut all = Vec::new();
                socket.read_to_end(&mut all).await.unwrap();
                all
            });
            let stream = TcpStream::connect(address).await.unwrap();
            let (_reader, writer) = stream.into_split();
            let mut writer = CoalescingWriter::spawn(Box::new(writer));
            let mut expected = Vec::new();
            for i in 0..1000u32 {
                let message = vec![(i % 251) as u8; 1 + (i as usize * 37) % 3000];
                writer.write_all(&message).await.unwrap();
                writer.flush().await.unwrap();
                expected.extend_from_slice(&message);
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            writer.close().await.unwrap();
            drop(writer);
            assert_eq!(reading.await.unwrap(), expected);
        });
    }

    /// A message written in pieces larger than the buffer, with no flush between them (a
    /// segment table, then a large segment), gets through whole: what waits is sent to make
    /// room rather than held for a flush that only comes after the last piece.
    #[test]
    fn pieces_larger_than_the_buffer_get_through_before_a_flush() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let reading = tokio::task::spawn_local(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut all = Vec::new();
                socket.read_to_end(&mut all).await.unwrap();
                all
            });
            let stream = TcpStream::connect(address).await.unwrap();
            let (_reader, writer) = stream.into_split();
            let mut writer = CoalescingWriter::spawn(Box::new(writer));
            let pieces = [vec![1u8; 16], vec![2u8; 3 * WRITE_BUFFER_BYTES_MAX], vec![3u8; 8]];
            let writing = async {
                for piece in &pieces {
                    writer.write_all(piece).await.unwrap();
                }
                writer.flush().await.unwrap();
                writer.close().await.unwrap();
            };
            tokio::time::timeout(Duration::from_secs(30), writing)
                .await
                .expect("the large piece is taken once what waits is sent");
            drop(writer);
            assert_eq!(reading.await.unwrap(), pieces.concat());
        });
    }

    /// Real capnp messages of one and of several segments, fed in pieces of every size: the
    /// framing is inside a message exactly until its last byte.
    #[test]
    fn framing_follows_real_messages() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for words in [1usize, 3000] {
            // A small first segment forces a second (and third) for the larger data.
            let mut message = capnp::message::Builder::new(
                capnp::message::HeapAllocator::new().first_segment_words(16),
            );
            let mut list: capnp::data_list::Builder<'_> = message.initn_root(10);
            let chunk: Vec<u8> = (0..words * 8 / 10).map(|j| j as u8).collect();
            for i in 0..10 {
                list.set(i, &chunk);
            }
            let segments = message.get_segments_for_output().len();
            assert!(words == 1 || segments >= 3, "{segments} segments");
            capnp::serialize::write_message(&mut stream, &message).unwrap();
            ends.push(stream.len());
        }
        assert!(ends[1] - ends[0] > 2900 * 8);
        for piece in [1usize, 3, 8, 1000, stream.len()] {
            let mut framing = Framing::default();
            let mut at = 0;
            while at < stream.len() {
                let next = (at + piece).min(stream.len());
                framing.feed(&stream[at..next]);
                at = next;
                let boundary = ends.contains(&at);
                assert_eq!(framing.in_message(), !boundary, "piece {piece}, at {at}");
            }
            assert_eq!(framing.started, 2);
        }
    }

    /// Half a message then silence fails the read after the deadline; an idle connection
    /// (no message begun) does not.
    #[test]
    fn a_stalled_message_times_out_and_idle_does_not() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use futures::io::AsyncReadExt as _;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let mut sender = TcpStream::connect(address).await.unwrap();
            let (receiver, _) = listener.accept().await.unwrap();
            let mut reader = DeadlineReader::new(receiver.compat(), Duration::from_millis(100));
            let mut buf = [0u8; 64];
            let idle = tokio::time::timeout(Duration::from_millis(300), reader.read(&mut buf));
            assert!(idle.await.is_err(), "an idle connection is left alone");
            // A one-segment table announcing 4 words, and only 1 of them.
            sender.write_all(&[0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
            let mut got = 0;
            let error = loop {
                match reader.read(&mut buf).await {
                    Ok(n) => got += n,
                    Err(e) => break e,
                }
            };
            assert_eq!(got, 16);
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        });
    }

    /// A socket whose peer is gone makes later writes fail instead of piling up bytes.
    #[test]
    fn a_dead_socket_fails_later_writes() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let stream = TcpStream::connect(address).await.unwrap();
            drop(listener.accept().await.unwrap());
            drop(listener);
            let (_reader, writer) = stream.into_split();
            let mut writer = CoalescingWriter::spawn(Box::new(writer));
            let mut failed = false;
            for _ in 0..200 {
                let result = async {
                    writer.write_all(&[7u8; 64 << 10]).await?;
                    writer.flush().await
                }
                .await;
                if result.is_err() {
                    failed = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert!(failed, "writes to a closed peer fail");
        });
    }
}
