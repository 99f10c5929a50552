//! Bounded, panic-free reading and length-prefixed writing of the crate's binary formats.
//!
//! Every parser of stored bytes goes through [`Reader`]: it never indexes past the input,
//! never allocates, and reports truncation and trailing bytes as distinct
//! [`FormatError`]s. Integers are big-endian and fixed-width; no `usize` is ever encoded.

use crate::error::{FormatError, Structure};

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: Structure,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: Structure) -> Self {
        Self { rest: bytes, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.rest.len() {
            return Err(FormatError::Truncated(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A field prefixed by its length as a big-endian `u16`.
    pub(crate) fn lp16(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A field prefixed by its length as a big-endian `u32`.
    pub(crate) fn lp32(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| FormatError::Truncated(self.what))?;
        self.take(len)
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), FormatError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes(self.what))
        }
    }
}

/// Appends `bytes` with a big-endian `u32` length prefix.
///
/// Callers bound their inputs far below `u32::MAX` (identifiers, labels, secrets under the
/// size limit); a larger input is a bug and is rejected rather than truncated.
pub(crate) fn put_lp32(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    debug_assert!(usize::try_from(len).is_ok_and(|l| l == bytes.len()));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends `bytes` with a big-endian `u16` length prefix. Callers check the bound first.
pub(crate) fn put_lp16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    debug_assert!(usize::from(len) == bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_and_trailing_bytes_distinctly() {
        let mut r = Reader::new(&[0, 5, 1, 2], Structure::Envelope);
        assert_eq!(r.lp16(), Err(FormatError::Truncated(Structure::Envelope)));
        let mut r = Reader::new(&[1, 2, 3], Structure::Envelope);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(
            r.finish(),
            Err(FormatError::TrailingBytes(Structure::Envelope))
        );
    }

    #[test]
    fn oversized_length_prefix_is_truncation_not_allocation() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0], Structure::Plaintext);
        assert_eq!(r.lp32(), Err(FormatError::Truncated(Structure::Plaintext)));
    }
}
