//! The chunked transfer coding (RFC 9112 section 7.1): a strict decoder and
//! the encoder's framing.
//!
//! The decoder works in place on a connection's read buffer and hands out
//! chunk data as `BytesMut` splits of it, without copying. It accepts only
//! what the grammar allows: hex sizes of at most 16 digits, extensions made
//! of visible characters after a `;`, CRLF (never a bare LF) after the size
//! line and after each chunk's data, and a trailer section of valid fields.
//! The proxy re-frames what it decodes, so a peer's odd framing never
//! reaches the other side as is.

use bytes::{Buf, BytesMut};
use ringway_core::{Error, ErrorKind, Result, Side};

use crate::head::HeaderKind;

/// The longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What one step of decoding produced.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Body bytes, split off the read buffer.
    Data(BytesMut),
    /// The buffer holds no complete element: read more.
    NeedMore,
    /// The body ended; `trailers` is the raw trailer section (fields and the
    /// final CRLF), if the sender had any.
    End { trailers: Option<BytesMut> },
}

/// A chunked-body decoder; one per body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    side: Side,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new(side: Side, max_trailer_bytes: usize) -> Self {
        Self {
            state: State::Size,
            side,
            max_trailer_bytes,
        }
    }

    fn invalid(&self, context: &'static str) -> Error {
        Error::new(ErrorKind::InvalidHttp, self.side, context)
    }

    /// Decodes the next element at the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded> {
        loop {
            match self.state {
                State::Size => {
                    let Some(lf) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_SIZE_LINE {
                            return Err(self.invalid("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if lf > MAX_SIZE_LINE {
                        return Err(self.invalid("chunk size line too long"));
                    }
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err(self.invalid("chunk size line without CRLF"));
                    }
                    let size = self.parse_size_line(&buf[..lf - 1])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64);
                    let left = remaining - take;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    // `take` is at most buf.len(), so it fits in usize.
                    return Ok(Decoded::Data(buf.split_to(take as usize)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(self.invalid("chunk data not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(self.invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End { trailers: None });
                    }
                    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                        if buf.len() > self.max_trailer_bytes {
                            return Err(self.invalid("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let section = &buf[..end + 4];
                    if section[..end + 2]
                        .iter()
                        .enumerate()
                        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
                    {
                        return Err(self.invalid("bare LF in the trailer section"));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(section, &mut fields) {
                        Ok(httparse::Status::Complete((len, _))) if len == section.len() => {}
                        _ => return Err(self.invalid("invalid trailer section")),
                    }
                    self.state = State::Done;
                    return Ok(Decoded::End {
                        trailers: Some(buf.split_to(end + 4)),
                    });
                }
                State::Done => return Ok(Decoded::End { trailers: None }),
            }
        }
    }

    /// `1*HEXDIG [ BWS ";" ext ]`: the size, after checking the extensions
    /// are made of visible characters, spaces and tabs only.
    fn parse_size_line(&self, line: &[u8]) -> Result<u64> {
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(self.invalid("invalid chunk size"));
        }
        let significant = line[..digits].iter().skip_while(|&&b| b == b'0').count();
        if significant > 16 {
            return Err(self.invalid("chunk size too large"));
        }
        let mut size: u64 = 0;
        for &b in &line[..digits] {
            // Every byte here is a hex digit, and at most 16 are significant.
            let d = (b as char).to_digit(16).unwrap_or(0);
            size = (size << 4) | u64::from(d);
        }
        let rest = &line[digits..];
        let bws = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let ext = &rest[bws..];
        if !ext.is_empty() {
            if ext[0] != b';' {
                return Err(self.invalid("invalid chunk size"));
            }
            if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(self.invalid("control character in a chunk extension"));
            }
        } else if !rest.is_empty() {
            // Whitespace after the size with no extension after it.
            return Err(self.invalid("invalid chunk size"));
        }
        Ok(size)
    }
}

/// Appends a chunk-size line for `len` bytes of data.
pub(crate) fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the fields of `trailers` (a raw trailer
/// section) that may travel in a trailer, then the final CRLF.
pub(crate) fn write_last_chunk(out: &mut Vec<u8>, trailers: Option<&[u8]>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(section) = trailers {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        if let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields) {
            for f in fields.iter() {
                let kind = HeaderKind::of(f.name.as_bytes());
                if kind.is_hop_by_hop() || matches!(kind, HeaderKind::ContentLength | HeaderKind::Host) {
                    continue;
                }
                out.extend_from_slice(f.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(f.value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a whole body; returns the data and the trailer section.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let mut buf = BytesMut::from(input);
        let mut d = ChunkedDecoder::new(Side::Downstream, 1024);
        let mut data = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::NeedMore => {
                    return Err(Error::new(
                        ErrorKind::ConnectionClosed,
                        Side::Downstream,
                        "truncated",
                    ))
                }
                Decoded::End { trailers } => return Ok((data, trailers.map(|t| t.to_vec()))),
            }
        }
    }

    #[track_caller]
    fn assert_invalid(input: &[u8]) {
        let e = decode_all(input).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidHttp, "{e}");
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let (data, trailers) = decode_all(b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers, None);
        let (data, trailers) = decode_all(b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n").unwrap();
        assert_eq!(data, b"0123456789");
        assert_eq!(trailers.as_deref(), Some(&b"X-Sum: 1\r\n\r\n"[..]));
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"3\r\nabc\r\n2;x\r\nde\r\n0\r\nT: v\r\n\r\n";
        let mut d = ChunkedDecoder::new(Side::Downstream, 1024);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut ended = false;
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            loop {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(x) => data.extend_from_slice(&x),
                    Decoded::NeedMore => break,
                    Decoded::End { .. } => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        assert!(ended);
        assert_eq!(data, b"abcde");
    }

    #[test]
    fn rejects_invalid_chunk_sizes() {
        assert_invalid(b"x\r\nabc\r\n0\r\n\r\n");
        assert_invalid(b"-1\r\n0\r\n\r\n");
        assert_invalid(b"+5\r\nhello\r\n0\r\n\r\n");
        assert_invalid(b"0x5\r\nhello\r\n0\r\n\r\n");
        assert_invalid(b"11111111111111111\r\n");
        assert_invalid(b"5 \r\nhello\r\n0\r\n\r\n");
        assert_invalid(b"5;a\x01b\r\nhello\r\n0\r\n\r\n");
        assert_invalid(b"5\r;x\r\nhello\r\n0\r\n\r\n");
        assert_invalid(b"5\x0c;x\r\nhello\r\n0\r\n\r\n");
        let mut long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE)).into_bytes();
        assert_invalid(&long);
        long.clear();
        // Spaces and tabs before an extension are allowed (BWS).
        assert!(decode_all(b"5 \t;x\r\nhello\r\n0\r\n\r\n").is_ok());
        // 16 significant digits are fine even with leading zeros before them.
        let mut ok = BytesMut::from(&b"00000000000000000001\r\n"[..]);
        let mut d = ChunkedDecoder::new(Side::Downstream, 1024);
        assert!(matches!(d.decode(&mut ok).unwrap(), Decoded::NeedMore));
    }

    #[test]
    fn rejects_a_chunk_without_its_crlf() {
        assert_invalid(b"5\r\nhelloX\r\n0\r\n\r\n");
        assert_invalid(b"5\r\nhello\n0\r\n\r\n");
        assert_invalid(b"5\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn rejects_invalid_trailers() {
        assert_invalid(b"0\r\nBad Name: x\r\n\r\n");
        assert_invalid(b"0\r\nX: a\nY: b\r\n\r\n");
    }

    #[test]
    fn encoder_framing() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 0x1a2b);
        write_chunk_header(&mut out, 0);
        assert_eq!(out, b"1a2b\r\n0\r\n");
        let mut out = Vec::new();
        write_last_chunk(&mut out, Some(b"X-Sum: 1\r\nContent-Length: 5\r\n\r\n"));
        assert_eq!(out, b"0\r\nX-Sum: 1\r\n\r\n");
    }
}
