//! Where one HTTP/1 connection stands, from the bytes the server reads and writes: reading a
//! request head, reading its body, waiting for the server's answer, idle between requests,
//! or upgraded (WebSocket). Just enough framing to know which deadline applies; hyper does the
//! real parsing, and a request it rejects ends the connection anyway.

use tokio::time::Instant;

/// The deadlines of a connection (see the `http_*` and `ws_handshake_timeout` settings).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The whole request head, from the connection's accept (first request) or from the first
    /// byte of the head (later requests on a keep-alive connection).
    pub head: std::time::Duration,
    /// No body byte for this long.
    pub body_idle: std::time::Duration,
    /// Bytes per second a body must average once `body_idle` has passed; 0: no minimum.
    pub body_min_rate: u64,
    /// Idle between the end of a response and the next request.
    pub keep_alive: std::time::Duration,
    /// From the start of an upgrade request's head until the server has answered it.
    pub ws_handshake: std::time::Duration,
}

/// Why a connection was cut; the label of `cartstream_connections_cut_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// A new connection sent nothing within the head deadline.
    Silent,
    /// A request head was not complete within the head deadline.
    Head,
    /// No body byte within `http_body_idle_timeout`.
    BodyIdle,
    /// The body averaged less than `http_body_min_rate`.
    BodyRate,
    /// No new request within `http_keep_alive_timeout` of the last response.
    KeepAlive,
    /// A WebSocket upgrade was not answered within `ws_handshake_timeout`.
    WsHandshake,
}

impl CutReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::Head => "head_timeout",
            Self::BodyIdle => "body_idle",
            Self::BodyRate => "body_rate",
            Self::KeepAlive => "keep_alive",
            Self::WsHandshake => "ws_handshake",
        }
    }
}

/// Longest header line prefix kept: enough for the names and values framing looks at.
const LINE_KEEP: usize = 256;
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug)]
enum State {
    /// Reading a head that started at `start`.
    Head(Head),
    Body(Body),
    /// The request is read; the server has not written since.
    Awaiting {
        upgrade: bool,
    },
    /// The server has answered; nothing of a next request yet.
    Idle,
    /// Past a 101 answer, or HTTP/2: the protocol's own keep-alive rules apply.
    Upgraded,
}

#[derive(Debug, Default)]
struct Head {
    line: Vec<u8>,
    saw_request_line: bool,
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encoding: bool,
    chunked: bool,
    upgrade_header: bool,
    connection_upgrade: bool,
}

#[derive(Debug)]
struct Body {
    kind: BodyKind,
    start: Instant,
    last: Instant,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
enum BodyKind {
    Fixed(u64),
    Chunked(Chunk),
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size { value: u64 },
    Extension { value: u64 },
    Data(u64),
    DataEnd,
    Trailer { line_empty: bool },
}

/// A connection's framing state and the times its deadlines count from.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// When the current request's head started (accept, for the first one).
    request_start: Instant,
    /// No byte has arrived on this connection yet.
    fresh: bool,
    /// Nothing was written since the current request started, and it did not start while an
    /// earlier one was unanswered: a `408` written now cannot cut into another answer.
    clean: bool,
    last_write: Instant,
}

impl Framing {
    /// A connection accepted at `now`: its first head's deadline runs from here.
    pub fn new(now: Instant) -> Self {
        Self {
            state: State::Head(Head::default()),
            request_start: now,
            fresh: true,
            clean: true,
            last_write: now,
        }
    }

