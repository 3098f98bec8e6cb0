//! # The crate's `unsafe` code
//!
//! The only `unsafe` code in the crate: preallocation, early writeback, the read-only mappings of segment files and
//! the flusher's io_uring ([`Uring`] has its own argument). Each function here makes one system
//! call or one view of a mapping and decides nothing; the callers in the memory log keep the
//! promises the argument below relies on, and no other module of the crate may hold `unsafe` code.
//!
//! # Soundness of the mappings
//! A [`Map`] hands out `&[u8]` views of a file mapping. Such a slice must not change while it
//! is borrowed and must not point past the end of the file (a read there is a `SIGBUS`). The
//! memory log keeps both promises:
//!
//! - **Only written, immutable bytes are viewed.** [`Map::bytes`] only returns bytes below a
//!   `readable` mark that the caller passes in. The mark only grows, and only after the bytes
//!   below it were written with `pwrite`; the log never writes below the mark again (records
//!   are appended, never rewritten). Views are made from the raw pointer for exactly the
//!   requested range, never for the whole mapping, so no reference covers bytes still being
//!   written.
//! - **The file is never shorter than its mapping.** An active segment is preallocated to its
//!   full capacity (`posix_fallocate`) before it is mapped with that length; a recovered
//!   segment is mapped with its current length. Files are truncated only during recovery, and
//!   only after their mapping was dropped. Deleting a file (merge, snapshot) unlinks it; the
//!   inode and the pages stay until the last mapping goes away. Preallocation also means the
//!   blocks exist, so running out of disk space shows up as a `write` error, never as a fault
//!   on a mapped page.
//! - **No other writer.** The data directory is locked with `flock` for the life of the log,
//!   so another cartwheel process cannot open and change the files. A process that ignores
//!   the lock (or a failing disk) can still break these promises; that is outside what any
//!   mmap-based store can defend against.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Allocate disk blocks for `[0, len)` of `file`, extending it to `len` if shorter; new
/// bytes read as zero.
pub(super) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    loop {
        // SAFETY: `posix_fallocate` takes a descriptor (open while `file` is borrowed) and
        // two integers; it touches no memory of ours.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            // File systems without fallocate: extend the file instead (sparse).
            libc::EOPNOTSUPP => {
                if file.metadata()?.len() < len as u64 {
                    file.set_len(len as u64)?;
                }
                return Ok(());
            }
            code => return Err(io::Error::from_raw_os_error(code)),
        }
    }
}

/// Start writeback of `[offset, offset + len)` of `file` and wait until it is on the device
/// (`sync_file_range` with wait-before, write and wait-after). Not a durability barrier: no
/// metadata, no cache flush. Keeps a large sequential write (a snapshot) from piling up in
/// the page cache, where its final `fsync` would queue all of it in front of every other
/// file's `fdatasync`. Where the call does not exist it does nothing.
pub(crate) fn write_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (
        libc::off64_t::try_from(offset).map_err(io::Error::other)?,
        libc::off64_t::try_from(len).map_err(io::Error::other)?,
    );
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    loop {
        // SAFETY: `sync_file_range` takes a descriptor (open while `file` is borrowed) and
        // integers; it touches no memory of ours.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => return Ok(()),
            _ => return Err(error),
        }
    }
}

/// Bytes of a mapping [`Map::release`] lets go of per system call.
const RELEASE_CHUNK_BYTES: u64 = 1 << 20;

/// An io_uring owned by one flusher thread. Each call submits one operation and waits
/// for its completion before it returns, so at most one operation is ever in flight.
///
/// Soundness: a write hands the kernel a pointer into a buffer. The call holds a clone of
/// the buffer's `Arc` until the write's completion has been reaped, so nothing can free it
/// while the kernel may read it, and nothing writes to it (an `Arc` only shares). If
/// waiting fails in a way that leaves the write's fate unknown, the buffer is leaked (never
/// freed) and the ring is marked broken: every later call fails without submitting
/// anything.
pub(super) struct Uring {
    ring: io_uring::IoUring,
    broken: bool,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("broken", &self.broken).finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring of a few entries; fails where the kernel refuses io_uring.
    pub(super) fn new() -> io::Result<Uring> {
        Ok(Uring { ring: io_uring::IoUring::new(4)?, broken: false })
    }

