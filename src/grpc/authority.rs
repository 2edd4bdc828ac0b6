//! Accepting any HTTP/2 `:authority`, as etcd's (grpc-go) server does.
//!
//! Role: etcd's clients dial some calls as `passthrough:///http://host:port`
//! (etcdctl's `endpoint status`, `hashkv`, `defrag` with
//! `--endpoints=http://...`), so the request's `:authority` pseudo-header
//! is `http://host:port`. grpc-go ignores the authority; the `h2` crate
//! refuses a value that is not a URI authority and resets the stream with
//! PROTOCOL_ERROR. [`AuthorityFix`] wraps the connection's inbound bytes
//! (after TLS) and rewrites such a value, in the HPACK block of each
//! HEADERS frame, into one that parses, before `h2` sees it.
//!
//! Invariants:
//! - A header block without a malformed `:authority` passes byte for byte;
//!   every other frame passes unchanged (its payload is not buffered).
//! - HPACK state stays in step on both sides without decoding the whole
//!   block: a rewritten value keeps its representation (indexed or not) and
//!   its decoded length, so the entry the client's encoder added to its
//!   dynamic table has the same size in `h2`'s, and later references by
//!   index resolve to the rewritten value.
//! - Memory is bounded: one frame (at most 16 KiB, h2's frame size limit)
//!   and one header block (at most [`MAX_BLOCK`]); anything larger, or a
//!   block that does not parse, is passed through untouched from then on
//!   and `h2` judges it.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
/// h2's default (and our) SETTINGS_MAX_FRAME_SIZE: no valid frame is larger.
const MAX_FRAME: usize = 16 << 10;
/// Largest header block reassembled from HEADERS + CONTINUATION frames
/// (the server's max header list size is 64 KiB).
pub const MAX_BLOCK: usize = 128 << 10;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// An I/O object whose inbound HTTP/2 byte stream has malformed
/// `:authority` values rewritten; writes pass straight through.
pub struct AuthorityFix<T> {
    io: T,
    /// Bytes read from `io` not yet parsed.
    input: Vec<u8>,
    /// Parsed bytes ready for the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    /// Frames of the header block being reassembled (raw, to pass unchanged).
    block_frames: Vec<u8>,
    /// Their header block fragments, concatenated.
    block: Vec<u8>,
    /// The HEADERS frame's stream ID, flags and priority fields.
    block_head: Option<BlockHead>,
}

#[derive(Clone, Copy)]
struct BlockHead {
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
}

enum State {
    /// Inside the client preface: this many bytes still to pass.
    Preface(usize),
    /// At a frame boundary, or this many payload bytes of a frame that is
    /// passed through still to come.
    Frames { pass: usize },
    /// Gave up on parsing (oversized or malformed): everything passes.
    Passthrough,
}

impl<T> AuthorityFix<T> {
    pub fn new(io: T) -> AuthorityFix<T> {
        AuthorityFix {
            io,
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            state: State::Preface(PREFACE_LEN),
            block_frames: Vec::new(),
            block: Vec::new(),
            block_head: None,
        }
    }

    /// Moves as much of `input` as can be decided into `out`.
    fn process(&mut self) {
        loop {
            match self.state {
                State::Passthrough => {
                    self.out.append(&mut self.input);
                    return;
                }
                State::Preface(left) => {
                    let n = left.min(self.input.len());
                    self.out.extend(self.input.drain(..n));
                    if n < left {
                        self.state = State::Preface(left - n);
                        return;
                    }
                    self.state = State::Frames { pass: 0 };
                }
                State::Frames { pass } if pass > 0 => {
                    let n = pass.min(self.input.len());
                    self.out.extend(self.input.drain(..n));
                    self.state = State::Frames { pass: pass - n };
                    if n < pass {
                        return;
                    }
                }
                State::Frames { .. } => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = usize::from(self.input[0]) << 16
                        | usize::from(self.input[1]) << 8
                        | usize::from(self.input[2]);
                    let kind = self.input[3];
                    let in_block = self.block_head.is_some();
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION && !in_block {
                        self.out.extend(self.input.drain(..FRAME_HEADER_LEN));
                        self.state = State::Frames { pass: len };
                        continue;
                    }
                    if len > MAX_FRAME
                        || (kind == TYPE_HEADERS) == in_block
                        || self.block.len() + len > MAX_BLOCK
                    {
                        // Not a well-formed header block: h2 will say so.
                        self.give_up();
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return;
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
                    if !self.add_block_frame(&frame) {
                        self.block_frames.extend_from_slice(&frame);
                        self.give_up();
                        continue;
                    }
                }
            }
        }
    }

