//! # cairn-chunk
//!
//! The pure, synchronous part of the backup pipeline: content-defined chunking
//! (FastCDC 2020 with the repository's secret gear seed), keyed BLAKE3 ids, zstd
//! and sealing. Chunk boundaries are found sequentially per stream; everything
//! after that runs in parallel on rayon. Memory is bounded by the window size of
//! [`StreamChunker`] whatever the stream length.
//!
//! Key types: [`ChunkerParams`], [`StreamChunker`], [`BlobEncoder`].
//!
//! ```
//! use cairn_chunk::{ChunkerParams, StreamChunker};
//! let params = ChunkerParams { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024, seed: 42 };
//! let data = vec![7u8; 3 * 1024 * 1024];
//! let mut lens = Vec::new();
//! let mut chunker = StreamChunker::new(params);
//! chunker
//!     .run(&data[..], |window, cuts| {
//!         lens.extend(cuts.iter().map(|c| c.len));
//!         let _ = window;
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .unwrap();
//! assert_eq!(lens.iter().sum::<usize>(), data.len());
//! ```
#![deny(missing_docs)]

mod encode;
pub use encode::{BlobEncoder, EncodedBlob, process_window};

use std::io::{self, Read};

/// FastCDC settings of a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Minimum chunk size.
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
    /// Secret gear seed (derived from the master key).
    pub seed: u64,
}

/// A chunk inside a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Offset inside the window.
    pub offset: usize,
    /// Length.
    pub len: usize,
}

impl ChunkerParams {
    /// Cut `data` into chunks. Unless `eof`, the last chunk is left out: it may
    /// have been cut short by the end of the window rather than by the content.
    pub fn cut(&self, data: &[u8], eof: bool, out: &mut Vec<Cut>) {
        out.clear();
        if data.is_empty() {
            return;
        }
        let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            fastcdc::v2020::Normalization::Level1,
            self.seed,
        );
        out.extend(cdc.map(|c| Cut {
            offset: c.offset,
            len: c.length,
        }));
        if !eof {
            out.pop();
        }
    }
}

/// Cuts a stream into chunks through one reusable window, so memory stays
/// flat whatever the stream's length.
pub struct StreamChunker {
    params: ChunkerParams,
    buf: Vec<u8>,
    cuts: Vec<Cut>,
}

impl StreamChunker {
    /// A chunker whose window holds several maximum-size chunks.
    pub fn new(params: ChunkerParams) -> Self {
        Self::with_window(params, (params.max as usize * 4).max(8 << 20))
    }

    /// A chunker with a given window size (at least twice the maximum chunk).
    pub fn with_window(params: ChunkerParams, window: usize) -> Self {
        StreamChunker {
            params,
            buf: Vec::with_capacity(window.max(2 * params.max as usize)),
            cuts: Vec::new(),
        }
    }

    /// Read `reader` to its end; call `f` with each window and the chunks cut
    /// from it (together they cover the stream in order, without gaps).
    pub fn run<R: Read, E: From<io::Error>>(
        &mut self,
        mut reader: R,
        mut f: impl FnMut(&[u8], &[Cut]) -> Result<(), E>,
    ) -> Result<(), E> {
        let cap = self.buf.capacity();
        self.buf.clear();
        let mut eof = false;
        while !eof {
            eof = fill(&mut reader, &mut self.buf, cap)?;
            self.params.cut(&self.buf, eof, &mut self.cuts);
            let used = self.cuts.last().map_or(0, |c| c.offset + c.len);
            if !self.cuts.is_empty() {
                f(&self.buf[..used], &self.cuts)?;
            }
            self.buf.drain(..used);
        }
        Ok(())
    }
}

/// Read into `buf` (keeping what it holds) until it holds `cap` bytes or the
/// reader ends; returns whether it ended.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, cap: usize) -> io::Result<bool> {
    let mut filled = buf.len();
    buf.resize(cap, 0);
    let mut eof = false;
    while filled < cap {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(filled);
                return Err(e);
            }
        }
    }
    buf.truncate(filled);
    Ok(eof)
}

/// Cuts a stream like [`StreamChunker`], but hands each window to `f` on a
/// helper thread while the calling thread reads and cuts the next one, so
/// reading and chunking (sequential by nature) overlap with the window's
/// encoding. Two windows of `window` bytes each are in use.
pub fn run_overlapped<R: Read, E: From<io::Error> + Send>(
    params: ChunkerParams,
    window: usize,
    mut reader: R,
    mut f: impl FnMut(&[u8], &[Cut]) -> Result<(), E> + Send,
) -> Result<(), E> {
    use std::sync::mpsc;
    let cap = window.max(2 * params.max as usize);
    // Filled windows go to the worker; emptied buffers come back.
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, Vec<Cut>, usize)>(1);
    let (free_tx, free_rx) = mpsc::channel::<(Vec<u8>, Vec<Cut>)>();
    let _ = free_tx.send((Vec::with_capacity(cap), Vec::new()));
    let _ = free_tx.send((Vec::with_capacity(cap), Vec::new()));
    let recycle = free_tx.clone();
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<(), E> {
            for (buf, cuts, used) in full_rx {
                let r = f(&buf[..used], &cuts);
                // Hand the buffer back even on error; the reader sees the
                // error when it joins.
                let _ = free_tx.send((buf, cuts));
                r?;
            }
            Ok(())
        });
        let mut carry: Vec<u8> = Vec::new();
        let mut eof = false;
        let mut read_err: Option<E> = None;
        while !eof {
            let Ok((mut buf, mut cuts)) = free_rx.recv() else {
                break; // the worker stopped (error): join reports it
            };
            buf.clear();
            buf.extend_from_slice(&carry);
            match fill(&mut reader, &mut buf, cap) {
                Ok(e) => eof = e,
                Err(e) => {
                    read_err = Some(e.into());
                    break;
                }
            }
            params.cut(&buf, eof, &mut cuts);
            let used = cuts.last().map_or(0, |c| c.offset + c.len);
            carry.clear();
            carry.extend_from_slice(&buf[used..]);
            if cuts.is_empty() {
                let _ = recycle.send((buf, cuts));
                continue;
            }
            if full_tx.send((buf, cuts, used)).is_err() {
                break;
            }
        }
        drop(full_tx);
        let w = worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match read_err {
            Some(e) => Err(e),
            None => w,
        }
    })
}

#[cfg(test)]
mod tests;
