//! The 12-byte alternative record and its parsing from bytes.

use super::CallbackId;
use core::fmt;

/// Size in bytes of one record.
pub const ALT_RECORD_SIZE: usize = 12;

/// Bit of the cap field that marks a callback record.
pub const CB_BIT: u16 = 1 << 15;

/// One alternative record as stored (little-endian):
/// `orig_offset: i32, alt_offset: i32, cpucap: u16, orig_len: u8, alt_len: u8`.
///
/// `orig_offset` is relative to the address of the `orig_offset` field (record + 0);
/// `alt_offset` to the address of the `alt_offset` field (record + 4), except in callback
/// records where it holds a [`CallbackId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AltRecord {
    /// Distance from the record to the first original instruction.
    pub orig_offset: i32,
    /// Distance from record + 4 to the replacement, or the callback id.
    pub alt_offset: i32,
    /// Cap number in bits 0..15, [`CB_BIT`] for callbacks.
    pub cpucap: u16,
    /// Bytes of original code.
    pub orig_len: u8,
    /// Bytes of replacement code (0 for callbacks).
    pub alt_len: u8,
}

/// Why a record's bytes could not even be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer than [`ALT_RECORD_SIZE`] bytes.
    Truncated,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated => write!(f, "record shorter than {ALT_RECORD_SIZE} bytes"),
        }
    }
}

impl AltRecord {
    /// Reads a record from the first 12 bytes of `b`.
    pub fn from_bytes(b: &[u8]) -> Result<AltRecord, RecordError> {
        let b: &[u8; ALT_RECORD_SIZE] = b
            .get(..ALT_RECORD_SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(RecordError::Truncated)?;
        Ok(AltRecord {
            orig_offset: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            alt_offset: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            cpucap: u16::from_le_bytes([b[8], b[9]]),
            orig_len: b[10],
            alt_len: b[11],
        })
    }

    /// The record's 12 bytes.
    pub fn to_bytes(&self) -> [u8; ALT_RECORD_SIZE] {
        let mut b = [0u8; ALT_RECORD_SIZE];
        b[0..4].copy_from_slice(&self.orig_offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.alt_offset.to_le_bytes());
        b[8..10].copy_from_slice(&self.cpucap.to_le_bytes());
        b[10] = self.orig_len;
        b[11] = self.alt_len;
        b
    }

    /// The cap number (callback bit stripped).
    pub const fn cap_number(&self) -> u16 {
        self.cpucap & !CB_BIT
    }

    /// Whether this is a callback record.
    pub const fn is_callback(&self) -> bool {
        self.cpucap & CB_BIT != 0
    }

    /// The callback id of a callback record, if known.
    pub const fn callback(&self) -> Option<CallbackId> {
        if self.is_callback() && self.alt_offset >= 0 {
            CallbackId::from_raw(self.alt_offset as u32)
        } else {
            None
        }
    }

    /// Address of the original code, given the address the record itself lives at.
    pub const fn orig_addr(&self, record_addr: u64) -> u64 {
        record_addr.wrapping_add(self.orig_offset as i64 as u64)
    }

    /// Address of the replacement code (plain records only), given the record's address.
    pub const fn alt_addr(&self, record_addr: u64) -> u64 {
        record_addr
            .wrapping_add(4)
            .wrapping_add(self.alt_offset as i64 as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_pointer_bases() {
        let r = AltRecord {
            orig_offset: -0x100,
            alt_offset: 0x40,
            cpucap: 11,
            orig_len: 8,
            alt_len: 8,
        };
        let b = r.to_bytes();
        assert_eq!(AltRecord::from_bytes(&b), Ok(r));
        assert_eq!(r.orig_addr(0x1000), 0xf00);
        // alt_offset is relative to the second field, record + 4.
        assert_eq!(r.alt_addr(0x1000), 0x1044);
        assert!(!r.is_callback());
        assert_eq!(AltRecord::from_bytes(&b[..11]), Err(RecordError::Truncated));
    }

    #[test]
    fn callback_records() {
        let r = AltRecord {
            orig_offset: 0,
            alt_offset: CallbackId::KernHypVa.raw() as i32,
            cpucap: CB_BIT | 1,
            orig_len: 20,
            alt_len: 0,
        };
        assert!(r.is_callback());
        assert_eq!(r.cap_number(), 1);
        assert_eq!(r.callback(), Some(CallbackId::KernHypVa));
        let unknown = AltRecord {
            alt_offset: 99,
            ..r
        };
        assert_eq!(unknown.callback(), None);
    }
}
