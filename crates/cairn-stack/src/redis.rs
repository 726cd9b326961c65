//! A minimal RESP2 client: enough to SCAN, DUMP, PTTL, RESTORE and UNLINK.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// +OK
    Status(String),
    /// -ERR ...
    Error(String),
    /// :n
    Int(i64),
    /// $n bytes, or nil
    Bulk(Option<Vec<u8>>),
    /// *n replies, or nil
    Array(Option<Vec<Reply>>),
}

/// A connection to one Redis server.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

fn bad(m: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.into())
}

impl Conn {
    /// Connect (with a timeout) and optionally authenticate.
    pub fn connect(addr: &str, password: Option<&str>) -> std::io::Result<Conn> {
        use std::net::ToSocketAddrs;
        let sa = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| bad(format!("cannot resolve {addr}")))?;
        let s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            r: BufReader::with_capacity(1 << 16, s.try_clone()?),
            w: s,
        };
        if let Some(p) = password {
            c.call(&[b"AUTH", p.as_bytes()])?;
        }
        Ok(c)
    }

    fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Send one command, read its reply; a Redis error is an `Err`.
    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut buf = Vec::new();
        Self::encode(args, &mut buf);
        self.w.write_all(&buf)?;
        match self.read()? {
            Reply::Error(e) => Err(bad(format!(
                "redis {}: {e}",
                String::from_utf8_lossy(args[0])
            ))),
            r => Ok(r),
        }
    }

    /// Send many commands at once and read all replies (pipelining).
    pub fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> std::io::Result<Vec<Reply>> {
        let mut buf = Vec::new();
        for c in cmds {
            let refs: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            Self::encode(&refs, &mut buf);
        }
        self.w.write_all(&buf)?;
        (0..cmds.len()).map(|_| self.read()).collect()
    }

    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l)?;
        if l.len() < 2 || !l.ends_with(b"\r\n") {
            return Err(bad("connection closed or bad reply line"));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let l = self.line()?;
        let (t, rest) = l.split_first().ok_or_else(|| bad("empty reply"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let num =
            || -> std::io::Result<i64> { text().parse().map_err(|_| bad("bad number in reply")) };
        Ok(match t {
            b'+' => Reply::Status(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Int(num()?),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut v = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut v)?;
                    v.truncate(n as usize);
                    Reply::Bulk(Some(v))
                }
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n.min(1 << 16) as usize);
                    for _ in 0..n {
                        v.push(self.read()?);
                    }
                    Reply::Array(Some(v))
                }
            }
            _ => return Err(bad(format!("unknown reply type {:?}", *t as char))),
        })
    }

    /// All keys of the selected database matching `pattern` (SCAN, so the
    /// server is never blocked).
    pub fn scan(&mut self, pattern: &str) -> std::io::Result<Vec<Vec<u8>>> {
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            let r = self.call(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])?;
            let Reply::Array(Some(mut parts)) = r else {
                return Err(bad("bad SCAN reply"));
            };
            if parts.len() != 2 {
                return Err(bad("bad SCAN reply"));
            }
            let list = parts.pop();
            let next = parts.pop();
            if let Some(Reply::Array(Some(ks))) = list {
                for k in ks {
                    if let Reply::Bulk(Some(k)) = k {
                        keys.push(k);
                    }
                }
            }
            match next {
                Some(Reply::Bulk(Some(c))) => cursor = c,
                _ => return Err(bad("bad SCAN cursor")),
            }
            if cursor == b"0" {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}