    /// Takes bytes the server read.
    pub fn on_read(&mut self, mut bytes: &[u8], now: Instant) {
        if !bytes.is_empty() {
            self.fresh = false;
        }
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Upgraded => return,
                State::Idle | State::Awaiting { .. } => {
                    // A byte after a request: the next head starts now. While the previous
                    // answer is still owed (pipelining), a 408 could cut into it.
                    self.clean = matches!(self.state, State::Idle);
                    self.request_start = now;
                    self.state = State::Head(Head::default());
                    0
                }
                State::Head(head) => match head.feed(bytes) {
                    HeadStep::More => bytes.len(),
                    HeadStep::H2Preface => {
                        self.state = State::Upgraded;
                        return;
                    }
                    HeadStep::Done(used) => {
                        self.state = head.next_state(now);
                        used
                    }
                },
                State::Body(body) => {
                    body.last = now;
                    let (used, done) = body.kind.feed(bytes);
                    body.bytes += used as u64;
                    if done {
                        self.state = State::Awaiting { upgrade: false };
                    }
                    used
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Takes bytes the server wrote (only their start matters).
    pub fn on_write(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        self.last_write = now;
        match self.state {
            State::Awaiting { upgrade: true } if is_switching_protocols(bytes) => {
                self.state = State::Upgraded;
            }
            State::Awaiting { .. } => self.state = State::Idle,
            // An early answer (100 Continue, or a refusal before the body is read) or the
            // answer to a previous request: the request being read goes on.
            State::Head(_) | State::Body(_) => self.clean = false,
            State::Idle | State::Upgraded => {}
        }
    }

    /// The next deadline and what passing it means; `None` while the server owes an answer
    /// (its own timeouts apply) and after an upgrade.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, CutReason)> {
        match &self.state {
            State::Head(_) if self.fresh => Some((self.request_start + t.head, CutReason::Silent)),
            State::Head(_) => Some((self.request_start + t.head, CutReason::Head)),
            State::Body(body) => {
                let idle = (body.last + t.body_idle, CutReason::BodyIdle);
                if t.body_min_rate == 0 {
                    return Some(idle);
                }
                // After the idle allowance, every `body_min_rate` bytes buy one more second:
                // a body that averages less falls behind and is cut.
                let earned =
                    std::time::Duration::from_secs_f64(body.bytes as f64 / t.body_min_rate as f64);
                let rate = (body.start + t.body_idle + earned, CutReason::BodyRate);
                Some(if rate.0 < idle.0 { rate } else { idle })
            }
            State::Awaiting { upgrade: true } => {
                Some((self.request_start + t.ws_handshake, CutReason::WsHandshake))
            }
            State::Awaiting { upgrade: false } | State::Upgraded => None,
            State::Idle => Some((self.last_write + t.keep_alive, CutReason::KeepAlive)),
        }
    }

    /// Past a WebSocket upgrade (or HTTP/2): no deadline will ever apply again.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.state, State::Upgraded)
    }

    /// Whether the server may answer `408` on a cut: part of a request arrived and nothing
    /// else is being written on the connection.
    pub fn may_answer_timeout(&self) -> bool {
        self.clean && !self.fresh && matches!(self.state, State::Head(_) | State::Body(_))
    }
}

fn is_switching_protocols(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.1 101") || bytes.starts_with(b"HTTP/1.0 101")
}

enum HeadStep {
    More,
    /// The head ended after this many bytes.
    Done(usize),
    /// The connection speaks HTTP/2 (prior knowledge).
    H2Preface,
}

impl Head {
    fn feed(&mut self, bytes: &[u8]) -> HeadStep {
        for (i, &b) in bytes.iter().enumerate() {
            if b != b'\n' {
                if self.line.len() < LINE_KEEP {
                    self.line.push(b);
                }
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            if line.is_empty() {
                // Empty lines before the request line are tolerated, as hyper does.
                if self.saw_request_line {
                    return HeadStep::Done(i + 1);
                }
                continue;
            }
            if !self.saw_request_line {
                self.saw_request_line = true;
                if line == H2_PREFACE_LINE {
                    return HeadStep::H2Preface;
                }
                continue;
            }
            self.header(&line);
        }
        HeadStep::More
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => self.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade_header = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection_upgrade |= value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        }
    }

    /// What follows the head. A head hyper will refuse (a transfer coding that is not chunked,
    /// conflicting lengths) ends the connection with its answer; no body is expected then.
    fn next_state(&self, now: Instant) -> State {
        let body = |kind| {
            State::Body(Body {
                kind,
                start: now,
                last: now,
                bytes: 0,
            })
        };
        if self.transfer_encoding {
            if self.chunked {
                return body(BodyKind::Chunked(Chunk::Size { value: 0 }));
            }
            return State::Awaiting { upgrade: false };
        }
        match self.content_length {
            Some(n) if n > 0 && !self.bad_length => body(BodyKind::Fixed(n)),
            _ => State::Awaiting {
                upgrade: self.upgrade_header && self.connection_upgrade,
            },
        }
    }
}

