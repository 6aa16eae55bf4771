//! Fixed packet buffers, allocated once per worker and reused for every batch.
//!
//! tun-rs coalesces received TCP segments (GRO) by growing the first buffer of a flow, and asks
//! the buffer for its capacity first. A `Vec<u8>` would do, but resizing it zero-fills and a
//! reallocation would put the heap on the fast path; [`PktBuf`] has a fixed capacity (64 KiB
//! for receive buffers, lazily backed by the OS since the zeroed allocation is never touched
//! beyond what packets use) and a separate length, so receiving straight into its spare room costs nothing.

use tun_rs::ExpandBuffer;

/// Largest packet a buffer holds: a GRO super-packet, or an IPv4 packet of any legal size.
pub(crate) const BUF_CAPACITY: usize = 65_536 + 64;

/// A packet buffer: `data[..len]` is the content, `data[len..]` spare room.
pub(crate) struct PktBuf {
    data: Box<[u8]>,
    len: usize,
}

impl PktBuf {
    pub(crate) fn with_capacity(capacity: usize) -> PktBuf {
        PktBuf {
            data: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// A pool of `n` buffers of `capacity` bytes.
    pub(crate) fn pool(n: usize, capacity: usize) -> Vec<PktBuf> {
        (0..n).map(|_| PktBuf::with_capacity(capacity)).collect()
    }

    /// The whole capacity, for receiving into.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.data.len());
    }
}

impl AsRef<[u8]> for PktBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PktBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl ExpandBuffer for PktBuf {
    fn buf_capacity(&self) -> usize {
        self.data.len()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        // tun-rs checks the capacity before growing; clamping keeps a mistake from panicking
        // on the fast path.
        let new_len = new_len.min(self.data.len());
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let n = src.len().min(self.data.len() - self.len);
        self.data[self.len..self.len + n].copy_from_slice(&src[..n]);
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_capacity_only() {
        let mut b = PktBuf::with_capacity(BUF_CAPACITY);
        b.buf_extend_from_slice(&[1, 2, 3]);
        assert_eq!(b.bytes(), &[1, 2, 3]);
        b.buf_resize(5, 9);
        assert_eq!(b.bytes(), &[1, 2, 3, 9, 9]);
        b.buf_resize(2, 0);
        assert_eq!(b.bytes(), &[1, 2]);
        b.buf_resize(BUF_CAPACITY + 10, 0);
        assert_eq!(b.bytes().len(), BUF_CAPACITY);
        b.buf_extend_from_slice(&[1]);
        assert_eq!(b.bytes().len(), BUF_CAPACITY);
    }
}
