//! The mesh control protocol, sans-IO: byte buffers in, byte buffers and typed values out.
//! The agent drives these from its TCP connections (port 6783) and timers.
//!
//! A connection goes through three stages:
//!
//! 1. **Hello**, in clear, both ways: the magic `twill-mesh`, the protocol version range the
//!    peer speaks, its name, nickname and uid, and whether it has a password ([`Hello`]).
//!    [`negotiate`] picks the highest common version or refuses, and [`SecurityMode::choose`]
//!    refuses a peer whose password setting differs from ours (never a downgrade to clear).
//! 2. **Handshake**, only with a password: Noise `NNpsk0_25519_ChaChaPoly_SHA256`
//!    ([`Handshake`]), with both hellos as the Noise prologue, so a hello altered on the way
//!    fails the handshake. The PSK comes from the password through Argon2id ([`Psk`]).
//! 3. **Frames**: `u32` big-endian length, a type byte, the payload ([`Frame`],
//!    [`FrameDecoder`]), at most [`MAX_FRAME_LEN`]. With a password every frame is sealed
//!    ([`Transport`]): cut into records of at most one Noise message each (`u16` length +
//!    ciphertext), whose implicit nonces make any tampered, replayed, reordered or dropped
//!    record fail to open.
//!
//! Why `NNpsk0`: the password is the only identity a mesh has (Weave's model); there are no
//! static keys anyone could check, so `XXpsk3`'s static keys would cost a message and buy no
//! authentication. `psk0` mixes the key in before the first message, so the responder refuses
//! a wrong password on the very first message, at the cost of a hash, and the ephemeral-
//! ephemeral DH gives forward secrecy. The responder's first message from an initiator proves
//! the PSK but could be a replay; only the initiator's first sealed record proves it is live
//! (it needs the ephemeral key): [`Transport::peer_confirmed`] says when that happened.
//!
//! Why Argon2id and not HKDF: `NNpsk0`'s first message is keyed by the PSK, so anyone who
//! records it can test password guesses offline; HKDF would let them test billions a second.
//! Argon2id (19 MiB, 2 passes, OWASP's minimum) makes each guess cost memory and time; it
//! runs once per process. The salt is fixed (both ends must derive the same key with nothing
//! exchanged) and documented: [`PSK_SALT`].

use std::fmt;

use zeroize::Zeroize;

/// The first bytes on every mesh connection.
pub const MAGIC: &[u8; 10] = b"twill-mesh";
/// The protocol versions this build speaks.
pub const PROTOCOL_MIN_VERSION: u16 = 1;
pub const PROTOCOL_MAX_VERSION: u16 = 1;
/// Longest hello body (after magic and length): room for its fields and later extensions.
pub const MAX_HELLO_BODY: usize = 1024;
/// Largest frame: the length field counts the type byte and the payload. Topology and ring
/// gossip of a few hundred peers fits; a peer claiming more is refused before we buffer it.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;
/// Largest Noise message (the spec's limit) and the plaintext that fits in one.
pub const MAX_NOISE_MESSAGE: usize = 65535;
const NOISE_TAG_LEN: usize = 16;
pub const MAX_RECORD_PLAINTEXT: usize = MAX_NOISE_MESSAGE - NOISE_TAG_LEN;
/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// Argon2id's salt for the PSK: fixed, so every peer derives the same key from the password.
pub const PSK_SALT: &[u8] = b"twill-mesh/psk/v1";

