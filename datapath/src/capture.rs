//! Packet capture: `capture PORT FILE [COUNT]`, like `ovs-tcpdump`.
//!
//! While a capture runs, every PMD copies the frames it receives on the
//! port, and the frames it sends to it, into slots taken from a fixed pool;
//! a writer thread turns full slots into pcap records (readable by tshark
//! and tcpdump) and returns them to the pool. Cost and bounds:
//! - no capture: one relaxed atomic load per rx burst and per tx flush;
//! - capturing: one copy of at most [`SNAPLEN`] bytes per frame of that
//!   port, nothing for other ports; when the writer falls behind and the
//!   pool is empty, frames are not captured (counted in `missed`), never
//!   delayed: the PMD never waits for the disk;
//! - memory: [`SLOTS`] × [`SNAPLEN`] bytes, allocated when a capture starts.
//!
//! Thread-safety: the slot queues are lock-free MPMC (several PMDs may tap
//! one port: its rx queues on different cores, tx from every core); the
//! control state is a mutex only the control threads take.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

use crate::packet::{PacketBuf, PortNo};
use crate::time::Nanos;

/// Why a capture could not start, stop or complete its file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Another capture is running.
    #[error("a capture into {} is already running; stop it with capture-stop", .0.display())]
    Running(PathBuf),
    /// The file name is relative.
    #[error("capture file '{}' must be an absolute path", .0.display())]
    Relative(PathBuf),
    /// The file cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The capture file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The capture file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the capture writer: {0}")]
    Thread(#[source] std::io::Error),
    /// `capture-stop` without a capture.
    #[error("no capture is running")]
    NotRunning,
    /// The writer thread panicked.
    #[error("the capture writer panicked")]
    Panicked,
}

/// The control registry's handlers answer with text.
impl From<CaptureError> for String {
    fn from(e: CaptureError) -> String {
        e.to_string()
    }
}

/// Bytes kept of each frame.
pub const SNAPLEN: usize = 2048;
/// Slots in the pool.
pub const SLOTS: usize = 1024;

const NO_PORT: u32 = u32::MAX;

struct Slot {
    ts_ns: Nanos,
    orig_len: u32,
    len: u32,
    data: Box<[u8; SNAPLEN]>,
}

/// Progress of a capture: the control API's `capture-status` reply.
pub use sluice_api::ports::CaptureProgress as CaptureStatus;

struct Running {
    file: PathBuf,
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Result<(), CaptureError>>,
}

