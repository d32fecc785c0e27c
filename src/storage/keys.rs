//! The key codec: tuples of byte strings and big-endian integers, joined by [`SEP`].

/// Separates tuple elements. Never part of a UTF-8 string.
pub const SEP: u8 = 0xFF;

/// Builds a tuple key from parts; `u64` parts are written big-endian so they sort numerically.
#[derive(Default)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new() -> Self {
        Self(Vec::with_capacity(64))
    }

    /// Appends a string element (with a separator before it if not first).
    pub fn s(mut self, part: &str) -> Self {
        self.sep();
        self.0.extend_from_slice(part.as_bytes());
        self
    }

    /// Appends an integer element, 8 bytes big-endian.
    pub fn n(mut self, part: u64) -> Self {
        self.sep();
        self.0.extend_from_slice(&part.to_be_bytes());
        self
    }

    /// Ends the key with a separator, making it a prefix of every longer tuple with these parts.
    pub fn prefix(mut self) -> Vec<u8> {
        self.0.push(SEP);
        self.0
    }

    pub fn build(self) -> Vec<u8> {
        self.0
    }

    fn sep(&mut self) {
        if !self.0.is_empty() {
            self.0.push(SEP);
        }
    }
}

/// Splits a key into its elements (integers come back as their 8 raw bytes).
///
/// Only valid for keys whose integer elements are not followed by other elements, or whose
/// integers contain no `0xFF` byte; use [`tail_u64`] for a trailing integer instead.
pub fn split(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|b| *b == SEP)
}

/// The trailing big-endian `u64` of a key.
pub fn tail_u64(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    u64_from(&key[start..])
}

/// The string between the prefix and the end of a key.
pub fn tail_str<'a>(key: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    key.strip_prefix(prefix)
        .and_then(|rest| std::str::from_utf8(rest).ok())
}

pub fn u64_from(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xFF {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_sort_numerically_within_a_prefix() {
        let a = Key::new().s("!room").n(2).build();
        let b = Key::new().s("!room").n(256).build();
        assert!(a < b);
        assert_eq!(tail_u64(&b), Some(256));
        assert!(b.starts_with(&Key::new().s("!room").prefix()));
    }

    #[test]
    fn upper_bound_skips_trailing_ff() {
        assert_eq!(prefix_upper_bound(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_upper_bound(&[0xFF]), None);
    }
}