/// Everything that can go wrong in the protocol; each variant says what the peer did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("not a twill mesh peer (bad magic)")]
    BadMagic,
    #[error("hello of {0} bytes is longer than {MAX_HELLO_BODY}")]
    HelloTooLong(usize),
    #[error("malformed hello: {0}")]
    BadHello(&'static str),
    #[error(
        "no common protocol version: we speak {our_min}..={our_max}, the peer {their_min}..={their_max}"
    )]
    NoCommonVersion {
        our_min: u16,
        our_max: u16,
        their_min: u16,
        their_max: u16,
    },
    #[error("the peer has a password and we have none: refused")]
    PeerHasPassword,
    #[error("we have a password and the peer has none: refused")]
    PeerHasNoPassword,
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(u32),
    #[error("empty frame (no message type)")]
    EmptyFrame,
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    #[error("malformed {0} frame")]
    BadPayload(&'static str),
    #[error("password handshake failed (wrong password, or the hellos were altered)")]
    HandshakeFailed,
    #[error("sealed record failed to open (tampered, replayed or reordered)")]
    RecordRejected,
    #[error("empty sealed record")]
    EmptyRecord,
    #[error("the stream failed earlier and cannot continue")]
    Poisoned,
    #[error("noise: {0}")]
    Noise(String),
}

// ---------------------------------------------------------------------------------------------
// Hello

/// What a peer says about itself before anything else. Nothing in it is believed until the
/// handshake (with a password) has bound it, through the prologue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    /// The peer's name (its stable identity in the topology).
    pub name: String,
    /// A human name (the host name), for status.
    pub nickname: String,
    /// Changes on every restart, so a restarted peer is told apart from its old self.
    pub uid: u64,
    pub has_password: bool,
}

const FLAG_PASSWORD: u8 = 1;
/// Fixed part of the body: versions (4), flags (1), uid (8), two length bytes.
const HELLO_FIXED: usize = 4 + 1 + 8 + 2;

impl Hello {
    /// A hello for this build's version range.
    pub fn new(name: &str, nickname: &str, uid: u64, has_password: bool) -> Hello {
        Hello {
            min_version: PROTOCOL_MIN_VERSION,
            max_version: PROTOCOL_MAX_VERSION,
            name: name.to_owned(),
            nickname: nickname.to_owned(),
            uid,
            has_password,
        }
    }

    /// The wire form: magic, `u16` body length, versions, flags, uid, name, nickname.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        validate_text(&self.name, false)?;
        validate_text(&self.nickname, true)?;
        if self.min_version > self.max_version {
            return Err(ProtoError::BadHello("min version above max version"));
        }
        let body_len = HELLO_FIXED + self.name.len() + self.nickname.len();
        let mut out = Vec::with_capacity(MAGIC.len() + 2 + body_len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body_len as u16).to_be_bytes());
        out.extend_from_slice(&self.min_version.to_be_bytes());
        out.extend_from_slice(&self.max_version.to_be_bytes());
        out.push(if self.has_password { FLAG_PASSWORD } else { 0 });
        out.extend_from_slice(&self.uid.to_be_bytes());
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.nickname.len() as u8);
        out.extend_from_slice(self.nickname.as_bytes());
        Ok(out)
    }

    /// Parses a hello from the start of `buf`: `Ok(None)` while more bytes are needed,
    /// `Ok(Some((hello, consumed)))` once complete. Bytes that cannot start a hello are refused
    /// as soon as they arrive. Unknown flag bits and bytes after the known fields (later
    /// versions' extensions) are ignored; they are still bound by the handshake's prologue.
    pub fn parse(buf: &[u8]) -> Result<Option<(Hello, usize)>, ProtoError> {
        let magic_seen = buf.len().min(MAGIC.len());
        if buf[..magic_seen] != MAGIC[..magic_seen] {
            return Err(ProtoError::BadMagic);
        }
        let header = MAGIC.len() + 2;
        if buf.len() < header {
            return Ok(None);
        }
        let body_len = u16::from_be_bytes([buf[MAGIC.len()], buf[MAGIC.len() + 1]]) as usize;
        if body_len > MAX_HELLO_BODY {
            return Err(ProtoError::HelloTooLong(body_len));
        }
        if buf.len() < header + body_len {
            return Ok(None);
        }
        let mut body = &buf[header..header + body_len];
        let min_version = u16::from_be_bytes(take::<2>(&mut body)?);
        let max_version = u16::from_be_bytes(take::<2>(&mut body)?);
        let [flags] = take::<1>(&mut body)?;
        let uid = u64::from_be_bytes(take::<8>(&mut body)?);
        let name = take_text(&mut body, false)?;
        let nickname = take_text(&mut body, true)?;
        if min_version > max_version {
            return Err(ProtoError::BadHello("min version above max version"));
        }
        let hello = Hello {
            min_version,
            max_version,
            name,
            nickname,
            uid,
            has_password: flags & FLAG_PASSWORD != 0,
        };
        Ok(Some((hello, header + body_len)))
    }
}

