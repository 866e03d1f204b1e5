//! The index's byte encoding, for checkpoints: an [`Index`] written out and
//! read back equal, and the removal of a set of objects from every posting
//! (how a checkpoint is brought forward without the objects' old entries).
//!
//! Owns: the layout of an encoded index (versioned by the checkpoint that
//! carries it), and where each key's section lies in it. Must not: check
//! the whole file, name files or decide when to encode — the store's
//! checkpoint module wraps these bytes in a header with the format version,
//! revision and checksum.
//!
//! Layout (little-endian): universe bitmap; own-param count, then per param
//! its name and bitmap; key count, then per key the key, its `has` bitmap,
//! its value count and its values in one of two forms (a byte says which):
//! each `(value, posting)` in value order, or, for a packed key, its blocks
//! as held — per block its value count (u16), its entries' bytes (length
//! and bytes, front-coded as [`super::values`] builds them) and the
//! postings its entries share (a count, then bitmaps). A bitmap is its
//! byte length and roaring's portable serialization; a string is its byte
//! length and UTF-8. A value is a tag and its bytes: null, a boolean (a
//! byte), a number (f64 bits), a string, JSON text, or a string in a
//! UUID's canonical form (its 16 bytes). Blocks read back are checked
//! entry by entry ([`super::values::walk_block`]) before a lookup trusts
//! them.

use std::io::{Read, Write};
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::keys::{Bytes, FileSection, Keys, Released, Repacked, Section};
use super::value::{Text, ValueRef};
use super::values::{block_encoding, cmp_block_values, walk_block, BlockSlot, Values};
use super::{Index, NumKey, Posting, Postings, ValueKey};
use crate::filter::{Field, Key};

/// Why encoded bytes are not an index.
pub(crate) type DecodeError = String;

/// Where the stream [`Index::decode`] reads starts in a file, so that the
/// sections can stay there: the file and the offset of the stream's first
/// byte.
pub(crate) type InFile = (Arc<std::fs::File>, u64);

/// Why an index could not be written out.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// A key still in the last checkpoint file no longer reads back, and
    /// there is no repair for it.
    Key(DecodeError),
    /// Where the encoding went refused it.
    Io(std::io::Error),
}

impl From<std::io::Error> for EncodeError {
    fn from(e: std::io::Error) -> EncodeError {
        EncodeError::Io(e)
    }
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Key(why) => why.fmt(f),
            EncodeError::Io(e) => e.fmt(f),
        }
    }
}

impl Index {
    /// Appends this index's encoding to `out`: [`encode_head`], the key
    /// count, then [`encode_keys`].
    ///
    /// [`encode_head`]: Self::encode_head
    /// [`encode_keys`]: Self::encode_keys
    #[cfg(test)]
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_head(out)?;
        let count_at = out.len();
        put_len(out, 0);
        let count = self.encode_keys(out)?;
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        Ok(())
    }

    /// Writes what comes before the key count: the universe and the
    /// own-param bitmaps.
    pub(crate) fn encode_head(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        put_bitmap(&mut head, &self.universe);
        put_len(&mut head, self.own.len());
        for (name, ids) in &self.own {
            put_str(&mut head, name);
            put_bitmap(&mut head, ids);
        }
        out.write_all(&head)
    }

    /// Writes every key's section, in order, and returns how many it wrote
    /// (the count the encoding holds before them, known only now: a key
    /// whose repair finds it empty is left out). An untouched section still
    /// in a checkpoint file is copied as it is; one that no longer reads
    /// back as the open checked it is taken from its repair instead, and
    /// only without a repair (tests) does the encoding fail.
    pub(crate) fn encode_keys(&self, out: &mut impl SectionWrite) -> Result<u32, EncodeError> {
        let mut count = 0u32;
        let mut key_bytes = Vec::new();
        for (key, found) in self.keys.for_encoding() {
            key_bytes.clear();
            put_key(&mut key_bytes, key);
            let postings = match found {
                Section::Raw(b) => match b.read() {
                    Ok(raw) => {
                        put_len(&mut key_bytes, raw.len());
                        out.write_all(&key_bytes)?;
                        out.write_all(&raw)?;
                        count += 1;
                        continue;
                    }
                    Err(why) => match self.keys.repaired(key) {
                        Some(p) if !p.values.is_empty() => p,
                        Some(_) => continue,
                        None => {
                            return Err(EncodeError::Key(format!(
                                "key {key:?} of the last checkpoint {why}"
                            )))
                        }
                    },
                },
                Section::Decoded(p) => p,
            };
            out.write_all(&key_bytes)?;
            out.length_then(|out| encode_section(out, postings))?;
            count += 1;
        }
        Ok(count)
    }

    /// A copy to encode a checkpoint from without holding the state's lock:
    /// it shares every key with this index ([`Keys::for_checkpoint`]), so
    /// taking it costs the universe and the own-param bitmaps, not the keys.
    pub(crate) fn for_checkpoint(&self) -> Index {
        Index {
            universe: self.universe.clone(),
            keys: self.keys.for_checkpoint(),
            own: self.own.clone(),
        }
    }

    /// Packed forms of the keys this copy holds as trees but whose values
    /// call for packed blocks: a fleet imported or written through the API
    /// grows its Name, Uuid and Address keys as trees, which cost several
    /// times the memory, and whose copy-on-write copies an entry per
    /// machine. Built from a checkpoint's copy, off the lock; see
    /// [`adopt`](Self::adopt).
    pub(crate) fn repack(&self) -> Repacked {
        self.keys.repack()
    }

    /// Takes the packed forms of the keys unchanged since they were built
    /// (see [`Keys::adopt`]); what it returns is to be dropped after the
    /// state's lock is let go.
    pub(crate) fn adopt(&mut self, repacked: Repacked) -> Released {
        self.keys.adopt(repacked)
    }

    /// Reads the index [`encode`](Self::encode) wrote from `r`, to its end.
    /// Keys stay encoded until read ([`Keys`]). With `in_file`, each
    /// section streams past (its CRC-32 taken) and stays in the file;
    /// without, it is read into a buffer of its key's own.
    pub(crate) fn decode(r: impl Read, in_file: Option<InFile>) -> Result<Index, DecodeError> {
        let mut r = Stream { r, pos: 0 };
        let universe = r.bitmap()?;
        let mut own = super::FastMap::default();
        for _ in 0..r.u32()? {
            let name = r.string()?;
            own.insert(name, r.bitmap()?);
        }
        let n = r.u32()?;
        let mut sections = Vec::new();
        let mut scratch = Vec::new();
        for _ in 0..n {
            let key = r.key()?;
            let len = r.u32()?;
            let bytes = match &in_file {
                None => Bytes::Held(r.bytes(len)?.into_boxed_slice()),
                Some((file, base)) => {
                    let offset = base + r.pos;
                    let crc = r.pass(len, &mut scratch)?;
                    Bytes::InFile(FileSection {
                        file: file.clone(),
                        offset,
                        len,
                        crc,
                    })
                }
            };
            sections.push((key, bytes));
        }
        if r.r.read(&mut [0]).map_err(|e| r.fail(&e.to_string()))? != 0 {
            return Err(r.fail("trailing bytes"));
        }
        Ok(Index {
            universe,
            keys: Keys::encoded(sections),
            own,
        })
    }

    /// Removes `ids` from the universe and from every posting: their old
    /// entries need not be known (queued on keys still encoded).
    pub(crate) fn remove_everywhere(&mut self, ids: &RoaringBitmap) {
        if ids.is_empty() {
            return;
        }
        self.universe -= ids;
        self.keys.remove_ids(ids);
        self.own.retain(|_, b| {
            *b -= ids;
            !b.is_empty()
        });
    }
}

