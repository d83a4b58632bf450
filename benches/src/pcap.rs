//! Classic libpcap files (the format `net_pcap`'s `rx_pcap=` reads).
//!
//! A file is a 24-byte global header (magic `0xa1b2c3d4` in the writer's
//! byte order, version 2.4, snaplen, link type 1 = Ethernet) followed by one
//! 16-byte record header (seconds, microseconds, captured length, original
//! length) per frame. We write little-endian with microsecond timestamps;
//! the reader accepts either byte order so that it can check files written
//! by other tools too.
//!
//! Thread-safety: a [`PcapWriter`] is owned by one thread.

use std::io::{self, Read, Write};

use thiserror::Error;

/// Largest frame we write (and the snaplen in the header).
pub const SNAPLEN: u32 = 65_535;
/// Link type Ethernet (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_US: u32 = 0xa1b2_c3d4;

/// What went wrong reading or writing a pcap file.
#[derive(Debug, Error)]
pub enum PcapError {
    /// The underlying file failed.
    #[error("pcap I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with a pcap magic number.
    #[error("not a pcap file (magic {0:#010x}; expected 0xa1b2c3d4 in either byte order)")]
    BadMagic(u32),
    /// A frame longer than the snaplen was given to the writer.
    #[error("frame of {0} bytes is longer than the pcap snaplen ({SNAPLEN})")]
    FrameTooLong(usize),
    /// A record header announces more bytes than the file holds.
    #[error("truncated pcap record {index}: header says {len} bytes")]
    Truncated {
        /// 0-based record number.
        index: usize,
        /// Announced captured length.
        len: u32,
    },
}

/// Writes frames into a pcap stream.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    frames: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header and returns the writer.
    ///
    /// # Errors
    /// [`PcapError::Io`] if the header cannot be written.
    pub fn new(mut out: W) -> Result<Self, PcapError> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_US.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, frames: 0 })
    }

    /// Appends one frame; the timestamp is the frame number in microseconds
    /// (replay speed is irrelevant: `net_pcap` ignores timestamps).
    ///
    /// # Errors
    /// [`PcapError::FrameTooLong`] or [`PcapError::Io`].
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= SNAPLEN)
            .ok_or(PcapError::FrameTooLong(frame.len()))?;
        let ts_sec = (self.frames / 1_000_000) as u32;
        let ts_usec = (self.frames % 1_000_000) as u32;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ts_sec.to_le_bytes());
        h[4..8].copy_from_slice(&ts_usec.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// [`PcapError::Io`] if the flush fails.
    pub fn finish(mut self) -> Result<W, PcapError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads every frame of a pcap stream (tests and `pktgen dump`).
///
/// # Errors
/// [`PcapError`] on a bad magic number, a truncated record or I/O failure.
pub fn read_all(mut input: impl Read) -> Result<Vec<Vec<u8>>, PcapError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let magic_le = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PcapError::BadMagic(0))?;
    let le = match magic_le {
        MAGIC_US | 0xa1b2_3c4d => true,
        m if m.swap_bytes() == MAGIC_US || m.swap_bytes() == 0xa1b2_3c4d => false,
        m => return Err(PcapError::BadMagic(m)),
    };
    let word = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut frames = Vec::new();
    let mut at = 24usize;
    while at < bytes.len() {
        let index = frames.len();
        let hdr = bytes
            .get(at..at + 16)
            .ok_or(PcapError::Truncated { index, len: 0 })?;
        let len = word(&hdr[8..12]);
        let start = at + 16;
        let frame = bytes
            .get(start..start + len as usize)
            .ok_or(PcapError::Truncated { index, len })?;
        frames.push(frame.to_vec());
        at = start + len as usize;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(&[1, 2, 3]).unwrap();
        w.write_frame(&[0xaa; 60]).unwrap();
        assert_eq!(w.frames(), 2);
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&bytes[4..8], &[2, 0, 4, 0]);
        assert_eq!(&bytes[20..24], &[1, 0, 0, 0]);
        assert_eq!(bytes.len(), 24 + 16 + 3 + 16 + 60);
        let frames = read_all(&bytes[..]).unwrap();
        assert_eq!(frames, vec![vec![1, 2, 3], vec![0xaa; 60]]);
    }

    #[test]
    fn big_endian_files_are_read() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_US.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0, 4]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&SNAPLEN.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&[7, 8]);
        assert_eq!(read_all(&b[..]).unwrap(), vec![vec![7, 8]]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(read_all(&[][..]), Err(PcapError::BadMagic(0))));
        assert!(matches!(
            read_all(&[1, 2, 3, 4, 5][..]),
            Err(PcapError::BadMagic(_))
        ));
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(&[0; 10]).unwrap();
        let mut bytes = w.finish().unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            read_all(&bytes[..]),
            Err(PcapError::Truncated { index: 0, len: 10 })
        ));
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        assert!(matches!(
            w.write_frame(&vec![0; SNAPLEN as usize + 1]),
            Err(PcapError::FrameTooLong(_))
        ));
    }
}