fn take<const N: usize>(body: &mut &[u8]) -> Result<[u8; N], ProtoError> {
    let (head, rest) = body
        .split_first_chunk::<N>()
        .ok_or(ProtoError::BadHello("truncated"))?;
    *body = rest;
    Ok(*head)
}

fn take_text(body: &mut &[u8], may_be_empty: bool) -> Result<String, ProtoError> {
    let [len] = take::<1>(body)?;
    let len = len as usize;
    if body.len() < len {
        return Err(ProtoError::BadHello("truncated"));
    }
    let (text, rest) = body.split_at(len);
    *body = rest;
    let text = std::str::from_utf8(text).map_err(|_| ProtoError::BadHello("name not UTF-8"))?;
    validate_text(text, may_be_empty)?;
    Ok(text.to_owned())
}

/// Names end up in logs and status: no control characters, at most 255 bytes.
fn validate_text(text: &str, may_be_empty: bool) -> Result<(), ProtoError> {
    if text.is_empty() && !may_be_empty {
        return Err(ProtoError::BadHello("empty name"));
    }
    if text.len() > 255 {
        return Err(ProtoError::BadHello("name longer than 255 bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(ProtoError::BadHello("control character in name"));
    }
    Ok(())
}

/// The highest version both ends speak, or a refusal that says both ranges.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<u16, ProtoError> {
    let high = ours.max_version.min(theirs.max_version);
    let low = ours.min_version.max(theirs.min_version);
    if high < low {
        return Err(ProtoError::NoCommonVersion {
            our_min: ours.min_version,
            our_max: ours.max_version,
            their_min: theirs.min_version,
            their_max: theirs.max_version,
        });
    }
    Ok(high)
}

/// Whether a connection's frames are sealed. Status reports `Clear` loudly: anyone on the
/// path can read and forge a clear mesh's gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// No password on either end: frames in clear, nothing authenticated.
    Clear,
    /// Both ends have a password: Noise handshake, then sealed frames.
    Encrypted,
}

impl SecurityMode {
    /// Decided from our own configuration and the peer's hello. A password on one end only is
    /// refused both ways; in particular a peer claiming to have none never brings a
    /// password-protected peer down to clear.
    pub fn choose(we_have_password: bool, theirs: &Hello) -> Result<SecurityMode, ProtoError> {
        match (we_have_password, theirs.has_password) {
            (true, true) => Ok(SecurityMode::Encrypted),
            (false, false) => Ok(SecurityMode::Clear),
            (true, false) => Err(ProtoError::PeerHasNoPassword),
            (false, true) => Err(ProtoError::PeerHasPassword),
        }
    }

    pub fn is_encrypted(self) -> bool {
        self == SecurityMode::Encrypted
    }
}

/// What status and logs print: the clear mode says what it costs.
impl fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityMode::Clear => {
                "UNENCRYPTED (no mesh password: anyone on the path can read and forge gossip)"
            }
            SecurityMode::Encrypted => "encrypted (password, Noise NNpsk0)",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A gossip channel: the payloads' owners (topology, ring) are not this module's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel(pub u8);

impl Channel {
    pub const TOPOLOGY: Channel = Channel(1);
    pub const RING: Channel = Channel(2);
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Heartbeat,
    Gossip { channel: Channel, payload: Vec<u8> },
    Close { reason: String },
}

const TYPE_HEARTBEAT: u8 = 1;
const TYPE_GOSSIP: u8 = 2;
const TYPE_CLOSE: u8 = 3;
const FRAME_HEADER: usize = 5;