    /// Adds one HEADERS or CONTINUATION frame to the block; at END_HEADERS
    /// emits the block (rewritten if need be). False if the frame is malformed.
    fn add_block_frame(&mut self, frame: &[u8]) -> bool {
        let flags = frame[4];
        let mut stream_id = [0u8; 4];
        stream_id.copy_from_slice(&frame[5..9]);
        let payload = &frame[FRAME_HEADER_LEN..];
        let fragment = match self.block_head {
            Some(_) => payload,
            None => {
                let mut rest = payload;
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    let Some((&p, r)) = rest.split_first() else {
                        return false;
                    };
                    pad = usize::from(p);
                    rest = r;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if rest.len() < 5 {
                        return false;
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&rest[..5]);
                    priority = Some(p);
                    rest = &rest[5..];
                }
                if pad > rest.len() {
                    return false;
                }
                self.block_head = Some(BlockHead {
                    stream_id,
                    flags,
                    priority,
                });
                &rest[..rest.len() - pad]
            }
        };
        self.block.extend_from_slice(fragment);
        self.block_frames.extend_from_slice(frame);
        if flags & FLAG_END_HEADERS == 0 {
            return true;
        }
        let head = self.block_head.take();
        match (head, fix_block(&self.block)) {
            (Some(head), Some(Some(fixed))) => {
                write_block(&mut self.out, head, &fixed);
                self.block_frames.clear();
            }
            _ => self.out.append(&mut self.block_frames),
        }
        self.block.clear();
        true
    }

    fn give_up(&mut self) {
        self.out.append(&mut self.block_frames);
        self.block.clear();
        self.block_head = None;
        self.state = State::Passthrough;
    }
}

/// Writes `block` as a HEADERS frame (and CONTINUATIONs), without padding.
fn write_block(out: &mut Vec<u8>, head: BlockHead, block: &[u8]) {
    let mut first = true;
    let mut rest = block;
    loop {
        let prefix = if first {
            head.priority.map_or(0, |_| 5)
        } else {
            0
        };
        let n = rest.len().min(MAX_FRAME - prefix);
        let (chunk, tail) = rest.split_at(n);
        let len = prefix + n;
        let mut flags = if first {
            head.flags & !(FLAG_PADDED | FLAG_END_HEADERS)
        } else {
            0
        };
        if tail.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        out.push(if first {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        });
        out.push(flags);
        out.extend_from_slice(&head.stream_id);
        if let (true, Some(p)) = (first, head.priority) {
            out.extend_from_slice(&p);
        }
        out.extend_from_slice(chunk);
        first = false;
        rest = tail;
        if rest.is_empty() {
            return;
        }
    }
}

