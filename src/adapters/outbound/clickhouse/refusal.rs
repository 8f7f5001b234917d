//! What ClickHouse's errors mean for the forwarder and for an operator.
//!
//! ClickHouse answers an exception as an HTTP error whose body starts `Code: N` (18.16:
//! `Code: 53, e.displayText() = ...`; current servers: `Code: 53. DB::Exception: ...`). The code
//! says whether waiting helps ([`RefusalCause::Busy`]), whether every request will fail until
//! an operator acts (permission, schema), or whether the data itself was refused
//! ([`RefusalCause::Data`]), which only then may be caused by some rows alone.
//!
//! A changed column type is not always refused: RowBinary is unvalidated against 18.16 (see
//! the module above), so a column altered from `Int64` to `Float64` (the same 8 bytes) takes
//! every insert and stores garbage. So before each insert the table's columns are compared
//! with what the service writes ([`EXPECTED_COLUMNS`]): one small query per batch, off the
//! ack path, and batches are large under load.

use crate::ports::{Refusal, RefusalCause};

/// The columns the service writes, in order, with their types as the wire needs them.
pub const EXPECTED_COLUMNS: [(&str, &str); 10] = [
    ("event_id", "String"),
    ("user_id", "String"),
    ("session_id", "Nullable(String)"),
    ("event_type", "String"),
    ("metadata", "String"),
    ("occurred_at", "DateTime"),
    ("occurred_at_ms", "Int64"),
    ("received_at", "DateTime"),
    ("received_at_ms", "Int64"),
    ("source", "String"),
];

/// The server's error code at the start of an exception's text.
pub fn server_code(text: &str) -> Option<u32> {
    let at = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What a server error code means for a retry.
pub fn cause_of(code: u32) -> RefusalCause {
    match code {
        // READONLY, UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED,
        // DATABASE_ACCESS_DENIED, ACCESS_DENIED, AUTHENTICATION_FAILED, NOT_ENOUGH_PRIVILEGES.
        164 | 192..=195 | 291 | 497 | 516 | 517 => RefusalCause::Permission,
        // THERE_IS_NO_COLUMN, NOT_FOUND_COLUMN_IN_BLOCK, NO_SUCH_COLUMN_IN_TABLE,
        // UNKNOWN_IDENTIFIER, TYPE_MISMATCH, UNKNOWN_TABLE, UNKNOWN_DATABASE,
        // INCOMPATIBLE_COLUMNS.
        8 | 10 | 16 | 47 | 53 | 60 | 81 | 122 => RefusalCause::Schema,
        // TIMEOUT_EXCEEDED, QUOTA_EXPIRED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION,
        // SOCKET_TIMEOUT, NETWORK_ERROR, ABORTED, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY,
        // NO_ZOOKEEPER, TOO_MANY_PARTS, ALL_CONNECTION_TRIES_FAILED, UNKNOWN_STATUS_OF_INSERT,
        // QUERY_WAS_CANCELLED, SYSTEM_ERROR, KEEPER_EXCEPTION.
        159 | 201..=203 | 209 | 210 | 225 | 236 | 241 | 242 | 252 | 279 | 319 | 394 | 425 | 999 => {
            RefusalCause::Busy
        }
        _ => RefusalCause::Data,
    }
}

/// A refusal from the text of ClickHouse's answer; `None` when it carries no code (a proxy's
/// error page, a server restarting): then it is treated as unreachable.
pub fn refusal(text: &str, message: String) -> Option<Refusal> {
    let code = server_code(text)?;
    Some(Refusal {
        cause: cause_of(code),
        code: Some(code),
        message,
    })
}

/// The differences between the table's `(name, type)` columns and [`EXPECTED_COLUMNS`];
/// empty when every written column is there with a type of the same wire form. Columns the
/// service does not write (with defaults, or materialized) are fine.
pub fn column_differences(found: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in EXPECTED_COLUMNS {
        match found.iter().find(|(n, _)| n == name) {
            None => out.push(format!("column {name} is missing (it must be {want})")),
            Some((_, ty)) if wire_form(ty) != want => {
                out.push(format!("column {name} is {ty}, the service writes {want}"));
            }
            Some(_) => {}
        }
    }
    out
}

/// A type as RowBinary sends it: a `DateTime` of any time zone is a `DateTime`.
fn wire_form(ty: &str) -> &str {
    if ty == "DateTime" || ty.starts_with("DateTime(") {
        "DateTime"
    } else {
        ty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_both_servers_texts() {
        assert_eq!(
            server_code("Code: 53, e.displayText() = DB::Exception: Type mismatch"),
            Some(53)
        );
        assert_eq!(
            server_code("bad response: Code: 497. DB::Exception: alice: Not enough"),
            Some(497)
        );
        assert_eq!(server_code("502 Bad Gateway"), None);
    }

    #[test]
    fn causes_say_whether_waiting_helps() {
        assert_eq!(cause_of(164), RefusalCause::Permission);
        assert_eq!(cause_of(497), RefusalCause::Permission);
        assert_eq!(cause_of(60), RefusalCause::Schema);
        assert_eq!(cause_of(252), RefusalCause::Busy);
        assert_eq!(cause_of(395), RefusalCause::Data);
        assert_eq!(cause_of(33), RefusalCause::Data);
        assert!(refusal("no code here", String::new()).is_none());
    }

    #[test]
    fn columns_are_compared_in_their_wire_form() {
        let mut found: Vec<(String, String)> = EXPECTED_COLUMNS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        found[5].1 = "DateTime('UTC')".into();
        found.push(("extra".into(), "UInt8".into()));
        assert!(column_differences(&found).is_empty());
        found[6].1 = "Int32".into();
        found.remove(0);
        assert_eq!(
            column_differences(&found),
            [
                "column event_id is missing (it must be String)",
                "column occurred_at_ms is Int32, the service writes Int64"
            ]
        );
    }
}