impl Frame {
    /// The length field's value: type byte plus payload.
    pub fn wire_len(&self) -> usize {
        1 + match self {
            Frame::Heartbeat => 0,
            Frame::Gossip { payload, .. } => 1 + payload.len(),
            Frame::Close { reason } => reason.len(),
        }
    }

    /// Appends the wire form to `out`; refuses a frame over [`MAX_FRAME_LEN`], which the peer
    /// would refuse anyway.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let len = self.wire_len();
        if len > MAX_FRAME_LEN as usize {
            return Err(ProtoError::FrameTooLarge(
                u32::try_from(len).unwrap_or(u32::MAX),
            ));
        }
        out.reserve(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        match self {
            Frame::Heartbeat => out.push(TYPE_HEARTBEAT),
            Frame::Gossip { channel, payload } => {
                out.push(TYPE_GOSSIP);
                out.push(channel.0);
                out.extend_from_slice(payload);
            }
            Frame::Close { reason } => {
                out.push(TYPE_CLOSE);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn parse(kind: u8, payload: Vec<u8>) -> Result<Frame, ProtoError> {
        match kind {
            TYPE_HEARTBEAT if payload.is_empty() => Ok(Frame::Heartbeat),
            TYPE_HEARTBEAT => Err(ProtoError::BadPayload("heartbeat")),
            TYPE_GOSSIP => {
                let (&channel, rest) = payload
                    .split_first()
                    .ok_or(ProtoError::BadPayload("gossip"))?;
                Ok(Frame::Gossip {
                    channel: Channel(channel),
                    payload: rest.to_vec(),
                })
            }
            TYPE_CLOSE => String::from_utf8(payload)
                .map(|reason| Frame::Close { reason })
                .map_err(|_| ProtoError::BadPayload("close")),
            other => Err(ProtoError::UnknownMessageType(other)),
        }
    }
}

/// Turns a byte stream into frames. Feed it whatever arrived; it takes from the input only
/// what the current frame needs, so its buffer never exceeds the frame limit, refuses an
/// oversized length as soon as the header is in, and never panics. After an error the stream
/// is out of step: every later call fails.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: u32,
    header: [u8; FRAME_HEADER],
    header_filled: usize,
    payload: Vec<u8>,
    payload_len: usize,
    poisoned: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder with a lower bound than [`MAX_FRAME_LEN`] (never a higher one).
    pub fn with_limit(max_len: u32) -> FrameDecoder {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN),
            header: [0; FRAME_HEADER],
            header_filled: 0,
            payload: Vec::new(),
            payload_len: 0,
            poisoned: false,
        }
    }