/// Scans an HPACK header block. `None`: it does not parse (pass it as is);
/// `Some(None)`: nothing to change; `Some(Some(block))`: the rewritten block.
pub fn fix_block(block: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut fixed: Option<Vec<u8>> = None;
    let mut copied = 0; // block[..copied] is already in `fixed`
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        let prefix_bits = if b & 0x80 != 0 {
            // Indexed field: nothing to look at.
            pos = decode_int(block, pos, 7)?.1;
            continue;
        } else if b & 0xc0 == 0x40 {
            6 // literal with incremental indexing
        } else if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            pos = decode_int(block, pos, 5)?.1;
            continue;
        } else {
            4 // literal without indexing / never indexed
        };
        let (name_index, after) = decode_int(block, pos, prefix_bits)?;
        pos = after;
        let is_authority = if name_index == 0 {
            let (name, after) = decode_string(block, pos)?;
            pos = after;
            name == b":authority"
        } else {
            name_index == 1 // the static table's `:authority`
        };
        let value_start = pos;
        let (value, after) = decode_string(block, pos)?;
        pos = after;
        if is_authority && http::uri::Authority::try_from(value.as_slice()).is_err() {
            let out = fixed.get_or_insert_with(|| Vec::with_capacity(block.len() + 16));
            out.extend_from_slice(&block[copied..value_start]);
            let value = sanitize(&value);
            encode_int(out, 0x00, 7, value.len());
            out.extend_from_slice(&value);
            copied = pos;
        }
    }
    Some(fixed.map(|mut out| {
        out.extend_from_slice(&block[copied..]);
        out
    }))
}

/// A value of the same length that parses as a URI authority: the last
/// `:port` is kept, every other byte outside a host name's alphabet
/// becomes `-` (`http://127.0.0.1:2379` → `http---127.0.0.1:2379`).
fn sanitize(value: &[u8]) -> Vec<u8> {
    let port_colon = value
        .iter()
        .rposition(|&c| c == b':')
        .filter(|&i| i + 1 < value.len() && value[i + 1..].iter().all(u8::is_ascii_digit));
    value
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || Some(i) == port_colon {
                c
            } else {
                b'-'
            }
        })
        .collect()
}

/// RFC 7541 §5.1 integer with an N-bit prefix at `block[pos]`: (value, next pos).
fn decode_int(block: &[u8], pos: usize, prefix_bits: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix_bits) - 1;
    let first = usize::from(*block.get(pos)?) & max;
    if first < max {
        return Some((first, pos + 1));
    }
    let mut value = max;
    let mut shift = 0;
    let mut pos = pos + 1;
    loop {
        let b = *block.get(pos)?;
        pos += 1;
        // Values beyond 2^28 are nothing a sane block holds.
        if shift > 21 {
            return None;
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((value, pos));
        }
    }
}

fn encode_int(out: &mut Vec<u8>, high_bits: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// RFC 7541 §5.2 string literal at `block[pos]`, decoded: (bytes, next pos).
fn decode_string(block: &[u8], pos: usize) -> Option<(Vec<u8>, usize)> {
    let huffman = *block.get(pos)? & 0x80 != 0;
    let (len, start) = decode_int(block, pos, 7)?;
    let end = start.checked_add(len)?;
    let raw = block.get(start..end)?;
    let value = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Some((value, end))
}

/// Code lengths of RFC 7541 Appendix B for bytes 0..=255 (EOS is 30 bits).
/// The code is canonical: codes follow from the lengths alone.
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];
const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// The canonical code, by length: first code, index of its symbol in
/// `symbols`, and how many codes have that length.
struct Canonical {
    first_code: [u32; MAX_CODE_LEN + 1],
    first_index: [u16; MAX_CODE_LEN + 1],
    count: [u16; MAX_CODE_LEN + 1],
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let len_of = |s: u16| {
            HUFFMAN_LENGTHS
                .get(usize::from(s))
                .map_or(MAX_CODE_LEN, |&l| usize::from(l))
        };
        let mut symbols: Vec<u16> = (0..=EOS).collect();
        symbols.sort_by_key(|&s| (len_of(s), s));
        let mut table = Canonical {
            first_code: [0; MAX_CODE_LEN + 1],
            first_index: [0; MAX_CODE_LEN + 1],
            count: [0; MAX_CODE_LEN + 1],
            symbols: Vec::new(),
        };
        let mut code = 0u32;
        let mut prev_len = 0;
        for (i, &s) in symbols.iter().enumerate() {
            let len = len_of(s);
            if i > 0 {
                code = (code + 1) << (len - prev_len);
            } else {
                code <<= len;
            }
            if table.count[len] == 0 {
                table.first_code[len] = code;
                table.first_index[len] = i as u16;
            }
            table.count[len] += 1;
            prev_len = len;
        }
        table.symbols = symbols;
        table
    })
}

