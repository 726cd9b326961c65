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
            // Fill the window.
            let mut filled = self.buf.len();
            self.buf.resize(cap, 0);
            while filled < cap {
                match reader.read(&mut self.buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.buf.truncate(filled);
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

#[cfg(test)]
mod tests;