impl BodyKind {
    /// Consumes body bytes: how many belong to this body, and whether it is complete.
    fn feed(&mut self, bytes: &[u8]) -> (usize, bool) {
        match self {
            Self::Fixed(left) => {
                let used = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= used as u64;
                (used, *left == 0)
            }
            Self::Chunked(chunk) => {
                let mut i = 0;
                while i < bytes.len() {
                    let (next, used, done) = chunk.step(&bytes[i..]);
                    *chunk = next;
                    i += used;
                    if done {
                        return (i, true);
                    }
                }
                (i, false)
            }
        }
    }
}

impl Chunk {
    /// One step of chunked decoding: the next state, bytes used, and whether the body ended.
    fn step(self, bytes: &[u8]) -> (Self, usize, bool) {
        let b = bytes[0];
        let after_size = |value: u64| {
            if value == 0 {
                Self::Trailer { line_empty: true }
            } else {
                Self::Data(value)
            }
        };
        match self {
            Self::Size { value } => match b {
                b'\n' => (after_size(value), 1, false),
                _ => match (b as char).to_digit(16) {
                    // An absurd size is hyper's to refuse; here it only has to not overflow.
                    Some(d) => (
                        Self::Size {
                            value: value.saturating_mul(16).saturating_add(u64::from(d)),
                        },
                        1,
                        false,
                    ),
                    None => (Self::Extension { value }, 1, false),
                },
            },
            Self::Extension { value } => match b {
                b'\n' => (after_size(value), 1, false),
                _ => (Self::Extension { value }, 1, false),
            },
            Self::Data(left) => {
                let used = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - used as u64;
                let next = if left == 0 {
                    Self::DataEnd
                } else {
                    Self::Data(left)
                };
                (next, used, false)
            }
            Self::DataEnd => match b {
                b'\n' => (Self::Size { value: 0 }, 1, false),
                _ => (Self::DataEnd, 1, false),
            },
            Self::Trailer { line_empty } => match b {
                b'\n' if line_empty => (self, 1, true),
                b'\n' => (Self::Trailer { line_empty: true }, 1, false),
                b'\r' => (self, 1, false),
                _ => (Self::Trailer { line_empty: false }, 1, false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        body_idle: Duration::from_secs(30),
        body_min_rate: 500,
        keep_alive: Duration::from_secs(60),
        ws_handshake: Duration::from_secs(10),
    };

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    fn reason(f: &Framing) -> Option<CutReason> {
        f.deadline(&T).map(|(_, r)| r)
    }

    #[test]
    fn a_silent_connection_has_the_head_deadline_from_accept() {
        let t0 = Instant::now();
        let f = Framing::new(t0);
        assert_eq!(f.deadline(&T), Some((secs(t0, 10), CutReason::Silent)));
        assert!(!f.may_answer_timeout());
    }

    #[test]
    fn head_bytes_do_not_move_the_head_deadline() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        for (i, b) in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().enumerate() {
            f.on_read(&[*b], secs(t0, i as u64 / 4));
        }
        assert_eq!(f.deadline(&T), Some((secs(t0, 10), CutReason::Head)));
        assert!(f.may_answer_timeout());
        f.on_read(b"\r\n", secs(t0, 7));
        assert_eq!(f.deadline(&T), None, "the server owes an answer");
    }

    #[test]
    fn bare_line_feeds_end_a_head_too() {
        let mut f = Framing::new(Instant::now());
        f.on_read(b"\r\n\nGET / HTTP/1.1\nHost: x\n\n", Instant::now());
        assert_eq!(f.deadline(&T), None);
    }

    #[test]
    fn after_the_answer_keep_alive_runs_from_the_last_write() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", t0);
        f.on_write(b"HTTP/1.1 200 OK\r\n", secs(t0, 1));
        f.on_write(b"body", secs(t0, 2));
        assert_eq!(f.deadline(&T), Some((secs(t0, 62), CutReason::KeepAlive)));
        // The next head's deadline runs from its first byte.
        f.on_read(b"G", secs(t0, 50));
        assert_eq!(f.deadline(&T), Some((secs(t0, 60), CutReason::Head)));
        assert!(f.may_answer_timeout());
    }

    #[test]
    fn a_fixed_body_is_counted_to_its_end_and_pipelined_bytes_start_a_head() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(b"POST /events HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", t0);
        assert_eq!(reason(&f), Some(CutReason::BodyIdle));
        f.on_read(b"cdeGET", secs(t0, 1));
        assert_eq!(f.deadline(&T), Some((secs(t0, 11), CutReason::Head)));
        assert!(!f.may_answer_timeout(), "the first answer is still owed");
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_and_trailers() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(
            b"POST /events HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            t0,
        );
        assert_eq!(reason(&f), Some(CutReason::BodyIdle));
        f.on_read(b"a;ext=1\r\n0123456789\r\n", t0);
        f.on_read(b"0\r\nX-Trailer: 1\r\n", t0);
        assert_eq!(reason(&f), Some(CutReason::BodyIdle));
        f.on_read(b"\r\n", t0);
        assert_eq!(reason(&f), None);
    }

