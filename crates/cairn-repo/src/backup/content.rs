//! A backup's content: files read (small ones whole, large ones through a
//! window with the kernel asked to read ahead, sparse ones by their data
//! regions), streams cut into chunks, and chunks sealed and stored once.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use cairn_chunk::process_window;
use cairn_format::tree::Extent;
use cairn_format::{BlobKind, ChunkId};

use super::{Progress, Walker};
use crate::error::{RepoError, Result};

/// Reads a file front to back, asking the kernel to read ahead of it
/// ([`PREFETCH`] bytes, renewed every half of that), so that the device works
/// while the window before is cut and encoded.
struct Prefetching<'f> {
    file: &'f File,
    pos: u64,
    asked: u64,
}

/// Bytes of a large file asked for ahead of the reader.
const PREFETCH: u64 = 32 << 20;

impl Read for Prefetching<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.asked < self.pos + PREFETCH / 2 {
            crate::sys::prefetch_range(self.file, self.asked, self.pos + PREFETCH - self.asked);
            self.asked = self.pos + PREFETCH;
        }
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Window of a streamed file or dump; two are in use per stream (one being
/// read and cut, one being encoded), 16 MiB together as before the overlap.
const STREAM_WINDOW: usize = 8 << 20;

impl Walker<'_> {
    /// Whether every chunk of an unchanged file is still indexed; if so the
    /// backup relies on them (recorded for the prune protocol, format-spec §5.1).
    pub(super) fn chunk_ok(&self, extents: &[Extent]) -> bool {
        self.all_indexed(extents.iter().filter_map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        }))
    }

    /// Whether every one of these data blobs is still indexed; if so the
    /// backup relies on them (noted as reused).
    pub(super) fn all_indexed(&self, ids: impl Iterator<Item = ChunkId> + Clone) -> bool {
        let ok = {
            let idx = self.repo.index.read().expect("index lock");
            ids.clone().all(|id| idx.contains(BlobKind::Data, &id))
        };
        if ok {
            self.packer.note_reused(BlobKind::Data, ids);
        }
        ok
    }

    /// Cut bytes held in memory into chunks and store them.
    pub(super) fn store_in_memory(&self, buf: &[u8]) -> Result<Vec<(ChunkId, u32)>> {
        let mut cuts = Vec::new();
        self.params.cut(buf, true, &mut cuts);
        cuts.into_iter()
            .map(|c| {
                Ok((
                    self.store_chunk(&buf[c.offset..c.offset + c.len])?,
                    c.len as u32,
                ))
            })
            .collect()
    }

    /// [`Self::store_in_memory`] as a file's extents.
    fn in_memory_extents(&self, buf: &[u8]) -> Result<Vec<Extent>> {
        Ok(self
            .store_in_memory(buf)?
            .into_iter()
            .map(|(id, len)| Extent::Chunk { id, len })
            .collect())
    }

    /// Store one chunk that is entirely in memory.
    fn store_chunk(&self, data: &[u8]) -> Result<ChunkId> {
        let id = self.packer.encoder.hasher.id(data);
        if self.packer.claim(BlobKind::Data, &id) {
            self.packer
                .encoder
                .encode(BlobKind::Data, id, data, |b| self.packer.add(b))?;
        }
        Ok(id)
    }

    /// Chunk a stream through a window; ids are processed in parallel.
    pub(super) fn stream_extents(&self, reader: impl Read, out: &mut Vec<Extent>) -> Result<u64> {
        let mut total = 0u64;
        // Reading and cutting the next window overlaps with the encoding of
        // this one, which runs on a plain helper thread: a rayon worker (the
        // walk of `backup_paths`) waiting in a parallel call would take up
        // other walk tasks meanwhile, each with windows of its own, and memory
        // would no longer be bounded.
        cairn_chunk::run_overlapped(self.params, STREAM_WINDOW, reader, |window, cuts| {
            let ids = process_window(
                &self.packer.encoder,
                window,
                cuts,
                |id| self.packer.claim(BlobKind::Data, id),
                |b| self.packer.add(b),
            )?;
            for (id, c) in ids.into_iter().zip(cuts) {
                out.push(Extent::Chunk {
                    id,
                    len: c.len as u32,
                });
            }
            total += window.len() as u64;
            self.progress
                .bytes_read
                .fetch_add(window.len() as u64, Ordering::Relaxed);
            Ok::<(), RepoError>(())
        })?;
        Ok(total)
    }

    /// Read a regular file into extents. Returns the extents (their lengths add
    /// up to what was actually read, which may differ from `md.size()` if the
    /// file changed while being read).
    pub(super) fn read_file(
        &self,
        path: &Path,
        md: &fs::Metadata,
        small: bool,
    ) -> Result<Vec<Extent>> {
        let mut f = File::open(path).map_err(|e| RepoError::io(path, e))?;
        let size = md.size();
        let mut extents = Vec::new();
        if size == 0 {
            // procfs and sysfs report 0 bytes for files that read data:
            // what is read is stored (an empty file costs one read more).
            let limit = self.params.max as u64;
            let mut buf = Vec::new();
            (&f).take(limit + 1)
                .read_to_end(&mut buf)
                .map_err(|e| RepoError::io(path, e))?;
            if buf.is_empty() {
                return Ok(extents);
            }
            if buf.len() as u64 <= limit {
                // All of it (read to the end): no further read, which
                // /proc/sys refuses for large buffers (ENOMEM).
                Progress::add(&self.progress.bytes_read, buf.len() as u64);
                return self.in_memory_extents(&buf);
            }
            // More than a chunk: streamed (which counts what it reads).
            let rest = std::io::Cursor::new(buf).chain(&f);
            self.stream_extents(rest, &mut extents)
                .map_err(|e| match e {
                    RepoError::Io { source, .. } => RepoError::io(path, source),
                    other => other,
                })?;
            return Ok(extents);
        }
        let sparse = md.blocks() * 512 < size;
        if small && !sparse {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| RepoError::io(path, e))?;
            Progress::add(&self.progress.bytes_read, buf.len() as u64);
            return self.in_memory_extents(&buf);
        }
        let regions = if sparse {
            crate::sys::data_regions(&f, size).map_err(|e| RepoError::io(path, e))?
        } else {
            vec![(0, size)]
        };
        let mut pos = 0u64;
        let mut short = false;
        for (start, end) in regions {
            if start > pos {
                extents.push(Extent::Hole { len: start - pos });
            }
            f.seek(SeekFrom::Start(start))
                .map_err(|e| RepoError::io(path, e))?;
            let reader = Prefetching {
                file: &f,
                pos: start,
                asked: start,
            };
            let got = self
                .stream_extents(reader.take(end - start), &mut extents)
                .map_err(|e| match e {
                    RepoError::Io { source, .. } => RepoError::io(path, source),
                    other => other,
                })?;
            pos = start + got;
            if got < end - start {
                // The file shrank while it was read, or never held what its
                // size said (sysfs reports 4096 for a few bytes): stored as
                // read, without a hole to pad it to the size seen.
                short = true;
                break;
            }
        }
        if !short && pos < size && extents.iter().map(Extent::len).sum::<u64>() == pos {
            // Trailing hole (only when the file did not shrink).
            let real_len = f.metadata().map(|m| m.size()).unwrap_or(pos);
            if real_len > pos {
                extents.push(Extent::Hole {
                    len: real_len.min(size) - pos,
                });
            }
        }
        Ok(extents)
    }
}