/// Where [`Index::encode_keys`] writes: a stream that can write a section
/// before its length is known. A checkpoint's sections go straight to the
/// file: gathering a section first cost a million machines' Uuid key its
/// tens of MB of fresh pages and copies, at every checkpoint.
pub(crate) trait SectionWrite: Write {
    /// Writes a length (4 bytes, little-endian), then what `body` writes,
    /// the length being of what `body` wrote.
    fn length_then(
        &mut self,
        body: impl FnOnce(&mut Self) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

impl SectionWrite for Vec<u8> {
    fn length_then(
        &mut self,
        body: impl FnOnce(&mut Self) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let at = self.len();
        self.extend_from_slice(&[0; 4]);
        body(self)?;
        let len = section_len((self.len() - at - 4) as u64)?;
        self[at..at + 4].copy_from_slice(&len);
        Ok(())
    }
}

/// A section's length as it is written before it.
pub(crate) fn section_len(len: u64) -> std::io::Result<[u8; 4]> {
    u32::try_from(len).map(u32::to_le_bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a key's section of {len} bytes is over the format's 4 GiB"),
        )
    })
}

/// A section's values as entries, one value and posting after another.
const FORM_ENTRIES: u8 = 0;
/// A section's values as a packed key's blocks, their bytes as held.
const FORM_BLOCKS: u8 = 1;

/// Writes `p`'s section to `out`, a piece at a time.
fn encode_section(out: &mut impl Write, p: &Postings) -> std::io::Result<()> {
    const PIECE: usize = 1 << 16;
    let mut piece = Vec::with_capacity(PIECE + 64);
    put_bitmap(&mut piece, &p.has);
    put_len(&mut piece, p.values.len());
    if let Some((count, blocks)) = p.values.blocks() {
        // As held: a block's bytes are copied, not each value decoded and
        // written again, and stay front-coded (a million Names: about 9
        // bytes each instead of 22).
        piece.push(FORM_BLOCKS);
        put_len(&mut piece, count);
        for b in blocks {
            piece.extend_from_slice(&b.len.to_le_bytes());
            put_len(&mut piece, b.bytes.len());
            piece.extend_from_slice(b.bytes);
            put_len(&mut piece, b.many.len());
            for post in b.many {
                match post {
                    Posting::Many(ids) => put_bitmap(&mut piece, ids),
                    Posting::One(id) => put_bitmap(&mut piece, &RoaringBitmap::from_iter([*id])),
                }
            }
            if piece.len() >= PIECE {
                out.write_all(&piece)?;
                piece.clear();
            }
        }
        return out.write_all(&piece);
    }
    piece.push(FORM_ENTRIES);
    let mut written = Ok(());
    p.values.for_each(|value, posting| {
        put_value(&mut piece, value);
        match posting {
            Posting::One(id) => {
                piece.push(0);
                piece.extend_from_slice(&id.to_le_bytes());
            }
            Posting::Many(ids) => {
                piece.push(1);
                put_bitmap(&mut piece, ids);
            }
        }
        if piece.len() >= PIECE {
            if written.is_ok() {
                written = out.write_all(&piece);
            }
            piece.clear();
        }
    });
    written?;
    out.write_all(&piece)
}

/// One key's postings from its section (all of `bytes`).
pub(super) fn decode_section(bytes: &[u8]) -> Result<Postings, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let has = r.bitmap()?;
    let n = r.u32()? as usize;
    match r.u8()? {
        FORM_ENTRIES => {}
        FORM_BLOCKS => {
            let count = r.u32()? as usize;
            let mut blocks = Vec::with_capacity(count.min(bytes.len()));
            for _ in 0..count {
                let len = u16::from_le_bytes([r.u8()?, r.u8()?]);
                let n = r.u32()? as usize;
                let block = Box::from(r.take(n)?);
                let shared = r.u32()? as usize;
                let mut many = Vec::with_capacity(shared.min(bytes.len()));
                for _ in 0..shared {
                    many.push(
                        Posting::from_bitmap(r.bitmap()?)
                            .ok_or_else(|| r.fail("an empty posting"))?,
                    );
                }
                blocks.push((len, block, many));
            }
            if r.pos != bytes.len() {
                return Err(r.fail("trailing bytes"));
            }
            let values = Values::from_blocks(blocks)?;
            if values.len() != n {
                return Err(format!("{} values in blocks, {n} said", values.len()));
            }
            return Ok(Postings { values, has });
        }
        form => return Err(r.fail(&format!("section form {form}"))),
    }
    let mut values = Vec::with_capacity(n.min(bytes.len()));
    for _ in 0..n {
        let value = r.value()?;
        let posting = match r.u8()? {
            0 => Posting::One(r.u32()?),
            1 => Posting::from_bitmap(r.bitmap()?).ok_or_else(|| r.fail("an empty posting"))?,
            t => return Err(r.fail(&format!("posting tag {t}"))),
        };
        values.push((value, posting));
    }
    if r.pos != bytes.len() {
        return Err(r.fail("trailing bytes"));
    }
    if values.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(r.fail("values out of order or repeated"));
    }
    Ok(Postings {
        values: Values::from_sorted(values),
        has,
    })
}