/// The capture tap shared by all PMDs and the control socket.
pub struct Capture {
    port: AtomicU32,
    remaining: AtomicU64,
    missed: AtomicU64,
    written: Arc<AtomicU64>,
    free: Arc<ArrayQueue<Slot>>,
    full: Arc<ArrayQueue<Slot>>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("status", &self.status())
            .finish()
    }
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            port: AtomicU32::new(NO_PORT),
            remaining: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
            free: Arc::new(ArrayQueue::new(SLOTS)),
            full: Arc::new(ArrayQueue::new(SLOTS)),
            running: Mutex::new(None),
        }
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Capture {
    /// A tap with no capture running.
    pub fn new() -> Arc<Capture> {
        Arc::new(Capture::default())
    }

    /// Copies `frames` (received on or sent to `port`) if that port is
    /// being captured. Called by PMDs on every rx burst and tx flush.
    #[inline]
    pub fn tap<B: PacketBuf>(&self, port: PortNo, frames: &[B], now: Nanos) {
        if self.port.load(Ordering::Relaxed) != port.0 as u32 || frames.is_empty() {
            return;
        }
        self.copy(frames, now);
    }

    #[cold]
    fn copy<B: PacketBuf>(&self, frames: &[B], now: Nanos) {
        for f in frames {
            // Claim one of the remaining frames (several PMDs may race).
            let claimed = self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1));
            if claimed.is_err() {
                return;
            }
            let Some(mut slot) = self.free.pop() else {
                self.missed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let data = f.data();
            let n = data.len().min(SNAPLEN);
            slot.data[..n].copy_from_slice(&data[..n]);
            slot.len = n as u32;
            slot.orig_len = data.len() as u32;
            slot.ts_ns = now;
            if let Err(slot) = self.full.push(slot) {
                // Cannot happen (SLOTS slots in all), but never lose a slot.
                let _ = self.free.push(slot);
            }
        }
    }

    /// Starts capturing `port` into `file` (pcap), at most `count` frames
    /// (None: until [`Capture::stop`]). `now` is the PMDs' clock.
    pub fn start(
        &self,
        port: PortNo,
        file: &Path,
        count: Option<u64>,
        now: Nanos,
    ) -> Result<(), CaptureError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.as_ref() {
            if !r.writer.is_finished() {
                return Err(CaptureError::Running(r.file.clone()));
            }
        }
        if let Some(r) = running.take() {
            let _ = r.writer.join();
        }
        if !file.is_absolute() {
            return Err(CaptureError::Relative(file.to_path_buf()));
        }
        let out = File::create(file).map_err(|source| CaptureError::Create {
            path: file.to_path_buf(),
            source,
        })?;
        let mut out = BufWriter::new(out);
        // Classic pcap, nanosecond timestamps, Ethernet.
        let mut hdr = Vec::with_capacity(24);
        hdr.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
        hdr.extend_from_slice(&2u16.to_le_bytes());
        hdr.extend_from_slice(&4u16.to_le_bytes());
        hdr.extend_from_slice(&0i32.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&(SNAPLEN as u32).to_le_bytes());
        hdr.extend_from_slice(&1u32.to_le_bytes());
        out.write_all(&hdr).map_err(|source| CaptureError::Write {
            path: file.to_path_buf(),
            source,
        })?;
        // Fill the pool once per capture.
        while self.free.pop().is_some() {}
        while self.full.pop().is_some() {}
        for _ in 0..SLOTS {
            let _ = self.free.push(Slot {
                ts_ns: 0,
                orig_len: 0,
                len: 0,
                data: Box::new([0u8; SNAPLEN]),
            });
        }
        self.missed.store(0, Ordering::Relaxed);
        self.written.store(0, Ordering::Relaxed);
        self.remaining
            .store(count.unwrap_or(u64::MAX), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (free, full, written, stop2) = (
            self.free.clone(),
            self.full.clone(),
            self.written.clone(),
            stop.clone(),
        );
        let base_wall = wall_ns();
        let path = file.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let werr = |source: std::io::Error| CaptureError::Write {
                    path: path.clone(),
                    source,
                };
                loop {
                    let mut did = false;
                    while let Some(slot) = full.pop() {
                        did = true;
                        let ts = base_wall + slot.ts_ns.saturating_sub(now);
                        let mut rec = [0u8; 16];
                        rec[0..4].copy_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
                        rec[4..8].copy_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
                        rec[8..12].copy_from_slice(&slot.len.to_le_bytes());
                        rec[12..16].copy_from_slice(&slot.orig_len.to_le_bytes());
                        out.write_all(&rec).map_err(werr)?;
                        out.write_all(&slot.data[..slot.len as usize])
                            .map_err(werr)?;
                        written.fetch_add(1, Ordering::Relaxed);
                        let _ = free.push(slot);
                    }
                    if stop2.load(Ordering::Relaxed) && full.is_empty() {
                        break;
                    }
                    if !did {
                        out.flush().map_err(werr)?;
                        std::thread::park_timeout(Duration::from_millis(2));
                    }
                }
                out.flush().map_err(werr)
            })
            .map_err(CaptureError::Thread)?;
        *running = Some(Running {
            file: file.to_path_buf(),
            stop,
            writer,
        });
        self.port.store(port.0 as u32, Ordering::Release);
        Ok(())
    }

    /// Stops the running capture, waits for the file to be complete, and
    /// returns the final status.
    pub fn stop(&self) -> Result<CaptureStatus, CaptureError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let r = running.take().ok_or(CaptureError::NotRunning)?;
        let port = self.port.swap(NO_PORT, Ordering::AcqRel);
        self.remaining.store(0, Ordering::Relaxed);
        r.stop.store(true, Ordering::Relaxed);
        r.writer.thread().unpark();
        let result = r.writer.join().map_err(|_| CaptureError::Panicked)?;
        let st = CaptureStatus {
            port: (port != NO_PORT).then_some(port as u16),
            file: Some(r.file.display().to_string()),
            written: self.written.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            remaining: 0,
        };
        result.map(|_| st)
    }

    /// The current status.
    pub fn status(&self) -> CaptureStatus {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let port = self.port.load(Ordering::Relaxed);
        CaptureStatus {
            port: (port != NO_PORT).then_some(port as u16),
            file: running.as_ref().map(|r| r.file.display().to_string()),
            written: self.written.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            remaining: self.remaining.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HeapBuf;

    fn frames(n: usize, len: usize) -> Vec<HeapBuf> {
        (0..n)
            .map(|i| {
                let mut f = vec![0u8; len];
                f[0] = i as u8;
                HeapBuf::from_frame(&f)
            })
            .collect()
    }

    /// Reads a classic nanosecond pcap back: (caplen, origlen, first byte).
    fn read_pcap(path: &Path) -> Vec<(u32, u32, u8)> {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[0..4], &0xa1b2_3c4du32.to_le_bytes());
        let mut out = Vec::new();
        let mut off = 24;
        while off + 16 <= b.len() {
            let cap = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap());
            let orig = u32::from_le_bytes(b[off + 12..off + 16].try_into().unwrap());
            out.push((cap, orig, b[off + 16]));
            off += 16 + cap as usize;
        }
        assert_eq!(off, b.len(), "trailing bytes in pcap");
        out
    }

    #[test]
    fn captures_only_the_chosen_port_up_to_count() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pcap");
        let cap = Capture::new();
        cap.start(PortNo(2), &file, Some(5), 0).unwrap();
        cap.tap(PortNo(1), &frames(3, 60), 10);
        cap.tap(PortNo(2), &frames(3, 60), 20);
        cap.tap(PortNo(2), &frames(4, 3000), 30);
        let st = cap.stop().unwrap();
        assert_eq!(st.written, 5);
        assert_eq!(st.missed, 0);
        let recs = read_pcap(&file);
        assert_eq!(
            recs,
            vec![
                (60, 60, 0),
                (60, 60, 1),
                (60, 60, 2),
                (SNAPLEN as u32, 3000, 0),
                (SNAPLEN as u32, 3000, 1)
            ]
        );
    }

    #[test]
    fn a_full_pool_counts_missed_frames_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pcap");
        let cap = Capture::new();
        cap.start(PortNo(0), &file, None, 0).unwrap();
        // Hold the writer off by tapping more than the pool in one go:
        // whatever the writer manages, nothing blocks and all is counted.
        let burst = frames(SLOTS * 3, 64);
        cap.tap(PortNo(0), &burst, 1);
        let st = cap.stop().unwrap();
        assert_eq!(st.written + st.missed, (SLOTS * 3) as u64);
        assert_eq!(read_pcap(&file).len() as u64, st.written);
    }

    #[test]
    fn errors_are_sentences() {
        let cap = Capture::new();
        assert_eq!(cap.stop().unwrap_err().to_string(), "no capture is running");
        let e = cap
            .start(PortNo(0), Path::new("rel.pcap"), None, 0)
            .unwrap_err();
        assert!(e.to_string().contains("must be an absolute path"), "{e}");
        let e = cap
            .start(PortNo(0), Path::new("/nonexistent-dir/x.pcap"), None, 0)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot create /nonexistent-dir/x.pcap"),
            "{e}"
        );
    }
}