    /// Takes bytes from the front of `input` and returns the next complete frame, or `None`
    /// once `input` is used up with the frame still incomplete. Call it until `None`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        if self.poisoned {
            return Err(ProtoError::Poisoned);
        }
        let result = self.decode_inner(input);
        if result.is_err() {
            self.poisoned = true;
            self.payload = Vec::new();
        }
        result
    }

    /// Whether a frame is half received (a connection closing now was cut mid-frame).
    pub fn is_mid_frame(&self) -> bool {
        self.header_filled > 0
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        if self.header_filled < FRAME_HEADER {
            let n = (FRAME_HEADER - self.header_filled).min(input.len());
            self.header[self.header_filled..self.header_filled + n].copy_from_slice(&input[..n]);
            self.header_filled += n;
            *input = &input[n..];
            // The length alone decides refusal: check it before waiting for the type byte.
            if self.header_filled >= 4 {
                self.check_length()?;
            }
            if self.header_filled < FRAME_HEADER {
                return Ok(None);
            }
            self.payload_len = self.length() as usize - 1;
            self.payload = Vec::with_capacity(self.payload_len);
        }
        let n = (self.payload_len - self.payload.len()).min(input.len());
        self.payload.extend_from_slice(&input[..n]);
        *input = &input[n..];
        if self.payload.len() < self.payload_len {
            return Ok(None);
        }
        let kind = self.header[4];
        let payload = std::mem::take(&mut self.payload);
        self.header_filled = 0;
        Frame::parse(kind, payload).map(Some)
    }

    fn length(&self) -> u32 {
        u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn check_length(&self) -> Result<(), ProtoError> {
        match self.length() {
            0 => Err(ProtoError::EmptyFrame),
            len if len > self.max_len => Err(ProtoError::FrameTooLarge(len)),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Password, handshake, sealed records

/// The Noise pre-shared key, from the mesh password. Wiped on drop; never printed.
#[derive(Clone)]
pub struct Psk([u8; 32]);

impl Drop for Psk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

impl Psk {
    /// Argon2id (m = 19 MiB, t = 2, p = 1) over the password with [`PSK_SALT`]. Costs tens of
    /// milliseconds optimised: derive once per process, not per connection.
    pub fn from_password(password: &[u8]) -> Result<Psk, ProtoError> {
        use argon2::{Algorithm, Argon2, Params, Version};
        let params = Params::new(19 * 1024, 2, 1, Some(32))
            .map_err(|e| ProtoError::Noise(format!("argon2 parameters: {e}")))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, PSK_SALT, &mut key)
            .map_err(|e| ProtoError::Noise(format!("argon2: {e}")))?;
        Ok(Psk(key))
    }
}

/// The Noise prologue: the initiator's (connecting side's) hello bytes then the responder's,
/// exactly as sent and received. A hello changed on the way makes the handshake fail.
pub fn prologue(initiator_hello: &[u8], responder_hello: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(initiator_hello.len() + responder_hello.len());
    p.extend_from_slice(initiator_hello);
    p.extend_from_slice(responder_hello);
    p
}

/// Cuts sealed records from a byte stream: `u16` big-endian length, then that many bytes.
/// Buffers at most one record (64 KiB); never panics.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    header: [u8; 2],
    header_filled: usize,
    body: Vec<u8>,
}

impl RecordDecoder {
    pub fn new() -> RecordDecoder {
        RecordDecoder::default()
    }

    /// Like [`FrameDecoder::decode`]: takes what the current record needs from `input`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
        if self.header_filled < 2 {
            let n = (2 - self.header_filled).min(input.len());
            self.header[self.header_filled..self.header_filled + n].copy_from_slice(&input[..n]);
            self.header_filled += n;
            *input = &input[n..];
            if self.header_filled < 2 {
                return Ok(None);
            }
            if u16::from_be_bytes(self.header) == 0 {
                return Err(ProtoError::EmptyRecord);
            }
        }
        let want = u16::from_be_bytes(self.header) as usize;
        let n = (want - self.body.len()).min(input.len());
        self.body.extend_from_slice(&input[..n]);
        *input = &input[n..];
        if self.body.len() < want {
            return Ok(None);
        }
        self.header_filled = 0;
        Ok(Some(std::mem::take(&mut self.body)))
    }
}