/// The postings of each of `wanted` in one key's section (all of `bytes`,
/// read as a stream), found by comparing encoded values, without decoding
/// the section: a value's encoding is canonical (equal values encode to
/// equal bytes), so comparing bytes is comparing values. A decode builds
/// every value: for the Uuid key of a million machines, 180–230 ms of an
/// open that replays one machine's event, where this scan takes 15–18 ms.
pub(super) fn find_in_section(
    bytes: impl Read,
    wanted: &[ValueKey],
) -> Result<Vec<Option<Posting>>, DecodeError> {
    /// A posting as found in the section: an id, or where a bitmap is.
    enum Found {
        One(u32),
        Many(std::ops::Range<usize>),
    }
    let mut at: super::FastMap<Vec<u8>, Vec<usize>> = super::FastMap::default();
    for (i, v) in wanted.iter().enumerate() {
        let mut enc = Vec::new();
        put_value(&mut enc, v.view());
        at.entry(enc).or_default().push(i);
    }
    let mut found = vec![None; wanted.len()];
    let mut r = Chunks {
        r: bytes,
        buf: Vec::new(),
        at: 0,
        end: false,
    };
    r.next_at(|r| {
        let has = r.u32()? as usize;
        r.take(has).map(drop)
    })?;
    let (n, form) = r.next_at(|r| Ok((r.u32()?, r.u8()?)))?.0;
    match form {
        FORM_ENTRIES => {}
        FORM_BLOCKS => return find_in_blocks(r, wanted),
        form => return Err(format!("section form {form}")),
    }
    for _ in 0..n {
        let ((value, posting), base) = r.next_at(|r| {
            let start = r.pos;
            match r.u8()? {
                0 => {}
                1 => {
                    r.take(1)?;
                }
                2 => {
                    r.take(8)?;
                }
                3 | 4 => {
                    let n = r.u32()? as usize;
                    r.take(n)?;
                }
                5 => {
                    r.take(16)?;
                }
                t => return Err(r.fail(&format!("value tag {t}"))),
            }
            let value = start..r.pos;
            let posting = match r.u8()? {
                0 => Found::One(r.u32()?),
                1 => {
                    let n = r.u32()? as usize;
                    let start = r.pos;
                    r.take(n)?;
                    Found::Many(start..r.pos)
                }
                t => return Err(r.fail(&format!("posting tag {t}"))),
            };
            Ok((value, posting))
        })?;
        let Some(hit) = at.get(&r.buf[base + value.start..base + value.end]) else {
            continue;
        };
        let posting = match posting {
            Found::One(id) => Posting::One(id),
            Found::Many(b) => {
                let ids = RoaringBitmap::deserialize_from(&r.buf[base + b.start..base + b.end])
                    .map_err(|e| format!("bitmap: {e}"))?;
                Posting::from_bitmap(ids).ok_or("an empty posting")?
            }
        };
        for &i in hit {
            found[i] = Some(posting.clone());
        }
    }
    match r.at_end()? {
        true => Ok(found),
        false => Err("trailing bytes".into()),
    }
}

/// [`find_in_section`] in a section of blocks (`r` past its form), each
/// block's entries walked and checked as a decode checks them.
fn find_in_blocks(
    mut r: Chunks<impl Read>,
    wanted: &[ValueKey],
) -> Result<Vec<Option<Posting>>, DecodeError> {
    let mut at: super::FastMap<Vec<u8>, Vec<usize>> = super::FastMap::default();
    for (i, v) in wanted.iter().enumerate() {
        at.entry(block_encoding(v)).or_default().push(i);
    }
    let mut found = vec![None; wanted.len()];
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..r.next_at(|r| r.u32())?.0 {
        let ((bytes, many), base) = r.next_at(|r| {
            r.take(2)?;
            let n = r.u32()? as usize;
            let start = r.pos;
            r.take(n)?;
            let bytes = start..r.pos;
            let mut many = Vec::new();
            for _ in 0..r.u32()? {
                let n = r.u32()? as usize;
                let start = r.pos;
                r.take(n)?;
                many.push(start..r.pos);
            }
            Ok((bytes, many))
        })?;
        let buf = &r.buf[base..];
        let mut failed = None;
        let walked = walk_block(&buf[bytes], many.len(), |value, slot| {
            if let Some(hit) = at.get(value) {
                let posting = match slot {
                    BlockSlot::One(id) => Some(Posting::One(id)),
                    BlockSlot::Many(i) => RoaringBitmap::deserialize_from(&buf[many[i].clone()])
                        .map_err(|e| failed = Some(format!("bitmap: {e}")))
                        .ok()
                        .and_then(Posting::from_bitmap),
                };
                for &i in hit {
                    found[i] = posting.clone();
                }
            }
            let in_order = last
                .as_deref()
                .is_none_or(|l| cmp_block_values(l, value).is_lt());
            last = None;
            in_order
        })?;
        if let Some(why) = failed {
            return Err(why);
        }
        last = walked.map(|(_, end)| end);
    }
    match r.at_end()? {
        true => Ok(found),
        false => Err("trailing bytes".into()),
    }
}

/// What [`Chunks`] reads at least: tests read in tiny chunks, so that their
/// sections' pieces are cut by a chunk's end everywhere.
const CHUNK: usize = if cfg!(test) { 61 } else { 1 << 20 };

/// A stream read a chunk at a time and parsed in place, each piece by a
/// [`Reader`] over the bytes read so far: a piece cut by the chunk's end
/// is parsed again once more bytes are in.
struct Chunks<R> {
    r: R,
    buf: Vec<u8>,
    /// Where the unparsed bytes start in `buf`.
    at: usize,
    /// The stream has no more bytes.
    end: bool,
}

