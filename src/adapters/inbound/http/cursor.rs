//! The `cursor` of `GET /events`: where the next page starts, opaque to clients.
//!
//! It is base64url (no padding) of a small versioned structure: the position of the last
//! event listed ([`PageKey`]), a digest of the filters it was made with (so a cursor cannot
//! continue a listing with other filters, which would skip or repeat events unnoticed), and a
//! checksum over all of it (so a cut or altered cursor is refused, not silently read as some
//! other position). It is not signed: a position grants nothing, since the same key could
//! read the same events by moving `until`.

use crate::ports::{EventQuery, PageKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The layout this server writes; a cursor of any other version is refused.
const VERSION: u8 = 1;
/// version, occurred-at ms, received-at ms, filters digest.
const HEAD: usize = 1 + 8 + 8 + 8;
const CHECK: usize = 8;
/// Event ids are at most a few hundred bytes; anything far longer is not a cursor.
const MAX_ENCODED: usize = 1024;

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error(
        "cursor is not one this server gave out (cut, altered or from another version): \
         start the listing again without it"
    )]
    Malformed,
    #[error(
        "cursor belongs to a listing with other filters: send it with the same userId, \
         eventType, since and until as the request whose nextCursor it was"
    )]
    OtherFilters,
}

/// The cursor for the page after `last`, in a listing with `query`'s filters.
pub fn encode(query: &EventQuery, last: &PageKey) -> String {
    let mut bytes = Vec::with_capacity(HEAD + last.event_id.len() + CHECK);
    bytes.push(VERSION);
    bytes.extend_from_slice(&last.occurred_at_ms.to_be_bytes());
    bytes.extend_from_slice(&last.received_at_ms.to_be_bytes());
    bytes.extend_from_slice(&filters_digest(query));
    bytes.extend_from_slice(last.event_id.as_bytes());
    let check = checksum(&bytes);
    bytes.extend_from_slice(&check);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position `cursor` continues from, if it was made for `query`'s filters.
///
/// # Errors
/// [`CursorError::Malformed`] for anything this server did not write as it is;
/// [`CursorError::OtherFilters`] for a cursor of a listing with other filters.
pub fn decode(query: &EventQuery, cursor: &str) -> Result<PageKey, CursorError> {
    if cursor.len() > MAX_ENCODED {
        return Err(CursorError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| CursorError::Malformed)?;
    if bytes.len() < HEAD + CHECK {
        return Err(CursorError::Malformed);
    }
    let (body, check) = bytes.split_at(bytes.len() - CHECK);
    if checksum(body) != check || body[0] != VERSION {
        return Err(CursorError::Malformed);
    }
    if body[17..HEAD] != filters_digest(query) {
        return Err(CursorError::OtherFilters);
    }
    let event_id = String::from_utf8(body[HEAD..].to_vec()).map_err(|_| CursorError::Malformed)?;
    Ok(PageKey {
        occurred_at_ms: i64_at(body, 1),
        received_at_ms: i64_at(body, 9),
        event_id,
    })
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

fn checksum(bytes: &[u8]) -> [u8; CHECK] {
    first_8(&Sha256::digest(bytes))
}

/// The filters as the stores apply them (instants in milliseconds), each field tagged and
/// length-prefixed so no two filter sets share an encoding.
fn filters_digest(query: &EventQuery) -> [u8; 8] {
    let mut h = Sha256::new();
    let mut field = |tag: u8, value: Option<&[u8]>| {
        h.update([tag]);
        match value {
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
            None => h.update([0]),
        }
    };
    field(b'u', query.user_id.as_deref().map(str::as_bytes));
    field(b't', query.event_type.map(|t| t.as_str().as_bytes()));
    let since = query.since.map(|t| t.timestamp_millis().to_be_bytes());
    field(b's', since.as_ref().map(|b| &b[..]));
    let until = query.until.map(|t| t.timestamp_millis().to_be_bytes());
    field(b'e', until.as_ref().map(|b| &b[..]));
    first_8(&h.finalize())
}

fn first_8(digest: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventType;

    fn key() -> PageKey {
        PageKey {
            occurred_at_ms: 1_754_796_424_123,
            received_at_ms: -5,
            event_id: "évt-42".to_owned(),
        }
    }

    fn filtered() -> EventQuery {
        EventQuery {
            user_id: Some("u-1".into()),
            event_type: Some(EventType::ItemAdded),
            since: Some(chrono::DateTime::UNIX_EPOCH),
            ..EventQuery::first(10)
        }
    }

    #[test]
    fn a_cursor_gives_back_its_position_and_is_url_safe() {
        let c = encode(&filtered(), &key());
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&filtered(), &c), Ok(key()));
        // The page size is not a filter: it may change between pages.
        let other_limit = EventQuery {
            limit: 3,
            max_bytes: 7,
            ..filtered()
        };
        assert_eq!(decode(&other_limit, &c), Ok(key()));
    }

    #[test]
    fn a_cursor_is_refused_with_other_filters() {
        let c = encode(&filtered(), &key());
        let others = [
            EventQuery::first(10),
            EventQuery {
                user_id: Some("u-2".into()),
                ..filtered()
            },
            EventQuery {
                event_type: Some(EventType::ItemRemoved),
                ..filtered()
            },
            EventQuery {
                since: None,
                ..filtered()
            },
            EventQuery {
                until: Some(chrono::DateTime::UNIX_EPOCH),
                ..filtered()
            },
        ];
        for q in others {
            assert_eq!(decode(&q, &c), Err(CursorError::OtherFilters), "{q:?}");
        }
    }

    #[test]
    fn a_cut_altered_or_foreign_cursor_is_malformed() {
        let q = filtered();
        let c = encode(&q, &key());
        let mut altered = c.clone().into_bytes();
        altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
        for bad in [
            String::new(),
            "not a cursor!".to_owned(),
            c[..c.len() - 2].to_owned(),
            String::from_utf8(altered).unwrap(),
            format!("{c}AA"),
            "A".repeat(2000),
        ] {
            assert_eq!(decode(&q, &bad), Err(CursorError::Malformed), "{bad}");
        }
    }
}