    #[test]
    fn chunk_bytes_split_anywhere_are_framed_alike() {
        let msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for split in 0..msg.len() {
            let mut f = Framing::new(Instant::now());
            f.on_read(&msg[..split], Instant::now());
            f.on_read(&msg[split..], Instant::now());
            assert_eq!(reason(&f), None, "split at {split}");
        }
    }

    #[test]
    fn a_body_idle_deadline_moves_with_each_byte() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", t0);
        f.on_read(&[b'x'; 20_000], secs(t0, 20));
        // 20 000 bytes earn 40 s beyond the 30 s allowance: idle (50 s) comes first.
        assert_eq!(f.deadline(&T), Some((secs(t0, 50), CutReason::BodyIdle)));
    }

    #[test]
    fn a_dribbling_body_falls_below_the_rate() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", t0);
        f.on_read(b"x", secs(t0, 25));
        // One byte earns 2 ms: the body must be done about 30 s after it started.
        let (at, why) = f.deadline(&T).unwrap();
        assert_eq!(why, CutReason::BodyRate);
        assert!(at < secs(t0, 31));
        let no_rate = Timeouts {
            body_min_rate: 0,
            ..T
        };
        assert_eq!(
            f.deadline(&no_rate),
            Some((secs(t0, 55), CutReason::BodyIdle))
        );
    }

    #[test]
    fn an_answered_upgrade_leaves_deadlines_to_the_websocket() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(
            b"GET /events/stream HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
            t0,
        );
        assert_eq!(f.deadline(&T), Some((secs(t0, 10), CutReason::WsHandshake)));
        f.on_write(b"HTTP/1.1 101 Switching Protocols\r\n", t0);
        f.on_read(b"\x81\x05hello", secs(t0, 100));
        assert_eq!(f.deadline(&T), None);
    }

    #[test]
    fn a_refused_upgrade_is_an_ordinary_answer() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(
            b"GET /events/stream HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            t0,
        );
        f.on_write(b"HTTP/1.1 403 Forbidden\r\n", t0);
        assert_eq!(reason(&f), Some(CutReason::KeepAlive));
    }

    #[test]
    fn an_http2_preface_is_left_to_http2() {
        let mut f = Framing::new(Instant::now());
        f.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Instant::now());
        assert_eq!(reason(&f), None);
    }

    #[test]
    fn heads_hyper_refuses_expect_no_body() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        ] {
            let mut f = Framing::new(Instant::now());
            f.on_read(head, Instant::now());
            assert_eq!(reason(&f), None, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn an_early_answer_forbids_a_408() {
        let t0 = Instant::now();
        let mut f = Framing::new(t0);
        f.on_read(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n", t0);
        assert!(f.may_answer_timeout());
        f.on_write(b"HTTP/1.1 100 Continue\r\n\r\n", t0);
        assert!(!f.may_answer_timeout());
        assert_eq!(reason(&f), Some(CutReason::BodyIdle));
    }
}
