//! Redis Cluster's key-to-slot function, and a short hash tag for every slot.

use std::sync::LazyLock;

/// How many hash slots a Redis Cluster has.
pub(crate) const SLOTS: u16 = 16384;

/// The slot Redis Cluster assigns `key`: CRC16 (XMODEM) of the key, or of its hash tag (the
/// text between the first `{` and the next `}`, when that is not empty), modulo 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The part of `key` Redis hashes, exactly as in its `keyHashSlot`.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis's `crc16.c`.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        let mut crc = crc ^ (u16::from(b) << 8);
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// For every slot, a short string (1 to 4 characters of `[0-9a-z]`) that hashes to it: a key
/// starting with `{tag}` lives in that slot. Found once, by counting up through the strings
/// (about 50k CRCs, a millisecond or so).
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut tags: Vec<Option<String>> = vec![None; usize::from(SLOTS)];
    let mut missing = usize::from(SLOTS);
    let mut len = 1;
    while missing > 0 {
        let mut digits = vec![0usize; len];
        loop {
            let tag: Vec<u8> = digits.iter().map(|&d| ALPHABET[d]).collect();
            let slot = &mut tags[usize::from(crc16(&tag) % SLOTS)];
            if slot.is_none() {
                *slot = Some(String::from_utf8(tag).expect("the alphabet is ASCII"));
                missing -= 1;
            }
            // The next string of this length, like an odometer; done when it wraps.
            let Some(i) = digits.iter().rposition(|&d| d + 1 < ALPHABET.len()) else {
                break;
            };
            digits[i] += 1;
            digits[i + 1..].iter_mut().for_each(|d| *d = 0);
        }
        len += 1;
    }
    tags.into_iter()
        .map(|t| t.expect("every slot found"))
        .collect()
});

/// A short string whose slot is `slot` (below [`SLOTS`]).
pub(crate) fn slot_tag(slot: u16) -> &'static str {
    &TAGS[usize::from(slot)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_ones_redis_computes() {
        // CRC16 check value from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // `redis-cli -c -p 7101 cluster keyslot KEY` on this machine's cluster.
        for (key, slot) in [
            ("foo", 12182),
            ("bar", 5061),
            ("cartstream:dedup:e-1", 11051),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("", 0),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key:?}");
        }
    }

    #[test]
    fn every_slot_has_a_short_tag_that_hashes_to_it() {
        for slot in 0..SLOTS {
            let tag = slot_tag(slot);
            assert!((1..=4).contains(&tag.len()), "{tag:?}");
            assert_eq!(key_slot(format!("{{{tag}}}prefix#lease").as_bytes()), slot);
        }
    }
}