fn record(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn noise_error(e: snow::Error) -> ProtoError {
    ProtoError::Noise(e.to_string())
}

fn noise_params() -> Result<snow::params::NoiseParams, ProtoError> {
    NOISE_PATTERN.parse().map_err(noise_error)
}

/// The `NNpsk0` handshake, one message each way. The initiator is the side that connected.
/// After an error it stays failed: drop the connection.
pub struct Handshake {
    /// `None` once finished or failed.
    state: Option<snow::HandshakeState>,
    initiator: bool,
    records: RecordDecoder,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.initiator)
            .field("in_progress", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// What a handshake step produced.
#[derive(Debug)]
pub enum HandshakeStep {
    /// More bytes needed from the peer.
    NeedMore,
    /// Send these bytes (the responder's answer; empty for the initiator); the handshake is
    /// done and the session ready.
    Done {
        send: Vec<u8>,
        transport: Box<Transport>,
    },
}

impl Handshake {
    /// The connecting side. Returns the state and the first message to send.
    pub fn initiator(psk: &Psk, prologue: &[u8]) -> Result<(Handshake, Vec<u8>), ProtoError> {
        let mut state = snow::Builder::new(noise_params()?)
            .psk(0, &psk.0)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(noise_error)?;
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = state.write_message(&[], &mut buf).map_err(noise_error)?;
        let hs = Handshake {
            state: Some(state),
            initiator: true,
            records: RecordDecoder::new(),
        };
        Ok((hs, record(&buf[..n])))
    }

    /// The accepting side: waits for the initiator's message.
    pub fn responder(psk: &Psk, prologue: &[u8]) -> Result<Handshake, ProtoError> {
        let state = snow::Builder::new(noise_params()?)
            .psk(0, &psk.0)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_responder())
            .map_err(noise_error)?;
        Ok(Handshake {
            state: Some(state),
            initiator: false,
            records: RecordDecoder::new(),
        })
    }

    /// Feeds bytes from the peer. A wrong password (or an altered hello) is
    /// [`ProtoError::HandshakeFailed`]: drop the connection, believe nothing it sent. Bytes
    /// after the handshake message stay in `input` (they are already sealed records).
    pub fn read(&mut self, input: &mut &[u8]) -> Result<HandshakeStep, ProtoError> {
        if self.state.is_none() {
            return Err(ProtoError::Poisoned);
        }
        // Anything malformed before the keys exist is the same refusal as a wrong key.
        let message = match self.records.decode(input) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(HandshakeStep::NeedMore),
            Err(_) => {
                self.state = None;
                return Err(ProtoError::HandshakeFailed);
            }
        };
        // Taken out: finished or failed, the handshake is over either way.
        let Some(mut state) = self.state.take() else {
            return Err(ProtoError::Poisoned);
        };
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
        let n = state
            .read_message(&message, &mut payload)
            .map_err(|_| ProtoError::HandshakeFailed)?;
        if n != 0 {
            return Err(ProtoError::HandshakeFailed);
        }
        let mut send = Vec::new();
        if !self.initiator {
            let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
            let n = state.write_message(&[], &mut buf).map_err(noise_error)?;
            send = record(&buf[..n]);
        }
        let noise = state.into_transport_mode().map_err(noise_error)?;
        Ok(HandshakeStep::Done {
            send,
            transport: Box::new(Transport {
                noise,
                records: RecordDecoder::new(),
                frames: FrameDecoder::new(),
                // The initiator saw the responder answer its fresh ephemeral key: live.
                peer_confirmed: self.initiator,
                poisoned: false,
            }),
        })
    }
}

/// A sealed session: frames in, records out, and back.
pub struct Transport {
    noise: snow::TransportState,
    records: RecordDecoder,
    frames: FrameDecoder,
    peer_confirmed: bool,
    poisoned: bool,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("peer_confirmed", &self.peer_confirmed)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Whether the peer has proven it holds this session's keys (the responder learns it
    /// from the first record that opens; the initiator from the handshake).
    pub fn peer_confirmed(&self) -> bool {
        self.peer_confirmed
    }

    /// Seals one frame as one or more records, in order.
    pub fn seal(&mut self, frame: &Frame) -> Result<Vec<u8>, ProtoError> {
        let plain = frame.encode()?;
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1000 + 64);
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        for chunk in plain.chunks(MAX_RECORD_PLAINTEXT) {
            let n = self
                .noise
                .write_message(chunk, &mut buf)
                .map_err(|e| ProtoError::Noise(e.to_string()))?;
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    /// Opens records from `input` and returns the next complete frame, or `None` once `input`
    /// is used up. Any record that fails to open poisons the session.
    pub fn open(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        if self.poisoned {
            return Err(ProtoError::Poisoned);
        }
        let result = self.open_inner(input);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn open_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        while let Some(record) = self.records.decode(input)? {
            let n = self
                .noise
                .read_message(&record, &mut buf)
                .map_err(|_| ProtoError::RecordRejected)?;
            self.peer_confirmed = true;
            let mut plain = &buf[..n];
            let frame = self.frames.decode(&mut plain)?;
            if !plain.is_empty() {
                // Records never straddle frames; a peer that packs two is out of step.
                return Err(ProtoError::BadPayload("record spanning frames"));
            }
            if frame.is_some() {
                return Ok(frame);
            }
        }
        Ok(None)
    }
}