    /// Write all of `buffer` at `offset` of `file`.
    pub(super) fn write_all_at(
        &mut self,
        file: &File,
        buffer: &Arc<Vec<u8>>,
        offset: u64,
    ) -> io::Result<()> {
        // The kernel reads from this clone's allocation: nothing frees it while this one lives,
        // and nothing writes to what an `Arc` shares.
        let buffer = Arc::clone(buffer);
        let mut done = 0usize;
        while done < buffer.len() {
            let len = u32::try_from(buffer.len() - done).unwrap_or(1 << 30);
            let entry = io_uring::opcode::Write::new(
                io_uring::types::Fd(file.as_raw_fd()),
                // In bounds: `done < buffer.len()`.
                buffer[done..].as_ptr(),
                len,
            )
            .offset(offset + done as u64)
            .build();
            // SAFETY: the entry points into `buffer`, which this function holds (an `Arc`
            // clone: shared, never written) and does not drop until `run` returns with the
            // completion reaped (`Ok`/`Err(Completed)`); on `Err(Unknown)` it is leaked below.
            match unsafe { self.run(&entry) } {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(Failure::Completed(e)) => return Err(e),
                Err(Failure::Unknown(e)) => {
                    std::mem::forget(buffer);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// `fdatasync` of `file`.
    pub(super) fn sync_data(&mut self, file: &File) -> io::Result<()> {
        let entry = io_uring::opcode::Fsync::new(io_uring::types::Fd(file.as_raw_fd()))
            .flags(io_uring::types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: an fsync entry points to no memory of ours.
        match unsafe { self.run(&entry) } {
            Ok(_) => Ok(()),
            Err(Failure::Completed(e) | Failure::Unknown(e)) => Err(e),
        }
    }

    /// Submit `entry` and wait for its completion; its result on success.
    ///
    /// # Safety
    /// Memory the entry points to must stay valid and untouched until this returns `Ok`
    /// or `Err(Failure::Completed)`, and forever after `Err(Failure::Unknown)`.
    unsafe fn run(&mut self, entry: &io_uring::squeue::Entry) -> Result<usize, Failure> {
        if self.broken {
            return Err(Failure::Completed(io::Error::other("the io_uring failed earlier")));
        }
        // SAFETY: the caller keeps the entry's memory valid as documented above.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            return Err(Failure::Completed(io::Error::other("io_uring queue full")));
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(Failure::Unknown(e));
                }
            }
            if let Some(completion) = self.ring.completion().next() {
                let result = completion.result();
                return if result < 0 {
                    Err(Failure::Completed(io::Error::from_raw_os_error(-result)))
                } else {
                    Ok(result as usize)
                };
            }
        }
    }
}

/// Why [`Uring::run`] failed.
enum Failure {
    /// The operation completed with this error, or never started.
    Completed(io::Error),
    /// Waiting failed; the operation may still be in flight.
    Unknown(io::Error),
}

/// A read-only shared mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub(super) struct Map {
    map: Option<memmap2::Mmap>,
    len: u64,
}

impl Map {
    /// Map `[0, len)` of `file`. The caller guarantees the file is at least `len` bytes
    /// long and stays so while the map lives (see the module soundness argument).
    pub(super) fn new(file: &File, len: u64) -> io::Result<Map> {
        if len == 0 {
            return Ok(Map { map: None, len });
        }
        let length = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: the file is at least `len` bytes long and is never truncated while
        // mapped; the data directory is locked against other writers; we only view
        // ranges below the readable mark, which never change again (see above).
        let map = unsafe { memmap2::MmapOptions::new().len(length).map(file)? };
        Ok(Map { map: Some(map), len })
    }

    /// The mapped length.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Let go of the pages of `[offset, offset + len)` (whole pages inside it): they leave
    /// this process's resident memory and stay in the page cache, so reading large records
    /// does not grow the node's RSS by what it read. Best effort: errors are ignored.
    pub(super) fn release(&self, offset: u64, len: u64) {
        const PAGE: u64 = 4096;
        let Some(map) = self.map.as_ref() else { return };
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + len).min(self.len) / PAGE * PAGE;
        if end <= start {
            return;
        }
        // One call per chunk: each holds the process's memory-map lock while it zaps its page
        // table entries, and one call over a whole 64 MiB segment held it for 10-13 ms, so
        // that every other thread's `mmap`, `munmap` (the allocator's) and, behind those,
        // page faults waited for it (docs/BENCHMARKS.md, "Spare segments and the disk queue").
        let mut at = start;
        while at < end {
            let len = (end - at).min(RELEASE_CHUNK_BYTES);
            // SAFETY: MADV_DONTNEED on a read-only shared mapping of a file only drops this
            // process's page table entries: a later access faults the same bytes back in from
            // the page cache or the file (it does not zero them, as it would for private or
            // anonymous memory), and the bytes below the readable mark never change. So
            // slices other threads hold into the range stay valid and read the same data.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    at as usize,
                    len as usize,
                )
            };
            at += len;
        }
    }

    /// The bytes `[offset, readable)`, or `None` when `offset` is not below `readable`.
    pub(super) fn bytes(&self, offset: u64, readable: u64) -> Option<&[u8]> {
        let end = readable.min(self.len);
        if offset >= end {
            return None;
        }
        let map = self.map.as_ref()?;
        // SAFETY: `offset < end <= self.len`, so the range lies inside the mapping; bytes
        // below the readable mark are written and never change while mapped, so a shared
        // slice of them is never aliased by a writer. The slice borrows `self`, which
        // keeps the mapping alive.
        let bytes = unsafe {
            std::slice::from_raw_parts(map.as_ptr().add(offset as usize), (end - offset) as usize)
        };
        Some(bytes)
    }
}
