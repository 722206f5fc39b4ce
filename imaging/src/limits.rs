//! The largest slice a receiver accepts, checked from a header or a declared shape
//! before any pixel is decoded or any buffer for it allocated.

/// Largest accepted slice: each side and the pixel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceLimits {
    /// Most rows or columns.
    pub max_side: usize,
    /// Most pixels (rows x columns).
    pub max_pixels: usize,
}

impl SliceLimits {
    /// CT's sizes with room to spare: 2048 per side (CT is reconstructed at 512 or 1024,
    /// rarely 2048), 2048 x 2048 pixels.
    pub const CT: SliceLimits = SliceLimits {
        max_side: 2048,
        max_pixels: 2048 * 2048,
    };

    /// No limit beyond what fits in memory (readers of local files the user chose).
    pub const UNLIMITED: SliceLimits = SliceLimits {
        max_side: usize::MAX,
        max_pixels: usize::MAX,
    };

    /// The most bytes a DICOM data set holding one such slice needs: 32-bit samples plus
    /// 16 MiB of attributes (the bound a deflated data set is inflated under).
    pub fn max_data_set_bytes(&self) -> u64 {
        (self.max_pixels as u64)
            .saturating_mul(4)
            .saturating_add(16 << 20)
    }

    /// Refuses a `rows` x `cols` slice larger than the limits.
    pub fn check(&self, rows: usize, cols: usize) -> Result<(), SliceTooLarge> {
        let pixels = rows.saturating_mul(cols);
        if rows > self.max_side || cols > self.max_side || pixels > self.max_pixels {
            return Err(SliceTooLarge {
                rows,
                cols,
                limits: *self,
            });
        }
        Ok(())
    }
}

impl Default for SliceLimits {
    fn default() -> Self {
        SliceLimits::CT
    }
}

/// A slice over the [`SliceLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a slice of {rows}x{cols} pixels is larger than this server accepts (at most {} per side \
     and {} pixels)",
    limits.max_side,
    limits.max_pixels
)]
pub struct SliceTooLarge {
    pub rows: usize,
    pub cols: usize,
    pub limits: SliceLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_and_pixels_are_both_limits() {
        let l = SliceLimits {
            max_side: 100,
            max_pixels: 50 * 100,
        };
        assert!(l.check(100, 50).is_ok());
        assert!(l.check(101, 1).is_err());
        assert!(l.check(1, 101).is_err());
        assert!(l.check(100, 51).is_err());
        assert!(SliceLimits::CT.check(512, 512).is_ok());
        assert!(SliceLimits::CT.check(1, 1 << 20).is_err());
        assert!(SliceLimits::CT.check(4096, 4096).is_err());
        assert!(SliceLimits::UNLIMITED.check(usize::MAX, 2).is_ok());
        let e = SliceLimits::CT.check(4096, 4096).unwrap_err().to_string();
        assert!(
            e.contains("4096x4096") && e.contains("2048 per side"),
            "{e}"
        );
    }
}
