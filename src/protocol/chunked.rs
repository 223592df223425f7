//! An incremental decoder for HTTP/1.1 chunked bodies: bytes go in as they arrive, body bytes
//! come out as soon as they are known. Used by the legacy stream relay and by the sidecar's own
//! calls to its MCP server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Past the size: extensions or whitespace up to the line end.
    SizeRest {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_len: usize,
    },
    TrailerLf {
        line_len: usize,
    },
    Done,
}

#[derive(Debug)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

/// The body is not valid chunked encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending body bytes to `out`. Bytes after the end are ignored.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => State::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(Malformed("chunk size too large")),
                    None if digits == 0 => return Err(Malformed("chunk size missing")),
                    None if b == b'\r' => State::SizeLf { size },
                    None if b == b'\n' => Self::after_size(size),
                    None => State::SizeRest { size },
                },
                State::SizeRest { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => Self::after_size(size),
                    _ => State::SizeRest { size },
                },
                State::SizeLf { size } => match b {
                    b'\n' => Self::after_size(size),
                    _ => return Err(Malformed("expected LF after chunk size")),
                },
                State::Data { left } => {
                    let n = (input.len() - i).min(left as usize);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(Malformed("expected CRLF after chunk data")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(Malformed("expected LF after chunk data")),
                },
                State::Trailer { line_len } => match b {
                    b'\r' => State::TrailerLf { line_len },
                    b'\n' if line_len == 0 => State::Done,
                    b'\n' => State::Trailer { line_len: 0 },
                    _ => State::Trailer {
                        line_len: line_len + 1,
                    },
                },
                State::TrailerLf { line_len } => match b {
                    b'\n' if line_len == 0 => State::Done,
                    b'\n' => State::Trailer { line_len: 0 },
                    _ => return Err(Malformed("expected LF in trailer")),
                },
                State::Done => return Ok(()),
            };
            i += 1;
        }
        Ok(())
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::Trailer { line_len: 0 }
        } else {
            State::Data { left: size }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"7\r\nevent: \r\n17;ext=1\r\nendpoint\ndata: /m?x=1\n\n\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn decodes_in_one_piece_and_byte_by_byte() {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        d.decode(BODY, &mut out).unwrap();
        assert!(d.is_done());
        assert_eq!(out, b"event: endpoint\ndata: /m?x=1\n\n");
        let mut d = Chunked::default();
        let mut out2 = Vec::new();
        for b in BODY {
            d.decode(std::slice::from_ref(b), &mut out2).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out2, out);
    }

    #[test]
    fn not_done_until_the_last_chunk() {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        d.decode(b"3\r\nabc\r\n", &mut out).unwrap();
        assert!(!d.is_done());
        d.decode(b"0\r\n\r\n", &mut out).unwrap();
        assert!(d.is_done());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn refuses_garbage() {
        let mut out = Vec::new();
        assert!(Chunked::default().decode(b"zz\r\n", &mut out).is_err());
        assert!(Chunked::default().decode(b"2\r\nabX", &mut out).is_err());
        assert!(Chunked::default()
            .decode(b"ffffffffffffffffff\r\n", &mut out)
            .is_err());
    }
}