/// Decodes an HPACK Huffman string; `None` if it holds EOS, a code longer
/// than any, or padding that is not a prefix of EOS (all ones, < 8 bits).
pub fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let table = canonical();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in raw {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            let offset = code.wrapping_sub(table.first_code[len]);
            if table.count[len] > 0 && offset < u32::from(table.count[len]) {
                let symbol = table.symbols[usize::from(table.first_index[len]) + offset as usize];
                if symbol == EOS {
                    return None;
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            } else if len == MAX_CODE_LEN {
                return None;
            }
        }
    }
    (len < 8 && code == (1 << len) - 1).then_some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8 << 10];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // EOF: whatever is left unparsed goes to h2 as is.
                    this.give_up();
                    this.out.append(&mut this.input);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(read.filled());
                    this.process();
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541 C.4.1: "www.example.com", Huffman-coded.
    #[test]
    fn huffman_decodes_the_rfc_example() {
        let raw = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(
            huffman_decode(&raw).as_deref(),
            Some(&b"www.example.com"[..])
        );
        // Padding of zeros is refused; EOS in full is refused.
        assert_eq!(huffman_decode(&[0xf1, 0x00]), None);
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    fn literal(prefix: u8, bits: u32, name_index: usize, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_int(&mut out, prefix, bits, name_index);
        encode_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn a_schemed_authority_is_rewritten_to_the_same_length() {
        // :method POST (static 3), then :authority with incremental
        // indexing, then a never-indexed custom header.
        let mut block = vec![0x83];
        block.extend(literal(0x40, 6, 1, b"http://127.0.0.1:2379"));
        block.extend(literal(0x10, 4, 58, b"etcdctl"));
        let fixed = fix_block(&block).unwrap().unwrap();
        let mut want = vec![0x83];
        want.extend(literal(0x40, 6, 1, b"http---127.0.0.1:2379"));
        want.extend(literal(0x10, 4, 58, b"etcdctl"));
        assert_eq!(fixed, want);
        assert!(http::uri::Authority::try_from("http---127.0.0.1:2379").is_ok());
        // A good authority, or an indexed reference, passes untouched.
        let good = literal(0x40, 6, 1, b"127.0.0.1:2379");
        assert_eq!(fix_block(&good), Some(None));
        assert_eq!(fix_block(&[0x83, 0xbe]), Some(None));
        // Garbage does not parse.
        assert_eq!(fix_block(&[0x40, 0x81]), None);
    }

    #[test]
    fn frames_pass_or_are_reframed() {
        use futures_lite::future::block_on;
        use tokio::io::AsyncReadExt;
        let mut block = vec![0x83];
        block.extend(literal(0x40, 6, 1, b"https://[::1]:2379"));
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (empty), then HEADERS split over a padded HEADERS and a
        // CONTINUATION, then a DATA frame.
        input.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let (a, b) = block.split_at(5);
        let len = 1 + a.len() + 2;
        input.extend([0, 0, len as u8, 0x1, FLAG_PADDED, 0, 0, 0, 1, 2]);
        input.extend(a);
        input.extend([0, 0]);
        input.extend([0, 0, b.len() as u8, 0x9, FLAG_END_HEADERS, 0, 0, 0, 1]);
        input.extend(b);
        input.extend([0, 0, 3, 0x0, 0x1, 0, 0, 0, 1, 7, 8, 9]);
        let mut fix = AuthorityFix::new(&input[..]);
        let mut got = Vec::new();
        block_on(fix.read_to_end(&mut got)).unwrap();
        let mut want = input[..33].to_vec();
        let mut fixed = vec![0x83];
        fixed.extend(literal(0x40, 6, 1, b"https------1-:2379"));
        want.extend([0, 0, fixed.len() as u8, 0x1, FLAG_END_HEADERS, 0, 0, 0, 1]);
        want.extend(&fixed);
        want.extend([0, 0, 3, 0x0, 0x1, 0, 0, 0, 1, 7, 8, 9]);
        assert_eq!(got, want);
    }
}