impl<R: Read> Chunks<R> {
    /// The next piece, as `parse` reads it, and where in `buf` it starts
    /// (the positions `parse` saw are from there).
    fn next_at<T>(
        &mut self,
        mut parse: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
    ) -> Result<(T, usize), DecodeError> {
        loop {
            let mut r = Reader {
                bytes: &self.buf[self.at..],
                pos: 0,
            };
            match parse(&mut r) {
                Ok(t) => {
                    let start = self.at;
                    self.at += r.pos;
                    return Ok((t, start));
                }
                Err(e) if self.end => return Err(e),
                Err(_) => self.fill()?,
            }
        }
    }

    /// Reads at least as many bytes again as are unparsed, and at least
    /// [`CHUNK`].
    fn fill(&mut self) -> Result<(), DecodeError> {
        self.buf.drain(..self.at);
        self.at = 0;
        let mut got = self.buf.len();
        self.buf.resize((2 * got).max(CHUNK), 0);
        while got < self.buf.len() {
            match self.r.read(&mut self.buf[got..]) {
                Ok(0) => {
                    self.end = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.buf.truncate(got);
        Ok(())
    }

    /// Whether every byte was parsed and the stream has no more.
    fn at_end(&mut self) -> Result<bool, DecodeError> {
        if self.at == self.buf.len() && !self.end {
            self.fill()?;
        }
        Ok(self.at == self.buf.len())
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Counts are bounded by u32 ids and by string lengths the store accepted.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_bitmap(out: &mut Vec<u8>, b: &RoaringBitmap) {
    put_len(out, b.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = b.serialize_into(&mut *out);
}

fn put_key(out: &mut Vec<u8>, k: &Key) {
    match k {
        Key::Field(f) => {
            out.push(0);
            out.push(match f {
                Field::Name => 0,
                Field::Uuid => 1,
                Field::Description => 2,
                Field::Address => 3,
                Field::Workflow => 4,
                Field::Runnable => 5,
            });
        }
        Key::Profiles => out.push(1),
        Key::ParamNames => out.push(2),
        Key::Param(name) => {
            out.push(3);
            put_str(out, name);
        }
        Key::MetaKeys => out.push(4),
        Key::Meta(name) => {
            out.push(5);
            put_str(out, name);
        }
    }
}

fn put_value(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => out.push(0),
        ValueRef::Bool(b) => {
            out.push(1);
            out.push(u8::from(b));
        }
        ValueRef::Num(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_bits().to_le_bytes());
        }
        // Equal values encode alike, however the text was held (only a
        // UUID's length is worth the check: a longer text would allocate).
        ValueRef::Str(s) => {
            match (s.len() == uuid::fmt::Hyphenated::LENGTH).then(|| Text::new(s)) {
                Some(Text::Uuid(u)) => put_uuid(out, u),
                _ => {
                    out.push(3);
                    put_str(out, s);
                }
            }
        }
        ValueRef::Uuid(u) => put_uuid(out, u),
        ValueRef::Json(s) => {
            out.push(4);
            put_str(out, s);
        }
    }
}

/// A string in a UUID's canonical form, as its 16 bytes: a million
/// machines' Uuid key took 46 bytes a machine as text, a third of the file.
fn put_uuid(out: &mut Vec<u8>, u: uuid::Uuid) {
    out.push(5);
    out.extend_from_slice(u.as_bytes());
}

/// The top level of an encoded index, read from a stream.
struct Stream<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Stream<R> {
    fn fail(&self, what: &str) -> DecodeError {
        format!("{what} at byte {}", self.pos)
    }

    /// `n` bytes, read without zeroing a buffer first.
    fn bytes(&mut self, n: u32) -> Result<Vec<u8>, DecodeError> {
        let mut v = Vec::with_capacity(n as usize);
        let got = (&mut self.r)
            .take(u64::from(n))
            .read_to_end(&mut v)
            .map_err(|e| self.fail(&e.to_string()))?;
        self.pos += got as u64;
        if got != n as usize {
            return Err(self.fail("truncated"));
        }
        Ok(v)
    }

    /// Reads `n` bytes through `scratch`, keeping only their CRC-32.
    fn pass(&mut self, n: u32, scratch: &mut Vec<u8>) -> Result<u32, DecodeError> {
        scratch.resize(64 << 10, 0);
        let mut crc = crc32fast::Hasher::new();
        let mut left = n as usize;
        while left > 0 {
            let chunk = &mut scratch[..left.min(64 << 10)];
            self.r
                .read_exact(chunk)
                .map_err(|e| self.fail(&format!("truncated ({e})")))?;
            crc.update(chunk);
            self.pos += chunk.len() as u64;
            left -= chunk.len();
        }
        Ok(crc.finalize())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut b = [0; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.fail(&format!("truncated ({e})")))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()?;
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| self.fail("a string that is not UTF-8"))
    }

    fn bitmap(&mut self) -> Result<RoaringBitmap, DecodeError> {
        let n = self.u32()?;
        let b = self.bytes(n)?;
        RoaringBitmap::deserialize_from(&b[..]).map_err(|e| self.fail(&format!("bitmap: {e}")))
    }

    fn key(&mut self) -> Result<Key, DecodeError> {
        Ok(match self.u8()? {
            0 => Key::Field(match self.u8()? {
                0 => Field::Name,
                1 => Field::Uuid,
                2 => Field::Description,
                3 => Field::Address,
                4 => Field::Workflow,
                5 => Field::Runnable,
                f => return Err(self.fail(&format!("field tag {f}"))),
            }),
            1 => Key::Profiles,
            2 => Key::ParamNames,
            3 => Key::Param(self.string()?),
            4 => Key::MetaKeys,
            5 => Key::Meta(self.string()?),
            t => return Err(self.fail(&format!("key tag {t}"))),
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail(&self, what: &str) -> DecodeError {
        format!("{what} at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.fail("truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let (lo, hi) = (u64::from(self.u32()?), u64::from(self.u32()?));
        Ok(lo | hi << 32)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| self.fail("a string that is not UTF-8"))
    }

    fn bitmap(&mut self) -> Result<RoaringBitmap, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        RoaringBitmap::deserialize_from(b).map_err(|e| self.fail(&format!("bitmap: {e}")))
    }

    fn value(&mut self) -> Result<ValueKey, DecodeError> {
        Ok(match self.u8()? {
            0 => ValueKey::Null,
            1 => ValueKey::Bool(self.u8()? != 0),
            2 => ValueKey::Num(NumKey::new(f64::from_bits(self.u64()?))),
            3 => ValueKey::str(self.str()?),
            4 => ValueKey::Json(self.str()?.into()),
            5 => {
                let b = self.take(16)?;
                ValueKey::uuid(uuid::Uuid::from_slice(b).map_err(|e| self.fail(&e.to_string()))?)
            }
            t => return Err(self.fail(&format!("value tag {t}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid_of(id: u32) -> ValueKey {
        ValueKey::uuid(uuid::Uuid::from_u128(0x5eed << 64 | u128::from(id)))
    }

    fn insert_sample(ix: &mut Index, id: u32) {
        let entries = vec![
            (
                Key::Field(Field::Name),
                ValueKey::str(&format!("node-{id:04}")),
            ),
            (
                Key::Param("rack".into()),
                ValueKey::Num(NumKey::new(f64::from(id % 7))),
            ),
            (Key::Profiles, ValueKey::str("cluster-1")),
            (Key::Field(Field::Uuid), uuid_of(id)),
            (Key::Meta("icon".into()), ValueKey::Json("[1,2]".into())),
            (
                Key::Field(Field::Runnable),
                ValueKey::Bool(id.is_multiple_of(2)),
            ),
        ];
        let own: &[&str] = if id.is_multiple_of(3) { &["rack"] } else { &[] };
        ix.insert(id, &entries, own);
    }

    fn sample(ids: impl Iterator<Item = u32>) -> Index {
        let mut ix = Index::default();
        ids.for_each(|id| insert_sample(&mut ix, id));
        ix
    }

    fn encoded(ix: &Index) -> Vec<u8> {
        let mut bytes = Vec::new();
        ix.encode(&mut bytes).unwrap();
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Index, DecodeError> {
        let ix = Index::decode(bytes, None)?;
        // Decode every key, as a reader would.
        let keys: Vec<Key> = ix.keys.names().cloned().collect();
        for k in keys {
            ix.keys.get(&k);
        }
        Ok(ix)
    }

    /// A repair that builds each key as `truth` holds it (the store's
    /// reads the records instead).
    fn repair_from(truth: Index) -> super::super::keys::Repair {
        Arc::new(move |k: &Key| {
            truth
                .keys
                .get(k)
                .cloned()
                .ok_or_else(|| format!("no {k:?}"))
        })
    }

    /// Where `ix`'s Name section is in its checkpoint file (the key
    /// untouched since the open).
    fn name_section(ix: &Index) -> FileSection {
        match ix
            .keys
            .for_encoding()
            .find(|(k, _)| **k == Key::Field(Field::Name))
        {
            Some((_, Section::Raw(Bytes::InFile(name)))) => name.clone(),
            _ => panic!("the Name key is not in the file"),
        }
    }

    /// A file holding `bytes`, as a checkpoint's holds its index.
    fn in_a_file(bytes: &[u8]) -> Arc<std::fs::File> {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    /// Changes a byte in the middle of `section`, as a failing disk or
    /// another writer would.
    fn damage(file: &std::fs::File, section: &FileSection) {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = file;
        file.seek(SeekFrom::Start(section.offset + u64::from(section.len) / 2))
            .unwrap();
        file.write_all(b"x").unwrap();
    }

    #[test]
    fn an_index_reads_back_equal() {
        let ix = sample(0..300);
        assert_eq!(decode(&encoded(&ix)).unwrap(), ix);
        assert_eq!(
            decode(&encoded(&Index::default())).unwrap(),
            Index::default()
        );
    }

    /// A section as written value by value from built keys, as
    /// `encode_section` wrote it before it read packed values in place.
    fn section_from_keys(p: &Postings) -> Vec<u8> {
        let mut out = Vec::new();
        put_bitmap(&mut out, &p.has);
        put_len(&mut out, p.values.len());
        out.push(FORM_ENTRIES);
        for (value, posting) in p.values.iter() {
            put_value(&mut out, value.view());
            match &*posting {
                Posting::One(id) => {
                    out.push(0);
                    out.extend_from_slice(&id.to_le_bytes());
                }
                Posting::Many(ids) => {
                    out.push(1);
                    put_bitmap(&mut out, ids);
                }
            }
        }
        out
    }

    /// `p`'s values held in a tree, whatever form holds them.
    fn as_tree(p: &Postings) -> Postings {
        Postings {
            values: Values::Tree(
                p.values
                    .iter()
                    .map(|(v, p)| (v.into_owned(), p.into_owned()))
                    .collect(),
            ),
            has: p.has.clone(),
        }
    }

    #[test]
    fn a_key_written_as_blocks_or_as_entries_reads_back_equal() {
        let mut values: Vec<ValueKey> = vec![
            ValueKey::Null,
            ValueKey::Bool(false),
            ValueKey::Bool(true),
            ValueKey::Json("[1,2]".into()),
            ValueKey::Json("{\"a\":1}".into()),
        ];
        for i in 0..600u32 {
            values.push(ValueKey::str(&format!("node-{i:05}")));
            values.push(ValueKey::uuid(uuid::Uuid::from_u128(
                u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            )));
            values.push(ValueKey::Num(NumKey::new(f64::from(i) * -1.5 + 7.25)));
        }
        values.push(ValueKey::str(
            "a text longer than an inline string's 24 bytes",
        ));
        values.sort();
        values.dedup();
        // Nearly all held by one id each (so the key packs), some by many.
        let entries: Vec<(ValueKey, Posting)> = values
            .into_iter()
            .zip(0u32..)
            .map(|(v, i)| match i % 20 {
                0 => (v, Posting::from_bitmap((i..i + 3).collect()).unwrap()),
                _ => (v, Posting::One(i)),
            })
            .collect();
        let n = entries.len() as u32;
        let p = Postings {
            values: Values::from_sorted(entries),
            has: (0..n + 2).collect(),
        };
        assert!(matches!(p.values, Values::Packed(_)));
        let mut blocks = Vec::new();
        encode_section(&mut blocks, &p).unwrap();
        let back = decode_section(&blocks).unwrap();
        assert!(back.values == p.values && back.has == p.has);
        // A tree of the same values is written value by value, read in
        // place as its built values are.
        let tree = as_tree(&p);
        let mut read_in_place = Vec::new();
        encode_section(&mut read_in_place, &tree).unwrap();
        assert_eq!(read_in_place, section_from_keys(&tree));
        let back = decode_section(&read_in_place).unwrap();
        assert!(back.values == p.values && back.has == p.has);
        // A UUID is written as its 16 bytes, whether held as one or as
        // its canonical text; any other text as text.
        let u = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_002a);
        let mut uuid = Vec::new();
        put_value(&mut uuid, ValueKey::uuid(u).view());
        assert_eq!(uuid[0], 5);
        assert_eq!(&uuid[1..], u.as_bytes());
        let mut as_text = Vec::new();
        put_value(&mut as_text, ValueRef::Str(&u.to_string()));
        assert_eq!(as_text, uuid);
        let upper = u.to_string().to_uppercase();
        let mut other = Vec::new();
        put_value(&mut other, ValueRef::Str(&upper));
        assert_eq!(other[0], 3);
        assert_eq!(&other[5..], upper.as_bytes());
        let back = Reader {
            bytes: &uuid,
            pos: 0,
        }
        .value()
        .unwrap();
        assert_eq!(back, ValueKey::uuid(u));
        assert!(Reader {
            bytes: &uuid[..9],
            pos: 0
        }
        .value()
        .is_err());
    }

    #[test]
    fn truncated_or_damaged_bytes_are_an_error_not_a_panic() {
        for (ix, step) in [(sample(0..300), 13), (packed_sample(), 7)] {
            let bytes = encoded(&ix);
            for cut in (0..bytes.len()).step_by(97) {
                assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            // A flipped byte decodes to an error or to some index, never a
            // panic (the checkpoint's checksum catches the rest); a block
            // that decodes is one a lookup can trust.
            for at in (0..bytes.len()).step_by(step) {
                let mut b = bytes.clone();
                b[at] ^= 0xA5;
                if let Ok(damaged) = decode(&b) {
                    for k in [Key::Field(Field::Name), Key::Field(Field::Uuid)] {
                        if let Some(p) = damaged.keys.get(&k) {
                            let all: Vec<ValueKey> =
                                p.values.iter().map(|(v, _)| v.into_owned()).collect();
                            for (v, found) in all.iter().zip(damaged.lookup_each(&k, &all)) {
                                assert!(
                                    found.is_some(),
                                    "{v:?} of {k:?} not found after byte {at} flipped"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A packed key is written as its blocks, as held: smaller than as
    /// entries, read back equal whether it was written as blocks or (from
    /// a tree of the same values) as entries.
    #[test]
    fn a_packed_key_is_written_as_its_blocks_and_reads_back_equal() {
        let ix = packed_sample();
        let name = ix.keys.get(&Key::Field(Field::Name)).unwrap().clone();
        let as_tree = as_tree(&name);
        let (mut blocks, mut entries) = (Vec::new(), Vec::new());
        encode_section(&mut blocks, &name).unwrap();
        encode_section(&mut entries, &as_tree).unwrap();
        assert!(
            blocks.len() * 2 < entries.len(),
            "{} against {}",
            blocks.len(),
            entries.len()
        );
        for bytes in [&blocks, &entries] {
            let back = decode_section(bytes).unwrap();
            assert!(back.values == name.values && back.has == name.has);
            assert!(matches!(back.values, Values::Packed(_)));
        }
        assert_eq!(decode(&encoded(&ix)).unwrap(), ix);
    }

    /// Sections left in their file read back equal, cost no heap until
    /// read, and a section whose bytes changed after the open is an error
    /// when it is read again, not other postings.
    #[test]
    fn sections_left_in_their_file_read_back_and_are_checked_again() {
        let ix = sample(0..300);
        let bytes = encoded(&ix);
        // A prefix, as a checkpoint's header sits before the index.
        let file = in_a_file(&[&b"header!"[..], &bytes[..]].concat());
        let lazy = Index::decode(&bytes[..], Some((file.clone(), 7))).unwrap();
        let held = Index::decode(&bytes[..], None).unwrap();
        assert!(lazy.heap_bytes() + 4000 < held.heap_bytes());
        assert_eq!(lazy, ix);

        let lazy = Index::decode(&bytes[..], Some((file.clone(), 7))).unwrap();
        let name = name_section(&lazy);
        damage(&file, &name);
        let again = Bytes::InFile(name).read().unwrap_err();
        assert!(again.contains("other bytes"), "{again}");
        // Encoding reads raw sections again: without a repair the change is
        // refused there too...
        assert!(lazy.encode(&mut Vec::new()).is_err());
        // ...and with one (the store's), that key is taken from the repair
        // while the others are still copied as they are.
        let mut lazy = lazy;
        lazy.set_repair(repair_from(ix.clone()));
        let again = encoded(&lazy);
        assert_eq!(decode(&again).unwrap(), ix);
    }

    /// Values looked up in keys still in their file are found by a scan of
    /// each section, which decodes nothing, and answer as the decoded keys
    /// do: values held by one object and by many, absent values, a value
    /// asked twice, an absent key. A section whose bytes changed since the
    /// open is left to the decode, which takes it from the repair.
    #[test]
    fn values_looked_up_in_a_section_answer_as_the_decoded_key_and_decode_nothing() {
        for ix in [sample(0..300), packed_sample()] {
            lookups_answer_as_the_decoded_key(ix);
        }
    }

    /// Machines 0–299 and 1,000–2,999, every key built in bulk: Name and
    /// Uuid packed (written as blocks), the others trees (as entries).
    fn packed_sample() -> Index {
        let mut ix = sample((0..300).chain(1000..3000));
        ix.compact();
        assert!(name_is_packed(&ix));
        ix
    }

    fn lookups_answer_as_the_decoded_key(ix: Index) {
        let bytes = encoded(&ix);
        let file = in_a_file(&bytes);
        let lazy = Index::decode(&bytes[..], Some((file.clone(), 0))).unwrap();
        let before = lazy.heap_bytes();
        let num = |n: f64| ValueKey::Num(NumKey::new(n));
        let name = Key::Field(Field::Name);
        let cases = [
            (
                name.clone(),
                vec![
                    ValueKey::str("node-0007"),
                    ValueKey::str("node-0299"),
                    ValueKey::str("node-0300"),
                    ValueKey::str("node-0007"),
                ],
            ),
            (Key::Param("rack".into()), vec![num(3.0), num(9.0)]),
            (Key::Profiles, vec![ValueKey::str("cluster-1")]),
            (
                Key::Field(Field::Uuid),
                vec![uuid_of(7), uuid_of(299), uuid_of(300)],
            ),
            (
                Key::Meta("icon".into()),
                vec![ValueKey::Json("[1,2]".into())],
            ),
            (
                Key::Field(Field::Runnable),
                vec![ValueKey::Bool(true), ValueKey::Bool(false)],
            ),
            (Key::Field(Field::Address), vec![ValueKey::str("x")]),
        ];
        for (k, values) in &cases {
            let want: Vec<Option<Posting>> = values
                .iter()
                .map(|v| ix.lookup(k, v).map(std::borrow::Cow::into_owned))
                .collect();
            assert!(want.iter().any(Option::is_some) || *k == Key::Field(Field::Address));
            assert_eq!(lazy.lookup_each(k, values), want, "{k:?}");
        }
        assert_eq!(lazy.heap_bytes(), before, "a key was decoded");

        // Writes queued on the keys are laid over what a scan finds: ids
        // removed everywhere, a value changed, an object added.
        let mut truth = ix.clone();
        let mut lazy = Index::decode(&bytes[..], Some((file.clone(), 0))).unwrap();
        for x in [&mut truth, &mut lazy] {
            insert_sample(x, 300);
            x.remove_everywhere(&[7u32, 8, 14].into_iter().collect());
            x.update(
                9,
                (&[(name.clone(), ValueKey::str("node-0009"))], &[]),
                (&[(name.clone(), ValueKey::str("renamed"))], &[]),
            );
        }
        let before = lazy.heap_bytes();
        let names: Vec<ValueKey> = [
            "node-0007",
            "node-0009",
            "renamed",
            "node-0300",
            "node-0010",
        ]
        .into_iter()
        .map(ValueKey::str)
        .collect();
        for (k, values) in [
            (&name, &names[..]),
            (&Key::Param("rack".into()), &[num(0.0), num(3.0)][..]),
        ] {
            let want: Vec<Option<Posting>> = values
                .iter()
                .map(|v| truth.lookup(k, v).map(std::borrow::Cow::into_owned))
                .collect();
            assert_eq!(lazy.lookup_each(k, values), want, "{k:?}");
        }
        assert_eq!(lazy.heap_bytes(), before, "a key was decoded");
        // A key looked up more often is decoded: the scans add up.
        for _ in 1..super::super::keys::SCANS_BEFORE_DECODE {
            lazy.lookup(&name, &names[2]);
        }
        assert_eq!(lazy.heap_bytes(), before, "decoded before its last scan");
        assert_eq!(
            lazy.lookup(&name, &names[2]).map(|p| p.min()),
            Some(Some(9))
        );
        assert!(lazy.heap_bytes() > before, "still scanned");
        assert_eq!(lazy, truth);

        let mut lazy = Index::decode(&bytes[..], Some((file.clone(), 0))).unwrap();
        lazy.set_repair(repair_from(ix.clone()));
        damage(&file, &name_section(&lazy));
        let node7 = [ValueKey::str("node-0007")];
        assert_eq!(
            lazy.lookup_each(&name, &node7),
            vec![ix
                .lookup(&name, &node7[0])
                .map(std::borrow::Cow::into_owned)]
        );
    }

    /// A checkpoint's copy is taken under the state's lock and encoded
    /// without it, so it has no repair: a key with queued writes whose
    /// section no longer reads back is built through the index's repair
    /// when the copy is taken, never read as empty by the copy (which
    /// would leave the index itself without that key too, as the two
    /// share it).
    #[test]
    fn a_damaged_section_is_repaired_before_a_checkpoints_copy_is_taken() {
        let ix = sample(0..300);
        let bytes = encoded(&ix);
        let file = in_a_file(&bytes);
        let mut lazy = Index::decode(&bytes[..], Some((file.clone(), 0))).unwrap();
        let mut truth = ix.clone();
        insert_sample(&mut truth, 300);
        lazy.set_repair(repair_from(truth.clone()));
        let name = name_section(&lazy);
        // Queued on every key, then the Name key's bytes change on disk.
        insert_sample(&mut lazy, 300);
        damage(&file, &name);
        let copy = lazy.for_checkpoint();
        assert_eq!(decode(&encoded(&copy)).unwrap(), truth);
        assert_eq!(lazy, truth);
    }

    fn name_is_packed(ix: &Index) -> bool {
        let name = ix.keys.get(&Key::Field(Field::Name)).unwrap();
        matches!(name.values, Values::Packed(_))
    }

    /// Keys grown one write at a time (as an import does) are trees; a
    /// checkpoint packs them from its copy, and the index adopts a packed
    /// key only if no write changed the key since the copy was taken.
    #[test]
    fn a_checkpoints_copy_packs_the_keys_grown_as_trees_that_no_write_changed_since() {
        let mut ix = sample(0..2000);
        assert!(!name_is_packed(&ix));
        let before = ix.heap_bytes();
        let copy = ix.for_checkpoint();
        let repacked = copy.repack();
        drop(copy);
        assert_eq!(
            ix.adopt(repacked).adopted,
            2,
            "only Name and Uuid call for packing"
        );
        assert!(name_is_packed(&ix));
        assert!(ix.heap_bytes() < before, "{} ≥ {before}", ix.heap_bytes());
        assert_eq!(ix, sample(0..2000));

        // A write to Name between the copy and the adoption: the packed
        // form lacks it, so it is not adopted. The write itself copied the
        // shared tree into its packed form (`keys::unshare`).
        let mut ix = sample(0..2000);
        let copy = ix.for_checkpoint();
        let repacked = copy.repack();
        insert_sample(&mut ix, 2000);
        assert!(name_is_packed(&ix), "a write's copy of a shared tree");
        assert!(!name_is_packed(&copy), "the checkpoint's copy is untouched");
        drop(copy);
        assert_eq!(ix.adopt(repacked).adopted, 0);
        assert_eq!(ix, sample(0..2001));

        // Unshared, a write changes the tree in place: no packing.
        let mut ix = sample(0..2000);
        insert_sample(&mut ix, 2000);
        assert!(!name_is_packed(&ix));
    }

    #[test]
    fn removing_everywhere_equals_never_inserting() {
        let mut ix = sample(0..300);
        let gone: RoaringBitmap = (0..300).filter(|i| i % 5 != 1).collect();
        ix.remove_everywhere(&gone);
        assert_eq!(ix, sample((0..300).filter(|i| i % 5 == 1)));
    }

    use proptest::prelude::*;

    /// A change to an index: an object's entries in, out, or many objects out.
    #[derive(Debug, Clone)]
    enum Change {
        Insert(u32, u8, u8),
        Remove(u32, u8, u8),
        RemoveAll(Vec<u32>),
        Reassign(Vec<u32>, Option<u8>),
    }

    fn entries(value: u8, name: u32) -> Vec<(Key, ValueKey)> {
        vec![
            (Key::Field(Field::Name), ValueKey::str(&format!("n{name}"))),
            (
                Key::Param("rack".into()),
                ValueKey::Num(NumKey::new(f64::from(value % 4))),
            ),
            (Key::Profiles, ValueKey::str(&format!("c{}", value % 3))),
            (
                Key::Meta("m".into()),
                ValueKey::str(&format!("{}", value % 2)),
            ),
        ]
    }

    fn apply(ix: &mut Index, c: &Change) {
        match c {
            Change::Insert(id, v, name) => ix.insert(*id, &entries(*v, u32::from(*name)), &[]),
            Change::Remove(id, v, name) => ix.remove(*id, &entries(*v, u32::from(*name)), &[]),
            Change::RemoveAll(ids) => ix.remove_everywhere(&ids.iter().copied().collect()),
            Change::Reassign(ids, v) => ix.reassign(
                &Key::Param("rack".into()),
                &ids.iter().copied().collect(),
                v.map(|v| ValueKey::Num(NumKey::new(f64::from(v)))).as_ref(),
            ),
        }
    }

    /// Every key and value [`entries`] makes, and one of each key it never
    /// makes.
    fn every_value() -> Vec<(Key, Vec<ValueKey>)> {
        let strs = |f: &dyn Fn(u32) -> String, n| (0..n).map(|i| ValueKey::str(&f(i))).collect();
        vec![
            (Key::Field(Field::Name), strs(&|i| format!("n{i}"), 9)),
            (
                Key::Param("rack".into()),
                (0..5)
                    .map(|v| ValueKey::Num(NumKey::new(f64::from(v))))
                    .collect(),
            ),
            (Key::Profiles, strs(&|i| format!("c{i}"), 4)),
            (Key::Meta("m".into()), strs(&|i| format!("{i}"), 3)),
        ]
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0..40u32, any::<u8>(), 0..8u8).prop_map(|(i, v, n)| Change::Insert(i, v, n)),
            3 => (0..40u32, any::<u8>(), 0..8u8).prop_map(|(i, v, n)| Change::Remove(i, v, n)),
            1 => proptest::collection::vec(0..40u32, 0..8).prop_map(Change::RemoveAll),
            1 => (proptest::collection::vec(0..40u32, 0..8), proptest::option::of(0..4u8))
                .prop_map(|(ids, v)| Change::Reassign(ids, v)),
        ]
    }

    proptest! {
        /// Changes queued on encoded keys and read back equal the same
        /// changes made to a decoded index.
        #[test]
        fn changes_to_encoded_keys_equal_changes_to_decoded_ones(
            before in proptest::collection::vec(change(), 0..60),
            after in proptest::collection::vec(change(), 0..60),
        ) {
            let mut plain = Index::default();
            before.iter().for_each(|c| apply(&mut plain, c));
            let bytes = encoded(&plain);
            let mut lazy = Index::decode(&bytes[..], None).unwrap();
            for c in &after {
                apply(&mut plain, c);
                apply(&mut lazy, c);
            }
            // Looked up before anything decodes them, keys still encoded
            // answer from their sections with the queued changes laid over.
            for (k, values) in every_value() {
                let want: Vec<Option<Posting>> = values
                    .iter()
                    .map(|v| plain.lookup(&k, v).map(std::borrow::Cow::into_owned))
                    .collect();
                prop_assert_eq!(lazy.lookup_each(&k, &values), want);
            }
            // Encoding a lazy index (raw sections and queued ones) and
            // reading it back is the same index too.
            let again = decode(&encoded(&lazy)).unwrap();
            prop_assert_eq!(&lazy, &plain);
            prop_assert_eq!(&again, &plain);
        }

        /// A checkpoint's copy of an index (decoded, or lazy with queued
        /// changes) encodes the index as it was when taken, whatever is
        /// changed in the index after; the index takes the changes as if
        /// no copy existed.
        #[test]
        fn a_checkpoints_copy_keeps_the_index_as_it_was(
            before in proptest::collection::vec(change(), 0..60),
            queued in proptest::collection::vec(change(), 0..20),
            after in proptest::collection::vec(change(), 1..60),
        ) {
            let mut plain = Index::default();
            before.iter().for_each(|c| apply(&mut plain, c));
            let mut lazy = Index::decode(&encoded(&plain)[..], None).unwrap();
            for c in &queued {
                apply(&mut plain, c);
                apply(&mut lazy, c);
            }
            let then = plain.clone();
            let copies = [plain.for_checkpoint(), lazy.for_checkpoint()];
            let mut expected = then.clone();
            for c in &after {
                apply(&mut expected, c);
                apply(&mut plain, c);
                apply(&mut lazy, c);
            }
            for copy in &copies {
                prop_assert_eq!(&decode(&encoded(copy)).unwrap(), &then);
            }
            prop_assert_eq!(&plain, &expected);
            prop_assert_eq!(&lazy, &expected);
        }
    }
}
