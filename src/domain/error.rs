//! Field-level validation failures, reported to clients as `{field, code, message}`.

use std::fmt;

/// The closed set of detail codes of PROTOCOL.md section 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldCode {
    Required,
    InvalidType,
    InvalidFormat,
    TooLong,
    TooShort,
    OutOfRange,
    UnknownEventType,
    TooLarge,
    TooDeep,
}

impl FieldCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::InvalidType => "invalid_type",
            Self::InvalidFormat => "invalid_format",
            Self::TooLong => "too_long",
            Self::TooShort => "too_short",
            Self::OutOfRange => "out_of_range",
            Self::UnknownEventType => "unknown_event_type",
            Self::TooLarge => "too_large",
            Self::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for FieldCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule. `field` is a path relative to the event object; `""` is the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: FieldCode,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: FieldCode, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }

    pub fn required(field: &str) -> Self {
        Self::new(field, FieldCode::Required, format!("{field} is required"))
    }

    pub fn invalid_type(field: &str, expected: &str) -> Self {
        let shown = if field.is_empty() { "event" } else { field };
        Self::new(
            field,
            FieldCode::InvalidType,
            format!("{shown} must be {expected}"),
        )
    }

    pub fn too_long(field: &str, max: usize) -> Self {
        Self::new(
            field,
            FieldCode::TooLong,
            format!("{field} must be at most {max} characters"),
        )
    }

    pub fn too_short(field: &str, min: usize) -> Self {
        Self::new(
            field,
            FieldCode::TooShort,
            format!(
                "{field} must be at least {min} character{}",
                if min == 1 { "" } else { "s" }
            ),
        )
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.field, self.code, self.message)
    }
}
