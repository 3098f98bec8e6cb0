//! # The floor: a raw TCP echo round trip
//!
//! What does a round trip cost on this machine before any store work is done? The floor
//! answers it: an in-process echo server on loopback, on its own thread with its own
//! current-thread runtime (as a node has), driven by the same open-loop generator at the same
//! rate, over the same number of connections, with frames of the same size as the store's
//! requests. A store figure read beside its floor says how much the store adds: Cap'n Proto
//! framing, the RPC system, the resolver and the engine.
//!
//! Frame layout, both ways (the server sends each frame back unchanged):
//!
//! | size | field                            |
//! |------|----------------------------------|
//! | 4    | payload length, u32 big-endian   |
//! | n    | payload                          |
//!
//! A client connection pipelines: requests are written in order and answers come back in
//! the same order, so the connection keeps a FIFO of waiting requests.
//!
//! For tests the server can be told to stall ([`EchoServer::for_testing_stall`]): it holds
//! every answer until the stall ends, as a store would during a long pause.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

/// Largest frame payload either side accepts; a larger length closes the connection.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// An echo server on 127.0.0.1 with an ephemeral port, on its own thread.
pub struct EchoServer {
    address: SocketAddr,
    stall_until: Arc<Mutex<Option<Instant>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Bind 127.0.0.1:0 and serve on a new thread.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let stall_until = Arc::new(Mutex::new(None));
        let stall = Arc::clone(&stall_until);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread =
            std::thread::Builder::new().name("cartwheel-echo".into()).spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!(error = %e, "echo server cannot listen"),
                    };
                    tokio::pin!(stopped);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    tokio::task::spawn_local(serve(stream, Arc::clone(&stall)));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "echo accept failed");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            },
                        }
                    }
                });
            })?;
        Ok(Self { address, stall_until, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Hold every answer from now until `stall` has passed.
    pub fn for_testing_stall(&self, stall: Duration) {
        *self.stall_until.lock().expect("the stall lock is never poisoned") =
            Some(Instant::now() + stall);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(stream: TcpStream, stall_until: Arc<Mutex<Option<Instant>>>) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let (reader, writer) = stream.into_split();
    let (mut reader, mut writer) = (BufReader::new(reader), BufWriter::new(writer));
    let mut payload = Vec::new();
    loop {
        if read_frame(&mut reader, &mut payload).await.is_err() {
            return;
        }
        let stall = *stall_until.lock().expect("the stall lock is never poisoned");
        if let Some(until) = stall.filter(|until| *until > Instant::now()) {
            tokio::time::sleep_until(until.into()).await;
        }
        let written = async {
            writer.write_all(&(payload.len() as u32).to_be_bytes()).await?;
            writer.write_all(&payload).await?;
            // Answer at once unless more requests are already waiting to be read.
            if reader.buffer().is_empty() {
                writer.flush().await?;
            }
            std::io::Result::Ok(())
        };
        if written.await.is_err() {
            return;
        }
    }
}

async fn read_frame(
    reader: &mut (impl AsyncReadExt + Unpin),
    payload: &mut Vec<u8>,
) -> std::io::Result<()> {
    let length = reader.read_u32().await? as usize;
    if length > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!("frame of {length} bytes is over the limit")));
    }
    payload.resize(length, 0);
    reader.read_exact(payload).await?;
    Ok(())
}

/// One pipelined client connection to an echo server. Use inside a tokio `LocalSet`.
pub struct EchoConnection {
    waiting: Rc<RefCell<VecDeque<tokio::sync::oneshot::Sender<()>>>>,
    frames: tokio::sync::mpsc::UnboundedSender<Arc<[u8]>>,
}

impl EchoConnection {
    /// Connect to `address` (loopback only is meant).
    pub async fn connect(address: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let waiting: Rc<RefCell<VecDeque<tokio::sync::oneshot::Sender<()>>>> = Rc::default();
        let (frames, mut to_send) = tokio::sync::mpsc::unbounded_channel::<Arc<[u8]>>();
        tokio::task::spawn_local(async move {
            let mut writer = BufWriter::new(writer);
            while let Some(frame) = to_send.recv().await {
                let mut frame = Some(frame);
                // Write everything queued, then flush once.
                while let Some(f) = frame.take() {
                    let ok = writer.write_all(&(f.len() as u32).to_be_bytes()).await.is_ok()
                        && writer.write_all(&f).await.is_ok();
                    if !ok {
                        return;
                    }
                    frame = to_send.try_recv().ok();
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
        });
        let answers = Rc::clone(&waiting);
        tokio::task::spawn_local(async move {
            let mut reader = BufReader::new(reader);
            let mut payload = Vec::new();
            while read_frame(&mut reader, &mut payload).await.is_ok() {
                let Some(waiter) = answers.borrow_mut().pop_front() else { return };
                let _ = waiter.send(());
            }
            // The connection ended: dropping the waiters fails their requests.
            answers.borrow_mut().clear();
        });
        Ok(Self { waiting, frames })
    }

    /// Send `payload` and wait for it to come back.
    pub fn round_trip(
        &self,
        payload: Arc<[u8]>,
    ) -> impl std::future::Future<Output = Result<(), &'static str>> + 'static {
        let (answered, answer) = tokio::sync::oneshot::channel();
        self.waiting.borrow_mut().push_back(answered);
        let sent = self.frames.send(payload).is_ok();
        async move {
            if !sent {
                return Err("transport");
            }
            answer.await.map_err(|_| "transport")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames come back whole and in order, many in flight on one connection.
    #[test]
    fn echoes_pipelined_frames() {
        let server = EchoServer::start().unwrap();
        let address = server.address();
        crate::client::block_on(async move {
            let connection = EchoConnection::connect(address).await.unwrap();
            let trips: Vec<_> =
                (0..100).map(|i| connection.round_trip(vec![i as u8; 100 + i].into())).collect();
            for result in futures::future::join_all(trips).await {
                assert_eq!(result, Ok(()));
            }
        });
    }

    /// A stall holds answers for its length.
    #[test]
    fn stall_holds_answers() {
        let server = EchoServer::start().unwrap();
        let address = server.address();
        server.for_testing_stall(Duration::from_millis(100));
        let took = crate::client::block_on(async move {
            let connection = EchoConnection::connect(address).await.unwrap();
            let started = Instant::now();
            connection.round_trip(vec![1u8; 10].into()).await.unwrap();
            started.elapsed()
        });
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }
}
