//! # Transport: a TCP connection as a capnp-rpc two-party network
//!
//! Every connection of the node (clients in, peers out) and of the Rust client is built
//! here, the same way: TCP_NODELAY, a buffered reader, and a *coalescing writer*.
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
//!   for the socket (one message larger than that is still taken when nothing waits).
//! - A socket error is kept and returned by every later write or flush, which ends the
//!   connection's RPC system as a failed plain writer would.
//! - Closing or dropping the writer sends what is waiting and then shuts the socket's write
//!   half down.
//!
//! Everything runs on one thread (`spawn_local`), so the shared state is an `Rc<RefCell>`.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use capnp_rpc::{rpc_twoparty_capnp, twoparty};
use futures::io::BufReader;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Bytes a connection's writer holds for the socket before the write queue waits.
pub const WRITE_BUFFER_BYTES_MAX: usize = 4 << 20;

/// The two-party network over one TCP connection, as every connection here uses it.
pub type Network = twoparty::VatNetwork<BufReader<Compat<OwnedReadHalf>>>;

/// Build the network of `stream` for `side`, with the reader's `options`. Sets TCP_NODELAY
/// and spawns the connection's writer task; must be called inside a `LocalSet`.
pub fn network(
    stream: TcpStream,
    side: rpc_twoparty_capnp::Side,
    options: capnp::message::ReaderOptions,
) -> io::Result<Network> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let writer = CoalescingWriter::spawn(writer);
    Ok(twoparty::VatNetwork::new(BufReader::new(reader.compat()), writer, side, options))
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
    fn spawn(socket: OwnedWriteHalf) -> Self {
        let shared = Rc::new(RefCell::new(Shared::default()));
        tokio::task::spawn_local(send_loop(Rc::clone(&shared), socket));
        Self { shared }
    }
}

/// The writer task: take everything waiting, send it in one `write_all`, repeat.
async fn send_loop(shared: Rc<RefCell<Shared>>, mut socket: OwnedWriteHalf) {
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
        if let Err(e) = socket.write_all(&sending).await {
            let mut state = shared.borrow_mut();
            state.failed = Some((e.kind(), e.to_string()));
            state.waiting = Vec::new();
            if let Some(queue) = state.queue.take() {
                queue.wake();
            }
            return;
        }
        sending.clear();
        if sending.capacity() > WRITE_BUFFER_BYTES_MAX {
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
            let mut writer = CoalescingWriter::spawn(writer);
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
            let mut writer = CoalescingWriter::spawn(writer);
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
